// The workflow list: filters (state, name, cluster), paging, live from the event stream.
import { api, query, subscribe } from "./api.js";
import { badge, clear, debounce, fmtDuration, fmtTime, h, since, table } from "./dom.js";
import { errorBox, pager, setParams } from "./ui.js";

const LIMIT = 50;
const STATES = ["", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"];

export function countsChips(counts, total) {
  const parts = Object.entries(counts || {}).filter(([, n]) => n > 0)
    .map(([group, n]) => h("span", { class: `chip st-${group}`, "data-group": group },
      `${n} ${group}`));
  return h("span", { class: "chips", testid: "counts" },
    parts.length ? parts : (total ? "" : "no activities"));
}

export function listView(main, _args, params) {
  const f = {
    state: params.get("state") || "",
    search: params.get("search") || "",
    runtime: params.get("runtime") || "",
    offset: Number(params.get("offset") || 0) || 0,
  };
  let visible = new Set();
  let alive = true;
  let inflight = null;

  const stateSel = h("select", { id: "f-state", testid: "filter-state" },
    STATES.map((st) => h("option", { value: st, selected: st === f.state }, st || "any")));
  const search = h("input", { id: "f-search", type: "search", testid: "filter-search",
    value: f.search, placeholder: "part of the name", autocomplete: "off" });
  const runtime = h("input", { id: "f-runtime", type: "search", testid: "filter-runtime",
    value: f.runtime, placeholder: "cluster name", autocomplete: "off", list: "f-runtimes" });
  const runtimes = h("datalist", { id: "f-runtimes" });
  const body = h("div", { testid: "workflow-list", "aria-live": "polite", "aria-busy": "true" });
  main.append(
    h("h1", {}, "Workflows"),
    h("form", { class: "filters", role: "search", "aria-label": "filter workflows",
      onsubmit: (ev) => { ev.preventDefault(); changed(); } },
    h("label", { for: "f-state" }, "State", stateSel),
    h("label", { for: "f-search" }, "Name", search),
    h("label", { for: "f-runtime" }, "Cluster", runtime, runtimes)),
    body);

  const changed = () => {
    f.state = stateSel.value; f.search = search.value.trim(); f.runtime = runtime.value.trim();
    f.offset = 0;
    save();
    load();
  };
  const typing = debounce(changed, 300);
  stateSel.addEventListener("change", changed);
  search.addEventListener("input", typing);
  runtime.addEventListener("input", typing);

  function save() {
    const p = new URLSearchParams();
    for (const k of ["state", "search", "runtime"]) if (f[k]) p.set(k, f[k]);
    if (f.offset) p.set("offset", String(f.offset));
    setParams(p);
  }

  async function load() {
    if (inflight) inflight.abort();
    const mine = new AbortController();
    inflight = mine;
    body.setAttribute("aria-busy", "true");
    let page;
    try {
      page = await api(`/workflows${query({ state: f.state, search: f.search,
        runtime: f.runtime, limit: LIMIT, offset: f.offset })}`, { signal: mine.signal });
    } catch (err) {
      if (err.name === "AbortError" || !alive) return;
      clear(body).append(errorBox(err));
      body.setAttribute("aria-busy", "false");
      return;
    }
    if (!alive || inflight !== mine) return;
    inflight = null;
    render(page);
  }

  function render(page) {
    visible = new Set(page.items.map((w) => w.id));
    for (const w of page.items) {
      if (w.runtime && ![...runtimes.options].some((o) => o.value === w.runtime)) {
        runtimes.append(h("option", { value: w.runtime }));
      }
    }
    const rows = page.items.map((w) => h("tr", { testid: "workflow-row",
      "data-id": w.id, "data-state": w.state },
    h("td", { "data-label": "ID" }, `#${w.id}`),
    h("td", { "data-label": "Name" }, h("a", { href: `#/workflows/${w.id}`,
      testid: "workflow-link" }, w.name)),
    h("td", { "data-label": "State" }, badge(w.state),
      w.reason && w.state !== "COMPLETED" ? h("div", { class: "reason" }, w.reason) : null),
    h("td", { "data-label": "Cluster" }, w.runtime || "—"),
    h("td", { "data-label": "Activities" }, h("span", { class: "total" },
      `${w.activities ?? "?"}: `), countsChips(w.counts, w.activities)),
    h("td", { "data-label": "Submitted" }, fmtTime(w.created_at)),
    h("td", { "data-label": "Finished" }, fmtTime(w.finished_at)),
    h("td", { "data-label": "Duration" },
      fmtDuration(w.duration_s ?? since(w.created_at, w.finished_at)))));
    clear(body);
    if (!page.items.length) {
      body.append(h("p", { testid: "empty" }, page.total ? "No workflows on this page."
        : "No workflows match."));
    } else {
      body.append(table(["ID", "Name", "State", "Cluster", "Activities", "Submitted",
        "Finished", "Duration"], rows, { class: "workflows" }));
    }
    body.append(pager(page.total, LIMIT, f.offset, (o) => { f.offset = o; save(); load(); }));
    body.setAttribute("aria-busy", "false");
  }

  const refetch = debounce(load, 1000);
  const unsub = subscribe((ev) => {
    // a new workflow shows on the first page; a change shows where the workflow is listed
    if (visible.has(ev.workflow_id) || (f.offset === 0 && ev.type === "workflow")) refetch();
  }, refetch);
  load();
  return () => { alive = false; unsub(); refetch.cancel(); if (inflight) inflight.abort(); };
}
