// Operators (admin token): every connection's health, its parked and rejected rows, retry.
import { api, tokens } from "./api.js";
import { ago, duration, fill, h, toast, when } from "./dom.js";
import { signIn } from "./signin.js";

export function mount(root, ctx) {
  if (!tokens.admin) {
    signIn(root, ctx, { admin: true, onDone: () => mount(root, ctx) });
    return null;
  }
  const totals = h("div", { class: "totals", id: "ops-totals" });
  const body = h("div", { class: "ops-connections", id: "ops-connections" });
  const error = h("p", { class: "error", role: "alert" });
  const updated = h("p", { class: "muted small", role: "status" });
  const open = new Set(); // connection ids whose rows are shown
  fill(
    root,
    h(
      "section",
      { "aria-labelledby": "ops-title" },
      h(
        "div",
        { class: "title-row" },
        h("h1", { id: "ops-title" }, "Operators"),
        h(
          "div",
          { class: "actions" },
          h("button", { type: "button", onclick: () => load() }, "Refresh"),
          h(
            "button",
            {
              type: "button",
              class: "link",
              onclick: () => {
                tokens.clearAdmin();
                mount(root, ctx);
              },
            },
            "Forget the admin token",
          ),
        ),
      ),
      error,
      totals,
      body,
      updated,
    ),
  );

  const stat = (label, value, id) => h("div", { class: "stat", id }, h("span", { class: "value" }, String(value)), h("span", { class: "label" }, label));

  async function load() {
    try {
      const { data } = await api("/api/admin/sync-status", { token: "admin" });
      error.textContent = "";
      const t = data.totals;
      fill(
        totals,
        stat("connections", t.connections, "total-connections"),
        stat("queued", t.queue.ready + t.queue.leased, "total-queued"),
        stat("oldest pending", duration(t.oldest_ready_age_seconds), "total-oldest"),
        stat("parked", t.parked, "total-parked"),
        stat("rejected", t.rejected, "total-rejected"),
        stat("by status", Object.entries(t.by_status).map(([k, v]) => `${k} ${v}`).join(" · ") || "—", "total-status"),
      );
      fill(
        body,
        data.connections.length
          ? h(
              "table",
              { class: "ops", id: "ops-table" },
              h(
                "thead",
                {},
                h(
                  "tr",
                  {},
                  ["Owner", "Provider · audience", "Status", "Queue", "Oldest pending", "Parked", "Rejected", "Last sync", "Last error", ""].map((x) =>
                    h("th", { scope: "col" }, x),
                  ),
                ),
              ),
              h("tbody", {}, data.connections.map((c) => rowsFor(c))),
            )
          : h("p", { class: "muted" }, "No connections yet."),
      );
      updated.textContent = `Updated ${when(data.generated_at)}.`;
    } catch (exc) {
      error.textContent = exc.message;
    }
  }

  function rowsFor(c) {
    const audience = c.audience ? c.audience.name || c.audience.id : "no audience";
    const retry = h(
      "button",
      { type: "button", class: "retry", disabled: c.parked === 0, onclick: () => retryParked(c) },
      c.parked ? `Retry ${c.parked} parked` : "Nothing parked",
    );
    const toggle = h(
      "button",
      {
        type: "button",
        class: "link show-rows",
        "aria-expanded": String(open.has(c.connection_id)),
        disabled: c.parked === 0 && c.rejected === 0,
        onclick: () => {
          if (open.has(c.connection_id)) open.delete(c.connection_id);
          else open.add(c.connection_id);
          load();
        },
      },
      open.has(c.connection_id) ? "Hide rows" : "Show rows",
    );
    const main = h(
      "tr",
      { dataset: { connection: c.connection_id, status: c.status } },
      h("td", { "data-label": "Owner" }, c.owner_id),
      h("td", { "data-label": "Provider" }, `${ctx.providerName(c.provider)} · ${audience}`),
      h(
        "td",
        { "data-label": "Status" },
        h("span", { class: `badge ${c.status === "active" ? "ok" : c.status === "error" ? "bad" : "warn"}` }, c.status),
        c.status_reason ? h("span", { class: "muted small" }, ` ${c.status_reason}`) : null,
        h("span", { class: "muted small" }, ` since ${ago(c.status_since)}`),
      ),
      h("td", { "data-label": "Queue", class: "queue" }, `${c.queue.ready} ready · ${c.queue.leased} in flight`),
      h("td", { "data-label": "Oldest pending", class: "oldest" }, duration(c.oldest_ready_age_seconds)),
      h("td", { "data-label": "Parked", class: "parked" }, String(c.parked)),
      h("td", { "data-label": "Rejected", class: "rejected" }, String(c.rejected)),
      h("td", { "data-label": "Last sync" }, ago(c.last_synced_at)),
      h("td", { "data-label": "Last error", class: "last-error" }, c.last_error ? `${c.last_error} (${ago(c.last_error_at)})` : "—"),
      h("td", { class: "row-actions" }, retry, " ", toggle),
    );
    if (!open.has(c.connection_id)) return main;
    const detail = h("td", { colspan: 10 }, h("p", { class: "muted" }, "Loading…"));
    loadRows(c, detail);
    return [main, h("tr", { class: "problem-rows" }, detail)];
  }

  async function loadRows(c, cell) {
    try {
      const { data } = await api(`/api/admin/connections/${c.connection_id}/failures`, { token: "admin" });
      const table = (title, id, headers, items, cells) =>
        h(
          "div",
          { class: "problem-table" },
          h("h3", {}, title),
          items.length
            ? h(
                "table",
                { id },
                h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
                h("tbody", {}, items.map((item) => h("tr", {}, cells(item).map((v) => h("td", {}, v))))),
              )
            : h("p", { class: "muted" }, "None."),
        );
      fill(
        cell,
        table("Parked (gave up after the retries; Retry sends them again)", `parked-${c.connection_id}`, ["Email", "Attempts", "Error", "Queued"], data.parked, (r) => [
          r.email_key,
          String(r.attempts),
          r.last_error || "—",
          ago(r.enqueued_at),
        ]),
        table("Rejected (the provider refused them; fixed by editing the contact)", `rejected-${c.connection_id}`, ["Email", "Kind", "Error"], data.rejected, (r) => [
          r.contact_id ? h("a", { href: `#/contacts/${r.contact_id}` }, r.email_key) : r.email_key,
          r.error_kind || "—",
          r.error || "—",
        ]),
      );
    } catch (exc) {
      fill(cell, h("p", { class: "error" }, exc.message));
    }
  }

  async function retryParked(c) {
    try {
      const { data } = await api(`/api/admin/connections/${c.connection_id}/retry`, { method: "POST", token: "admin" });
      toast(
        data.requeued
          ? `${data.requeued} parked row${data.requeued === 1 ? "" : "s"} sent to the queue again.` + (data.notice ? ` ${data.notice}` : "")
          : "Nothing was parked.",
      );
    } catch (exc) {
      error.textContent = exc.message;
    }
    load();
  }

  load();
  // Not while a keyboard user is inside the table: a rebuild would take their focus away.
  const timer = setInterval(() => {
    if (!body.contains(document.activeElement)) load();
  }, 5000);
  return () => clearInterval(timer);
}
