"""Error bodies exactly as reference §4 has them: arrays, except 401 and the two 429s."""

from __future__ import annotations

from typing import Any

FORBIDDEN_MESSAGE = (
    "Forbidden request. You lack the necessary scopes, you lack the necessary user "
    "privileges, or the application is deactivated."
)
NOT_FOUND_MESSAGE = "The requested resource was not found."


class ApiError(Exception):
    """An API error answer: a status, an error key, a message (and the body's shape)."""

    def __init__(
        self, status: int, key: str, message: str, *, single: bool = False, kind: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.key = key
        self.message = message
        self.single = single  # a single object rather than an array
        self.kind = kind  # "other": the unverified shapes (403/415/5xx/queue), knob-controlled
        self.headers: list[tuple[str, str]] = []

    def body(self, other_shape: str = "array") -> Any:
        """The JSON body; `other_shape` is the `error_body_shape` knob."""
        item = {"error_key": self.key, "error_message": self.message}
        if self.single or (self.kind == "other" and other_shape == "object"):
            return item
        return [item]


def validation(message: str) -> ApiError:
    return ApiError(400, "contacts.api.validation.error", message)


def not_found(message: str = NOT_FOUND_MESSAGE) -> ApiError:
    return ApiError(404, "contacts.api.not_found", message)


def conflict(message: str) -> ApiError:
    return ApiError(409, "contacts.api.conflict", message)


def unauthorized() -> ApiError:
    return ApiError(401, "unauthorized", "Unauthorized", single=True)


def forbidden() -> ApiError:
    return ApiError(403, "forbidden", FORBIDDEN_MESSAGE, kind="other")


def throttled() -> ApiError:
    return ApiError(429, "throttled", "Too Many Requests", single=True)


def quota_exceeded() -> ApiError:
    return ApiError(429, "quota_exceeded", "Limit Exceeded", single=True)


def queue_full(limit: int) -> ApiError:
    return ApiError(
        429,
        "activities.queue.full",
        f"Too many requests. You exceeded {limit:,} queued activities for this user account.",
        kind="other",
    )


def unsupported_media_type() -> ApiError:
    return ApiError(
        415,
        "unsupported_media_type",
        "Unsupported Media Type; the payload must be in JSON format, and Content-Type must "
        "be application/json",
        kind="other",
    )


def method_not_allowed() -> ApiError:
    return ApiError(
        405,
        "method_not_allowed",
        "The requested resource does not support the method used.",
        kind="other",
    )


def internal() -> ApiError:
    return ApiError(
        500, "server_error", "There was a problem with our internal service.", kind="other"
    )


def unavailable() -> ApiError:
    return ApiError(
        503, "service_unavailable", "Our internal service is temporarily unavailable.", kind="other"
    )
