// The daemon's API: bearer token (kept in sessionStorage, asked for on a 401), JSON calls,
// and the event stream read with fetch() (EventSource cannot send an Authorization header).

const TOKEN_KEY = "akobridge.token";

export class ApiError extends Error {
  constructor(status, body, path) {
    const detail = body && Array.isArray(body.detail)
      ? body.detail.map((d) => (d.field ? `${d.field}: ${d.message}` : d.message)).join("; ")
      : "";
    const what = (body && body.error) || `HTTP ${status}`;
    super(detail ? `${what} (${detail})` : what);
    this.status = status;
    this.body = body;
    this.path = path;
  }
}

export function token() {
  try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch { return ""; }
}

export function setToken(value) {
  try {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch { /* storage refused: the token lives until the page reloads */ }
  tokenListeners.forEach((fn) => fn());
}

const tokenListeners = new Set();
export function onTokenChange(fn) { tokenListeners.add(fn); }

let prompting = null;

/** Ask for the token once, whatever number of calls are waiting for it. */
export function askToken(why) {
  if (prompting) return prompting;
  const dialog = document.getElementById("token-dialog");
  const form = document.getElementById("token-form");
  const input = document.getElementById("token-input");
  const note = document.getElementById("token-why");
  note.textContent = why || (token() ? "The token was refused: enter a valid one."
    : "This daemon needs an API token.");
  input.value = "";
  prompting = new Promise((resolve, reject) => {
    const done = (ok) => {
      form.removeEventListener("submit", submit);
      dialog.removeEventListener("cancel", cancel);
      prompting = null;
      if (dialog.open) dialog.close();
      if (ok) resolve(); else reject(new ApiError(401, { error: "no token given" }, ""));
    };
    const submit = (ev) => {
      ev.preventDefault();
      if (ev.submitter && ev.submitter.value === "cancel") { done(false); return; }
      const value = input.value.trim();
      if (!value) { input.focus(); return; }
      setToken(value);
      done(true);
    };
    const cancel = () => done(false);
    form.addEventListener("submit", submit);
    dialog.addEventListener("cancel", cancel);
    dialog.showModal();
    input.focus();
  });
  return prompting;
}

function headers(extra = {}) {
  const out = { Accept: "application/json", ...extra };
  const t = token();
  if (t) out.Authorization = `Bearer ${t}`;
  return out;
}

async function call(path, init, tries = 3) {
  const res = await fetch(path, { ...init, headers: headers(init.headers || {}) });
  if (res.status === 401 && tries > 0) {
    await askToken();
    return call(path, init, tries - 1);
  }
  return res;
}

/** JSON from the API; throws ApiError with the daemon's {error, detail}. */
export async function api(path, { method = "GET", body, signal } = {}) {
  const init = { method, signal, headers: {} };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const res = await call(path, init);
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { error: text.slice(0, 300) }; }
  if (!res.ok) throw new ApiError(res.status, data, path);
  return data;
}

/** Save a download (needs the token, so no plain link): fetch, then a blob URL. */
export async function download(path, fallbackName) {
  const res = await call(path, { method: "GET", headers: { Accept: "*/*" } });
  if (!res.ok) {
    let body = null;
    try { body = await res.json(); } catch { /* not JSON */ }
    throw new ApiError(res.status, body, path);
  }
  const disp = res.headers.get("content-disposition") || "";
  const m = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(disp);
  const name = m ? decodeURIComponent(m[1]) : fallbackName;
  const url = URL.createObjectURL(await res.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
  return name;
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === null || v === undefined || v === "") continue;
    if (Array.isArray(v)) v.forEach((x) => q.append(k, x)); else q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

// ---- the event stream ---------------------------------------------------------------------

const SILENCE_MS = 45_000;
const subscribers = new Set();
let controller = null;
let backoff = 1000;
let retryTimer = null;
let status = "connecting";
const statusListeners = new Set();

function setStatus(s) {
  status = s;
  statusListeners.forEach((fn) => fn(s));
}

export function onStreamStatus(fn) { statusListeners.add(fn); fn(status); }

/**
 * Receive every change event: fn(event) for each, reconnected() after each (re)connect
 * (refetch what is shown: events may have been missed). Returns the unsubscribe function.
 */
export function subscribe(fn, reconnected) {
  const sub = { fn, reconnected };
  subscribers.add(sub);
  if (!controller && !retryTimer) connect();
  return () => subscribers.delete(sub);
}

function retryLater() {
  controller = null;
  setStatus("reconnecting");
  const wait = backoff + Math.random() * 250;
  backoff = Math.min(backoff * 2, 30_000);
  retryTimer = setTimeout(() => { retryTimer = null; connect(); }, wait);
}

export function reconnect() {
  if (retryTimer) { clearTimeout(retryTimer); retryTimer = null; }
  if (controller) controller.abort();
  controller = null;
  backoff = 1000;
  connect();
}

onTokenChange(() => { if (controller || retryTimer) reconnect(); });

async function connect() {
  const mine = new AbortController();
  controller = mine;
  setStatus("connecting");
  let res;
  try {
    res = await fetch("/events", { headers: { ...headers(), Accept: "text/event-stream" },
      signal: mine.signal, cache: "no-store" });
  } catch {
    if (controller === mine) retryLater();
    return;
  }
  if (res.status === 401) {
    controller = null;
    setStatus("needs a token");
    try { await askToken(); } catch { /* asked again on the next data call */ }
    if (!controller && !retryTimer) retryLater();
    return;
  }
  if (!res.ok || !res.body) { if (controller === mine) retryLater(); return; }
  setStatus("live");
  backoff = 1000;
  subscribers.forEach((s) => { try { s.reconnected && s.reconnected(); } catch (e) { console.error(e); } });
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  // the daemon writes a keep-alive every 15 s: silence for longer is a dead connection
  let heard = Date.now();
  const watchdog = setInterval(() => {
    if (Date.now() - heard > SILENCE_MS) mine.abort();
  }, 5000);
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      heard = Date.now();
      buf += value.replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        dispatch(block);
      }
    }
  } catch { /* aborted or dropped */ }
  clearInterval(watchdog);
  if (controller === mine) retryLater();
}

function dispatch(block) {
  let type = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
    if (field === "event") type = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return;
  let event;
  try { event = JSON.parse(data.join("\n")); } catch { return; }
  event.type = event.type || type;
  subscribers.forEach((s) => { try { s.fn(event); } catch (e) { console.error(e); } });
}
