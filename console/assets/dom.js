// Small DOM helpers: elements built from data with textContent only (no
// HTML from the server is ever parsed), times and hashes as people read them.

/** `h("a", {href: "#/x", class: "c"}, "text", child)`: an element. */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") {
      el.addEventListener(k.slice(2), v);
    } else if (k === "class") {
      el.className = v;
    } else if (v === true) {
      el.setAttribute(k, "");
    } else {
      el.setAttribute(k, String(v));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) {
      append(el, c);
    } else if (c instanceof Node) {
      el.appendChild(c);
    } else {
      el.appendChild(document.createTextNode(String(c)));
    }
  }
}

/** Replaces the children of `el`, keeping the focus on the element with the same `data-key`. */
export function replace(el, ...children) {
  const active = document.activeElement;
  const key = active && el.contains(active) ? active.getAttribute("data-key") : null;
  el.replaceChildren();
  append(el, children);
  if (key) {
    const again = el.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (again) again.focus();
  }
}

/** "12 s ago", "3 min ago", "2 h ago", "4 d ago" (0: "never"). */
export function age(unixMs, nowMs) {
  if (!unixMs) return "never";
  const s = Math.max(0, Math.round(((nowMs || Date.now()) - unixMs) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/** The time itself, for a title and a `<time datetime>`. */
export function when(unixMs) {
  return unixMs ? new Date(unixMs).toISOString() : "";
}

/** A `<time>` showing the age, the exact time in its title. */
export function timeEl(unixMs, nowMs) {
  return h("time", { datetime: when(unixMs), title: when(unixMs) }, age(unixMs, nowMs));
}

/** The first 12 hex digits of a hash, the whole in its title. */
export function shortHash(hash) {
  return h("code", { title: hash, class: "hash" }, hash ? hash.slice(0, 12) : "—");
}

/** A state word as a badge (its colour from the class, its meaning from the text). */
export function badge(state) {
  return h("span", { class: "badge badge-" + state.replace(/_/g, "-") }, state.replace(/_/g, " "));
}

/** A table with a caption, column headers and rows of cells. */
export function table(caption, headers, rows, attrs) {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      attrs || {},
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows),
    ),
  );
}
