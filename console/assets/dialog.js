// The confirmation every action asks for: a modal <dialog> (the browser
// keeps the focus inside it and closes it on Escape) with what will happen,
// a required message for the audit log, Cancel and the action's button.

import { h } from "./dom.js";

let counter = 0;

/**
 * Asks to confirm `title` (what will happen: `details`); resolves to the
 * message typed, or null when cancelled. `verb` labels the button.
 */
export function confirmAction({ title, details, verb, danger }) {
  counter += 1;
  const id = "dialog-" + counter;
  const opener = document.activeElement;
  return new Promise((resolve) => {
    const message = h("textarea", {
      id: id + "-message",
      name: "message",
      required: true,
      rows: 3,
      "aria-describedby": id + "-hint",
    });
    const error = h("p", { class: "error", id: id + "-error", role: "alert" });
    const form = h(
      "form",
      { method: "dialog", novalidate: true },
      h("h2", { id: id + "-title" }, title),
      h("p", { id: id + "-details" }, details),
      h("label", { for: id + "-message" }, "Message (required)"),
      message,
      h("p", { class: "hint", id: id + "-hint" }, "Recorded in the audit log with your identity."),
      error,
      h(
        "div",
        { class: "buttons" },
        h("button", { type: "button", value: "cancel", "data-action": "cancel" }, "Cancel"),
        h("button", { type: "submit", value: "ok", class: danger ? "danger" : "primary", "data-action": "confirm" }, verb),
      ),
    );
    const dialog = h(
      "dialog",
      { "aria-labelledby": id + "-title", "aria-describedby": id + "-details", class: "confirm" },
      form,
    );
    let done = false;
    const finish = (value) => {
      if (done) return;
      done = true;
      dialog.close();
      dialog.remove();
      if (opener && opener.isConnected) opener.focus();
      resolve(value);
    };
    form.querySelector("[data-action=cancel]").addEventListener("click", () => finish(null));
    dialog.addEventListener("cancel", (e) => {
      e.preventDefault();
      finish(null);
    });
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const text = message.value.trim();
      if (!text) {
        error.textContent = "Say why: the message is required.";
        message.focus();
        return;
      }
      finish(text);
    });
    document.body.appendChild(dialog);
    dialog.showModal();
    message.focus();
  });
}
