// One workflow: header, actions, its DAG (or a list above GRAPH_LIMIT activities), live.
import { api, subscribe } from "./api.js";
import {
  badge, clear, debounce, fmtDuration, fmtTime, h, show, since, stateGroup, table, took,
} from "./dom.js";
import { drawGraph } from "./graph.js";
import { countsChips } from "./list.js";
import { actionButton, confirmAction, enc, errorBox, pager, setParams, toast } from "./ui.js";

export const GRAPH_LIMIT = 300;
const ROWS = 100;
const RETRYABLE = new Set(["FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "CANCELLED",
  "SKIPPED"]);

export function workflowView(main, [idText], params) {
  const id = Number(idText);
  let wf = null;
  let graph = null;
  let alive = true;
  let mode = params.get("view") || "";
  const listState = { group: params.get("group") || "", search: params.get("q") || "",
    offset: 0 };

  const head = h("section", { class: "wf-head", testid: "workflow-head" });
  const actions = h("div", { class: "actions", role: "group", "aria-label": "actions" });
  const switcher = h("div", { class: "switch", role: "group", "aria-label": "show as" });
  const note = h("div", { testid: "view-note" });
  const body = h("div", { class: "wf-body" });
  // the actions and the graph/list switch share a line: the graph gets the height
  main.append(h("p", { class: "crumbs" }, h("a", { href: "#/" }, "← Workflows")), head,
    h("div", { class: "wf-bar" }, actions, switcher), note, body);

  const href = (name) => `#/workflows/${id}/activities/${enc(name)}`;

  async function load() {
    try {
      const got = await api(`/workflows/${id}`);
      if (!alive) return;
      const first = wf === null;
      wf = got;
      if (first && !mode) mode = wf.activities.length > GRAPH_LIMIT ? "list" : "graph";
      renderHead();
      renderActions();
      if (first) renderBody();
      else if (mode === "graph" && graph) {
        for (const a of wf.activities) graph.setState(a.name, a.state);
        graph.resize(); // the facts or actions above may have changed height
      } else if (mode === "list") renderList();
    } catch (err) {
      if (!alive) return;
      if (wf === null) clear(body).append(errorBox(err));
      else toast(err.message, "error");
    }
  }

  function renderHead() {
    clear(head).append(
      h("h1", {}, h("span", { testid: "workflow-name" }, wf.name), " ",
        h("span", { class: "muted" }, `#${wf.id}`)),
      h("dl", { class: "facts" },
        fact("State", badge(wf.state), "workflow-state"),
        fact("Cluster", show(wf.runtime)),
        fact("Activities", h("span", {}, `${wf.activities.length}: `,
          countsChips(wf.counts, wf.activities.length))),
        fact("Submitted", fmtTime(wf.created_at)),
        fact("Finished", fmtTime(wf.finished_at)),
        fact("Duration", fmtDuration(since(wf.created_at, wf.finished_at))),
        wf.reason && wf.state !== "COMPLETED" ? fact("Reason", wf.reason) : null,
        wf.stage_out_error ? fact("Stage-out", wf.stage_out_error) : null));
  }

  function renderActions() {
    clear(actions);
    if (wf.state === "RUNNING") {
      actions.append(actionButton("Cancel workflow", "cancel-workflow", async () => {
        const left = wf.activities.filter((a) => !["COMPLETED", "FAILED", "TIMEOUT",
          "OUT_OF_MEMORY", "CANCELLED", "NODE_FAIL", "SKIPPED"].includes(a.state)).length;
        const jobs = wf.activities.filter((a) => ["RUNNING", "QUEUED", "SUBMITTING"]
          .includes(a.state)).length;
        if (!await confirmAction("Cancel this workflow?",
          `Workflow #${wf.id} ${wf.name}: ${plural(left, "unfinished activity",
            "unfinished activities")} will be cancelled, ${jobs} of them with a job that is `
          + "stopped (scancel).", "Cancel the workflow")) {
          return;
        }
        const r = await api(`/workflows/${id}/cancel`, { method: "POST" });
        toast(r.message);
        refetch();
      }, "danger"));
    }
    const retryable = wf.activities.filter((a) => RETRYABLE.has(a.state)).length;
    if (wf.state !== "RUNNING" && retryable) {
      actions.append(actionButton(`Retry ${retryable} failed`, "retry-workflow", async () => {
        if (!await confirmAction("Retry the failed activities?",
          `${plural(retryable, "failed, cancelled or skipped activity",
            "failed, cancelled or skipped activities")} of #${wf.id} ${wf.name} will run `
          + "again.", "Retry them")) return;
        const r = await api(`/workflows/${id}/retry`, { method: "POST" });
        toast(r.message);
        refetch();
      }));
    }
    actions.append(h("a", { class: "button", href: `#/workflows/${id}/artifacts`,
      testid: "artifacts-link" }, "Files"));
  }

  function setMode(m) {
    mode = m;
    const p = new URLSearchParams();
    p.set("view", m);
    setParams(p);
    renderBody();
  }

  function renderBody() {
    clear(switcher).append(
      h("button", { type: "button", "aria-pressed": String(mode === "graph"),
        testid: "show-graph", onclick: () => setMode("graph") }, "Graph"),
      h("button", { type: "button", "aria-pressed": String(mode === "list"),
        testid: "show-list", onclick: () => setMode("list") }, "List"));
    clear(note);
    clear(body);
    graph = null;
    if (mode === "graph") {
      const host = h("div", { class: "graph", testid: "graph" });
      body.append(host);
      if (wf.activities.length > GRAPH_LIMIT) {
        note.append(h("p", { class: "note" }, `${wf.activities.length} activities: the graph `
          + "may take a few seconds to lay out and is dense; the list view is lighter."));
      }
      graph = drawGraph(host, wf.activities, href);
    } else {
      if (wf.activities.length > GRAPH_LIMIT) {
        note.append(h("p", { class: "note" }, `${wf.activities.length} activities, shown as a `
          + "list. ", h("button", { type: "button", testid: "draw-graph",
          onclick: () => setMode("graph") }, "Draw the graph anyway")));
      }
      renderList();
    }
  }

  function renderList() {
    const groups = ["", "done", "running", "queued", "pending", "failed", "cancelled",
      "skipped"];
    let sel = body.querySelector("#act-group");
    let input = body.querySelector("#act-search");
    let rowsBox = body.querySelector("[data-testid=activity-list]");
    if (!rowsBox) {
      sel = h("select", { id: "act-group", testid: "activity-filter-state" },
        groups.map((g) => h("option", { value: g, selected: g === listState.group },
          g || "any")));
      input = h("input", { id: "act-search", type: "search", testid: "activity-filter-search",
        value: listState.search, placeholder: "part of the name", autocomplete: "off" });
      const onChange = () => {
        listState.group = sel.value; listState.search = input.value.trim();
        listState.offset = 0; renderList();
      };
      sel.addEventListener("change", onChange);
      input.addEventListener("input", debounce(onChange, 250));
      rowsBox = h("div", { testid: "activity-list" });
      body.append(h("form", { class: "filters", role: "search", "aria-label": "filter activities",
        onsubmit: (ev) => ev.preventDefault() },
      h("label", { for: "act-group" }, "State", sel),
      h("label", { for: "act-search" }, "Name", input)), rowsBox);
    }
    const q = listState.search.toLowerCase();
    const shown = wf.activities.filter((a) => (!listState.group
      || stateGroup(a.state) === listState.group) && (!q || a.name.toLowerCase().includes(q)));
    const page = shown.slice(listState.offset, listState.offset + ROWS);
    const rows = page.map((a) => h("tr", { testid: "activity-row", "data-activity": a.name,
      "data-state": a.state },
    h("td", { "data-label": "Activity" }, h("a", { href: href(a.name) }, a.name)),
    h("td", { "data-label": "State" }, badge(a.state)),
    h("td", { "data-label": "Attempt" }, show(a.attempt)),
    h("td", { "data-label": "Job id" }, show(a.job_id)),
    h("td", { "data-label": "Exit" }, show(a.exit_code)),
    h("td", { "data-label": "Started" }, fmtTime(a.started_at)),
    h("td", { "data-label": "Duration" }, took(a.duration_s, a.started_at, a.finished_at)),
    h("td", { "data-label": "Depends on" }, (a.depends_on || []).join(", ") || "—"),
    h("td", { "data-label": "Reason" }, show(a.reason))));
    clear(rowsBox).append(
      table(["Activity", "State", "Attempt", "Job id", "Exit", "Started", "Duration",
        "Depends on", "Reason"], rows, { class: "activities" }),
      pager(shown.length, ROWS, listState.offset, (o) => { listState.offset = o; renderList(); }));
  }

  const refetch = debounce(load, 1000);
  const unsub = subscribe((ev) => {
    if (ev.workflow_id !== id || !wf) return;
    if (ev.type === "activity") {
      const a = wf.activities.find((x) => x.name === ev.activity);
      if (a) {
        Object.assign(a, { state: ev.state, attempt: ev.attempt, job_id: ev.job_id,
          exit_code: ev.exit_code, reason: ev.reason });
        if (graph) graph.setState(a.name, a.state);
      }
    }
    refetch();
  }, refetch);
  load();
  return () => { alive = false; unsub(); refetch.cancel(); };
}

function plural(n, one, many) {
  return `${n} ${n === 1 ? one : many}`;
}

export function fact(label, value, testid) {
  return h("div", { class: "fact" }, h("dt", {}, label), h("dd", { testid }, value));
}
