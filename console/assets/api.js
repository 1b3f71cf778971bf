// The console's JSON API (docs/console.md): every call carries the
// anti-forgery header and, when the operator gave one, the bearer token,
// which is kept in this tab's sessionStorage only.

const TOKEN_KEY = "vane.console.token";

/** An answer other than 2xx: the HTTP status and the server's code and message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) {
    sessionStorage.setItem(TOKEN_KEY, value);
  } else {
    sessionStorage.removeItem(TOKEN_KEY);
  }
}

async function call(method, path, body) {
  const headers = { "x-vane-console": "1", "accept": "application/json" };
  const t = token();
  if (t) {
    headers["authorization"] = "Bearer " + t;
  }
  const init = { method, headers, cache: "no-store", credentials: "same-origin" };
  if (body !== undefined) {
    headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch("api/" + path, init);
  } catch (e) {
    throw new ApiError(0, "unavailable", "the control server cannot be reached: " + e.message);
  }
  let json = null;
  try {
    json = await response.json();
  } catch (_) {
    json = null;
  }
  if (!response.ok) {
    const code = json && json.code ? json.code : "http_" + response.status;
    const message = json && json.message ? json.message : response.statusText;
    throw new ApiError(response.status, code, message);
  }
  return json;
}

const g = (group) => "groups/" + encodeURIComponent(group);

export const api = {
  session: () => call("GET", "session"),
  groups: () => call("GET", "groups"),
  history: (group) => call("GET", g(group) + "/history"),
  diff: (group, from, to) => call("GET", `${g(group)}/diff/${from}/${to}`),
  agents: (group, selector) =>
    call("GET", g(group) + "/agents" + (selector ? "?selector=" + encodeURIComponent(selector) : "")),
  rollout: (group) => call("GET", g(group) + "/rollout"),
  audit: (group) => call("GET", "audit?limit=200" + (group ? "&group=" + encodeURIComponent(group) : "")),
  rollback: (group, toVersion, message, expectedVersion) =>
    call("POST", g(group) + "/rollback", {
      to_version: toVersion,
      message,
      expected_version: expectedVersion,
    }),
  rolloutAction: (group, action, message) =>
    call("POST", `${g(group)}/rollout/${action}`, { message }),
};
