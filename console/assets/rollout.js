// A group's rollout, live: its steps, cohort counts, bake timer, reasons
// and events, polled every second, with pause, resume, promote and abort
// for operators (each confirmed, with a message).

import { api } from "./api.js";
import { confirmAction } from "./dialog.js";
import { badge, h, replace, timeEl } from "./dom.js";
import { every, groupTabs } from "./views.js";

/** Which actions a rollout in `r`'s state can take (the server decides in the end). */
export function possible(r) {
  if (!r || !r.active || r.state === "aborting") return {};
  return {
    pause: r.state !== "paused",
    resume: r.state === "paused",
    promote: true,
    abort: true,
  };
}

const VERBS = {
  pause: { verb: "Pause", what: (g) => `The rollout of ${g} stops at its current step until resumed.` },
  resume: { verb: "Resume", what: (g) => `The rollout of ${g} goes on from its current step.` },
  promote: { verb: "Promote", what: (g) => `The rollout of ${g} skips its remaining steps and bake: every matching agent gets the candidate.` },
  abort: { verb: "Abort", what: (g) => `The rollout of ${g} ends: a new version with the stable content is stored and every agent is sent it.`, danger: true },
};

export function renderRollout(main, ctx, group) {
  const buttons = {};
  const bar = h("div", { class: "buttons", role: "group", "aria-label": "Rollout actions", hidden: true });
  for (const [action, v] of Object.entries(VERBS)) {
    buttons[action] = h(
      "button",
      {
        type: "button",
        "data-action": action,
        class: v.danger ? "danger" : "",
        onclick: () => act(action),
      },
      v.verb,
    );
    bar.appendChild(buttons[action]);
  }
  const body = h("div", { id: "rollout-body", "aria-live": "off" }, h("p", {}, "Loading the rollout…"));
  replace(main, h("h1", { tabindex: "-1" }, `Rollout of ${group}`), groupTabs(group, "rollout"), bar, body);
  let latest = null;

  const act = async (action) => {
    const v = VERBS[action];
    const message = await confirmAction({
      title: `${v.verb} the rollout of ${group}?`,
      details: v.what(group),
      verb: v.verb,
      danger: v.danger,
    });
    if (message === null) return;
    try {
      const page = await api.rolloutAction(group, action, message);
      ctx.say(`${v.verb}: the rollout of ${group} is now ${page.rollout ? page.rollout.state.replace(/_/g, " ") : "gone"}.`);
      show(page);
    } catch (e) {
      ctx.fail(e);
    }
  };

  const show = (page) => {
    latest = page;
    const r = page.rollout;
    const can = page.may_operate ? possible(r) : {};
    const any = Object.values(can).some(Boolean);
    bar.hidden = !any;
    for (const [action, button] of Object.entries(buttons)) {
      button.hidden = !can[action];
    }
    if (!r) {
      replace(body, h("p", {}, `${group} has had no rollout. Start one with `, h("code", {}, "vanectl rollout start"), "."));
      return;
    }
    const now = page.now_unix_ms;
    const bake =
      r.state === "baking" && r.bake_ends_at_unix_ms
        ? `${Math.max(0, Math.ceil((r.bake_ends_at_unix_ms - now) / 1000))} s left of ${Math.round(r.bake_ms / 1000)} s`
        : r.bake_ms
          ? `${Math.round(r.bake_ms / 1000)} s per step`
          : "none";
    const steps = h(
      "ol",
      { class: "steps", "aria-label": "Steps" },
      r.steps.map((p, i) => {
        const n = i + 1;
        const done = n < r.step || r.state === "complete";
        const current = n === r.step && r.active;
        return h(
          "li",
          { class: done ? "done" : current ? "current" : "pending", "aria-current": current ? "step" : null },
          `${p}%`,
          h("span", { class: "sr-only" }, done ? " (done)" : current ? " (current)" : " (to come)"),
        );
      }),
    );
    const c = r.cohort;
    const progress = h("progress", { id: "cohort-progress", max: Math.max(1, c.target), value: Math.min(c.synced, Math.max(1, c.target)), "aria-label": "Cohort synced" });
    const facts = h(
      "dl",
      { class: "facts", id: "rollout-facts" },
      h("dt", {}, "State"),
      h("dd", { id: "rollout-state" }, badge(r.state), r.paused_by_operator ? " (by an operator)" : ""),
      h("dt", {}, "Step"),
      h("dd", { id: "rollout-step" }, `${r.step} of ${r.steps.length} (${r.percent}%)`),
      h("dt", {}, "Candidate"),
      h("dd", {}, `v${r.candidate_version}`),
      h("dt", {}, "Stable"),
      h("dd", {}, `v${r.stable_version}`, r.restored_version ? ` (restored as v${r.restored_version})` : ""),
      h("dt", {}, "Cohort"),
      h(
        "dd",
        { id: "rollout-cohort" },
        progress,
        ` ${c.synced} synced of ${c.target} wanted (${c.total} in the cohort, ${c.matching} matching)`,
        c.nacked ? `, ${c.nacked} NACKed` : "",
        c.degraded ? `, ${c.degraded} degraded` : "",
        c.disconnected ? `, ${c.disconnected} disconnected` : "",
      ),
      h("dt", {}, "Bake"),
      h("dd", { id: "rollout-bake" }, bake),
      h("dt", {}, "Selector"),
      h("dd", {}, r.selector ? h("code", {}, r.selector) : "every agent"),
      h("dt", {}, "Reason"),
      h("dd", { id: "rollout-reason" }, r.reason || "—"),
      h("dt", {}, "Started"),
      h("dd", {}, timeEl(r.started_at_unix_ms, now), " by ", r.author || "anonymous", r.message ? `: ${r.message}` : ""),
    );
    const events = r.events
      .slice()
      .reverse()
      .map((e) =>
        h(
          "tr",
          {},
          h("td", {}, timeEl(e.at_unix_ms, now)),
          h("td", {}, badge(e.state)),
          h("td", { class: "num" }, `${e.step} (${e.percent}%)`),
          h("td", {}, e.identity || h("span", { class: "muted" }, "the server")),
          h("td", { class: "message" }, e.reason),
        ),
      );
    replace(
      body,
      steps,
      facts,
      h("div", { class: "table-wrap" }, h("table", { id: "rollout-events" }, h("caption", {}, "Events, newest first"), h("thead", {}, h("tr", {}, ["When", "State", "Step", "By", "Reason"].map((t) => h("th", { scope: "col" }, t)))), h("tbody", {}, events))),
    );
  };

  return every(1000, async () => {
    const page = await ctx.load(() => api.rollout(group));
    if (page) show(page);
    return latest;
  });
}
