// The gateway's REST API with the person's bearer token, and the errors it answers
// (application/problem+json), which are shown to the person, never swallowed.

import { h } from "./dom.js";

const TOKEN_KEY = "agentry.token";

export const session = {
  token: sessionStorage.getItem(TOKEN_KEY),
  me: null,
};

export function signIn(token) {
  session.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function signOut() {
  session.token = null;
  session.me = null;
  sessionStorage.removeItem(TOKEN_KEY);
}

/** Whether the policy lets the signed-in role use a route, as rbac.toml names it:
 * can("POST", "/v1/runs/{run_id}/cancel"). */
export function can(method, route) {
  return Boolean(session.me && session.me.allowed.includes(`${method} ${route}`));
}

export class ApiError extends Error {
  constructor(status, title, detail, problem) {
    super(status ? `${status} ${title}: ${detail}` : detail);
    this.status = status;
    this.title = title;
    this.detail = detail;
    this.problem = problem;
  }
}

function query(params) {
  const kept = Object.entries(params || {}).filter(([, v]) => v !== undefined && v !== null && v !== "");
  return kept.length ? `?${new URLSearchParams(kept)}` : "";
}

/** Calls the API; answers the JSON body, raises ApiError with the problem's detail. */
export async function api(method, path, { params, body } = {}) {
  const headers = { Accept: "application/json" };
  if (session.token) headers.Authorization = `Bearer ${session.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path + query(params), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, "", `the gateway did not answer ${method} ${path}: ${err.message}`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    let detail = (data && data.detail) || text || response.statusText;
    // A schema mismatch (422) names the fields it refused.
    if (data && Array.isArray(data.errors) && data.errors.length) {
      detail += ` (${data.errors.map((e) => `${(e.loc || []).join(".")}: ${e.msg}`).join("; ")})`;
    }
    throw new ApiError(response.status, (data && data.title) || response.statusText, detail, data);
  }
  return data;
}

/** Every page of a list route, up to `limit` items. */
export async function listAll(path, params = {}, limit = 500) {
  const items = [];
  let token = "";
  do {
    const page = await api("GET", path, { params: { ...params, page_token: token } });
    items.push(...page.items);
    token = page.next_page_token || "";
  } while (token && items.length < limit);
  return items;
}

/** Shows an error at the top of the page until dismissed. */
export function showError(err, context = "") {
  const text = err instanceof Error ? err.message : String(err);
  const box = document.getElementById("alerts");
  const alert = h(
    "div",
    { class: "alert", role: "alert" },
    h("span", {}, context ? `${context}: ${text}` : text),
    h("button", { type: "button", class: "dismiss", "aria-label": "dismiss", onclick: () => alert.remove() }, "×"),
  );
  box.append(alert);
  // The newest few stay: a burst of failures does not bury the page.
  while (box.children.length > 5) box.firstElementChild.remove();
  return alert;
}

/** Shows a transient confirmation. */
export function showNotice(text) {
  const box = document.getElementById("alerts");
  const notice = h("div", { class: "notice", role: "status" }, text);
  box.append(notice);
  setTimeout(() => notice.remove(), 6000);
  return notice;
}
