"""The one line the Settings page shows about a connection's health."""

from __future__ import annotations

PAUSED_NOTICE = "Heads up—email sync is paused right now."
PARKED_NOTICE = "Heads up—a few contacts have not reached Mailchimp yet; we keep retrying."
# Rows parked this long (and not yet sent) are worth a notice: the bar is that more than
# 99 % of changes reach the provider within an hour. Shorter hiccups stay invisible.
PARKED_NOTICE_AFTER_SECONDS = 3600

# Why a connection stopped (connections.status_reason), as the engine records it.
REASON_CREDENTIALS = "credentials_refused"
REASON_AUDIENCE = "audience_missing"
REASON_UNAVAILABLE = "provider_unavailable"
REASON_ENDPOINT = "endpoint_refused"

_ERROR_NOTICES = {
    REASON_CREDENTIALS: "Reconnect Mailchimp: it no longer accepts the saved credentials.",
    REASON_AUDIENCE: "The Mailchimp audience is gone: choose another audience.",
    REASON_ENDPOINT: "Reconnect Mailchimp: the saved connection does not point at Mailchimp.",
}


def notice_for(status: str | None, reason: str | None = None, *, stuck: bool = False) -> str | None:
    """The notice for a connection status; None while healthy (invisible when healthy).

    `stuck`: some of its rows have been parked for PARKED_NOTICE_AFTER_SECONDS or more.
    """
    if status == "paused":
        return PAUSED_NOTICE
    if status == "error":
        if reason in _ERROR_NOTICES:
            return _ERROR_NOTICES[reason]
        return f"Reconnect Mailchimp: {reason}" if reason else "Reconnect Mailchimp."
    if status == "needs_audience":
        return "Choose the Mailchimp audience to sync to."
    if status == "active" and stuck:
        return PARKED_NOTICE
    return None
