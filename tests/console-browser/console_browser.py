"""Drives vane-control's web console in a real headless Chromium (Debian's,
launched by path: Playwright downloads no browser) for tests/it/console.rs.

One scenario per run (--scenario); each signs in when given --token, does
what a person would with the keyboard and the mouse, saves a screenshot of
every page it sees into --out, and prints one JSON line with what it found,
which the Rust test checks. Any failure exits non-zero with the reason.
"""

import argparse
import json
import os
import sys

from playwright.sync_api import expect, sync_playwright

WAIT_MS = 30_000


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--chromium", required=True)
    p.add_argument("--scenario", required=True)
    p.add_argument("--url", required=True, help="the console's base URL, e.g. http://127.0.0.1:1234")
    p.add_argument("--out", required=True, help="where screenshots go")
    p.add_argument("--token", default="")
    p.add_argument("--group", default="edge")
    p.add_argument("--other", default="", help="a group the caller may not read, or one to wait for")
    p.add_argument("--version", type=int, default=1)
    return p.parse_args()


class Run:
    def __init__(self, args, page):
        self.args = args
        self.page = page
        self.errors = []
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.set_default_timeout(WAIT_MS)

    def shot(self, name):
        self.page.screenshot(path=os.path.join(self.args.out, name + ".png"), full_page=True)

    def open(self, hash_):
        """Opens the console at `hash_`, signing in with the token when there is one."""
        self.page.goto(self.args.url + "/ui/" + hash_)
        if self.args.token:
            self.page.wait_for_selector("#login")
            self.shot("sign-in")
            self.page.fill("#token", self.args.token)
            self.page.keyboard.press("Enter")
        self.page.wait_for_selector("#identity")

    def go(self, hash_):
        self.page.evaluate("h => { location.hash = h; }", hash_)

    def ready(self):
        """Tells the test the page is open (it may now change what it shows)."""
        print(json.dumps({"ready": True}), flush=True)

    def status(self):
        return self.page.inner_text("#status")


def rows(page, selector):
    return page.eval_on_selector_all(selector, "els => els.map(e => e.innerText.trim())")


def scenario_open(run):
    run.open("#/groups")
    run.page.wait_for_selector("#groups-table")
    run.shot("groups-no-login")
    return {
        "login_shown": run.page.query_selector("#login") is not None,
        "identity": run.page.inner_text("#identity"),
        "groups": rows(run.page, "#groups-table tbody th"),
    }


def scenario_reader(run):
    page, g = run.page, run.args.group
    run.open("#/groups")
    page.wait_for_selector("#groups-table")
    run.shot("groups-reader")
    groups = rows(page, "#groups-table tbody th")
    run.go(f"#/groups/{g}/history")
    page.wait_for_selector("#history-table")
    run.shot("history-reader")
    history_buttons = len(page.query_selector_all("#main button[data-action]"))
    run.go(f"#/groups/{g}/rollout")
    page.wait_for_selector("#rollout-facts, #rollout-body p:not(:empty)")
    page.wait_for_timeout(1500)
    run.shot("rollout-reader")
    rollout_buttons = len([b for b in page.query_selector_all("#main button[data-action]") if b.is_visible()])
    # The page shows no button, and the API refuses the action anyway.
    forced = page.evaluate(
        """async ([g, token]) => {
            const r = await fetch(`api/groups/${g}/rollback`, {method: "POST",
              headers: {"x-vane-console": "1", "authorization": "Bearer " + token,
                        "content-type": "application/json"},
              body: JSON.stringify({to_version: 1, message: "a reader tries"})});
            return [r.status, (await r.json()).code];
        }""",
        [g, run.args.token],
    )
    hidden_error = ""
    if run.args.other:
        run.go(f"#/groups/{run.args.other}/history")
        page.wait_for_selector("#status .error")
        hidden_error = run.status()
        run.shot("history-refused")
    return {
        "identity": page.inner_text("#identity"),
        "groups": groups,
        "history_buttons": history_buttons,
        "rollout_buttons": rollout_buttons,
        "forced_rollback": forced,
        "hidden_error": hidden_error,
    }


def scenario_groups(run):
    """Waits for --other (pushed with vanectl after the page opened) to appear."""
    page = run.page
    run.open("#/groups")
    page.wait_for_selector("#groups-table")
    run.ready()
    row = page.wait_for_selector(f'#groups-table tr[data-group="{run.args.other}"]', timeout=WAIT_MS)
    run.shot("groups-operator")
    fresh = row.inner_text()
    page.set_viewport_size({"width": 390, "height": 800})
    page.wait_for_timeout(300)
    run.shot("groups-narrow")
    narrow_fits = page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.set_viewport_size({"width": 1280, "height": 800})
    return {"groups": rows(page, "#groups-table tbody th"), "fresh_row": fresh, "narrow_fits": narrow_fits}


def scenario_wait_for(run):
    return scenario_groups(run)


def scenario_diff(run):
    page, g = run.page, run.args.group
    run.open(f"#/groups/{g}/history")
    page.wait_for_selector("#history-table")
    run.shot("history-operator")
    page.select_option("#diff-from", "1")
    page.select_option("#diff-to", "2")
    page.click("form.inline button[type=submit]")
    page.wait_for_selector("#diff-table")
    hash_ = page.evaluate("location.hash")
    run.shot("diff")
    added = rows(page, "#diff-table tr.diff-add td.code code")
    removed = rows(page, "#diff-table tr.diff-del td.code code")
    # The view's URL is its own: a reload shows the same diff (the token
    # stays in the tab's sessionStorage).
    page.reload()
    page.wait_for_selector("#diff-table")
    return {
        "hash": hash_,
        "added": added,
        "removed": removed,
        "after_reload": rows(page, "#diff-table tr.diff-add td.code code"),
        "title": page.title(),
    }


def confirm_with_keyboard(page, message):
    """The dialog opens with the focus in its message; Tab reaches Cancel,
    then the action's button, which Enter presses."""
    page.wait_for_selector("dialog[open]")
    focused = page.evaluate("document.activeElement.tagName")
    page.keyboard.type(message)
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    on = page.evaluate("document.activeElement.dataset.action")
    page.keyboard.press("Enter")
    return focused, on


def scenario_rollback(run):
    page, g, v = run.page, run.args.group, run.args.version
    run.open(f"#/groups/{g}/history")
    button = f'#history-table button[data-action=rollback][data-version="{v}"]'
    page.wait_for_selector(button)
    # Escape closes the dialog and changes nothing.
    page.focus(button)
    page.keyboard.press("Enter")
    page.wait_for_selector("dialog[open]")
    run.shot("rollback-dialog")
    page.keyboard.press("Escape")
    page.wait_for_selector("dialog[open]", state="detached")
    back_on_button = page.evaluate("document.activeElement.dataset.action")
    # An empty message is refused by the dialog itself.
    page.click(button)
    page.wait_for_selector("dialog[open]")
    page.click("dialog [data-action=confirm]")
    empty_refused = page.inner_text("dialog .error")
    page.keyboard.press("Escape")
    page.wait_for_selector("dialog[open]", state="detached")
    page.click(button)
    focused, on = confirm_with_keyboard(page, "restore the old rate from the console")
    page.wait_for_selector("#status .ok")
    run.shot("history-after-rollback")
    return {
        "escape_returned_focus_to": back_on_button,
        "empty_refused": empty_refused,
        "focus_in_dialog": focused,
        "confirm_focused": on,
        "status": run.status(),
        "head": rows(page, "#history-table tbody tr:first-child th")[0],
    }


def scenario_agents(run):
    page, g = run.page, run.args.group
    run.open(f"#/groups/{g}/agents")
    page.wait_for_selector("#agents-table")
    everyone = rows(page, "#agents-table tbody th")
    run.shot("agents")
    page.fill("#selector", "zone=a")
    page.keyboard.press("Enter")
    page.wait_for_function("location.hash.includes('selector=')")
    page.wait_for_selector("#agents-table caption:has-text('matching zone=a')")
    run.shot("agents-filtered")
    return {
        "all": everyone,
        "zone_a": rows(page, "#agents-table tbody th"),
        "hash": page.evaluate("location.hash"),
        "states": rows(page, "#agents-table tbody td:nth-child(2) .badge"),
    }


def scenario_rollout(run):
    page, g = run.page, run.args.group
    run.open(f"#/groups/{g}/rollout")
    page.wait_for_selector("#rollout-body p:has-text('no rollout')")
    run.shot("rollout-none")
    run.ready()
    page.wait_for_selector("#rollout-step")
    first = page.inner_text("#rollout-step")
    run.shot("rollout-first-step")
    # Live: the page polls, so the next step shows without a reload.
    expect(page.locator("#rollout-step")).to_contain_text("2 of", timeout=90_000)
    advanced = page.inner_text("#rollout-step")
    cohort = page.inner_text("#rollout-cohort")
    run.shot("rollout-advanced")
    page.click("button[data-action=abort]")
    confirm_with_keyboard(page, "abort from the console")
    expect(page.locator("#rollout-state")).to_contain_text("rolled back", timeout=60_000)
    run.shot("rollout-aborted")
    return {
        "first": first,
        "advanced": advanced,
        "cohort": cohort,
        "state": page.inner_text("#rollout-state"),
        "status": run.status(),
        "buttons_left": len([b for b in page.query_selector_all("#main button[data-action]") if b.is_visible()]),
    }


def scenario_audit(run):
    page = run.page
    run.open("#/audit")
    page.wait_for_selector("#audit-table")
    run.shot("audit")
    return {
        "rows": rows(page, "#audit-table tbody tr"),
        "refused": len(page.query_selector_all("#audit-table tbody tr.refused")),
    }


def main():
    args = parse_args()
    os.makedirs(args.out, exist_ok=True)
    scenario = globals().get("scenario_" + args.scenario.replace("-", "_"))
    if scenario is None:
        sys.exit(f"--scenario {args.scenario}: no such scenario")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            run = Run(args, page)
            try:
                result = scenario(run)
            except Exception:
                run.shot("failure")
                raise
            result["page_errors"] = run.errors
            print(json.dumps(result), flush=True)
        finally:
            browser.close()


if __name__ == "__main__":
    main()
