"""ActiveCampaign's error answers (reference §6): the `message` form, the `errors` form, HTML."""

from __future__ import annotations

from typing import Any


class AcError(Exception):
    """An error answer: status, a JSON body (or raw bytes), extra headers."""

    def __init__(
        self,
        status: int,
        body: Any,
        *,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        super().__init__(f"{status}: {body!r}")
        self.status = status
        self.body = body
        self.headers = headers or {}
        self.content_type = content_type


def not_found(model: str, ident: object) -> AcError:
    """(a) `{"message":"No Result found for <Model> with id <id>"}`."""
    return AcError(404, {"message": f"No Result found for {model} with id {ident}"})


def forbidden() -> AcError:
    return AcError(403, {"message": "Forbidden"})


def invalid(
    title: str,
    *,
    code: str | None = None,
    pointer: str | None = None,
    detail: str | None = "",
    status: int = 422,
    with_status: bool = False,
) -> AcError:
    """(b) `{"errors":[{title, detail, code, source.pointer}]}` with the keys each case has."""
    error: dict[str, Any] = {}
    if with_status:
        error["status"] = status
    error["title"] = title
    if detail is not None:
        error["detail"] = detail
    if code is not None:
        error["code"] = code
    if pointer is not None:
        error["source"] = {"pointer": pointer}
    return AcError(status, {"errors": [error]})


def missing(attribute: str) -> AcError:
    """`{"errors":[{"status":422,"title":"Missing attribute","source":{"pointer":...}}]}`."""
    return invalid(
        "Missing attribute",
        pointer=f"/data/attributes/{attribute}",
        detail=None,
        with_status=True,
    )


def html_not_found() -> AcError:
    """(c) An unknown route: nginx's HTML page."""
    from app.sandbox.activecampaign.constants import HTML_404

    return AcError(404, HTML_404, content_type="text/html")
