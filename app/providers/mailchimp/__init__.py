"""Mailchimp Marketing API client."""
