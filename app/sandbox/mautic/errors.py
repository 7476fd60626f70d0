"""Mautic's two error envelopes (reference §5) and the messages, optionally translated."""

from __future__ import annotations

from typing import Any

# The `locale` knob: instances answer in their own language (reference §0.2), so clients must
# never match on `message`. A few common messages are enough to prove that.
_ES = {
    "API authorization denied.": "La autorización a la API está denegada.",
    "Item was not found.": "No se encontró el elemento.",
    "The access token provided is invalid.": "El token de acceso proporcionado no es válido.",
    "The access token provided has expired.": "El token de acceso proporcionado ha caducado.",
    "Authorization denied, invalid credentials.": "Autorización denegada, credenciales inválidas.",
}

NOT_FOUND = "Item was not found."
FORBIDDEN = "You do not have access to the requested area/action."
GENERIC_500 = (
    "Looks like I encountered an error (error #500). If I do it again, please report me to "
    "the system administrator!"
)
API_DISABLED = (
    "API disabled. You need to enable the API in the API settings of Mautic's Configuration."
)
BASIC_DISABLED = (
    "Basic Auth disabled. You need to enable HTTP basic auth in the API settings of "
    "Mautic's Configuration."
)


def translate(message: str, locale: str) -> str:
    """The message in the instance's locale (English when no translation is known)."""
    if locale == "es":
        return _ES.get(message, message)
    return message


class ApiError(Exception):
    """An error answer. `style`: `controller` (FOSRest/JMS bytes) or `listener` (JsonResponse)."""

    def __init__(
        self,
        status: int,
        body: dict[str, Any],
        *,
        style: str = "controller",
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.style = style
        self.headers = headers or {}
        self.raw = raw


def controller(code: int, message: str, details: Any = None) -> ApiError:
    """`FetchCommonApiController::returnError`: `code, message, details` (null `type` omitted)."""
    return ApiError(
        code, {"errors": [{"code": code, "message": message, "details": details or []}]}
    )


def listener(code: int, message: str, type_: str | None) -> ApiError:
    """Errors built by `ApiSubscriber`/the exception controller: `message, code, type`."""
    return ApiError(
        code, {"errors": [{"message": message, "code": code, "type": type_}]}, style="listener"
    )


def not_found() -> ApiError:
    return controller(404, NOT_FOUND)


def forbidden() -> ApiError:
    return controller(403, FORBIDDEN)


def validation(details: dict[str, list[str]]) -> ApiError:
    """A form error: `message` is `field: msg` joined with `, `; `details` the per-field lists."""
    message = ", ".join(f"{name}: {msg}" for name, msgs in details.items() for msg in msgs)
    return controller(400, message, details)


def route_not_found(method: str, path: str) -> ApiError:
    return listener(404, f'No route found for "{method} {path}"', None)


def batch_limit(limit: int) -> ApiError:
    return controller(500, f"A max of {limit} entities are supported at a time.")


def oauth(code: str, message: str, status: int = 400) -> ApiError:
    """oauth2-php's `{error, error_description}` after Mautic's rewrite into `errors[]`."""
    return listener(status, message, code)


def rate_limited(limit: int, html: bool) -> ApiError:
    """RateLimitBundle's literal body (spaces included), sent as text/html by default."""
    raw = (
        '{ "errors": [ { "code": 429, "message": "You exceeded the rate limit of '
        f'{limit} API calls per hour.", "details": [] }} ]}}'
    ).encode()
    content_type = "text/html; charset=UTF-8" if html else "application/json"
    return ApiError(429, {}, raw=raw, headers={"content-type": content_type})
