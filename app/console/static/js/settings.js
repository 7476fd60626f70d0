// Settings → Email marketing: every provider of GET /api/integrations, connected or not.
import { api } from "./api.js";
import { ago, clock, confirmDialog, fill, h, toast } from "./dom.js";

// How each provider connects, when GET /api/integrations does not say (DESIGN §9): an OAuth
// popup, a credentials form, or both. Paths are the generic /api/integrations/{provider}/…
const CONNECT = {
  mailchimp: {
    oauth: true,
    // The documented alias of /credentials for Mailchimp, present on every version.
    credentialsPath: "api-key",
    credentialsTitle: "Use an API key instead",
    fields: [{ name: "api_key", label: "API key", type: "password", placeholder: "0123456789abcdef0123456789abcdef-us1" }],
  },
  constantcontact: { oauth: true, fields: [] },
  activecampaign: {
    oauth: false,
    fields: [
      { name: "api_url", label: "API URL", type: "url", placeholder: "https://youraccount.api-us1.com" },
      { name: "api_key", label: "API token", type: "password" },
    ],
  },
  mautic: {
    oauth: false,
    fields: [
      { name: "base_url", label: "Mautic URL", type: "url", placeholder: "https://mautic.example.com" },
      { name: "client_id", label: "Client id" },
      { name: "client_secret", label: "Client secret", type: "password" },
    ],
  },
};

/** How `item` connects: `connect[]` of GET /api/integrations when the service says it
 * (`[{kind: "oauth"}, {kind: "credentials", fields: [{name, label, kind, help}]}]`), else the
 * table above (services from before the generic routes). */
export function howToConnect(item) {
  const known = CONNECT[item.provider] || { oauth: false, fields: [] };
  if (!Array.isArray(item.connect) || !item.connect.length) return known;
  const form = item.connect.find((m) => m.kind === "credentials");
  const types = { secret: "password", url: "url", text: "text" };
  return {
    oauth: item.connect.some((m) => m.kind === "oauth"),
    credentialsTitle: known.credentialsTitle,
    credentialsPath: "credentials",
    fields: form
      ? (form.fields || []).map((f) => ({ name: f.name, label: f.label || f.name, type: types[f.kind] || "text", help: f.help || "" }))
      : [],
  };
}

const COUNT_LABELS = [
  ["remote_total", "members in the audience"],
  ["matched", "already equal (adopted, nothing sent)"],
  ["to_push", "contacts queued to send"],
  ["remote_only", "members with no contact here (left alone)"],
  ["unsubscribed_imported", "unsubscribes brought back"],
  ["cleaned_imported", "bounces brought back"],
  ["subscribed_imported", "subscriptions brought back"],
  ["unsubscribes_pushed", "unsubscribes sent"],
  ["reoptins_pushed", "re-subscriptions sent"],
  ["consent_conflicts", "consent conflicts left alone"],
  ["skipped_changed_meanwhile", "changed meanwhile (their own change syncs them)"],
];

const RETRY_KEY = (provider) => `audience-sync.sync-now-after.${provider}`;

export function mount(root, ctx) {
  const state = new Map(); // provider → {item, run, cards refs, …}
  const timers = [];
  const list = h("div", { class: "providers", id: "providers" });
  const error = h("p", { class: "error", role: "alert" });
  fill(
    root,
    h(
      "section",
      { "aria-labelledby": "settings-title" },
      h("h1", { id: "settings-title" }, "Settings"),
      h("h2", { class: "section-title" }, "Email marketing"),
      h(
        "p",
        { class: "muted" },
        "Connect an email-marketing account: contacts then sync to it automatically, and unsubscribes there come back here.",
      ),
      error,
      list,
    ),
  );

  const onMessage = (event) => {
    // The callback page posts to this origin only; anything else is not ours.
    if (event.origin !== location.origin) return;
    const type = event.data && event.data.type;
    if (typeof type !== "string" || !type.startsWith("audience-sync:")) return;
    const provider = type.slice("audience-sync:".length);
    const entry = state.get(provider) || state.get(provider.replace(/-/g, "_"));
    if (event.data.ok) {
      toast(`${ctx.providerName(provider)} connected.`);
      if (entry) entry.formError = null;
    } else if (entry) {
      entry.formError = event.data.detail || "The account was not connected.";
    }
    refresh();
  };
  window.addEventListener("message", onMessage);

  async function refresh() {
    try {
      const { data } = await api("/api/integrations");
      error.textContent = "";
      ctx.showNotices(data.items);
      for (const item of data.items) {
        let entry = state.get(item.provider);
        if (!entry) {
          entry = { card: h("article", { class: "provider card", id: `provider-${item.provider}` }) };
          state.set(item.provider, entry);
          list.append(entry.card);
        }
        entry.item = item;
        if (item.last_run && (!entry.run || entry.run.id === item.last_run.id || isLive(item.last_run))) {
          entry.run = item.last_run;
        }
        if (!item.connected) entry.run = null;
        if (entry.run && isLive(entry.run)) pollRun(item.provider, entry.run.id);
        render(item.provider);
      }
    } catch (exc) {
      error.textContent = exc.message;
    }
  }

  function isLive(run) {
    return run && (run.state === "queued" || run.state === "running");
  }

  function shapeOf(entry) {
    const i = entry.item;
    return JSON.stringify([
      i.available,
      i.connected,
      i.status,
      i.audience && i.audience.id,
      i.notice,
      entry.picking,
      entry.formError,
      entry.run && [entry.run.id, entry.run.state],
      Boolean(entry.audiences),
    ]);
  }

  function render(provider) {
    const entry = state.get(provider);
    const shape = shapeOf(entry);
    if (shape !== entry.shape) {
      entry.shape = shape;
      build(provider, entry);
    }
    tick(entry);
  }

  /** Rebuild a provider's card (only when what it shows changed: typing is not disturbed). */
  function build(provider, entry) {
    const item = entry.item;
    const name = item.name || ctx.providerName(provider);
    const card = entry.card;
    card.dataset.status = item.connected ? item.status || "" : item.available ? "disconnected" : "unavailable";
    entry.refs = {};
    const badge = !item.available
      ? ["Not available here", "muted"]
      : !item.connected
        ? ["Not connected", "muted"]
        : { active: ["Connected", "ok"], needs_audience: ["Choose an audience", "warn"], paused: ["Paused", "warn"], error: ["Needs reconnecting", "bad"] }[item.status] || [item.status, "muted"];
    const head = h("header", {}, h("h3", {}, name), h("span", { class: `badge ${badge[1]}` }, badge[0]));
    if (!item.available) {
      fill(card, head, h("p", { class: "muted" }, `${name} cannot be connected on this deployment yet.`));
      card.setAttribute("aria-disabled", "true");
      return;
    }
    card.removeAttribute("aria-disabled");
    const formError = h("p", { class: "error", role: "alert" }, entry.formError || "");
    if (!item.connected) {
      fill(card, head, h("p", {}, `Connect ${name} to keep an audience mirrored to your contacts.`), connectControls(provider, entry, name), formError);
      return;
    }
    const lastSynced = h("time", { class: "last-synced" });
    entry.refs.lastSynced = lastSynced;
    const statusLine = h(
      "p",
      { class: "status-line" },
      h("span", { class: `dot ${badge[1]}`, "aria-hidden": "true" }, "●"),
      " ",
      item.audience
        ? ["Connected to ", h("strong", { class: "audience-name" }, `“${item.audience.name || item.audience.id}”`)]
        : `Connected to ${name}${item.account_name ? ` (${item.account_name})` : ""}`,
      item.audience ? [" · Last synced: ", lastSynced] : null,
    );
    const counts = h("p", { class: "muted counts" });
    entry.refs.counts = counts;
    const children = [head, statusLine, counts];
    // Several audiences (mappings): each with the rule that chooses its contacts.
    if (item.mappings && item.mappings.length > 1) children.push(mappingList(item.mappings));
    if (item.status === "error") {
      const how = howToConnect(item);
      children.push(
        how.oauth
          ? h("p", {}, h("button", { type: "button", class: "primary reconnect", onclick: () => connect(provider, entry, name) }, `Reconnect ${name}`))
          : h("details", { class: "credentials", open: true }, h("summary", {}, `Reconnect ${name}`), credentialsForm(provider, entry, name, how)),
      );
    }
    if (item.status === "needs_audience" || entry.picking) {
      children.push(audiencePicker(provider, entry, name));
    }
    if (entry.run) children.push(runPanel(provider, entry, name));
    const syncButton = h(
      "button",
      { type: "button", class: "primary sync-now", onclick: () => syncNow(provider, entry), disabled: !item.audience },
      "Sync Now",
    );
    const syncHint = h("span", { class: "muted sync-hint", id: `sync-hint-${provider}`, "aria-live": "polite" });
    syncButton.setAttribute("aria-describedby", syncHint.id);
    entry.refs.syncButton = syncButton;
    entry.refs.syncHint = syncHint;
    const actions = h(
      "div",
      { class: "actions" },
      syncButton,
      item.audience && !entry.picking
        ? h("button", { type: "button", class: "change-audience", onclick: () => { entry.picking = true; render(provider); } }, `Change ${item.audience_noun || "audience"}`)
        : null,
      h("button", { type: "button", class: "danger", onclick: () => disconnect(provider, entry, name) }, "Disconnect"),
      syncHint,
    );
    children.push(actions, formError, h("p", { class: "muted small" }, "Contacts sync automatically; Sync Now compares everything once (at most once an hour)."));
    fill(card, ...children);
  }

  /** The connection's audiences and their rules (docs/audiences.md). */
  function mappingList(mappings) {
    const ruleText = (rule) => {
      if (rule.all) return "every contact";
      const parts = [];
      if (rule.kinds) parts.push(`kind: ${rule.kinds.join(" or ")}`);
      if (rule.tags_any) parts.push(`tagged ${rule.tags_any.join(" or ")}`);
      if (rule.tags_all) parts.push(`tagged ${rule.tags_all.join(" and ")}`);
      return parts.join("; ");
    };
    return h(
      "ul",
      { class: "mappings" },
      mappings.map((m) =>
        h(
          "li",
          { class: "mapping", "data-mapping": m.id },
          h("strong", {}, m.audience.name || m.audience.id),
          ` — ${ruleText(m.rule)} · ${m.members} member${m.members === 1 ? "" : "s"}`,
          m.pending ? ` · ${m.pending} waiting` : null,
          m.failed ? ` · ${m.failed} could not be sent` : null,
        ),
      ),
    );
  }

  /** Update what changes with time alone: "… ago", counts, the Sync Now countdown. */
  function tick(entry) {
    const item = entry.item;
    if (!item || !item.connected || !entry.refs) return;
    const { lastSynced, counts, syncButton, syncHint } = entry.refs;
    if (lastSynced) {
      lastSynced.textContent = item.last_synced_at ? ago(item.last_synced_at) : "not yet";
      if (item.last_synced_at) lastSynced.dateTime = item.last_synced_at;
    }
    if (counts) {
      const parts = [];
      parts.push(item.pending ? `${item.pending} contact${item.pending === 1 ? "" : "s"} waiting to sync` : "Nothing waiting to sync");
      if (item.failed) parts.push(`${item.failed} could not be sent`);
      counts.textContent = parts.join(" · ");
    }
    if (syncButton) {
      const until = Number(sessionStorage.getItem(RETRY_KEY(item.provider)) || 0);
      const left = (until - Date.now()) / 1000;
      const running = entry.run && isLive(entry.run);
      if (left > 0) {
        syncButton.disabled = true;
        syncButton.textContent = `Sync Now (in ${clock(left)})`;
        syncHint.textContent = `Sync Now runs once an hour; available again in ${clock(left)}.`;
      } else {
        if (until) sessionStorage.removeItem(RETRY_KEY(item.provider));
        syncButton.disabled = !item.audience || running;
        syncButton.textContent = running ? "Syncing…" : "Sync Now";
        syncHint.textContent = "";
      }
    }
  }

  function connectControls(provider, entry, name) {
    const how = howToConnect(entry.item);
    const parts = [];
    if (how.oauth) {
      parts.push(
        h("p", {}, h("button", { type: "button", class: "primary connect", onclick: () => connect(provider, entry, name) }, `Connect ${name}`)),
      );
    }
    if (how.fields.length) {
      const form = credentialsForm(provider, entry, name, how);
      parts.push(how.oauth ? h("details", { class: "credentials" }, h("summary", {}, how.credentialsTitle || "Connect with credentials"), form) : form);
    }
    return parts;
  }

  function credentialsForm(provider, entry, name, how) {
    const inputs = {};
    const errors = {};
    const rows = how.fields.map((field) => {
      const id = `${provider}-${field.name}`;
      const input = h("input", {
        id,
        name: field.name,
        type: field.type || "text",
        placeholder: field.placeholder || "",
        required: true,
        autocomplete: "off",
        "aria-describedby": `${id}-error`,
      });
      inputs[field.name] = input;
      errors[field.name] = h("span", { class: "field-error", id: `${id}-error` });
      const help = field.help ? h("span", { class: "muted small", id: `${id}-help` }, field.help) : null;
      if (help) input.setAttribute("aria-describedby", `${id}-error ${id}-help`);
      return h("div", { class: "field" }, h("label", { for: id }, field.label), input, help, errors[field.name]);
    });
    const formError = h("p", { class: "error", role: "alert" });
    const submit = h("button", { type: "submit", class: "primary" }, `Connect ${name}`);
    return h(
      "form",
      {
        class: "credentials-form",
        novalidate: true,
        onsubmit: async (event) => {
          event.preventDefault();
          formError.textContent = "";
          for (const span of Object.values(errors)) span.textContent = "";
          for (const input of Object.values(inputs)) input.removeAttribute("aria-invalid");
          const body = Object.fromEntries(Object.entries(inputs).map(([k, v]) => [k, v.value.trim()]));
          const missing = Object.entries(body).filter(([, v]) => !v);
          if (missing.length) {
            for (const [k] of missing) {
              errors[k].textContent = "Required.";
              inputs[k].setAttribute("aria-invalid", "true");
            }
            inputs[missing[0][0]].focus();
            return;
          }
          submit.disabled = true;
          try {
            await api(`/api/integrations/${provider}/${how.credentialsPath || "credentials"}`, { method: "POST", body });
            toast(`${name} connected.`);
            entry.formError = null;
            await refresh();
          } catch (exc) {
            const fields = exc.fieldErrors ? exc.fieldErrors : {};
            let placed = false;
            for (const [field, message] of Object.entries(fields)) {
              if (errors[field]) {
                errors[field].textContent = message;
                inputs[field].setAttribute("aria-invalid", "true");
                placed = true;
              }
            }
            formError.textContent = placed && exc.status === 422 && exc.problem.errors ? "" : exc.message;
            if (!placed && how.fields.length === 1) {
              // One field (an API key): the provider's refusal is about that field.
              const only = how.fields[0].name;
              errors[only].textContent = exc.message;
              inputs[only].setAttribute("aria-invalid", "true");
              formError.textContent = "";
            }
          } finally {
            submit.disabled = false;
          }
        },
      },
      rows,
      formError,
      submit,
    );
  }

  async function connect(provider, entry, name) {
    // Opened in the click itself (a popup opened after an await is blocked), aimed later.
    const popup = window.open("", `${provider}-connect`, "width=520,height=720");
    entry.formError = null;
    try {
      const { data } = await api(`/api/integrations/${provider}/connect`, { method: "POST" });
      if (!popup || popup.closed) {
        entry.formError = `Allow pop-ups for this page to connect ${name}.`;
        render(provider);
        return;
      }
      popup.location.href = data.authorize_url;
      // The message is a convenience; the status is the truth: refresh when the popup closes.
      const watch = setInterval(() => {
        if (popup.closed) {
          clearInterval(watch);
          refresh();
        }
      }, 500);
      timers.push(() => clearInterval(watch));
    } catch (exc) {
      if (popup) popup.close();
      entry.formError = exc.message;
      render(provider);
    }
  }

  function audiencePicker(provider, entry, name) {
    const box = h("div", { class: "audience-picker" });
    const select = h("select", { id: `${provider}-audience`, name: "audience" });
    const error = h("p", { class: "error", role: "alert" });
    const choose = h("button", { type: "submit", class: "primary" }, "Use this audience");
    const cancel = entry.item.audience
      ? h("button", { type: "button", onclick: () => { entry.picking = false; entry.audiences = null; render(provider); } }, "Cancel")
      : null;
    const form = h(
      "form",
      {
        onsubmit: async (event) => {
          event.preventDefault();
          choose.disabled = true;
          error.textContent = "";
          try {
            await api(`/api/integrations/${provider}/audience`, { method: "PUT", body: { audience_id: select.value } });
            entry.picking = false;
            entry.audiences = null;
            toast("Audience chosen: a full sync has started.");
            await refresh();
          } catch (exc) {
            error.textContent = exc.message;
            choose.disabled = false;
          }
        },
      },
      h("label", { for: select.id }, `Which ${name} ${entry.item.audience_noun || "audience"} should your contacts sync to?`),
      select,
      entry.item.audience ? h("p", { class: "muted small" }, "Choosing another audience starts a new mirror: a full sync runs at once.") : null,
      h("div", { class: "actions" }, choose, cancel),
      error,
    );
    box.append(form);
    const load = async () => {
      try {
        const { data } = await api(`/api/integrations/${provider}/audiences`);
        fill(
          select,
          data.map((a) =>
            h("option", { value: a.id, selected: entry.item.audience && entry.item.audience.id === a.id }, `${a.name} (${a.member_count} members)`),
          ),
        );
      } catch (exc) {
        error.textContent = exc.message;
      }
    };
    load();
    return box;
  }

  function runPanel(provider, entry, name) {
    const run = entry.run;
    const live = isLive(run);
    const progress = run.progress || {};
    const pages = progress.remote_total ? Math.max(1, Math.ceil(progress.remote_total / 1000)) : 0;
    const done = progress.pages_done || 0;
    const label = {
      sync_now: "Sync Now",
      initial: "First sync",
      audience_change: "Full sync after the audience change",
      pull: "Scheduled check",
    }[run.kind] || "Sync";
    const panel = h("div", { class: "run", id: `run-${provider}`, dataset: { state: run.state } });
    if (live) {
      const bar = h("progress", { max: pages || 1, "aria-label": `${label} progress` });
      if (pages) bar.value = Math.min(done, pages);
      panel.append(
        h("p", {}, h("strong", {}, `${label}: `), run.state === "queued" ? "waiting to start…" : pages ? `reading page ${Math.min(done + 1, pages)} of ${pages}…` : "starting…"),
        bar,
      );
      return panel;
    }
    const summary = {
      done: `${label} finished ${ago(run.finished_at)}.`,
      failed: `${label} failed: ${run.error || "unknown error"}.`,
      cancelled: `${label} was cancelled.`,
    }[run.state];
    const counts = run.counts || {};
    panel.append(
      h("p", {}, h("strong", { class: "run-summary" }, summary)),
      run.state === "done"
        ? h(
            "ul",
            { class: "run-counts" },
            COUNT_LABELS.filter(([key]) => key in counts && (counts[key] || ["remote_total", "matched", "to_push"].includes(key))).map(([key, text]) =>
              h("li", { dataset: { count: key } }, h("strong", {}, String(counts[key])), ` ${text}`),
            ),
          )
        : null,
    );
    return panel;
  }

  const polling = new Set();
  async function pollRun(provider, runId) {
    if (polling.has(runId)) return;
    polling.add(runId);
    let alive = true;
    timers.push(() => {
      alive = false;
    });
    while (alive) {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      if (!alive) break;
      const entry = state.get(provider);
      try {
        const { data } = await api(`/api/integrations/${provider}/sync/${runId}`);
        if (!entry.run || entry.run.id === runId) entry.run = data;
        render(provider);
        if (!isLive(data)) {
          refresh();
          break;
        }
      } catch {
        break;
      }
    }
    polling.delete(runId);
  }

  async function syncNow(provider, entry) {
    entry.formError = null;
    try {
      const { data } = await api(`/api/integrations/${provider}/sync`, { method: "POST" });
      entry.run = { id: data.run_id, state: data.state, kind: "sync_now", progress: {}, counts: {} };
      render(provider);
      pollRun(provider, data.run_id);
    } catch (exc) {
      if (exc.status === 429) {
        const wait = Number(exc.problem.retry_after || exc.headers.get("Retry-After") || 60);
        sessionStorage.setItem(RETRY_KEY(provider), String(Date.now() + wait * 1000));
        tick(entry);
      } else {
        entry.formError = exc.message;
        render(provider);
      }
    }
  }

  async function disconnect(provider, entry, name) {
    const yes = await confirmDialog({
      title: `Disconnect ${name}?`,
      body: [
        `Our webhook is removed from the audience and the credentials are deleted. Your contacts stay here, and the members stay in ${name}, untouched.`,
        "You can connect again later: members that still match their contacts are adopted without changes.",
      ],
      confirm: "Disconnect",
    });
    if (!yes) return;
    try {
      await api(`/api/integrations/${provider}`, { method: "DELETE" });
      sessionStorage.removeItem(RETRY_KEY(provider));
      toast(`${name} disconnected.`);
    } catch (exc) {
      entry.formError = exc.message;
    }
    entry.run = null;
    entry.picking = false;
    await refresh();
  }

  refresh();
  const every = setInterval(() => {
    for (const entry of state.values()) tick(entry);
  }, 1000);
  const again = setInterval(refresh, 10000);
  return () => {
    clearInterval(every);
    clearInterval(again);
    window.removeEventListener("message", onMessage);
    for (const stop of timers) stop();
  };
}
