"""Operator endpoints: sync status and retry."""
