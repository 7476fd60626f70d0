"""The one line the Settings page shows about a connection's health."""

from __future__ import annotations

PAUSED_NOTICE = "Heads up—email sync is paused right now."


def notice_for(status: str | None, reason: str | None = None) -> str | None:
    """The notice for a connection status; None while healthy (invisible when healthy)."""
    if status == "paused":
        return PAUSED_NOTICE
    if status == "error":
        return f"Reconnect Mailchimp: {reason}" if reason else "Reconnect Mailchimp."
    if status == "needs_audience":
        return "Choose the Mailchimp audience to sync to."
    return None
