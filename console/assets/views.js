// The pages that only read (groups, a group's history, a diff, agents, the
// audit log) and the history's rollback action. Each `render` fills `main`
// and returns a function that stops its refreshes, called when the page
// is left.

import { api } from "./api.js";
import { confirmAction } from "./dialog.js";
import { age, badge, h, replace, shortHash, table, timeEl, when } from "./dom.js";

const enc = encodeURIComponent;
export const groupHref = (group, rest) => "#/groups/" + enc(group) + (rest ? "/" + rest : "");

/** Calls `load` now and every `ms` while the page is shown. */
export function every(ms, load) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    try {
      await load();
    } finally {
      if (!stopped) timer = setTimeout(tick, ms);
    }
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

/** The tabs of one group's pages, the current one marked. */
export function groupTabs(group, current) {
  const tab = (rest, label) =>
    h("li", {}, h("a", { href: groupHref(group, rest), "aria-current": rest === current ? "page" : null }, label));
  return h(
    "nav",
    { class: "tabs", "aria-label": `Group ${group}` },
    h("ul", {}, tab("history", "History"), tab("agents", "Agents"), tab("rollout", "Rollout"), tab("audit", "Audit")),
  );
}

function counts(c) {
  const parts = [];
  const add = (n, state) => {
    if (n) parts.push(h("span", { class: "count" }, badge(state), " ", String(n)));
  };
  add(c.synced, "synced");
  add(c.stale, "stale");
  add(c.nacked, "nacked");
  add(c.not_sent, "not_sent");
  add(c.unacked, "unacked");
  if (c.disconnected) parts.push(h("span", { class: "count muted" }, `${c.disconnected} disconnected`));
  return parts.length ? h("span", { class: "counts" }, parts) : h("span", { class: "muted" }, "no agents");
}

// ---- Groups -----------------------------------------------------------------

export function renderGroups(main, ctx) {
  const body = h("div", { id: "groups-body" }, h("p", {}, "Loading groups…"));
  replace(main, h("h1", { tabindex: "-1" }, "Groups"), body);
  return every(5000, async () => {
    const data = await ctx.load(() => api.groups());
    if (!data) return;
    if (!data.groups.length) {
      replace(body, h("p", {}, "No group you may read has a version yet. Push one with ", h("code", {}, "vanectl push"), "."));
      return;
    }
    const rows = data.groups.map((g) =>
      h(
        "tr",
        { "data-group": g.group },
        h("th", { scope: "row" }, h("a", { href: groupHref(g.group, "history"), "data-key": "g-" + g.group }, g.group)),
        h("td", { class: "num" }, "v" + g.head_version),
        h("td", {}, shortHash(g.head_hash)),
        h("td", {}, timeEl(g.head_created_at_unix_ms)),
        h("td", {}, h("a", { href: groupHref(g.group, "agents"), "data-key": "a-" + g.group, "aria-label": `Agents of ${g.group}: ${g.agents.total}` }, counts(g.agents))),
        h(
          "td",
          {},
          g.rollout
            ? h(
                "a",
                { href: groupHref(g.group, "rollout"), "data-key": "r-" + g.group },
                badge(g.rollout.state),
                g.rollout.active ? ` step ${g.rollout.step}/${g.rollout.steps} (${g.rollout.percent}%)` : "",
              )
            : h("span", { class: "muted" }, "none"),
        ),
      ),
    );
    replace(
      body,
      table(`${data.groups.length} group(s) you may read`, ["Group", "Head", "Hash", "Age", "Agents", "Rollout"], rows, {
        id: "groups-table",
      }),
    );
  });
}

// ---- History and rollback ---------------------------------------------------

export function renderHistory(main, ctx, group) {
  const body = h("div", {}, h("p", {}, "Loading history…"));
  replace(main, h("h1", { tabindex: "-1" }, `Group ${group}`), groupTabs(group, "history"), body);
  const load = async () => {
    const data = await ctx.load(() => api.history(group));
    if (!data) return;
    const versions = data.versions;
    const head = versions[0];
    const summary = head
      ? h(
          "dl",
          { class: "facts" },
          h("dt", {}, "Head"),
          h("dd", {}, "v" + head.version),
          h("dt", {}, "Hash"),
          h("dd", {}, h("code", { class: "hash wrap" }, head.hash)),
          h("dt", {}, "Stored"),
          h("dd", {}, timeEl(head.created_at_unix_ms), " by ", head.author || "an anonymous caller"),
        )
      : h("p", {}, "No version.");
    const options = (selected) =>
      versions.map((v) => h("option", { value: v.version, selected: v.version === selected }, "v" + v.version));
    const from = h("select", { id: "diff-from", name: "from" }, options(versions[1] ? versions[1].version : head && head.version));
    const to = h("select", { id: "diff-to", name: "to" }, options(head && head.version));
    const compare = h(
      "form",
      {
        class: "inline",
        "aria-label": "Compare two versions",
        onsubmit: (e) => {
          e.preventDefault();
          ctx.go(groupHref(group, `diff/${from.value}/${to.value}`));
        },
      },
      h("label", { for: "diff-from" }, "Compare"),
      from,
      h("label", { for: "diff-to" }, "with"),
      to,
      h("button", { type: "submit" }, "Show diff"),
    );
    const rows = versions.map((v) => {
      const actions = [];
      if (v !== head) {
        actions.push(h("a", { href: groupHref(group, `diff/${v.version}/${head.version}`) }, `Diff with head`));
        if (data.may_operate && !v.corrupt) {
          actions.push(
            h(
              "button",
              {
                type: "button",
                class: "danger",
                "data-action": "rollback",
                "data-version": v.version,
                onclick: () => rollback(ctx, group, v, head, load),
              },
              `Roll back to v${v.version}`,
            ),
          );
        }
      }
      return h(
        "tr",
        { "data-version": v.version },
        h("th", { scope: "row" }, "v" + v.version, v.corrupt ? h("span", { class: "badge badge-nacked" }, " corrupt") : ""),
        h("td", {}, shortHash(v.hash)),
        h("td", { class: "author" }, v.author || h("span", { class: "muted" }, "anonymous")),
        h("td", { class: "message" }, v.message || h("span", { class: "muted" }, "(no message)"), v.rollback_of ? h("span", { class: "muted" }, ` (restores v${v.rollback_of})`) : ""),
        h("td", {}, timeEl(v.created_at_unix_ms)),
        h("td", { class: "actions" }, actions),
      );
    });
    replace(
      body,
      summary,
      versions.length > 1 ? compare : null,
      table(
        `${versions.length} version(s), newest first` + (data.pruned_versions ? `; ${data.pruned_versions} older removed by retention` : ""),
        ["Version", "Hash", "Author", "Message", "Stored", "Actions"],
        rows,
        { id: "history-table" },
      ),
    );
  };
  load();
  return () => {};
}

async function rollback(ctx, group, version, head, reload) {
  const message = await confirmAction({
    title: `Roll back ${group} to v${version.version}?`,
    details: `A new version with the content of v${version.version} (${version.hash.slice(0, 12)}) becomes the head of ${group}, replacing v${head.version}; every agent of the group is sent it.`,
    verb: `Roll back to v${version.version}`,
    danger: true,
  });
  if (message === null) return;
  try {
    const done = await api.rollback(group, version.version, message, head.version);
    ctx.say(
      done.unchanged
        ? `${group} already has the content of v${version.version}: nothing changed.`
        : `Rolled back ${group}: v${done.version} created with the content of v${version.version}.`,
    );
    await reload();
  } catch (e) {
    ctx.fail(e);
  }
}

// ---- Diff -------------------------------------------------------------------

export function renderDiff(main, ctx, group, from, to) {
  const body = h("div", {}, h("p", {}, "Loading diff…"));
  replace(main, h("h1", { tabindex: "-1" }, `${group}: v${from} → v${to}`), groupTabs(group, "diff"), body);
  (async () => {
    const data = await ctx.load(() => api.diff(group, from, to));
    if (!data) return;
    const side = (label, v) =>
      v
        ? h("div", { class: "side" }, h("h2", {}, `${label}: v${v.version}`), h("p", {}, shortHash(v.hash), " by ", v.author || "anonymous", ", ", timeEl(v.created_at_unix_ms)), h("p", { class: "message" }, v.message || "(no message)"))
        : null;
    const sides = h("div", { class: "sides" }, side("From", data.from), side("To", data.to));
    if (!data.lines.length) {
      replace(body, sides, h("p", { id: "diff-empty" }, "The two versions have the same content."));
      return;
    }
    const words = { add: "added", del: "removed", context: "", hunk: "", file: "" };
    const rows = data.lines.map((l) =>
      h(
        "tr",
        { class: "diff-" + l.kind },
        h("td", { class: "ln" }, l.old ?? ""),
        h("td", { class: "ln" }, l.new ?? ""),
        h("td", { class: "code" }, words[l.kind] ? h("span", { class: "sr-only" }, words[l.kind] + ": ") : "", h("code", {}, l.text)),
      ),
    );
    replace(
      body,
      sides,
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { class: "diff", id: "diff-table" },
          h("caption", {}, `Unified diff of the canonical YAML, v${from} to v${to}`),
          h("thead", {}, h("tr", {}, h("th", { scope: "col" }, `v${from}`), h("th", { scope: "col" }, `v${to}`), h("th", { scope: "col" }, "Line"))),
          h("tbody", {}, rows),
        ),
      ),
    );
  })();
  return () => {};
}

// ---- Agents -----------------------------------------------------------------

export function renderAgents(main, ctx, group, selector) {
  const input = h("input", {
    id: "selector",
    name: "selector",
    type: "text",
    value: selector || "",
    list: "label-values",
    placeholder: "zone=eu,tier in (a,b)",
    autocomplete: "off",
    "aria-describedby": "selector-hint",
  });
  const suggestions = h("datalist", { id: "label-values" });
  const form = h(
    "form",
    {
      class: "inline",
      role: "search",
      "aria-label": "Filter agents by label",
      onsubmit: (e) => {
        e.preventDefault();
        const s = input.value.trim();
        ctx.go(groupHref(group, "agents") + (s ? "?selector=" + enc(s) : ""));
      },
    },
    h("label", { for: "selector" }, "Label selector"),
    input,
    suggestions,
    h("button", { type: "submit" }, "Filter"),
    selector ? h("a", { href: groupHref(group, "agents") }, "Clear") : null,
    h("p", { class: "hint", id: "selector-hint" }, "k=v, k!=v, k in (a,b), k notin (a,b), k, !k — comma-separated."),
  );
  const body = h("div", {}, h("p", {}, "Loading agents…"));
  replace(main, h("h1", { tabindex: "-1" }, `Agents of ${group}`), groupTabs(group, "agents"), form, body);
  return every(3000, async () => {
    const data = await ctx.load(() => api.agents(group, selector));
    if (!data) return;
    replace(
      suggestions,
      Object.entries(data.labels).flatMap(([k, vs]) => vs.map((v) => h("option", { value: `${k}=${v}` }))),
    );
    const now = Date.now();
    const rows = data.agents.map((a) =>
      h(
        "tr",
        { "data-node": a.node_id },
        h("th", { scope: "row" }, h("code", {}, a.node_id)),
        h("td", {}, badge(a.state), a.connected ? "" : h("span", { class: "muted" }, " (disconnected)"), a.role ? h("span", { class: "muted" }, ` ${a.role}`) : ""),
        h("td", { class: "num" }, a.acked_version ? "v" + a.acked_version : "—"),
        h("td", { class: "nack" }, a.nack_reason ? `v${a.last_nacked_version}: ${a.nack_reason}` : ""),
        h("td", {}, h("ul", { class: "labels" }, Object.entries(a.labels).map(([k, v]) => h("li", {}, h("code", {}, `${k}=${v}`))))),
        h("td", {}, a.client),
        h("td", {}, timeEl(a.last_seen_unix_ms, now)),
      ),
    );
    replace(
      body,
      data.agents.length
        ? table(
            `${data.agents.length} agent(s)` + (data.selector ? ` matching ${data.selector}` : "") + `; head v${data.head_version}`,
            ["Node", "State", "Acked", "NACK reason", "Labels", "Client", "Last seen"],
            rows,
            { id: "agents-table" },
          )
        : h("p", {}, selector ? `No agent of ${group} matches ${selector}.` : `No agent of ${group} is known.`),
    );
  });
}

// ---- Audit ------------------------------------------------------------------

export function renderAudit(main, ctx, group) {
  const body = h("div", {}, h("p", {}, "Loading the audit log…"));
  const title = group ? `Audit log of ${group}` : "Audit log";
  replace(main, h("h1", { tabindex: "-1" }, title), group ? groupTabs(group, "audit") : null, body);
  return every(5000, async () => {
    const data = await ctx.load(() => api.audit(group));
    if (!data) return;
    const rows = data.entries.map((e) =>
      h(
        "tr",
        { class: e.result === "refused" ? "refused" : "" },
        h("td", {}, h("time", { datetime: when(e.at_unix_ms), title: when(e.at_unix_ms) }, age(e.at_unix_ms))),
        h("td", {}, e.identity || h("span", { class: "muted" }, "anonymous")),
        h("td", {}, e.action),
        h("td", {}, e.group ? h("a", { href: groupHref(e.group, "history") }, e.group) : ""),
        h("td", { class: "num" }, e.version ? "v" + e.version : ""),
        h("td", {}, badge(e.result || "unknown"), e.code ? ` ${e.code}` : ""),
        h("td", { class: "message" }, e.reason || e.message, e.rollback_of ? ` (restores v${e.rollback_of})` : ""),
        h("td", {}, e.peer),
      ),
    );
    replace(
      body,
      data.entries.length
        ? table(`${data.entries.length} entries, newest first (refusals included)`, ["When", "Identity", "Action", "Group", "Version", "Result", "Message or reason", "Peer"], rows, { id: "audit-table" })
        : h("p", {}, "The audit log is empty."),
    );
  });
}
