"""The web console: serving, and browser tests in Chromium."""
