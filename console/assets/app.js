// The console's entry: who the caller is (and the sign-in form when a
// token is needed), the hash router (every view has its own URL:
// #/groups, #/groups/edge/history, #/groups/edge/agents?selector=...,
// #/groups/edge/diff/1/2, #/groups/edge/rollout, #/groups/edge/audit,
// #/audit), focus and status messages.

import { ApiError, api, setToken, token } from "./api.js";
import { h, replace } from "./dom.js";
import { renderRollout } from "./rollout.js";
import { renderAgents, renderAudit, renderDiff, renderGroups, renderHistory } from "./views.js";

const main = document.getElementById("main");
const status = document.getElementById("status");
const sessionBox = document.getElementById("session");
let stop = () => {};
let session = null;

/** Announces `text` in the status region (read by screen readers). */
function say(text, kind) {
  replace(status, h("p", { class: kind === "error" ? "error" : "ok" }, text));
}

/** Shows an API error; a 401 sends the operator to the sign-in form. */
function fail(e) {
  if (e instanceof ApiError && e.status === 401) {
    setToken("");
    session = null;
    showLogin(e.message);
    return;
  }
  say(e instanceof ApiError ? `${e.message} (${e.code})` : String(e), "error");
}

/** Runs an API call for a page; on error shows it and returns null. */
async function load(f) {
  try {
    return await f();
  } catch (e) {
    fail(e);
    return null;
  }
}

function go(hash) {
  if (location.hash === hash) {
    route();
  } else {
    location.hash = hash;
  }
}

const ctx = { say, fail, load, go };

function showSession() {
  if (!session) {
    replace(sessionBox);
    return;
  }
  const who =
    session.authorization === "off"
      ? "authorization off: every caller may do everything"
      : session.identity
        ? `${session.identity} (${session.source})`
        : "anonymous";
  const roles = session.roles.map((r) => `${r.role} on ${r.groups.join(", ")}`).join("; ");
  replace(
    sessionBox,
    h("span", { id: "identity", title: roles }, who),
    token() ? h("button", { type: "button", id: "sign-out", onclick: signOut }, "Sign out") : null,
  );
}

function signOut() {
  setToken("");
  session = null;
  showSession();
  showLogin("Signed out.");
}

function showLogin(why) {
  stop();
  stop = () => {};
  const input = h("input", { id: "token", name: "token", type: "password", autocomplete: "off", required: true, "aria-describedby": "token-hint" });
  const error = h("p", { class: "error", role: "alert", id: "login-error" }, why || "");
  const form = h(
    "form",
    {
      id: "login",
      class: "login",
      onsubmit: async (e) => {
        e.preventDefault();
        const value = input.value.trim();
        if (!value) {
          error.textContent = "Enter a bearer token.";
          input.focus();
          return;
        }
        setToken(value);
        await start();
      },
    },
    h("label", { for: "token" }, "Bearer token"),
    input,
    h("p", { class: "hint", id: "token-hint" }, "Kept in this browser tab only (sessionStorage), sent as Authorization: Bearer. With a client certificate the browser presents, no token is needed."),
    error,
    h("button", { type: "submit", class: "primary" }, "Sign in"),
  );
  replace(main, h("h1", { tabindex: "-1" }, "Sign in"), form);
  document.title = "Sign in · Vane console";
  input.focus();
}

/** Parses the hash into a view and its arguments. */
export function parse(hash) {
  const [path, query] = hash.replace(/^#/, "").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(query || "");
  if (parts[0] === "audit") return { view: "audit" };
  if (parts[0] !== "groups" || parts.length === 1) return { view: "groups" };
  const group = parts[1];
  switch (parts[2]) {
    case undefined:
    case "history":
      return { view: "history", group };
    case "agents":
      return { view: "agents", group, selector: params.get("selector") || "" };
    case "diff":
      return { view: "diff", group, from: parts[3], to: parts[4] };
    case "rollout":
      return { view: "rollout", group };
    case "audit":
      return { view: "audit", group };
    default:
      return { view: "history", group };
  }
}

function route() {
  if (!session) return;
  stop();
  replace(status);
  const r = parse(location.hash);
  for (const a of document.querySelectorAll("[data-nav]")) {
    const current = (r.view === "audit" && !r.group) === (a.dataset.nav === "audit");
    if (current) {
      a.setAttribute("aria-current", "page");
    } else {
      a.removeAttribute("aria-current");
    }
  }
  const views = {
    groups: () => renderGroups(main, ctx),
    history: () => renderHistory(main, ctx, r.group),
    agents: () => renderAgents(main, ctx, r.group, r.selector),
    diff: () => renderDiff(main, ctx, r.group, r.from, r.to),
    rollout: () => renderRollout(main, ctx, r.group),
    audit: () => renderAudit(main, ctx, r.group),
  };
  stop = views[r.view]() || (() => {});
  const heading = main.querySelector("h1");
  document.title = (heading ? heading.textContent + " · " : "") + "Vane console";
  if (heading) heading.focus();
}

async function start() {
  const hadToken = Boolean(token());
  try {
    session = await api.session();
  } catch (e) {
    session = null;
    if (e instanceof ApiError && e.status === 401) {
      setToken("");
      showSession();
      showLogin(hadToken ? `The server refused the token: ${e.message}` : e.message);
      return;
    }
    replace(main, h("h1", { tabindex: "-1" }, "Vane console"), h("p", { class: "error", role: "alert" }, e.message));
    return;
  }
  showSession();
  if (session.authorization === "on" && !session.identity) {
    session = null;
    showLogin("This server decides by identity: sign in with a bearer token.");
    return;
  }
  if (!location.hash || location.hash === "#" || location.hash === "#/") {
    history.replaceState(null, "", "#/groups");
  }
  route();
}

window.addEventListener("hashchange", route);
start();
