"""CSV import of contacts: rows are read and checked in Python, written set-based in SQL.

The flow, for the HTTP route and the CLI alike:
1. `inspect_csv` reads the whole file once: encoding, delimiter, header, row count. A file
   that cannot be read as CSV, is empty, or has no email column is refused before anything
   is written (422).
2. `parse_chunks` streams the data rows in chunks, checks each row as the API does (its
   email normalisation, and its `ContactUpdate` schema for tags, lengths, kinds and
   booleans) and turns the valid ones into staging records. Only one chunk is in memory.
3. `import_csv` applies chunk after chunk, split by email over IMPORT_CONNECTIONS
   connections, one transaction per chunk and connection: COPY into a staging table, then
   one set-based statement upserts contacts with their audit and queue rows and reports
   duplicates (`ImportService.apply_chunk`), commit, NOTIFY. The next chunk is parsed in a
   thread while the database works on the current one.

Rules a user of the import can rely on (docs/operations.md repeats them):
- Rows are matched to contacts by email, case-insensitively, within the owner only.
- A non-empty cell sets the field; an empty cell (or a missing column) leaves an existing
  contact's value as it is, and gives a new contact the API's default (kind `contact`,
  newsletter_opt_in false, no tags). An import never clears a field: use the API for that.
- Tags (`;`-separated) are added to the contact's tags, never removed.
- A row whose email appeared on an earlier row is rejected ("duplicate email; first seen on
  row N"): the first occurrence wins, as it would if the rows had been typed in one by one.
- Row numbers are those a spreadsheet shows: the header is row 1, the first contact row 2.
- Rows that change nothing write nothing: no version bump, no audit row, no sync.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import csv
import io
import re
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import structlog
from fastapi import Request
from pydantic import ValidationError
from pydantic_core import ErrorDetails
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.datastructures import UploadFile
from starlette.types import Message, Receive

from app.contacts.import_repository import ImportRepository
from app.contacts.schemas import ContactUpdate, ImportResult, ImportRowError, normalise_email
from app.errors import AppError, Unprocessable
from app.sync.outbox import STATS_REFRESH_ROWS, refresh_statistics, statistics_due

if TYPE_CHECKING:
    from app.config import Settings

log = structlog.get_logger(__name__)

MAX_UPLOAD_BYTES = 50 * 1024 * 1024  # HTTP uploads; the CLI reads files of any size
CHUNK_ROWS = 10_000  # rows per transaction
_CSV_BOOLEANS = {
    **dict.fromkeys(("1", "on", "t", "true", "y", "yes"), True),
    **dict.fromkeys(("0", "off", "f", "false", "n", "no"), False),
}
IMPORT_CONNECTIONS = 2  # database connections an import works on in parallel
MAX_REPORTED_ERRORS = 1_000  # `errors` lists this many rows; `rejected` counts them all
# A chunk is replayed after a deadlock, a serialization failure, or a unique violation (a
# concurrent create of an address the chunk was about to create: the replay updates it).
MAX_CHUNK_ATTEMPTS = 3
_RETRYABLE_SQLSTATES = frozenset({"40P01", "40001", "23505"})

CSV_MEDIA_TYPES = frozenset(
    {
        "text/csv",
        "application/csv",
        "text/plain",
        "application/vnd.ms-excel",  # what browsers on Windows send for a .csv file
        "application/octet-stream",
    }
)

# Header names (trimmed, lower-cased, runs of spaces/dashes/dots/slashes as "_") → field.
HEADER_ALIASES: dict[str, tuple[str, ...]] = {
    "email": ("email", "email_address", "e_mail", "e_mail_address", "mail"),
    "first_name": ("first_name", "firstname", "first", "given_name", "fname"),
    "last_name": ("last_name", "lastname", "last", "surname", "family_name", "lname"),
    "company": ("company", "company_name", "organization", "organisation", "org", "employer"),
    "phone": ("phone", "phone_number", "telephone", "tel"),
    "tags": ("tags", "tag"),
    "kind": ("kind",),
    "newsletter_opt_in": ("newsletter_opt_in", "opt_in", "optin", "newsletter"),
    "addr1": ("addr1", "address1", "address_1", "address_line_1", "street"),
    "addr2": ("addr2", "address2", "address_2", "address_line_2"),
    "city": ("city", "town"),
    "state": ("state", "region", "province", "state_province"),
    "zip": ("zip", "zip_code", "zipcode", "postal_code", "postcode", "zip_postal_code"),
    "country": ("country",),
}
_FIELD_BY_HEADER = {alias: name for name, aliases in HEADER_ALIASES.items() for alias in aliases}
_HEADER_SEPARATORS = re.compile(r"[\s\-./]+")
_ENCODING_NAMES = {"utf-8-sig": "utf-8", "cp1252": "windows-1252", "utf-16": "utf-16"}


class ImportFileError(Unprocessable):
    """The file as a whole cannot be imported (nothing was written)."""


class PayloadTooLarge(AppError):
    """The upload is over the size limit."""

    status_code = 413
    title = "Content Too Large"
    slug = "too-large"


class UnsupportedMediaType(AppError):
    """The body is neither CSV nor multipart."""

    status_code = 415
    title = "Unsupported Media Type"
    slug = "unsupported-media-type"


# --- reading the file ---------------------------------------------------------------------


@dataclass(frozen=True)
class CsvLayout:
    """What `inspect_csv` learnt about a file."""

    encoding: str
    delimiter: str
    header_row: int  # the header's row number (1 unless blank rows come first)
    columns: tuple[tuple[str, int], ...]  # (field, cell index), in file order
    mapped: dict[str, str]  # header as written → field
    ignored: tuple[str, ...]  # headers as written that match no field
    data_rows: int  # non-blank rows after the header


@dataclass
class ParsedChunk:
    """Up to CHUNK_ROWS data rows: staging records of the valid ones, reasons for the rest."""

    records: list[tuple[Any, ...]] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)
    rows: int = 0


def header_field(name: str) -> str | None:
    """The contact field a header names, or None."""
    key = _HEADER_SEPARATORS.sub("_", name.strip().lower()).strip("_")
    return _FIELD_BY_HEADER.get(key)


def inspect_csv(binary: IO[bytes]) -> CsvLayout:
    """Read the whole file once and decide how to read it; ImportFileError when we can't."""
    head = binary.read(4)
    binary.seek(0)
    if head.startswith(b"PK\x03\x04"):
        raise ImportFileError(
            "This looks like an Excel workbook, not a CSV file: save or export it as CSV."
        )
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        candidates: tuple[str, ...] = ("utf-16",)
    else:
        # Without a byte-order mark: UTF-8 when the bytes are valid UTF-8, else Excel's
        # legacy "CSV (Comma delimited)" encoding on Windows.
        candidates = ("utf-8-sig", "cp1252")
    for encoding in candidates:
        binary.seek(0)
        try:
            return _inspect(binary, encoding)
        except UnicodeError:  # not this encoding (UnicodeDecodeError is one)
            continue
    raise ImportFileError("The file's text encoding is not readable: save it as 'CSV UTF-8'.")


def _inspect(binary: IO[bytes], encoding: str) -> CsvLayout:
    text = io.TextIOWrapper(binary, encoding=encoding, newline="")
    try:
        delimiter = _sniff_delimiter(text)
        text.seek(0)
        reader = csv.reader(text, delimiter=delimiter)
        header: list[str] | None = None
        header_row = 0
        data_rows = 0
        try:
            for row_no, cells in enumerate(reader, start=1):
                if not _has_content(cells):
                    continue
                if header is None:
                    header, header_row = cells, row_no
                else:
                    data_rows += 1
        except csv.Error as exc:
            raise ImportFileError(
                f"The file is not valid CSV (line {reader.line_num}): {exc}."
            ) from None
    finally:
        text.detach()
    if header is None:
        raise ImportFileError("The file is empty: it needs a header row and contact rows.")
    columns, mapped, ignored = _map_header(header)
    return CsvLayout(
        encoding=encoding,
        delimiter=delimiter,
        header_row=header_row,
        columns=columns,
        mapped=mapped,
        ignored=ignored,
        data_rows=data_rows,
    )


def _sniff_delimiter(text: io.TextIOWrapper) -> str:
    # Comma unless the header line plainly uses semicolons (European Excel) or tabs.
    for _ in range(1000):
        line = text.readline()
        if not line:
            break
        if line.strip():
            counts = {d: line.count(d) for d in (",", ";", "\t")}
            best = max(counts, key=lambda d: counts[d])
            return best if counts[best] > counts[","] else ","
    return ","


def _map_header(
    header: Sequence[str],
) -> tuple[tuple[tuple[str, int], ...], dict[str, str], tuple[str, ...]]:
    columns: dict[str, int] = {}
    mapped: dict[str, str] = {}
    ignored: list[str] = []
    for index, raw in enumerate(header):
        name = raw.strip()
        target = header_field(name)
        if target is None:
            if name:
                ignored.append(name)
            continue
        if target in columns:
            first = header[columns[target]].strip()
            raise ImportFileError(
                f"The columns '{first}' and '{name}' both hold {target}: keep one of them."
            )
        columns[target] = index
        mapped[name] = target
    if "email" not in columns:
        raise ImportFileError(
            "The file has no email column: the header row needs a column named 'email'"
            " (contacts are matched by email)."
        )
    return tuple(columns.items()), mapped, tuple(ignored)


def _has_content(cells: Sequence[str]) -> bool:
    return any(c.strip() for c in cells)


def parse_chunks(
    binary: IO[bytes], layout: CsvLayout, *, chunk_rows: int = CHUNK_ROWS
) -> Generator[ParsedChunk, None, None]:
    """The file's data rows, `chunk_rows` at a time, checked and ready to stage."""
    binary.seek(0)
    text = io.TextIOWrapper(binary, encoding=layout.encoding, newline="")
    normalise = EmailNormaliser()
    try:
        chunk = ParsedChunk()
        for row_no, cells in enumerate(csv.reader(text, delimiter=layout.delimiter), start=1):
            if row_no <= layout.header_row or not _has_content(cells):
                continue
            chunk.rows += 1
            record, reason = parse_row(row_no, cells, layout.columns, normalise)
            if record is not None:
                chunk.records.append(record)
            else:
                chunk.errors.append((row_no, reason or "invalid row"))
            if chunk.rows >= chunk_rows:
                yield chunk
                chunk = ParsedChunk()
        if chunk.rows:
            yield chunk
    finally:
        text.detach()


# RFC 5322 dot-atom of ASCII characters: the local parts `email_validator` accepts as they
# are, without normalising them (its own first check).
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_DOT_ATOM = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*\Z")
_MAX_CACHED_DOMAINS = 10_000


class EmailNormaliser:
    """`normalise_email` — the API's — with the domain's verdict cached per file.

    Checking an address costs ~30 µs, two thirds of it on the domain (IDNA rules), and a
    contact list has a few thousand domains for a million rows. An address whose local part
    is a plain ASCII dot-atom takes the cached domain; anything else (quotes, non-ASCII,
    an unknown or invalid domain, overlong results) goes through `normalise_email` itself,
    so results and error messages are the API's (tests/contacts/test_import.py compares).
    """

    def __init__(self) -> None:
        self._domains: dict[str, str | None] = {}

    def __call__(self, value: str) -> str | None:
        local, at, domain = value.strip().rpartition("@")
        if at and _DOT_ATOM.match(local):
            if domain not in self._domains and len(self._domains) < _MAX_CACHED_DOMAINS:
                self._domains[domain] = self._domain(domain)
            normal = self._domains.get(domain)
            if normal is not None:
                email = f"{local}@{normal}"
                if len(email) <= 254 and email.isascii():
                    return email
        return normalise_email(value)

    @staticmethod
    def _domain(domain: str) -> str | None:
        try:
            checked = normalise_email(f"x@{domain}")
        except ValueError:
            return None
        return checked.split("@", 1)[1] if checked else None


def parse_row(
    row_no: int,
    cells: Sequence[str],
    columns: Sequence[tuple[str, int]],
    normalise: Callable[[str], str | None] = normalise_email,
) -> tuple[tuple[Any, ...] | None, str | None]:
    """A staging record for a valid row, or None and every reason it is not."""
    values: dict[str, Any] = {}
    for name, index in columns:
        if index < len(cells):
            value = cells[index].strip()
            if value:
                values[name] = value
    if "tags" in values:
        values["tags"] = values["tags"].split(";")
    if "newsletter_opt_in" in values:
        # A spreadsheet's yes/no, 1/0, true/false; the JSON API takes true and false only.
        values["newsletter_opt_in"] = _CSV_BOOLEANS.get(
            values["newsletter_opt_in"].lower(), values["newsletter_opt_in"]
        )
    problems = []
    # The email is checked here rather than by the model, through the (cached) normaliser.
    raw_email = values.pop("email", None)
    email = None
    if raw_email is None:
        problems.append("email is missing")
    else:
        try:
            email = normalise(raw_email)
        except ValueError as exc:
            problems.append(f"email {_shown(raw_email)}: {exc}")
    try:
        data = ContactUpdate.model_validate(values)
    except ValidationError as exc:
        problems.extend(_describe(err) for err in exc.errors())
    if problems:
        return None, "; ".join(problems)
    return (
        row_no,
        email,
        data.kind,
        data.first_name,
        data.last_name,
        data.company,
        data.phone,
        data.addr1,
        data.addr2,
        data.city,
        data.state,
        data.zip,
        data.country,
        data.tags or None,
        data.newsletter_opt_in,
    ), None


def _describe(error: ErrorDetails) -> str:
    name = str(error["loc"][0]) if error["loc"] else "row"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] in ("bool_parsing", "bool_type"):
        message = "use true/false, yes/no, 1/0 or y/n"
    value = error.get("input")
    if isinstance(value, str) and not error["type"].endswith("_too_long"):
        return f"{name} {_shown(value)}: {message}"
    return f"{name}: {message}"


def _shown(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:57] + "...")


# --- writing a chunk ----------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkOutcome:
    """What one chunk did to the database."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    queued: int = 0
    duplicates: tuple[tuple[int, int], ...] = ()


class ImportService:
    """One chunk of an import, inside the caller's transaction (it never commits)."""

    async def apply_chunk(
        self,
        session: AsyncSession,
        *,
        owner_id: str,
        actor: str | None,
        records: Sequence[tuple[Any, ...]],
    ) -> ChunkOutcome:
        """Stage `records`; upsert contacts with their audit and queue rows; NOTIFY once."""
        if not records:
            return ChunkOutcome()
        repo = ImportRepository(session)
        await repo.stage(records)
        counts = await repo.apply(owner_id=owner_id, actor=actor)
        if counts.queued:
            await repo.notify()
        # Every staged row that was not a duplicate now matches a contact (created by this
        # chunk or before); the ones neither created nor updated already held the values.
        unchanged = len(records) - len(counts.duplicates) - counts.created - counts.updated
        return ChunkOutcome(
            created=counts.created,
            updated=counts.updated,
            unchanged=unchanged,
            queued=counts.queued,
            duplicates=tuple(counts.duplicates),
        )


import_service = ImportService()


# --- orchestration: one transaction per chunk ---------------------------------------------


@dataclass
class _Report:
    layout: CsvLayout
    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    queued: int = 0
    rejected: int = 0
    errors: list[ImportRowError] = field(default_factory=list)
    truncated: bool = False

    def add(self, chunk: ParsedChunk, outcome: ChunkOutcome) -> None:
        self.rows += chunk.rows
        self.created += outcome.created
        self.updated += outcome.updated
        self.unchanged += outcome.unchanged
        self.queued += outcome.queued
        rejected = chunk.errors + [
            (row, f"duplicate email; first seen on row {first}")
            for row, first in outcome.duplicates
        ]
        self.rejected += len(rejected)
        room = MAX_REPORTED_ERRORS - len(self.errors)
        self.errors.extend(ImportRowError(row=r, reason=why) for r, why in sorted(rejected)[:room])
        self.truncated = self.truncated or len(rejected) > room

    def result(self) -> ImportResult:
        return ImportResult(
            rows=self.rows,
            created=self.created,
            updated=self.updated,
            unchanged=self.unchanged,
            rejected=self.rejected,
            queued=self.queued,
            errors=self.errors,
            errors_truncated=self.truncated,
            columns=self.layout.mapped,
            ignored_columns=list(self.layout.ignored),
            encoding=_ENCODING_NAMES.get(self.layout.encoding, self.layout.encoding),
        )


async def import_csv(
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    binary: IO[bytes],
    owner_id: str,
    actor: str | None,
    layout: CsvLayout | None = None,
    chunk_rows: int | None = None,
    connections: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> ImportResult:
    """Import a CSV file for `owner_id`, committing after every chunk.

    This is the one place that commits an import. Services never commit — a request's
    session commits once, at the end — but a file of a million rows must not be one
    transaction: it would hold locks and queue rows invisible to the workers until the very
    end, and a failure at row 999,999 would throw everything away. So the orchestration owns
    the unit of work here, the way a request's session dependency does for the API, and
    `ImportService.apply_chunk` stays a plain service.

    The database work is split over IMPORT_CONNECTIONS connections by email: each takes the
    rows whose address hashes to it, in file order, so every copy of an address meets the
    same connection — its temporary staging tables then find duplicates as if it were alone
    — and the connections never touch the same contact or queue row. Each chunk is one
    transaction per connection. A failed chunk rolls back; the chunks before it stay, and
    importing the same file again is safe (rows already imported are unchanged and write
    nothing).
    """
    if layout is None:
        layout = await asyncio.to_thread(inspect_csv, binary)
    report = _Report(layout)
    chunks = parse_chunks(binary, layout, chunk_rows=chunk_rows or CHUNK_ROWS)
    pending: asyncio.Future[ParsedChunk | None] | None = None
    async with contextlib.AsyncExitStack() as stack:
        sessions: list[AsyncSession] = []
        for _ in range(max(1, connections or IMPORT_CONNECTIONS)):
            connection = await stack.enter_async_context(engine.connect())
            session = sessionmaker(bind=connection)
            stack.push_async_callback(session.close)
            sessions.append(session)
        try:
            for session in sessions:
                await ImportRepository(session).prepare()
                await session.commit()
            pending = _next_in_thread(chunks)
            refreshed = 0  # rows queued when the queue's statistics were last refreshed
            while (chunk := await pending) is not None:
                # Parse the next chunk in a thread while the database works on this one.
                pending = _next_in_thread(chunks)
                outcome = await _apply_parts(
                    sessions, _partition(chunk.records, len(sessions)), owner_id, actor
                )
                report.add(chunk, outcome)
                if statistics_due(report.queued, refreshed):
                    # Workers drain while the import runs: their claim plan needs to know.
                    await refresh_statistics(sessions[0], "sync_queue")
                    await sessions[0].commit()
                    refreshed = report.queued
                if progress is not None:
                    progress(report.rows)
            pending = None
            for session in sessions:
                await ImportRepository(session).finish()
                await session.commit()
            if report.created + report.updated >= STATS_REFRESH_ROWS:
                await refresh_statistics(sessions[0], "contacts", "contact_changes", "sync_queue")
                await sessions[0].commit()
        finally:
            if pending is not None:
                with contextlib.suppress(Exception):
                    await pending
            chunks.close()
    log.info(
        "contacts.import.done",
        owner_id=owner_id,
        rows=report.rows,
        created=report.created,
        updated=report.updated,
        unchanged=report.unchanged,
        rejected=report.rejected,
        queued=report.queued,
    )
    return report.result()


def _partition(records: list[tuple[Any, ...]], parts: int) -> list[list[tuple[Any, ...]]]:
    if parts == 1:
        return [records]
    out: list[list[tuple[Any, ...]]] = [[] for _ in range(parts)]
    for record in records:
        out[hash(record[1].lower()) % parts].append(record)
    return out


async def _apply_parts(
    sessions: list[AsyncSession],
    parts: list[list[tuple[Any, ...]]],
    owner_id: str,
    actor: str | None,
) -> ChunkOutcome:
    results = await asyncio.gather(
        *(
            _apply_chunk(session, owner_id=owner_id, actor=actor, records=part)
            for session, part in zip(sessions, parts, strict=True)
        ),
        return_exceptions=True,  # let every part finish (or roll back) before raising
    )
    outcomes: list[ChunkOutcome] = []
    for result in results:
        if isinstance(result, BaseException):
            raise result
        outcomes.append(result)
    return ChunkOutcome(
        created=sum(o.created for o in outcomes),
        updated=sum(o.updated for o in outcomes),
        unchanged=sum(o.unchanged for o in outcomes),
        queued=sum(o.queued for o in outcomes),
        duplicates=tuple(d for o in outcomes for d in o.duplicates),
    )


def _next_in_thread(chunks: Iterator[ParsedChunk]) -> asyncio.Future[ParsedChunk | None]:
    return asyncio.ensure_future(asyncio.to_thread(next, chunks, None))


async def _apply_chunk(
    session: AsyncSession, *, owner_id: str, actor: str | None, records: list[tuple[Any, ...]]
) -> ChunkOutcome:
    for attempt in range(1, MAX_CHUNK_ATTEMPTS + 1):
        try:
            outcome = await import_service.apply_chunk(
                session, owner_id=owner_id, actor=actor, records=records
            )
            await session.commit()
            return outcome
        except DBAPIError as exc:
            await session.rollback()
            if attempt == MAX_CHUNK_ATTEMPTS or _sqlstate(exc) not in _RETRYABLE_SQLSTATES:
                raise
            log.warning("contacts.import.chunk_retry", attempt=attempt, sqlstate=_sqlstate(exc))
        except BaseException:
            await session.rollback()
            raise
    raise AssertionError("unreachable")


def _sqlstate(exc: DBAPIError) -> str | None:
    for candidate in (exc.orig, getattr(exc.orig, "__cause__", None)):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if code:
            return str(code)
    return None


# --- HTTP upload --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def uploaded_file(request: Request, *, max_bytes: int) -> AsyncIterator[IO[bytes]]:
    """The CSV of a `text/csv` body or a multipart `file` field, spooled; 413 over the limit."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    # The limit also holds for chunked bodies, which announce no length.
    limited = Request(request.scope, _limited(request.receive, max_bytes))
    if media_type == "multipart/form-data":
        form = await limited.form(max_files=1, max_fields=20)
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise Unprocessable("Send the CSV file in a multipart field named 'file'.")
            yield upload.file
        finally:
            await form.close()
    elif media_type in CSV_MEDIA_TYPES or not media_type:
        with tempfile.SpooledTemporaryFile(max_size=1024 * 1024) as spool:
            async for part in limited.stream():
                spool.write(part)
            spool.seek(0)
            yield spool
    else:
        raise UnsupportedMediaType(
            f"Send the file as text/csv or multipart/form-data, not {media_type}."
        )


def _limited(receive: Receive, max_bytes: int) -> Receive:
    seen = 0

    async def limited_receive() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > max_bytes:
                raise _too_large(max_bytes)
        return message

    return limited_receive


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The file is larger than {max_bytes // (1024 * 1024)} MB: split it, or use"
        " `audience-sync import FILE --owner ID` on the server."
    )


async def import_upload(request: Request, *, owner_id: str) -> ImportResult:
    """POST /api/contacts/import: the uploaded file, imported for the caller."""
    runtime = request.state.runtime
    async with uploaded_file(request, max_bytes=MAX_UPLOAD_BYTES) as binary:
        return await import_csv(
            runtime.engine,
            runtime.sessionmaker,
            binary=binary,
            owner_id=owner_id,
            actor=owner_id,
        )


# --- CLI ----------------------------------------------------------------------------------


def run_cli_import(settings: Settings, file: Path, owner: str) -> None:
    """`audience-sync import FILE --owner ID`: import with a progress bar, then the counts."""
    from rich.console import Console

    console = Console()
    if not owner.strip():
        console.print("[red]--owner must not be empty.[/red]")
        raise SystemExit(2)
    with file.open("rb") as binary:
        try:
            result, seconds = asyncio.run(_cli_import(settings, binary, owner, console))
        except ImportFileError as exc:
            console.print(f"[red]Not imported:[/red] {exc.detail}")
            raise SystemExit(1) from None
    _print_result(console, result, seconds)


async def _cli_import(
    settings: Settings, binary: IO[bytes], owner: str, console: Any
) -> tuple[ImportResult, float]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    from app.logging import configure_logging
    from app.runtime import start_runtime

    class RowsPerSecond(ProgressColumn):
        def render(self, task: Task) -> Text:
            elapsed = task.finished_time if task.finished else task.elapsed
            rate = task.completed / elapsed if elapsed else 0.0
            return Text(f"{rate:,.0f} rows/s", style="progress.data.speed")

    configure_logging(settings.LOG_FORMAT, settings.LOG_LEVEL)
    layout = await asyncio.to_thread(inspect_csv, binary)
    runtime = await start_runtime(settings)
    try:
        progress = Progress(
            TextColumn("[bold]importing"),
            BarColumn(),
            MofNCompleteColumn(),
            RowsPerSecond(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        started = time.perf_counter()
        with progress:
            task = progress.add_task("import", total=layout.data_rows)
            result = await import_csv(
                runtime.engine,
                runtime.sessionmaker,
                binary=binary,
                owner_id=owner,
                actor=owner,
                layout=layout,
                progress=lambda rows: progress.update(task, completed=rows),
            )
        return result, time.perf_counter() - started
    finally:
        await runtime.engine.dispose()


def _print_result(console: Any, result: ImportResult, seconds: float) -> None:
    from rich.table import Table

    counts = Table(title="Import", show_header=True)
    counts.add_column("outcome")
    counts.add_column("rows", justify="right")
    for name in ("created", "updated", "unchanged", "rejected"):
        counts.add_row(name, f"{getattr(result, name):,}")
    counts.add_row("total", f"{result.rows:,}", style="bold")
    console.print(counts)
    rate = result.rows / seconds if seconds else 0.0
    console.print(
        f"{result.rows:,} rows in {seconds:.1f} s ({rate:,.0f} rows/s);"
        f" {result.queued:,} sync-queue rows at bulk priority; encoding {result.encoding}."
    )
    if result.ignored_columns:
        console.print("Ignored columns: " + ", ".join(result.ignored_columns))
    if result.errors:
        shown = result.errors[:20]
        errors = Table(title="Rejected rows", show_header=True)
        errors.add_column("row", justify="right")
        errors.add_column("reason")
        for error in shown:
            errors.add_row(str(error.row), error.reason)
        console.print(errors)
        if result.rejected > len(shown):
            console.print(f"… and {result.rejected - len(shown):,} more rejected rows.")
