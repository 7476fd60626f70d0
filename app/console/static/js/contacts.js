// Contacts: the list (search, kind and tag filters, cursor paging), one contact with its sync
// state per connection, create and edit, delete and forget, CSV import.
import { ApiError, api, upload } from "./api.js";
import { ago, confirmDialog, fill, h, toast } from "./dom.js";

const KINDS = ["contact", "lead", "client"];
const PAGE_SIZE = 25;

// The list's filters and page survive a visit to one contact (module state, never the URL).
const listState = { q: "", kind: "", tag: "", cursors: [null], page: 0 };

export function mount(root, ctx, params) {
  const [id, sub] = params;
  if (id === "new") return editView(root, ctx, null);
  if (id && sub === "edit") return editView(root, ctx, id);
  if (id) return detailView(root, ctx, id);
  return listView(root, ctx);
}

function fullName(c) {
  return [c.first_name, c.last_name].filter(Boolean).join(" ");
}

/** One connection's sync state in words (docs/api.md §6). */
export function syncText(line, providerName) {
  const name = providerName(line.provider);
  switch (line.status) {
    case "pending":
      return ["pending", "Syncing…"];
    case "synced":
      return ["synced", `In ${name}${line.remote_status ? ` · ${line.remote_status}` : ""}`];
    case "failed":
      return ["failed", `Could not sync${line.error ? `: ${line.error}` : ""}`];
    case "rejected":
      return ["rejected", `${name} refused this contact${line.error ? `: ${line.error}` : ""}`];
    case "blocked":
      return ["blocked", `Blocked${line.error ? `: ${line.error}` : ""}`];
    case "not_synced":
      return ["not-synced", "Not sent (no email, or no newsletter consent)"];
    default:
      return [line.status, `${line.status}${line.error ? `: ${line.error}` : ""}`];
  }
}

function syncBadges(contact, ctx) {
  if (!contact.sync || !contact.sync.length) return h("span", { class: "muted" }, "No connection");
  return contact.sync.map((line) => {
    const [kind, text] = syncText(line, (p) => ctx.providerName(p));
    return h("span", { class: `sync-badge ${kind}`, dataset: { provider: line.provider, status: line.status } }, text);
  });
}

function newsletterText(c) {
  if (c.newsletter_opt_in) return "Subscribed";
  if (c.newsletter_unsubscribed_at) return `Unsubscribed ${ago(c.newsletter_unsubscribed_at)}`;
  return "Not subscribed";
}

// --- the list -------------------------------------------------------------------------------

function listView(root, ctx) {
  const q = h("input", { type: "search", id: "contact-search", name: "q", value: listState.q, placeholder: "Name or email" });
  const kind = h(
    "select",
    { id: "contact-kind", name: "kind" },
    h("option", { value: "" }, "Any kind"),
    KINDS.map((k) => h("option", { value: k, selected: listState.kind === k }, k)),
  );
  const tag = h("input", { type: "text", id: "contact-tag", name: "tag", value: listState.tag, placeholder: "Tag" });
  const body = h("tbody");
  const status = h("p", { class: "muted", role: "status", id: "contacts-status" });
  const error = h("p", { class: "error", role: "alert" });
  const prev = h("button", { type: "button", id: "prev-page", onclick: () => go(listState.page - 1) }, "← Previous");
  const next = h("button", { type: "button", id: "next-page", onclick: () => go(listState.page + 1) }, "Next →");
  const importBox = importPanel(ctx, () => load());

  fill(
    root,
    h(
      "section",
      { "aria-labelledby": "contacts-title" },
      h(
        "div",
        { class: "title-row" },
        h("h1", { id: "contacts-title" }, "Contacts"),
        h(
          "div",
          { class: "actions" },
          h("a", { class: "button primary", href: "#/contacts/new", id: "new-contact" }, "New contact"),
          h(
            "button",
            { type: "button", id: "show-import", "aria-expanded": "false", onclick: (e) => toggleImport(e.currentTarget) },
            "Import CSV",
          ),
        ),
      ),
      importBox,
      h(
        "form",
        {
          class: "filters",
          role: "search",
          onsubmit: (event) => {
            event.preventDefault();
            Object.assign(listState, { q: q.value.trim(), kind: kind.value, tag: tag.value.trim(), cursors: [null], page: 0 });
            load();
          },
        },
        h("label", { for: q.id, class: "visually-hidden" }, "Search"),
        q,
        h("label", { for: kind.id, class: "visually-hidden" }, "Kind"),
        kind,
        h("label", { for: tag.id, class: "visually-hidden" }, "Tag"),
        tag,
        h("button", { type: "submit" }, "Search"),
      ),
      error,
      h(
        "table",
        { class: "contacts", id: "contacts-table" },
        h("thead", {}, h("tr", {}, ["Name", "Email", "Kind", "Tags", "Newsletter", "Sync"].map((t) => h("th", { scope: "col" }, t)))),
        body,
      ),
      status,
      h("nav", { class: "pager", "aria-label": "Pages" }, prev, next),
    ),
  );

  function toggleImport(button) {
    const open = importBox.hidden;
    importBox.hidden = !open;
    button.setAttribute("aria-expanded", String(open));
    if (open) importBox.querySelector("input").focus();
  }

  let shownKey = null;
  async function load() {
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    const cursor = listState.cursors[listState.page];
    if (cursor) query.set("cursor", cursor);
    if (listState.q) query.set("q", listState.q);
    if (listState.kind) query.set("kind", listState.kind);
    if (listState.tag) query.set("tag", listState.tag);
    try {
      const { data } = await api(`/api/contacts?${query}`);
      error.textContent = "";
      listState.cursors[listState.page + 1] = data.next_cursor;
      const key = JSON.stringify([data, listState.q, listState.kind, listState.tag, listState.page]);
      if (key === shownKey) return; // unchanged: keep the rows (and the reader's focus)
      shownKey = key;
      fill(
        body,
        data.items.map((c) =>
          h(
            "tr",
            { dataset: { id: c.id } },
            h("td", { "data-label": "Name" }, h("a", { href: `#/contacts/${c.id}` }, fullName(c) || c.email || "(no name)")),
            h("td", { "data-label": "Email" }, c.email || "—"),
            h("td", { "data-label": "Kind" }, c.kind),
            h("td", { "data-label": "Tags" }, c.tags.map((t) => h("span", { class: "tag" }, t))),
            h("td", { "data-label": "Newsletter" }, newsletterText(c)),
            h("td", { "data-label": "Sync" }, syncBadges(c, ctx)),
          ),
        ),
      );
      const filtered = listState.q || listState.kind || listState.tag;
      status.textContent = data.items.length
        ? `Page ${listState.page + 1}: ${data.items.length} contact${data.items.length === 1 ? "" : "s"}.`
        : filtered
          ? "No contact matches these filters."
          : "No contacts yet: create one or import a CSV file.";
      prev.disabled = listState.page === 0;
      next.disabled = !data.next_cursor;
    } catch (exc) {
      error.textContent = exc.message;
    }
  }

  function go(page) {
    if (page < 0 || (page > listState.page && !listState.cursors[page])) return;
    listState.page = page;
    load();
  }

  load();
  const timer = setInterval(load, 5000); // sync states move by themselves
  return () => clearInterval(timer);
}

// --- CSV import -----------------------------------------------------------------------------

function importPanel(ctx, onDone) {
  const file = h("input", { type: "file", id: "import-file", accept: ".csv,text/csv", required: true });
  const bar = h("progress", { id: "import-progress", max: 100, value: 0, "aria-label": "Import progress" });
  const phase = h("span", { id: "import-phase", "aria-live": "polite" });
  const result = h("div", { id: "import-result" });
  const submit = h("button", { type: "submit", class: "primary" }, "Import");
  const box = h(
    "div",
    { class: "import card", id: "import-panel", hidden: true },
    h("h2", {}, "Import contacts from a CSV file"),
    h(
      "p",
      { class: "muted small" },
      "A header row, then one contact a row. Columns: email, first_name, last_name, phone, tags (separated by ;), kind, newsletter_opt_in, addr1, addr2, city, state, zip, country. Rows are matched by email; empty cells leave values alone.",
    ),
    h(
      "form",
      {
        onsubmit: async (event) => {
          event.preventDefault();
          const chosen = file.files && file.files[0];
          if (!chosen) {
            phase.textContent = "Choose a CSV file first.";
            return;
          }
          submit.disabled = true;
          result.replaceChildren();
          bar.value = 0;
          phase.textContent = "Uploading… 0%";
          try {
            const data = await upload("/api/contacts/import", chosen, (fraction) => {
              bar.value = Math.round(fraction * 90); // the last tenth is the service's work
              phase.textContent = fraction < 1 ? `Uploading… ${Math.round(fraction * 100)}%` : "Importing…";
            });
            bar.value = 100;
            phase.textContent = "Done.";
            showResult(data);
            onDone();
          } catch (exc) {
            bar.value = 0;
            phase.textContent = "";
            const rowErrors = exc.problem && exc.problem.errors;
            fill(result, h("p", { class: "error", role: "alert" }, exc.message), rowErrors ? errorTable(rowErrors.map((e) => ({ row: e.row ?? e.field, reason: e.reason ?? e.message }))) : null);
          } finally {
            submit.disabled = false;
          }
        },
      },
      h("label", { for: file.id }, "CSV file"),
      file,
      submit,
      h("div", { class: "progress-row" }, bar, phase),
    ),
    result,
  );

  function errorTable(errors) {
    return h(
      "table",
      { class: "row-errors", id: "import-errors" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Row"), h("th", { scope: "col" }, "Why it was not imported"))),
      h("tbody", {}, errors.map((e) => h("tr", {}, h("td", {}, String(e.row)), h("td", {}, e.reason)))),
    );
  }

  function showResult(data) {
    fill(
      result,
      h(
        "p",
        { id: "import-summary" },
        `${data.rows} row${data.rows === 1 ? "" : "s"} read: ${data.created} created, ${data.updated} updated, ${data.unchanged} unchanged, ${data.rejected} rejected; ${data.queued} queued to sync.`,
      ),
      data.ignored_columns && data.ignored_columns.length ? h("p", { class: "muted" }, `Ignored columns: ${data.ignored_columns.join(", ")}`) : null,
      data.errors.length ? errorTable(data.errors) : null,
      data.errors_truncated ? h("p", { class: "muted" }, "More rows were rejected than are listed here.") : null,
    );
  }

  return box;
}

// --- one contact ----------------------------------------------------------------------------

function detailView(root, ctx, id) {
  const box = h("section", { class: "contact-detail", "aria-labelledby": "contact-title" });
  const error = h("p", { class: "error", role: "alert" });
  fill(root, h("p", {}, h("a", { href: "#/contacts" }, "← All contacts")), error, box);
  let stopped = false;
  let shown = null;

  async function load() {
    try {
      const { data } = await api(`/api/contacts/${encodeURIComponent(id)}`);
      error.textContent = "";
      const key = JSON.stringify(data);
      if (key !== shown) {
        shown = key;
        render(data);
      }
    } catch (exc) {
      if (exc.status === 404 || exc.status === 422) {
        fill(box, h("h1", { id: "contact-title" }, "Contact not found"), h("p", {}, "It was deleted, or it is not yours."));
        stopped = true;
      } else error.textContent = exc.message;
    }
  }

  function render(c) {
    const fields = [
      ["Email", c.email],
      ["Kind", c.kind],
      ["Phone", c.phone],
      ["Tags", c.tags.length ? c.tags.join(", ") : null],
      ["Newsletter", newsletterText(c)],
      ["Email status", c.email_status !== "ok" ? c.email_status : null],
      ["Address", [c.addr1, c.addr2, c.zip, c.city, c.state, c.country].filter(Boolean).join(", ") || null],
      ["Company", c.company ?? null],
      ["Notes", c.notes],
      ["Updated", `${ago(c.updated_at)} (version ${c.version})`],
    ];
    const sandbox = ctx.config.sandbox;
    const sandboxLines = sandbox && c.email ? c.sync.filter((s) => s.provider === "mailchimp" && s.audience_id) : [];
    fill(
      box,
      h(
        "div",
        { class: "title-row" },
        h("h1", { id: "contact-title" }, fullName(c) || c.email || "(no name)"),
        h(
          "div",
          { class: "actions" },
          h("a", { class: "button", href: `#/contacts/${c.id}/edit`, id: "edit-contact" }, "Edit"),
          h("button", { type: "button", class: "danger", id: "delete-contact", onclick: () => remove(c) }, "Delete"),
          h("button", { type: "button", class: "danger", id: "forget-contact", onclick: () => forget(c) }, "Forget (GDPR)"),
        ),
      ),
      h("dl", { class: "fields" }, fields.filter(([, v]) => v !== null && v !== undefined && v !== "").map(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))])),
      h("h2", {}, "Sync"),
      c.sync.length
        ? h(
            "ul",
            { class: "sync-lines", id: "sync-lines" },
            c.sync.map((line) => {
              const [kind, text] = syncText(line, (p) => ctx.providerName(p));
              return h(
                "li",
                { class: `sync-badge ${kind}`, dataset: { provider: line.provider, status: line.status } },
                h("strong", {}, ctx.providerName(line.provider)),
                line.audience_id ? h("span", { class: "muted" }, ` (${line.audience_id})`) : null,
                ": ",
                text,
                line.last_synced_at ? h("span", { class: "muted" }, ` · last synced ${ago(line.last_synced_at)}`) : null,
                line.error_kind ? h("span", { class: "muted" }, ` · ${line.error_kind}`) : null,
              );
            }),
          )
        : h("p", { class: "muted" }, "No email-marketing account is connected: ", h("a", { href: "#/settings" }, "connect one"), "."),
      sandboxLines.length
        ? h(
            "div",
            { class: "sandbox card" },
            h("h2", {}, "Sandbox"),
            h("p", { class: "muted small" }, "Act as this person at the built-in Mailchimp sandbox; the change comes back through the webhook."),
            sandboxLines.map((line) =>
              h(
                "button",
                {
                  type: "button",
                  class: "sandbox-unsubscribe",
                  onclick: () => sandboxAction(sandbox.base_url, line.audience_id, "unsubscribe", c.email),
                },
                "Unsubscribe at the sandbox",
              ),
            ),
          )
        : null,
    );
  }

  async function sandboxAction(base, audienceId, action, email) {
    try {
      const response = await fetch(`${base}/_control/lists/${encodeURIComponent(audienceId)}/actions/${action}`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ email }),
      });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(body.detail || `The sandbox answered ${response.status}.`);
      toast("Unsubscribed at the sandbox: the webhook brings it back here in a moment.");
    } catch (exc) {
      error.textContent = exc.message;
    }
  }

  async function remove(c) {
    const names = c.sync.map((s) => ctx.providerName(s.provider));
    const yes = await confirmDialog({
      title: `Delete ${fullName(c) || c.email || "this contact"}?`,
      body: [
        "The contact is removed here.",
        names.length
          ? `At ${names.join(", ")} the member is archived: kept (with its history), no longer in the audience, and restored if the contact is added again.`
          : "No email-marketing account is connected, so nothing changes elsewhere.",
      ],
      confirm: "Delete",
    });
    if (!yes) return;
    try {
      await api(`/api/contacts/${c.id}`, { method: "DELETE" });
      toast("Contact deleted.");
      location.hash = "#/contacts";
    } catch (exc) {
      error.textContent = exc.message;
    }
  }

  async function forget(c) {
    const names = c.sync.map((s) => ctx.providerName(s.provider));
    const yes = await confirmDialog({
      title: `Forget ${fullName(c) || c.email || "this contact"} everywhere?`,
      body: [
        "GDPR erasure: the contact and its history are removed here.",
        names.length
          ? `At ${names.join(", ")} the member is permanently deleted and can never be added again with this email by us.`
          : "No email-marketing account is connected, so nothing is sent elsewhere.",
        "This cannot be undone.",
      ],
      confirm: "Forget",
    });
    if (!yes) return;
    try {
      await api(`/api/contacts/${c.id}/forget`, { method: "POST" });
      toast("Contact forgotten.");
      location.hash = "#/contacts";
    } catch (exc) {
      error.textContent = exc.message;
    }
  }

  load();
  const timer = setInterval(() => {
    if (!stopped) load();
  }, 2000);
  return () => clearInterval(timer);
}

// --- create and edit ------------------------------------------------------------------------

const FORM_FIELDS = [
  { name: "email", label: "Email", type: "email", autocomplete: "email" },
  { name: "first_name", label: "First name", autocomplete: "given-name" },
  { name: "last_name", label: "Last name", autocomplete: "family-name" },
  { name: "company", label: "Company", autocomplete: "organization" },
  { name: "phone", label: "Phone", type: "tel", autocomplete: "tel" },
  { name: "kind", label: "Kind", options: KINDS },
  { name: "tags", label: "Tags (separated by commas)" },
  { name: "newsletter_opt_in", label: "Subscribed to the newsletter", type: "checkbox" },
  { name: "city", label: "City" },
  { name: "country", label: "Country" },
  { name: "notes", label: "Notes", multiline: true },
];

function editView(root, ctx, id) {
  const inputs = {};
  const errors = {};
  const formError = h("div", { class: "error", role: "alert", id: "form-error" });
  const submit = h("button", { type: "submit", class: "primary" }, id ? "Save" : "Create contact");
  let original = null;
  let etag = null;

  const rows = FORM_FIELDS.map((f) => {
    const fid = `field-${f.name}`;
    let input;
    if (f.options) {
      input = h("select", { id: fid, name: f.name }, f.options.map((o) => h("option", { value: o }, o)));
    } else if (f.multiline) {
      input = h("textarea", { id: fid, name: f.name, rows: 3 });
    } else {
      input = h("input", { id: fid, name: f.name, type: f.type || "text", autocomplete: f.autocomplete || "off" });
    }
    input.setAttribute("aria-describedby", `${fid}-error`);
    inputs[f.name] = input;
    errors[f.name] = h("span", { class: "field-error", id: `${fid}-error` });
    return h("div", { class: f.type === "checkbox" ? "field checkbox" : "field" }, h("label", { for: fid }, f.label), input, errors[f.name]);
  });

  function values() {
    const out = {};
    for (const f of FORM_FIELDS) {
      const input = inputs[f.name];
      if (f.type === "checkbox") out[f.name] = input.checked;
      else if (f.name === "tags") out.tags = input.value.split(",").map((t) => t.trim()).filter(Boolean);
      else out[f.name] = input.value.trim() || null;
    }
    if (out.kind === null) out.kind = "contact";
    return out;
  }

  function setValues(c) {
    for (const f of FORM_FIELDS) {
      const input = inputs[f.name];
      if (f.type === "checkbox") input.checked = Boolean(c[f.name]);
      else if (f.name === "tags") input.value = (c.tags || []).join(", ");
      else input.value = c[f.name] ?? "";
    }
  }

  function clearErrors() {
    formError.replaceChildren();
    for (const [name, span] of Object.entries(errors)) {
      span.textContent = "";
      inputs[name].removeAttribute("aria-invalid");
    }
  }

  async function loadOriginal() {
    const response = await api(`/api/contacts/${encodeURIComponent(id)}`);
    original = response.data;
    etag = response.headers.get("ETag");
    setValues(original);
  }

  async function save(event) {
    event.preventDefault();
    clearErrors();
    const all = values();
    let body = all;
    if (id) {
      body = {};
      for (const [key, value] of Object.entries(all)) {
        const before = key === "tags" ? original.tags : original[key] ?? (typeof value === "boolean" ? false : null);
        if (JSON.stringify(before) !== JSON.stringify(value)) body[key] = value;
      }
      if (!Object.keys(body).length) {
        location.hash = `#/contacts/${id}`;
        return;
      }
    }
    submit.disabled = true;
    try {
      const response = id
        ? await api(`/api/contacts/${id}`, { method: "PATCH", body, headers: etag ? { "If-Match": etag } : {} })
        : await api("/api/contacts", { method: "POST", body });
      toast(id ? "Saved." : "Contact created.");
      location.hash = `#/contacts/${response.data.id}`;
    } catch (exc) {
      showError(exc);
    } finally {
      submit.disabled = false;
    }
  }

  function showError(exc) {
    if (!(exc instanceof ApiError)) {
      formError.textContent = String(exc);
      return;
    }
    if (exc.status === 409 && exc.problem.existing_id) {
      errors.email.textContent = "Another contact has this email.";
      inputs.email.setAttribute("aria-invalid", "true");
      fill(formError, exc.message, " ", h("a", { href: `#/contacts/${exc.problem.existing_id}`, id: "existing-contact" }, "Open the existing contact"));
      inputs.email.focus();
      return;
    }
    if (exc.status === 412) {
      fill(
        formError,
        "This contact was changed elsewhere since you opened it. ",
        h(
          "button",
          {
            type: "button",
            id: "reload-contact",
            onclick: async () => {
              clearErrors();
              await loadOriginal();
              toast("Reloaded: the latest version is shown; make your change again.");
            },
          },
          "Reload it",
        ),
        " (your unsaved changes are lost).",
      );
      return;
    }
    const fields = exc.fieldErrors;
    let first = null;
    for (const [field, message] of Object.entries(fields)) {
      if (errors[field]) {
        errors[field].textContent = message;
        inputs[field].setAttribute("aria-invalid", "true");
        first = first || inputs[field];
      }
    }
    if (first) first.focus();
    const unplaced = Object.keys(fields).filter((f) => !errors[f]);
    if (!first || unplaced.length) formError.textContent = exc.message;
  }

  fill(
    root,
    h("p", {}, h("a", { href: id ? `#/contacts/${id}` : "#/contacts" }, id ? "← Back to the contact" : "← All contacts")),
    h(
      "section",
      { "aria-labelledby": "form-title" },
      h("h1", { id: "form-title" }, id ? "Edit contact" : "New contact"),
      h("form", { class: "contact-form", id: "contact-form", novalidate: true, onsubmit: save }, rows, formError, h("div", { class: "actions" }, submit, h("a", { class: "button", href: id ? `#/contacts/${id}` : "#/contacts" }, "Cancel"))),
    ),
  );
  if (id) {
    loadOriginal().catch((exc) => {
      formError.textContent = exc.message;
    });
  } else {
    inputs.kind.value = "contact";
  }
  inputs.email.focus();
  return null;
}

