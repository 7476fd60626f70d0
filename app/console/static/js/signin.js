// The token form: the demo token in development, otherwise one the user pastes.
import { claims, tokens } from "./api.js";
import { fill, h } from "./dom.js";

/** The token form: the demo token in development, otherwise one the user pastes. */
export function signIn(root, ctx, { admin = false, onDone }) {
  const label = admin ? "Admin bearer token" : "Bearer token";
  const area = h("textarea", {
    id: admin ? "admin-token-input" : "token-input",
    rows: 3,
    required: true,
    autocomplete: "off",
    spellcheck: "false",
    "aria-describedby": "token-help",
  });
  const error = h("p", { class: "error", role: "alert", id: admin ? "admin-token-error" : "token-error" });
  const check = async (value) => {
    const token = value.trim();
    if (!token) return;
    error.textContent = "";
    try {
      if (admin) {
        const body = claims(token);
        if (!body || body.role !== "admin") throw new Error("This token has no admin role.");
      }
      const probe = admin ? "/api/admin/sync-status" : "/api/integrations";
      const response = await fetch(probe, { headers: { Authorization: `Bearer ${token}`, Accept: "application/json" } });
      if (!response.ok) {
        const problem = await response.json().catch(() => ({}));
        throw new Error(problem.detail || `The service refused the token (${response.status}).`);
      }
      if (admin) tokens.setAdmin(token);
      else tokens.setUser(token);
      onDone();
    } catch (exc) {
      error.textContent = exc.message;
    }
  };
  const demo = ctx.config.demo;
  fill(
    root,
    h(
      "section",
      { class: "signin card", "aria-labelledby": "signin-title" },
      h("h1", { id: "signin-title" }, admin ? "Operators: admin token" : "Sign in"),
      h(
        "p",
        { id: "token-help" },
        admin
          ? "The operators' view needs a token whose role is admin (`audience-sync token --owner ops --admin`)."
          : "The console calls the API with a bearer token: a JWT whose subject is the owner of the contacts.",
        " It is kept in this tab's session storage and sent only in the Authorization header.",
      ),
      demo
        ? h(
            "p",
            {},
            h(
              "button",
              {
                type: "button",
                class: "primary",
                id: admin ? "use-demo-admin" : "use-demo",
                onclick: () => check(admin ? demo.admin_token : demo.token),
              },
              admin ? `Use the demo admin token` : `Use the demo token (owner “${demo.owner}”)`,
            ),
            " ",
            h("small", { class: "muted" }, "development only"),
          )
        : null,
      h(
        "form",
        {
          onsubmit: (event) => {
            event.preventDefault();
            check(area.value);
          },
        },
        h("label", { for: area.id }, label),
        area,
        error,
        h("button", { type: "submit", id: admin ? "use-admin-token" : "use-token" }, "Use this token"),
      ),
    ),
  );
}

