"""The sync engine: outbox queue, desired state, the worker loop, reconcile."""
