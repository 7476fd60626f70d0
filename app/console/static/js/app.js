// The console's shell: sign-in, navigation between views, the one calm notice.
import { api, claims, tokens } from "./api.js";
import { fill, h, toast } from "./dom.js";
import * as contacts from "./contacts.js";
import * as operators from "./operators.js";
import * as settings from "./settings.js";
import { signIn } from "./signin.js";

const VIEWS = {
  settings: { title: "Settings", module: settings, needs: "user" },
  contacts: { title: "Contacts", module: contacts, needs: "user" },
  operators: { title: "Operators", module: operators, needs: "admin" },
};

const ctx = {
  config: { demo: null, sandbox: null, environment: "" },
  providers: new Map(), // provider id → display name, from GET /api/integrations
  providerName(id) {
    return this.providers.get(id) || id.replace(/_/g, " ").replace(/\b\w/g, (c) => c.toUpperCase());
  },
  /** Show the notices of connected providers (at most one line each; usually none). */
  showNotices(items) {
    for (const item of items) this.providers.set(item.provider, item.name || this.providerName(item.provider));
    const notices = items.filter((i) => i.connected && i.notice);
    const box = document.getElementById("notice");
    if (!notices.length) {
      box.hidden = true;
      box.replaceChildren();
      return;
    }
    fill(
      box,
      notices.map((i) =>
        h("p", { dataset: { provider: i.provider } }, i.notice, " ", h("a", { href: "#/settings" }, "Email marketing settings")),
      ),
    );
    box.hidden = false;
  },
  async refreshNotices() {
    if (!tokens.user) return;
    try {
      const { data } = await api("/api/integrations");
      this.showNotices(data.items);
    } catch {
      /* the views show their own errors */
    }
  },
};

let unmount = null;

function route() {
  const [name, ...rest] = (location.hash.replace(/^#\/?/, "") || "settings").split("/");
  return { name: VIEWS[name] ? name : "settings", params: rest.map(decodeURIComponent) };
}

function renderHeader(active) {
  const nav = document.getElementById("nav");
  fill(
    nav,
    Object.entries(VIEWS).map(([name, view]) =>
      h("a", { href: `#/${name}`, "aria-current": name === active ? "page" : false }, view.title),
    ),
  );
  const who = document.getElementById("who");
  const user = tokens.user && claims(tokens.user);
  if (!user) {
    who.replaceChildren();
    return;
  }
  fill(
    who,
    h("span", {}, "Signed in as ", h("strong", {}, user.sub || "?"), user.role === "admin" ? " (admin)" : ""),
    " ",
    h(
      "button",
      {
        type: "button",
        class: "link",
        onclick: () => {
          tokens.clear();
          show();
        },
      },
      "Sign out",
    ),
  );
}

async function show() {
  if (unmount) {
    unmount();
    unmount = null;
  }
  const { name, params } = route();
  const view = VIEWS[name];
  document.title = `${view.title} · Audience Sync`;
  renderHeader(name);
  const root = document.getElementById("main");
  root.replaceChildren();
  if (!tokens.user && view.needs === "user") {
    document.getElementById("notice").hidden = true;
    signIn(root, ctx, { onDone: show });
    return;
  }
  unmount = view.module.mount(root, ctx, params) || null;
  ctx.refreshNotices();
}

async function start() {
  try {
    const { data } = await api("/api/console/config", { token: "none" });
    ctx.config = data;
  } catch {
    /* an older service without the endpoint: paste a token */
  }
  window.addEventListener("hashchange", show);
  window.addEventListener("auth-required", (event) => {
    if (event.detail === "admin") tokens.clearAdmin();
    else tokens.clear();
    toast("The token was refused (expired or invalid): sign in again.");
    show();
  });
  setInterval(() => ctx.refreshNotices(), 15000);
  show();
}

start();
