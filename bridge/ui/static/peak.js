// Peak-style definitions, their executions, per-step details and logs.
import { api, query } from "./api.js";
import { badge, clear, debounce, fmtTime, h, show, table } from "./dom.js";
import { errorBox, pager, setParams } from "./ui.js";

const BASE = "/workflows/api/v1/workflows";
const PAGE = 25;
const RUNNING = new Set(["Running", "Stopping", "Retrying", "Pending"]);
const REFRESH_MS = 2000; // one request per 2 s while an execution runs (no event carries it)

export function peakListView(main, _args, params) {
  let alive = true;
  let page = Number(params.get("page") || 1) || 1;
  const search = h("input", { id: "peak-search", type: "search", testid: "peak-search",
    value: params.get("q") || "", placeholder: "part of the name", autocomplete: "off" });
  const box = h("div", { testid: "peak-list" });
  main.append(h("h1", {}, "Peak workflows"),
    h("form", { class: "filters", role: "search", onsubmit: (e) => e.preventDefault() },
      h("label", { for: "peak-search" }, "Name", search)), box);
  search.addEventListener("input", debounce(() => { page = 1; load(); }, 300));

  async function load() {
    const p = new URLSearchParams();
    if (search.value.trim()) p.set("q", search.value.trim());
    if (page > 1) p.set("page", String(page));
    setParams(p);
    let got;
    try {
      got = await api(`${BASE}/${query({ pageSize: PAGE, pageNumber: page,
        searchTerm: search.value.trim() })}`);
    } catch (err) {
      if (alive) clear(box).append(errorBox(err.status === 404
        ? "The Peak-style service is not on this daemon." : err));
      return;
    }
    if (!alive) return;
    const rows = got.workflows.map((w) => h("tr", { testid: "peak-row", "data-id": w.id },
      h("td", { "data-label": "ID" }, String(w.id)),
      h("td", { "data-label": "Name" }, h("a", { href: `#/peak/${w.id}` }, w.name)),
      h("td", { "data-label": "Status" }, badge(w.status)),
      h("td", { "data-label": "Last execution" }, w.lastExecution
        ? h("a", { href: `#/peak/${w.id}/executions/${encodeURIComponent(
          w.lastExecution.executionId)}` }, badge(w.lastExecution.status), " ",
        fmtTime(w.lastExecution.executedAt)) : "never"),
      h("td", { "data-label": "Triggers" }, (w.triggers || []).map(triggerText).join(", ")
        || "manual"),
      h("td", { "data-label": "Updated" }, fmtTime(w.updatedAt))));
    clear(box).append(got.workflows.length ? table(["ID", "Name", "Status", "Last execution",
      "Triggers", "Updated"], rows, { class: "peak" })
      : h("p", { testid: "empty" }, "No definitions."),
    pager(got.workflowsCount, PAGE, (page - 1) * PAGE, (o) => { page = o / PAGE + 1; load(); }));
  }
  load();
  return () => { alive = false; };
}

function triggerText(t) {
  if (t.cron) return `cron ${t.cron}`;
  if (t.webhook) return "webhook";
  return Object.keys(t).join("/");
}

export function peakDefinitionView(main, [idText]) {
  const id = Number(idText);
  let alive = true;
  let page = 1;
  let timer = null;
  const head = h("section", { testid: "peak-head" });
  const box = h("div", { testid: "peak-executions" });
  main.append(h("p", { class: "crumbs" }, h("a", { href: "#/peak" }, "← Peak workflows")),
    head, h("h2", {}, "Executions (last 90 days)"), box);

  api(`${BASE}/${id}`).then((d) => {
    if (!alive) return;
    const steps = Object.entries(d.steps || {});
    clear(head).append(h("h1", {}, d.name, " ", h("span", { class: "muted" }, `#${d.id}`)),
      h("p", {}, badge(d.status), ` · ${steps.length} steps · updated ${fmtTime(d.updatedAt)}`),
      table(["Step", "Type", "Command", "Parents"], steps.map(([name, st]) => h("tr", {},
        h("td", { "data-label": "Step" }, name),
        h("td", { "data-label": "Type" }, show(st.type)),
        h("td", { "data-label": "Command", class: "path" }, show(st.command)),
        h("td", { "data-label": "Parents" }, (st.parents || []).join(", ") || "—")))));
  }, (err) => { if (alive) clear(head).append(errorBox(err)); });

  async function load() {
    timer = null;
    let got;
    try {
      got = await api(`${BASE}/executions/${id}${query({ pageSize: PAGE, pageNumber: page })}`);
    } catch (err) { if (alive) clear(box).append(errorBox(err)); return; }
    if (!alive) return;
    const rows = got.executions.map((e) => h("tr", { testid: "execution-row",
      "data-id": e.executionId, "data-status": e.status },
    h("td", { "data-label": "Execution" }, h("a", { href: `#/peak/${id}/executions/${
      encodeURIComponent(e.executionId)}` }, e.executionId)),
    h("td", { "data-label": "Status" }, badge(e.status)),
    h("td", { "data-label": "Started" }, fmtTime(e.executedAt)),
    h("td", { "data-label": "Finished" }, fmtTime(e.finishedAt)),
    h("td", { "data-label": "Duration" }, show(e.duration))));
    clear(box).append(rows.length ? table(["Execution", "Status", "Started", "Finished",
      "Duration"], rows, { class: "executions" }) : h("p", { testid: "empty" }, "None yet."),
    pager(got.executionCount, PAGE, (page - 1) * PAGE, (o) => { page = o / PAGE + 1; load(); }));
    if (got.executions.some((e) => RUNNING.has(e.status))) timer = setTimeout(load, REFRESH_MS);
  }
  load();
  return () => { alive = false; if (timer) clearTimeout(timer); };
}

export function peakExecutionView(main, [idText, exId]) {
  const id = Number(idText);
  let alive = true;
  let timer = null;
  let logStop = null;
  let selected = null;
  const head = h("section", { testid: "execution-head" });
  const box = h("div", { testid: "execution-steps" });
  const logHead = h("h2", { id: "h-step-log" }, "Step log");
  const logStatus = h("span", { class: "muted", testid: "step-log-status", role: "status" });
  const logBox = h("pre", { class: "log", testid: "step-log", tabindex: 0,
    "aria-labelledby": "h-step-log" }, "Pick a step to read its log.");
  main.append(h("p", { class: "crumbs" }, h("a", { href: "#/peak" }, "Peak workflows"), " / ",
    h("a", { href: `#/peak/${id}` }, `#${id}`), " / ", exId), head, box,
  h("section", {}, logHead, logStatus, logBox));

  async function load() {
    timer = null;
    let ex;
    try { ex = await api(`${BASE}/${id}/executions/${encodeURIComponent(exId)}`); } catch (err) {
      if (alive) clear(head).append(errorBox(err));
      return;
    }
    if (!alive) return;
    clear(head).append(h("h1", {}, "Execution ", h("span", { class: "mono" }, ex.executionId)),
      h("p", {}, h("span", { testid: "execution-status" }, badge(ex.status)),
        ` · started ${fmtTime(ex.executedAt)} · finished ${fmtTime(ex.finishedAt)}`));
    const rows = (ex.steps || []).map((st) => h("tr", { testid: "step-row", "data-step": st.name,
      "data-status": st.status },
    h("td", { "data-label": "Step" }, h("button", { type: "button", class: "link",
      testid: "step-log-button", "aria-label": `log of ${st.name}`,
      onclick: () => showLog(st.name) }, st.name)),
    h("td", { "data-label": "Status" }, badge(st.status)),
    h("td", { "data-label": "Type" }, show(st.stepType)),
    h("td", { "data-label": "Job id" }, show(st.jobId)),
    h("td", { "data-label": "Attempt" }, show(st.attempt)),
    h("td", { "data-label": "Exit" }, show(st.output && st.output.exitCode)),
    h("td", { "data-label": "Message" }, show(st.output && st.output.message)),
    h("td", { "data-label": "Started" }, fmtTime(st.startedAt)),
    h("td", { "data-label": "Finished" }, fmtTime(st.finishedAt)),
    h("td", { "data-label": "Image", class: "path" }, show(st.image)),
    h("td", { "data-label": "Command", class: "path" }, show(st.command))));
    clear(box).append(table(["Step", "Status", "Type", "Job id", "Attempt", "Exit", "Message",
      "Started", "Finished", "Image", "Command"], rows, { class: "steps" }));
    if (RUNNING.has(ex.status)) timer = setTimeout(load, REFRESH_MS);
  }

  function showLog(step) {
    if (logStop) logStop();
    selected = step;
    logHead.textContent = `Log of ${step}`;
    logBox.textContent = "";
    let stopped = false;
    let next = null;
    let t = null;
    logStop = () => { stopped = true; if (t) clearTimeout(t); };
    const step1 = async () => {
      let got;
      try {
        got = await api(`${BASE}/${id}/executions/${encodeURIComponent(exId)}/logs${query({
          stepName: step, nextToken: next })}`);
      } catch (err) {
        if (!stopped) logStatus.textContent = err.message;
        return;
      }
      if (stopped || selected !== step) return;
      if (got.logs.length) {
        logBox.append(got.logs.map((l) => `${l.message}\n`).join(""));
      }
      const moved = got.nextToken !== next;
      next = got.nextToken;
      if (next === null) {
        logStatus.textContent = `complete (${got.stepRunStatus})`;
        logStatus.dataset.final = "true";
        if (!logBox.textContent) logBox.textContent = "(empty)";
        return;
      }
      logStatus.textContent = `following… (${got.stepRunStatus})`;
      logStatus.dataset.final = "false";
      t = setTimeout(step1, moved && got.logs.length ? 0 : 1000);
    };
    step1();
  }
  load();
  return () => { alive = false; if (timer) clearTimeout(timer); if (logStop) logStop(); };
}
