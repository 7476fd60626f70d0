"""Mailchimp's problem documents (reference §2.3) as an exception the handlers raise."""

from __future__ import annotations

from typing import Any

from app.sandbox.mailchimp import constants as c


class ApiError(Exception):
    """An error answer of the Marketing API: status, title, detail, optional `errors[]`."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        body: bool = True,
    ) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}
        self.body = body

    def document(self, request_id: str) -> dict[str, Any]:
        """The problem+json body; `instance` is the request id."""
        doc: dict[str, Any] = {
            "type": c.ERROR_TYPE,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": request_id,
        }
        if self.errors is not None:
            doc["errors"] = self.errors
        return doc


def not_found() -> ApiError:
    return ApiError(404, "Resource Not Found", c.NOT_FOUND)


def method_not_allowed(allow: str) -> ApiError:
    return ApiError(405, "Method Not Allowed", c.METHOD_NOT_ALLOWED, headers={"allow": allow})


def invalid(detail: str, errors: list[dict[str, str]] | None = None) -> ApiError:
    return ApiError(400, "Invalid Resource", detail, errors=errors)


def schema(errors: list[dict[str, str]]) -> ApiError:
    """A JSON-schema failure of the request body."""
    return ApiError(400, "Invalid Resource", c.INVALID_RESOURCE, errors=errors)


def json_parse() -> ApiError:
    return ApiError(400, "JSON Parse Error", c.JSON_PARSE)


def member_exists(email: str) -> ApiError:
    return ApiError(
        400,
        "Member Exists",
        f"{email} is already a list member. Use PUT to insert or update list members.",
    )


def compliance(email: str) -> ApiError:
    return ApiError(
        400,
        "Member In Compliance State",
        f"{email} is in a compliance state due to unsubscribe, bounce, or compliance review "
        "and cannot be subscribed.",
    )


def forgotten(email: str) -> ApiError:
    return ApiError(
        400,
        "Forgotten Email Not Subscribed",
        f"{email} was permanently deleted and cannot be re-imported. "
        "The contact must re-subscribe to get back on the list.",
    )


def fake_email(email: str) -> ApiError:
    return invalid(f"{email} looks fake or invalid, please enter a real email address.")


def bad_email() -> ApiError:
    return invalid("Please provide a valid email address.")


def merge_fields(errors: list[dict[str, str]]) -> ApiError:
    return invalid(c.MERGE_FIELDS_INVALID, errors)


def too_many(limit: int) -> ApiError:
    return ApiError(
        429,
        "Too Many Requests",
        f"You have exceeded the limit of {limit} simultaneous connections.",
    )
