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
# Paused until 00:00 UTC: the provider's daily quota of this application is spent (§14.3).
REASON_QUOTA = "daily_quota"
QUOTA_NOTICE = "{name}'s daily limit is reached; sync resumes at midnight UTC"

_ERROR_NOTICES = {
    REASON_CREDENTIALS: "Reconnect {name}: it no longer accepts the saved credentials.",
    REASON_AUDIENCE: "The {name} {noun} is gone: choose another {noun}.",
    REASON_ENDPOINT: "Reconnect {name}: the saved connection does not point at {name}.",
}


def notice_for(
    status: str | None,
    reason: str | None = None,
    *,
    stuck: bool = False,
    provider: str = "Mailchimp",
    audience_noun: str = "audience",
) -> str | None:
    """The notice for a connection status; None while healthy (invisible when healthy).

    `stuck`: some of its rows have been parked for PARKED_NOTICE_AFTER_SECONDS or more.
    `provider` is the provider's display name, `audience_noun` what it calls an audience
    (`notice_for_provider` fills both from the registry).
    """
    if status == "paused":
        if reason == REASON_QUOTA:
            return QUOTA_NOTICE.format(name=provider)
        return PAUSED_NOTICE
    if status == "error":
        if reason in _ERROR_NOTICES:
            return _ERROR_NOTICES[reason].format(name=provider, noun=audience_noun)
        return f"Reconnect {provider}: {reason}" if reason else f"Reconnect {provider}."
    if status == "needs_audience":
        return f"Choose the {provider} {audience_noun} to sync to."
    if status == "active" and stuck:
        return PARKED_NOTICE.replace("Mailchimp", provider)
    return None


def notice_for_provider(
    status: str | None, reason: str | None, provider_id: str, *, stuck: bool = False
) -> str | None:
    """`notice_for` in the words of the registered provider `provider_id`."""
    from app.providers import registry

    found = registry.find(provider_id)
    if found is None:
        return notice_for(status, reason, stuck=stuck, provider=provider_id)
    spec = found.spec
    return notice_for(
        status,
        reason,
        stuck=stuck,
        provider=spec.display_name,
        audience_noun=spec.audience_noun,
    )
