"""The web console: static pages at `/` that drive the public API with a bearer token."""
