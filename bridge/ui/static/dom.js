// DOM helpers: every value goes in as text (textContent / attributes), never as HTML.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";

export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") {
      el.addEventListener(k.slice(2), v);
    } else if (k === "testid") {
      el.setAttribute("data-testid", String(v));
    } else if (v === true) {
      el.setAttribute(k, "");
    } else {
      el.setAttribute(k, String(v));
    }
  }
}

export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

// ---- states -------------------------------------------------------------------------------

const GROUP = {
  COMPLETED: "done", Success: "done",
  RUNNING: "running", Running: "running", Retrying: "running", Stopping: "running",
  QUEUED: "queued", SUBMITTING: "queued",
  PENDING: "pending", RETRY_WAIT: "pending", Pending: "pending", Available: "pending",
  FAILED: "failed", TIMEOUT: "failed", OUT_OF_MEMORY: "failed", NODE_FAIL: "failed",
  Failed: "failed",
  CANCELLED: "cancelled", Stopped: "cancelled", Paused: "cancelled",
  SKIPPED: "skipped", Skipped: "skipped",
};

export function stateGroup(state) {
  return GROUP[state] || "other";
}

export const TERMINAL = new Set(["COMPLETED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY",
  "CANCELLED", "NODE_FAIL", "SKIPPED"]);

export function badge(state) {
  const st = state || "—";
  return h("span", { class: `badge st-${stateGroup(st)}`, "data-state": st, testid: "state" },
    st);
}

// ---- formatting ---------------------------------------------------------------------------

export function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z").replace(/Z$/, " UTC");
}

export function fmtDuration(sec) {
  if (sec === null || sec === undefined || Number.isNaN(sec)) return "—";
  sec = Math.max(0, Math.round(Number(sec)));
  const d = Math.floor(sec / 86400), hr = Math.floor((sec % 86400) / 3600);
  const m = Math.floor((sec % 3600) / 60), x = sec % 60;
  if (d) return `${d}d${String(hr).padStart(2, "0")}h`;
  if (hr) return `${hr}h${String(m).padStart(2, "0")}m`;
  if (m) return `${m}m${String(x).padStart(2, "0")}s`;
  return `${x}s`;
}

export function since(startIso, endIso) {
  if (!startIso) return null;
  const end = endIso ? new Date(endIso) : new Date();
  return (end.getTime() - new Date(startIso).getTime()) / 1000;
}

/** A duration: the measured seconds when there are some, else since the start (or "—"). */
export function took(measured, startIso, endIso) {
  return fmtDuration(measured ?? (startIso ? since(startIso, endIso) : null));
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Number(n), i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${i ? v.toFixed(1) : v} ${units[i]}`;
}

export function fmtKb(kb) {
  return kb === null || kb === undefined ? "—" : fmtBytes(Number(kb) * 1024);
}

export function show(v) {
  return v === null || v === undefined || v === "" ? "—" : String(v);
}

// ---- small widgets ------------------------------------------------------------------------

export function table(headers, rows, attrs = {}) {
  return h("div", { class: "table-wrap" },
    h("table", attrs,
      h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
      h("tbody", {}, rows)));
}

export function message(text, kind = "info") {
  return h("p", { class: `msg msg-${kind}`, role: kind === "error" ? "alert" : "status",
    testid: `msg-${kind}` }, text);
}

export function debounce(fn, ms) {
  let timer = null, last = 0;
  const run = () => { timer = null; last = Date.now(); fn(); };
  const call = () => {
    if (timer) return;
    const wait = Math.max(0, last + ms - Date.now());
    timer = setTimeout(run, wait);
  };
  call.cancel = () => { if (timer) clearTimeout(timer); timer = null; };
  return call;
}
