"""Local emulators of providers that have no sandbox."""
