// Shared page pieces: the confirmation dialog, the toast, errors shown in a view.
import { h, message } from "./dom.js";

/** Ask before an action; resolves true for "yes". */
export function confirmAction(title, text, yes = "Yes") {
  const dialog = document.getElementById("confirm-dialog");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  dialog.querySelector("[data-testid=confirm-yes]").textContent = yes;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "yes"),
      { once: true });
    dialog.showModal();
  });
}

let toastTimer = null;
export function toast(text, kind = "info") {
  const el = document.getElementById("toast");
  el.textContent = text;
  el.className = `show toast-${kind}`;
  if (toastTimer) clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.className = ""; }, 6000);
}

export function errorBox(err) {
  return message(err && err.message ? err.message : String(err), "error");
}

/**
 * A button that runs an async action once at a time (disabled while it runs). The focus it
 * had comes back to it afterwards (a dialog closed with Esc cannot give it back to a disabled
 * button), or to the content when the action removed it.
 */
export function actionButton(text, testid, run, cls = "") {
  const b = h("button", { type: "button", testid, class: cls });
  b.textContent = text;
  b.addEventListener("click", async () => {
    const hadFocus = document.activeElement === b;
    b.disabled = true;
    try { await run(); } catch (err) { toast(err.message || String(err), "error"); }
    finally {
      b.disabled = false;
      // where the focus went: nowhere, or still on the closed dialog's button (Chromium
      // moves it to the body a moment later)
      const at = document.activeElement;
      const lost = !at || at === document.body || !at.isConnected
        || Boolean(at.closest("dialog:not([open])"));
      if (hadFocus && lost) {
        if (b.isConnected) b.focus();
        else document.getElementById("main")?.focus({ preventScroll: true });
      }
    }
  });
  return b;
}

export function pager(total, limit, offset, go) {
  const pages = Math.max(1, Math.ceil(total / limit));
  const page = Math.floor(offset / limit) + 1;
  const prev = h("button", { type: "button", testid: "page-prev", disabled: page <= 1,
    onclick: () => go(Math.max(0, offset - limit)) }, "← Previous");
  const next = h("button", { type: "button", testid: "page-next", disabled: page >= pages,
    onclick: () => go(offset + limit) }, "Next →");
  return h("nav", { class: "pager", "aria-label": "pages" }, prev,
    h("span", { testid: "page-info" }, `page ${page} of ${pages} · ${total} in all`), next);
}

export function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, qs = ""] = raw.split("?");
  return { path, params: new URLSearchParams(qs) };
}

/** Change the query of the current route (filters, pages) without a new history entry. */
export function setParams(params) {
  const { path } = parseHash();
  const qs = params.toString();
  history.replaceState(null, "", `#${path}${qs ? `?${qs}` : ""}`);
}

export function enc(name) {
  return encodeURIComponent(name);
}
