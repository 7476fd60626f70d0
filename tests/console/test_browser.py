"""The console in a real browser: Debian's Chromium driven by Playwright, against the service in
sandbox mode over real HTTP, its worker and its mounted Mailchimp sandbox in the same process.

Skipped (saying why) when Playwright or Chromium is missing; `.ci/run` installs both.
Set CONSOLE_SCREENSHOTS=docs/console to (re)write the screenshots of the README.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.auth.tokens import issue_token
from app.config import Settings
from app.connections.notices import PAUSED_NOTICE
from app.main import create_app, start_runtime
from app.sandbox.mailchimp import DEFAULT_API_KEY, DEFAULT_LIST_ID
from app.sandbox.mailchimp.constants import DEFAULT_ACCOUNT_ID
from tests.support.servers import free_port, run_server
from tests.support.sync import wait_for

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
# Headless, and nothing that reaches out to the internet (the machines have none).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
OWNER = "owner-a"
SANDBOX = "/_sandbox/mailchimp"
SCREENSHOTS = os.environ.get("CONSOLE_SCREENSHOTS")  # a directory, e.g. docs/console
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 360, "height": 740}


def _missing() -> str | None:
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "the browser tests need the `playwright` package (pip install -e '.[dev]')"
    if not Path(CHROMIUM).is_file():
        return f"the browser tests need Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


@dataclass
class Console:
    """The served service: its URL, settings, an API client, the sandbox's control API."""

    url: str
    settings: Settings
    http: httpx.AsyncClient

    def token(self, owner: str = OWNER, *, admin: bool = False) -> str:
        """A bearer token for `owner`."""
        return issue_token(self.settings, owner, admin=admin)

    def auth(self, owner: str = OWNER, *, admin: bool = False) -> dict[str, str]:
        """Authorization headers for `owner`."""
        return {"Authorization": f"Bearer {self.token(owner, admin=admin)}"}

    async def control(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """The sandbox's control API (the test plays Mailchimp's users)."""
        response = await self.http.request(method, f"{SANDBOX}/_control{path}", **kw)
        assert response.status_code < 300, response.text
        return response

    async def status(self, owner: str = OWNER) -> dict[str, Any]:
        """GET /api/integrations/mailchimp."""
        response = await self.http.get("/api/integrations/mailchimp", headers=self.auth(owner))
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def connect_with_api_key(self, owner: str = OWNER) -> dict[str, Any]:
        """Connect the sandbox's default audience by API (for pages other than Settings)."""
        response = await self.http.post(
            "/api/integrations/mailchimp/api-key",
            json={"api_key": DEFAULT_API_KEY},
            headers=self.auth(owner),
        )
        assert response.status_code == 200, response.text

        async def settled() -> bool:
            # Webhook registered and the first full sync over (it re-arms parked rows).
            status = await self.status(owner)
            run = status["last_run"]
            return bool(status["webhook_registered"] and run and run["state"] == "done")

        await wait_for(settled, within=30)
        return await self.status(owner)

    async def contact(self, contact_id: str) -> dict[str, Any]:
        """GET /api/contacts/{id}."""
        response = await self.http.get(f"/api/contacts/{contact_id}", headers=self.auth())
        assert response.status_code == 200, response.text
        return dict(response.json())


@pytest.fixture
def console_settings(settings: Settings, tmp_path: Path) -> Callable[..., Settings]:
    """Settings of `serve` in sandbox mode on a given port, with quick retries."""

    def make(port: int, **overrides: Any) -> Settings:
        return settings.model_copy(
            update={
                "HOST": "127.0.0.1",
                "PORT": port,
                "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
                "MAILCHIMP_SANDBOX_URL": None,  # the sandbox this very process mounts
                "WORKER_IN_PROCESS": True,
                "DATA_DIR": tmp_path,
                "MAILCHIMP_TIMEOUT_SECONDS": 5.0,
                "SYNC_BACKOFF_BASE_SECONDS": 0.05,
                "SYNC_BACKOFF_MAX_SECONDS": 0.5,
                "SYNC_POLL_INTERVAL_SECONDS": 0.2,
                **overrides,
            }
        )

    return make


@pytest.fixture
def serve(
    console_settings: Callable[..., Settings],
) -> Callable[..., contextlib.AbstractAsyncContextManager[Console]]:
    """`async with serve(**settings) as console`: the service with its worker, over TCP."""

    @contextlib.asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[Console]:
        port = free_port()
        settings = console_settings(port, **overrides)
        # A runtime of its own: the in-process worker reads the runtime's settings (its port,
        # the sandbox it mounts), not the session's.
        own = await start_runtime(settings, migrate=False)
        app = create_app(settings, runtime=own)
        try:
            async with (
                run_server(app, port=port) as url,
                httpx.AsyncClient(base_url=url, timeout=30) as http,
            ):
                yield Console(url=url, settings=settings, http=http)
        finally:
            await own.engine.dispose()

    return start


@pytest.fixture
async def console(serve: Callable[..., Any]) -> AsyncIterator[Console]:
    """The service with default settings."""
    async with serve() as served:
        yield served


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    """One Chromium for the module (a fresh context, i.e. profile, per test)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


@dataclass
class Watched:
    """A page and what it said: console messages, uncaught errors, HTTP errors seen."""

    page: Any
    expected: set[int] = field(default_factory=set)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    http_errors: list[tuple[int, str]] = field(default_factory=list)

    def check(self) -> None:
        """No uncaught error, no console error but the browser's own note of an HTTP error
        the test provoked, and no HTTP error the test did not provoke."""
        assert self.page_errors == []
        unexpected = [(s, u) for s, u in self.http_errors if s not in self.expected]
        assert unexpected == []
        for text in self.console_errors:
            status = re.search(r"Failed to load resource: .*status of (\d+)", text)
            assert status and int(status.group(1)) in self.expected, text


@pytest.fixture
async def watched(browser: Any, console: Console) -> AsyncIterator[Watched]:
    """A desktop-sized page on the console, watched for errors."""
    context = await browser.new_context(viewport=DESKTOP)
    page = await context.new_page()
    seen = Watched(page)
    page.on("pageerror", lambda exc: seen.page_errors.append(str(exc)))
    page.on(
        "console", lambda msg: seen.console_errors.append(msg.text) if msg.type == "error" else None
    )
    page.on(
        "response",
        lambda r: seen.http_errors.append((r.status, r.url)) if r.status >= 400 else None,
    )
    page.set_default_timeout(30_000)
    yield seen
    await context.close()
    seen.check()


async def sign_in(page: Any, console: Console, hash_: str = "", *, owner: str = OWNER) -> None:
    """Open the console and paste a token (the way outside development)."""
    await page.goto(f"{console.url}/{hash_}")
    await page.fill("#token-input", console.token(owner))
    await page.click("#use-token")
    await page.wait_for_selector("#who strong")


async def screenshot(page: Any, name: str) -> None:
    """Check the page at 360 px (nothing wider than the screen); with CONSOLE_SCREENSHOTS set,
    save it there at desktop size and at 360 px."""
    target = Path(SCREENSHOTS) if SCREENSHOTS else None
    if target:
        target.mkdir(parents=True, exist_ok=True)
        await page.wait_for_timeout(300)  # let the last render settle for the picture
        await page.screenshot(path=str(target / f"{name}-desktop.png"), full_page=True)
    await page.set_viewport_size(PHONE)
    overflow = await page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"{name}: {overflow} px wider than a 360 px screen"
    if target:
        await page.wait_for_timeout(300)
        await page.screenshot(path=str(target / f"{name}-360.png"), full_page=True)
    await page.set_viewport_size(DESKTOP)


async def text_of(page: Any, selector: str) -> str:
    """The visible text of the first match."""
    return str(await page.inner_text(selector))


# --- Settings -------------------------------------------------------------------------------


async def test_settings_connect_choose_sync_now_and_disconnect(
    watched: Watched, console: Console
) -> None:
    page = watched.page
    watched.expected = {429}  # the second Sync Now within the hour
    # The account has two audiences: the console must ask which one.
    await console.control(
        "POST", f"/accounts/{DEFAULT_ACCOUNT_ID}/lists", json={"name": "Newsletter"}
    )
    await sign_in(page, console)
    card = "#provider-mailchimp"
    await page.wait_for_selector(f"{card} button.connect")
    for other in ("constantcontact", "activecampaign", "mautic"):
        assert await page.locator(f"#provider-{other}").count() == 1
    await screenshot(page, "settings-not-connected")

    # Connect: the popup shows the sandbox's consent page; Allow posts back to the console.
    async with page.expect_popup() as opened:
        await page.click(f"{card} button.connect")
    popup = await opened.value
    await popup.click("#allow")
    await page.wait_for_selector(
        f"{card}[data-status='needs_audience'] #mailchimp-audience option", state="attached"
    )
    options = await page.locator("#mailchimp-audience option").all_inner_texts()
    assert sorted(o.split(" (")[0] for o in options) == ["Newsletter", "Sandbox Audience"]
    await screenshot(page, "settings-choose-audience")

    await page.select_option("#mailchimp-audience", label=next(o for o in options if "News" in o))
    await page.click(f"{card} .audience-picker button[type='submit']")
    await page.wait_for_selector(f"{card}[data-status='active']")
    assert "Connected to “Newsletter”" in await text_of(page, f"{card} .status-line")
    status = await console.status()
    assert status["audience"]["name"] == "Newsletter"

    # The first full sync starts by itself; Sync Now waits for it, then runs its own.
    await page.wait_for_selector(f"{card} .run[data-state='done']")
    await page.click(f"{card} .sync-now")
    await page.wait_for_function(
        """() => {
          const run = document.querySelector('#provider-mailchimp .run');
          return run && run.dataset.state === 'done'
            && run.textContent.includes('Sync Now finished');
        }"""
    )
    assert await page.locator(f"{card} [data-count='remote_total']").count() == 1
    assert "Last synced:" in await text_of(page, f"{card} .status-line")

    # Within the hour: 429, the button is disabled and counts down.
    await page.click(f"{card} .sync-now")
    button = page.locator(f"{card} .sync-now")
    await page.wait_for_function(
        "() => /Sync Now \\(in \\d+:\\d\\d\\)/.test("
        "document.querySelector('#provider-mailchimp .sync-now')?.textContent)"
    )
    assert await button.is_disabled()
    first = await button.inner_text()
    minutes = int(re.search(r"in (\d+):", first).group(1))  # type: ignore[union-attr]
    assert 55 <= minutes <= 59
    await page.wait_for_function(
        "(first) => (document.querySelector('#provider-mailchimp .sync-now')?.textContent ?? first)"
        " !== first",
        arg=first,
    )
    assert "available again in" in await text_of(page, f"{card} .sync-hint")
    await screenshot(page, "settings-connected")

    # Disconnect asks first; Cancel changes nothing.
    await page.click(f"{card} button.danger")
    dialog = page.locator("dialog.confirm")
    assert "members stay in Mailchimp" in await dialog.inner_text()
    await page.click("dialog.confirm button[value='cancel']")
    assert (await console.status())["connected"] is True
    await page.click(f"{card} button.danger")
    await page.click("dialog.confirm button[value='ok']")
    await page.wait_for_selector(f"{card} button.connect")
    assert (await console.status())["connected"] is False


async def test_credentials_form_shows_the_refusal_on_the_field(
    watched: Watched, console: Console
) -> None:
    page = watched.page
    watched.expected = {422}
    await sign_in(page, console)
    card = "#provider-mailchimp"
    await page.click(f"{card} details.credentials summary")
    await page.fill("#mailchimp-api_key", "0123456789abcdef0123456789abcdef-us1")
    await page.click(f"{card} .credentials-form button[type='submit']")
    error = page.locator("#mailchimp-api_key-error")
    await error.wait_for()
    await page.wait_for_function(
        "() => document.querySelector('#mailchimp-api_key-error')?.textContent.length > 0"
    )
    assert await page.get_attribute("#mailchimp-api_key", "aria-invalid") == "true"
    assert (await console.status())["connected"] is False

    await page.fill("#mailchimp-api_key", DEFAULT_API_KEY)
    await page.click(f"{card} .credentials-form button[type='submit']")
    await page.wait_for_selector(f"{card}[data-status='active']")
    assert "Sandbox Audience" in await text_of(page, f"{card} .status-line")


async def test_the_calm_notice_while_paused_goes_when_sync_resumes(
    serve: Callable[..., Any], browser: Any
) -> None:
    async with serve(SYNC_PAUSE_AFTER_FAILURES=1, SYNC_PROBE_MAX_INTERVAL_SECONDS=0.5) as console:
        await console.connect_with_api_key()
        context = await browser.new_context(viewport=DESKTOP)
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            await sign_in(page, console, "#/contacts")
            # Mailchimp goes down; the next send fails and the connection pauses.
            await console.control("PATCH", "/config", json={"outage_seconds": 4})
            response = await console.http.post(
                "/api/contacts",
                json={"email": "pause@example.com", "newsletter_opt_in": True},
                headers=console.auth(),
            )
            assert response.status_code == 201

            async def paused() -> bool:
                return (await console.status())["status"] == "paused"

            await wait_for(paused, within=20)
            await page.goto(f"{console.url}/#/settings")
            notice = page.locator("#notice")
            await notice.wait_for(state="visible")
            assert (await notice.inner_text()).startswith(PAUSED_NOTICE)
            assert await page.locator("#notice p").count() == 1
            await screenshot(page, "settings-paused")
            # The outage ends, the worker's probe resumes the connection, the notice goes.
            await notice.wait_for(state="hidden", timeout=40_000)
            assert (await console.status())["status"] == "active"
        finally:
            await context.close()
        assert errors == []


# --- Contacts -------------------------------------------------------------------------------


async def test_contact_syncs_and_an_unsubscribe_at_the_sandbox_comes_back(
    watched: Watched, console: Console
) -> None:
    page = watched.page
    watched.expected = {409, 412, 422}
    await console.connect_with_api_key()
    await sign_in(page, console, "#/contacts")
    await page.click("#new-contact")

    # An invalid email is refused on its field, nothing is written.
    await page.fill("#field-email", "not-an-email")
    await page.click("#contact-form button[type='submit']")
    await page.wait_for_function(
        "() => document.querySelector('#field-email-error')?.textContent.length > 0"
    )
    assert await page.get_attribute("#field-email", "aria-invalid") == "true"

    await page.fill("#field-email", "ada@example.com")
    await page.fill("#field-first_name", "Ada")
    await page.fill("#field-last_name", "Lovelace")
    await page.fill("#field-tags", "vip, 2026")
    await page.select_option("#field-kind", "client")
    await page.check("#field-newsletter_opt_in")
    await page.click("#contact-form button[type='submit']")
    synced = page.locator("#sync-lines [data-status='synced']")
    await synced.wait_for()
    assert "In Mailchimp · subscribed" in await synced.inner_text()
    contact_id = page.url.rsplit("/", 1)[1]
    members = (await console.control("GET", f"/lists/{DEFAULT_LIST_ID}/members")).json()
    (member,) = members["members"]
    assert member["email_address"] == "ada@example.com"
    assert member["status"] == "subscribed"
    await screenshot(page, "contact")

    # Ada unsubscribes at "Mailchimp"; the webhook brings it back, the page shows it.
    await page.click(".sandbox-unsubscribe")
    await page.wait_for_function(
        "() => document.querySelector('.contact-detail dl')?.textContent.includes('Unsubscribed')"
    )
    await page.wait_for_selector("#sync-lines [data-status='synced']:has-text('unsubscribed')")
    assert (await console.contact(contact_id))["newsletter_opt_in"] is False

    # The same email again: 409, with a link to the existing contact.
    await page.goto(f"{console.url}/#/contacts/new")
    await page.fill("#field-email", "ADA@example.com")
    await page.click("#contact-form button[type='submit']")
    link = page.locator("#existing-contact")
    await link.wait_for()
    await link.click()
    await page.wait_for_selector("#contact-title:has-text('Ada Lovelace')")

    # Edited elsewhere meanwhile: 412, and a reload shows the other change.
    await page.click("#edit-contact")
    await page.wait_for_function(
        "() => document.querySelector('#field-first_name')?.value === 'Ada'"
    )
    elsewhere = await console.http.patch(
        f"/api/contacts/{contact_id}", json={"phone": "+44 20 7946 0000"}, headers=console.auth()
    )
    assert elsewhere.status_code == 200
    await page.fill("#field-first_name", "Augusta")
    await page.click("#contact-form button[type='submit']")
    await page.click("#reload-contact")
    await page.wait_for_function(
        "() => document.querySelector('#field-phone')?.value === '+44 20 7946 0000'"
    )
    assert (await console.contact(contact_id))["first_name"] == "Ada"
    await page.fill("#field-first_name", "Augusta")
    await page.click("#contact-form button[type='submit']")
    await page.wait_for_selector("#contact-title:has-text('Augusta Lovelace')")
    # Her unsubscribe stays hers: the edit syncs the name, never re-subscribes her.
    assert (await console.contact(contact_id))["newsletter_opt_in"] is False

    # The list, filtered.
    await page.goto(f"{console.url}/#/contacts")
    await page.wait_for_selector("#contacts-table tbody tr")
    await screenshot(page, "contacts")
    await page.select_option("#contact-kind", "lead")
    await page.click(".filters button[type='submit']")
    await page.wait_for_selector("#contacts-status:has-text('No contact matches')")
    await page.select_option("#contact-kind", "client")
    await page.fill("#contact-tag", "vip")
    await page.fill("#contact-search", "augusta")
    await page.click(".filters button[type='submit']")
    await page.wait_for_selector("#contacts-status:has-text('1 contact')")

    # Delete says what happens at Mailchimp, and archives the member there.
    await page.click(f"tr[data-id='{contact_id}'] a")
    await page.click("#delete-contact")
    assert "archived" in await page.locator("dialog.confirm").inner_text()
    await page.click("dialog.confirm button[value='ok']")
    await page.wait_for_selector("#contacts-title")

    async def archived() -> bool:
        body = (await console.control("GET", f"/lists/{DEFAULT_LIST_ID}/members")).json()
        return [m["status"] for m in body["members"]] == ["archived"]

    await wait_for(archived, within=20)


async def test_forget_says_it_erases_at_the_provider(watched: Watched, console: Console) -> None:
    page = watched.page
    await console.connect_with_api_key()
    created = await console.http.post(
        "/api/contacts",
        json={"email": "gone@example.com", "newsletter_opt_in": True},
        headers=console.auth(),
    )
    contact_id = created.json()["id"]
    await sign_in(page, console, f"#/contacts/{contact_id}")
    await page.wait_for_selector("#sync-lines [data-status='synced']")
    await page.click("#forget-contact")
    text = await page.locator("dialog.confirm").inner_text()
    assert "permanently deleted" in text and "cannot be undone" in text
    await page.click("dialog.confirm button[value='ok']")
    await page.wait_for_selector("#contacts-title")

    async def erased() -> bool:
        body = (await console.control("GET", f"/lists/{DEFAULT_LIST_ID}/members")).json()
        return [m["status"] for m in body["members"]] == ["forgotten"]

    await wait_for(erased, within=20)


async def test_csv_import_shows_progress_row_errors_and_pages(
    watched: Watched, console: Console, tmp_path: Path
) -> None:
    page = watched.page
    lines = ["email,first_name,kind,tags,newsletter_opt_in"]
    lines += [f"person{i:02}@example.com,P{i:02},lead,imported,yes" for i in range(30)]
    lines.insert(5, "not-an-email,Broken,lead,,yes")  # spreadsheet row 6
    lines.append("also@bad,Broken,martian,,yes")
    csv = tmp_path / "contacts.csv"
    csv.write_text("\n".join(lines) + "\n")
    await console.connect_with_api_key()

    await sign_in(page, console, "#/contacts")
    await page.click("#show-import")
    await page.wait_for_selector("#import-progress", state="attached")
    # Every value the bar takes, as it takes it.
    await page.evaluate(
        """() => {
          window.barValues = [];
          const bar = document.querySelector('#import-progress');
          new MutationObserver(() => window.barValues.push(Number(bar.value)))
            .observe(bar, {attributes: true, attributeFilter: ['value']});
        }"""
    )
    await page.set_input_files("#import-file", str(csv))
    await page.click("#import-panel button[type='submit']")
    summary = page.locator("#import-summary")
    await summary.wait_for()
    assert (await summary.inner_text()).startswith(
        "32 rows read: 30 created, 0 updated, 0 unchanged, 2 rejected; 30 queued to sync."
    )
    values = await page.evaluate("window.barValues")
    assert values and values[-1] == 100
    assert values == sorted(values)
    assert await page.inner_text("#import-phase") == "Done."
    rows = await page.locator("#import-errors tbody tr").all_inner_texts()
    assert [r.split("\t")[0] for r in rows] == ["6", "33"]
    await screenshot(page, "contacts-import")

    # 30 contacts: a page of 25, the next has the other 5, and back.
    await page.wait_for_selector("#contacts-status:has-text('Page 1: 25 contacts')")
    await page.click("#next-page")
    await page.wait_for_selector("#contacts-status:has-text('Page 2: 5 contacts')")
    assert await page.is_disabled("#next-page")
    await page.click("#prev-page")
    await page.wait_for_selector("#contacts-status:has-text('Page 1: 25 contacts')")
    await page.fill("#contact-tag", "imported")
    await page.fill("#contact-search", "person07")
    await page.click(".filters button[type='submit']")
    await page.wait_for_selector("#contacts-status:has-text('Page 1: 1 contact.')")


# --- Operators ------------------------------------------------------------------------------


async def test_operator_sees_parked_and_rejected_rows_and_retries(
    serve: Callable[..., Any], browser: Any
) -> None:
    async with serve(SYNC_MAX_ATTEMPTS=1) as console:
        await console.connect_with_api_key()
        # Mailchimp refuses one address for good, and one for now ("signed up to a lot of
        # lists very recently": retried, and parked once the attempts are used up).
        await console.control(
            "PATCH",
            "/config",
            json={
                "fail_emails": {
                    "refused@example.com": "compliance",
                    "parked@example.com": "throttled",
                }
            },
        )
        for email in ("refused@example.com", "parked@example.com"):
            created = await console.http.post(
                "/api/contacts",
                json={"email": email, "newsletter_opt_in": True},
                headers=console.auth(),
            )
            assert created.status_code == 201
        parked = created
        parked_id = parked.json()["id"]

        async def totals() -> dict[str, Any]:
            r = await console.http.get("/api/admin/sync-status", headers=console.auth(admin=True))
            return dict(r.json()["totals"])

        async def failed_both() -> bool:
            t = await totals()
            return bool(t["parked"] == 1 and t["rejected"] == 1)

        await wait_for(failed_both, within=30)
        await console.control(
            "PATCH", "/config", json={"fail_emails": {"refused@example.com": "compliance"}}
        )

        context = await browser.new_context(viewport=DESKTOP)
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        try:
            await page.goto(f"{console.url}/#/operators")
            # A token without the admin role is refused before it is kept.
            await page.fill("#admin-token-input", console.token())
            await page.click("#use-admin-token")
            await page.wait_for_selector("#admin-token-error:has-text('no admin role')")
            await page.fill("#admin-token-input", console.token("ops", admin=True))
            await page.click("#use-admin-token")
            await page.wait_for_selector("#ops-table")
            assert await page.inner_text("#total-parked .value") == "1"
            assert await page.inner_text("#total-rejected .value") == "1"
            await page.click("#ops-table .show-rows")
            connection_id = (await console.status())["connection_id"]
            parked_rows = page.locator(f"#parked-{connection_id} tbody tr")
            await parked_rows.first.wait_for()
            assert "parked@example.com" in await parked_rows.first.inner_text()
            rejected_row = await page.locator(f"#rejected-{connection_id} tbody tr").inner_text()
            assert "refused@example.com" in rejected_row and "compliance" in rejected_row
            await screenshot(page, "operators")

            await page.click("#ops-table button.retry")
            await page.wait_for_selector("#toast:has-text('1 parked row sent to the queue again')")

            async def synced() -> bool:
                c = await console.contact(parked_id)
                return bool(c["sync"] and c["sync"][0]["status"] == "synced")

            await wait_for(synced, within=30)
            await page.wait_for_selector("#total-parked .value:text-is('0')", timeout=20_000)
            assert await page.is_disabled("#ops-table button.retry")
        finally:
            await context.close()
        assert errors == []


async def test_demo_token_is_offered_in_development(
    serve: Callable[..., Any], browser: Any
) -> None:
    from app.config import Environment

    async with serve(ENVIRONMENT=Environment.development) as console:
        context = await browser.new_context(viewport=DESKTOP)
        page = await context.new_page()
        try:
            await page.goto(f"{console.url}/")
            await screenshot(page, "sign-in")
            await page.click("#use-demo")
            await page.wait_for_selector("#who strong:text-is('demo')")
            # The token is in this tab's session storage, and in no URL.
            stored = await page.evaluate("sessionStorage.getItem('audience-sync.token')")
            assert stored and stored not in page.url
            # Development connects the demo owner to the sandbox: its card says so.
            await page.wait_for_selector("#provider-mailchimp[data-status='active']")
        finally:
            await context.close()


# --- keyboard and the connect methods -------------------------------------------------------


async def test_settings_work_from_the_keyboard(watched: Watched, console: Console) -> None:
    page = watched.page
    await console.connect_with_api_key()
    await sign_in(page, console)
    await page.wait_for_selector("#provider-mailchimp[data-status='active'] .sync-now")
    # Tab from the top reaches Disconnect; Enter opens the dialog, Escape closes it unchanged.
    for _ in range(40):
        await page.keyboard.press("Tab")
        focused = await page.evaluate("document.activeElement.textContent")
        if focused == "Disconnect":
            break
    else:
        raise AssertionError("Disconnect is not reachable with Tab")
    await page.keyboard.press("Enter")
    dialog = page.locator("dialog.confirm")
    await dialog.wait_for()
    assert await page.evaluate("document.activeElement.textContent") == "Cancel"
    await page.keyboard.press("Escape")
    await dialog.wait_for(state="detached")
    assert (await console.status())["connected"] is True


async def test_connect_methods_come_from_the_service_when_it_says(
    watched: Watched, console: Console
) -> None:
    page = watched.page
    await sign_in(page, console)
    await page.wait_for_selector("#provider-mailchimp")
    how = await page.evaluate(
        """async () => {
          const { howToConnect } = await import('/console/js/settings.js');
          return [
            howToConnect({provider: 'activecampaign', connect: [{kind: 'credentials', fields: [
              {name: 'api_url', label: 'API URL', kind: 'url', help: 'Settings → Developer'},
              {name: 'api_key', label: 'API key', kind: 'secret'}]}]}),
            howToConnect({provider: 'mailchimp', connect: [{kind: 'oauth'},
              {kind: 'credentials',
               fields: [{name: 'api_key', label: 'API key', kind: 'secret'}]}]}),
            howToConnect({provider: 'mautic'}),
          ];
        }"""
    )
    active, mailchimp, mautic = how
    assert active["oauth"] is False
    assert active["credentialsPath"] == "credentials"
    assert [(f["name"], f["type"], f["help"]) for f in active["fields"]] == [
        ("api_url", "url", "Settings → Developer"),
        ("api_key", "password", ""),
    ]
    assert mailchimp["oauth"] is True and mailchimp["credentialsPath"] == "credentials"
    # A service without `connect` (before the generic routes): the documented forms.
    assert [f["name"] for f in mautic["fields"]] == ["base_url", "client_id", "client_secret"]
