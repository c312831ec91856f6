// The monitoring page: hash routes → views. Every view is mount(el, route) → unmount().
import { askToken, onStreamStatus, token } from "./api.js";
import { clear, h } from "./dom.js";
import { parseHash } from "./ui.js";
import { activityView } from "./activity.js";
import { artifactsView } from "./artifacts.js";
import { deadView } from "./webhooks.js";
import { listView } from "./list.js";
import { peakDefinitionView, peakExecutionView, peakListView } from "./peak.js";
import { workflowView } from "./workflow.js";

const ROUTES = [
  [/^\/?$/, listView, "workflows"],
  [/^\/workflows\/(\d+)$/, workflowView, "workflows"],
  [/^\/workflows\/(\d+)\/activities\/([^/]+)$/, activityView, "workflows"],
  [/^\/workflows\/(\d+)\/artifacts$/, artifactsView, "workflows"],
  [/^\/peak$/, peakListView, "peak"],
  [/^\/peak\/(\d+)$/, peakDefinitionView, "peak"],
  [/^\/peak\/(\d+)\/executions\/([^/]+)$/, peakExecutionView, "peak"],
  [/^\/webhooks$/, deadView, "webhooks"],
];

let unmount = null;
let current = null;

/** Show the view of the address; false when it is the one shown already. */
function route() {
  const { path, params } = parseHash();
  const key = location.hash;
  if (key === current) return false;
  current = key;
  if (unmount) { try { unmount(); } catch (e) { console.error(e); } unmount = null; }
  const main = document.getElementById("main");
  clear(main);
  for (const [re, view, section] of ROUTES) {
    const m = re.exec(path);
    if (!m) continue;
    document.querySelectorAll("nav [data-section]").forEach((a) => {
      if (a.dataset.section === section) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    });
    const args = m.slice(1).map((x) => decodeURIComponent(x));
    unmount = view(main, args, params) || null;
    return true;
  }
  main.append(h("h1", {}, "Not found"), h("p", {}, "No such page. ",
    h("a", { href: "#/" }, "Back to the workflows")));
  return true;
}

/** The keyboard carries on in the content: the next Tab reaches the view's first control. */
function focusMain() {
  document.getElementById("main").focus({ preventScroll: true });
}

window.addEventListener("hashchange", () => {
  if (!route()) return;
  window.scrollTo(0, 0);
  focusMain(); // the link that was focused went with the old view
});
function start() {
  // "Skip to content" must not change the address: "#main" is no route
  document.querySelector("a.skip").addEventListener("click", (ev) => {
    ev.preventDefault();
    focusMain();
  });
  const live = document.querySelector("[data-testid=live]");
  onStreamStatus((st) => {
    live.textContent = st === "live" ? "● live" : st;
    live.dataset.status = st;
  });
  document.getElementById("token-button").addEventListener("click", async () => {
    try {
      await askToken(token() ? "Replace the token kept for this tab." : undefined);
      current = null;
      route();
    } catch { /* kept the old one */ }
  });
  route();
}

if (document.readyState === "loading") window.addEventListener("DOMContentLoaded", start);
else start();

