"""HTTP routes of the contacts API: thin, the service holds the logic."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response, status

from app.auth.deps import OwnerDep
from app.contacts import importer
from app.contacts.schemas import (
    ContactCreate,
    ContactOut,
    ContactPage,
    ContactUpdate,
    ForgetResult,
    ImportResult,
)
from app.contacts.service import contact_service, etag
from app.db import SessionDep
from app.errors import MethodNotAllowed, problem_responses

# PostgreSQL text cannot hold \x00; a filter with one is a 422, not a database error.
NO_NUL = r"^[^\x00]*$"

router = APIRouter(prefix="/api/contacts", tags=["contacts"])


async def _one(session: SessionDep, owner_id: str, row: dict | object) -> ContactOut:
    (out,) = await contact_service.render(session, owner_id=owner_id, rows=[row])  # type: ignore[list-item]
    return out


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ContactOut,
    responses=problem_responses(401, 409, 422),
)
async def create_contact(
    body: ContactCreate,
    owner_id: OwnerDep,
    session: SessionDep,
    request: Request,
    response: Response,
) -> ContactOut:
    """Create a contact; 409 with `existing_id` when the email is taken (any case)."""
    written = await contact_service.create(session, owner_id=owner_id, data=body, actor=owner_id)
    response.headers["ETag"] = etag(written.row)
    response.headers["Location"] = str(request.url_for("get_contact", contact_id=written.out.id))
    return written.out


_CSV_SCHEMA = {"type": "string", "format": "binary"}


@router.post(
    "/import",
    response_model=ImportResult,
    # 400: a multipart body that cannot be parsed at all.
    responses=problem_responses(400, 401, 413, 415, 422),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "text/csv": {"schema": _CSV_SCHEMA},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {"file": _CSV_SCHEMA},
                    }
                },
            },
        }
    },
)
async def import_contacts(request: Request, owner_id: OwnerDep) -> ImportResult:
    """Upsert contacts from a CSV file (header row; matched by email, case-insensitively).

    Columns: email, first_name, last_name, company, phone, tags (`;`-separated, added), kind,
    newsletter_opt_in (true/false, yes/no, 1/0, y/n), addr1, addr2, city, state, zip,
    country; others are ignored and listed. Empty cells leave existing values alone. Rows
    are numbered as in a spreadsheet (header = row 1). Invalid rows are reported, never fatal;
    an empty file or one without an email column is a 422. At most 50 MB.
    """
    return await importer.import_upload(request, owner_id=owner_id)


@router.api_route("/import", methods=["GET", "PUT", "PATCH", "DELETE"], include_in_schema=False)
async def import_other_methods() -> None:
    """Only POST: without this, /import would be read as a contact id (a 422 about a UUID)."""
    raise MethodNotAllowed("Import a file with POST.", allow="POST")


@router.get("", response_model=ContactPage, responses=problem_responses(401, 404, 422))
async def list_contacts(
    owner_id: OwnerDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    q: Annotated[
        str | None,
        Query(max_length=200, pattern=NO_NUL, description="Matches name, email or company."),
    ] = None,
    tag: Annotated[str | None, Query(max_length=100, pattern=NO_NUL)] = None,
    kind: Annotated[str | None, Query(pattern="^(client|lead|contact)$")] = None,
    company: Annotated[
        str | None,
        Query(max_length=200, pattern=NO_NUL, description="The company, ignoring case."),
    ] = None,
    audience: Annotated[
        uuid.UUID | None,
        Query(description="An audience mapping's id: only the contacts its rule selects."),
    ] = None,
) -> ContactPage:
    """Contacts in creation order, `limit` at a time; pass `next_cursor` for the next page."""
    return await contact_service.list_page(
        session,
        owner_id=owner_id,
        limit=limit,
        cursor=cursor,
        q=q,
        tag=tag,
        kind=kind,
        company=company,
        audience=audience,
    )


@router.get("/{contact_id}", response_model=ContactOut, responses=problem_responses(401, 404, 422))
async def get_contact(
    contact_id: uuid.UUID, owner_id: OwnerDep, session: SessionDep, response: Response
) -> ContactOut:
    """One contact with its sync state per connection; the ETag is its version."""
    row = await contact_service.get(session, owner_id=owner_id, contact_id=contact_id)
    response.headers["ETag"] = etag(row)
    return await _one(session, owner_id, row)


@router.patch(
    "/{contact_id}",
    response_model=ContactOut,
    responses=problem_responses(401, 404, 409, 412, 422),
)
async def update_contact(
    contact_id: uuid.UUID,
    body: ContactUpdate,
    owner_id: OwnerDep,
    session: SessionDep,
    response: Response,
    if_match: Annotated[str | None, Header(max_length=200)] = None,
) -> ContactOut:
    """Change the fields sent (null clears); `If-Match` guards against lost updates (412)."""
    written = await contact_service.update(
        session,
        owner_id=owner_id,
        contact_id=contact_id,
        data=body,
        if_match=if_match,
        actor=owner_id,
    )
    response.headers["ETag"] = etag(written.row)
    return written.out


@router.delete(
    "/{contact_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(401, 404, 422),
)
async def delete_contact(contact_id: uuid.UUID, owner_id: OwnerDep, session: SessionDep) -> None:
    """Delete the contact; its member is archived at each provider (not erased)."""
    await contact_service.delete(session, owner_id=owner_id, contact_id=contact_id, actor=owner_id)


@router.post(
    "/{contact_id}/forget",
    response_model=ForgetResult,
    responses=problem_responses(401, 404, 422),
)
async def forget_contact(
    contact_id: uuid.UUID, owner_id: OwnerDep, session: SessionDep
) -> ForgetResult:
    """GDPR erase: removed here, permanently deleted at each provider, never pushed again."""
    return await contact_service.forget(
        session, owner_id=owner_id, contact_id=contact_id, actor=owner_id
    )
