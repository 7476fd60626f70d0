// The public API with a bearer token. The token lives in sessionStorage (gone when the tab
// closes) and is sent only in the Authorization header, never in a URL.

const TOKEN_KEY = "audience-sync.token";
const ADMIN_KEY = "audience-sync.admin-token";

export const tokens = {
  get user() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  get admin() {
    return sessionStorage.getItem(ADMIN_KEY);
  },
  setUser(value) {
    sessionStorage.setItem(TOKEN_KEY, value.trim());
  },
  setAdmin(value) {
    sessionStorage.setItem(ADMIN_KEY, value.trim());
  },
  clear() {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(ADMIN_KEY);
  },
  clearAdmin() {
    sessionStorage.removeItem(ADMIN_KEY);
  },
};

/** The claims of a JWT, for display only (the service is the one that verifies it). */
export function claims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
  } catch {
    return null;
  }
}

/** A problem+json answer (or any non-2xx) as an exception. */
export class ApiError extends Error {
  constructor(status, problem, headers) {
    const body = problem && typeof problem === "object" ? problem : { detail: String(problem || "") };
    super(body.detail || body.title || `HTTP ${status}`);
    this.status = status;
    this.problem = body;
    this.headers = headers;
  }

  /** Field → message, from a 422's `errors[]`. */
  get fieldErrors() {
    const out = {};
    for (const item of this.problem.errors || []) {
      const field = String(item.field || "").split(".")[0];
      if (field && !(field in out)) out[field] = item.message;
    }
    return out;
  }
}

function authHeaders(token) {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/**
 * Call the API: JSON in and out; throws ApiError for every non-2xx answer.
 * `token`: "user" (default), "admin" or "none".
 */
export async function api(path, { method = "GET", body, headers = {}, token = "user" } = {}) {
  const bearer = token === "admin" ? tokens.admin : token === "user" ? tokens.user : null;
  const init = { method, headers: { Accept: "application/json", ...authHeaders(bearer), ...headers } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, { detail: "The service cannot be reached. Is it running?" }, new Headers());
  }
  const type = response.headers.get("content-type") || "";
  let data = null;
  if (response.status !== 204) {
    data = type.includes("json") ? await response.json() : await response.text();
  }
  if (!response.ok) {
    const error = new ApiError(response.status, data, response.headers);
    if (response.status === 401) window.dispatchEvent(new CustomEvent("auth-required", { detail: token }));
    throw error;
  }
  return { status: response.status, data, headers: response.headers };
}

/**
 * Upload a file with progress (fetch reports none for uploads): `onProgress(fraction)`.
 * Resolves with the JSON answer; rejects with ApiError.
 */
export function upload(path, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    xhr.setRequestHeader("Accept", "application/json");
    if (tokens.user) xhr.setRequestHeader("Authorization", `Bearer ${tokens.user}`);
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    });
    xhr.addEventListener("load", () => {
      let data = xhr.responseText;
      try {
        data = JSON.parse(xhr.responseText);
      } catch {
        /* not JSON: keep the text */
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(data);
      else reject(new ApiError(xhr.status, data, new Headers()));
    });
    xhr.addEventListener("error", () =>
      reject(new ApiError(0, { detail: "The upload failed: the service cannot be reached." }, new Headers())),
    );
    const form = new FormData();
    form.append("file", file, file.name || "contacts.csv");
    xhr.send(form);
  });
}
