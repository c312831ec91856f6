// One activity: attempts (job ids, exit codes, reasons, times, MaxRSS/CPU), the job script,
// stdout/stderr followed while the attempt runs; cancel it.
import { api, query, subscribe } from "./api.js";
import {
  badge, clear, debounce, fmtKb, fmtTime, h, show, table, TERMINAL, took,
} from "./dom.js";
import { actionButton, confirmAction, enc, errorBox, toast } from "./ui.js";
import { fact } from "./workflow.js";

const KEEP = 512 * 1024; // characters of a log kept on the page (the tail)
const FOLLOW_MS = 1000;

export function activityView(main, [idText, name]) {
  const id = Number(idText);
  let alive = true;
  let act = null;
  let chosen = null; // attempt number picked by the user (null: the latest)
  let shownAttempt = null;
  let stream = "out";
  let follower = null;

  const head = h("section", { testid: "activity-head" });
  const actions = h("div", { class: "actions" });
  const attempts = h("section", { "aria-labelledby": "h-attempts" });
  const pick = h("select", { id: "attempt-pick", testid: "attempt-pick" });
  const logStatus = h("span", { class: "muted", testid: "log-status", role: "status" });
  const logBox = h("pre", { class: "log", testid: "log", tabindex: 0,
    "aria-label": "job output" });
  const scriptBox = h("pre", { class: "script", testid: "script", tabindex: 0,
    "aria-label": "job script" });
  const commandBox = h("pre", { class: "script", testid: "command", tabindex: 0,
    "aria-label": "command file" });
  const tabOut = h("button", { type: "button", role: "tab", testid: "tab-out",
    "aria-selected": "true", onclick: () => setStream("out") }, "stdout");
  const tabErr = h("button", { type: "button", role: "tab", testid: "tab-err",
    "aria-selected": "false", onclick: () => setStream("err") }, "stderr");
  main.append(
    h("p", { class: "crumbs" }, h("a", { href: "#/" }, "Workflows"), " / ",
      h("a", { href: `#/workflows/${id}`, testid: "back-to-workflow" }, `#${id}`), " / ", name),
    head, actions, attempts,
    h("section", { "aria-labelledby": "h-output" },
      h("h2", { id: "h-output" }, "Output"),
      h("div", { class: "row" }, h("label", { for: "attempt-pick" }, "Attempt ", pick),
        h("div", { role: "tablist", "aria-label": "stream", class: "tabs" }, tabOut, tabErr),
        logStatus),
      logBox),
    h("section", { "aria-labelledby": "h-script" },
      h("h2", { id: "h-script" }, "Job script"), scriptBox,
      h("h3", {}, "Command file"), commandBox));
  pick.addEventListener("change", () => { chosen = Number(pick.value); restart(); });

  function setStream(st) {
    stream = st;
    tabOut.setAttribute("aria-selected", String(st === "out"));
    tabErr.setAttribute("aria-selected", String(st === "err"));
    restart();
  }

  async function load() {
    let got;
    try { got = await api(`/workflows/${id}/activities/${enc(name)}`); } catch (err) {
      if (alive) clear(head).append(errorBox(err));
      return;
    }
    if (!alive) return;
    act = got;
    render(got.workflow);
    const latest = act.attempts.length ? act.attempts[act.attempts.length - 1].number : null;
    const want = chosen ?? latest;
    if (want !== shownAttempt) restart();
  }

  function render(wf) {
    clear(head).append(
      h("h1", {}, h("span", { testid: "activity-name" }, act.name), " ",
        h("span", { class: "muted" }, `in ${wf.name} #${wf.id}`)),
      h("dl", { class: "facts" },
        fact("State", badge(act.state), "activity-state"),
        fact("Attempt", show(act.attempt)),
        fact("Job id", show(act.job_id), "activity-job"),
        fact("Exit code", show(act.exit_code), "activity-exit"),
        fact("Reason", show(act.reason)),
        fact("Depends on", (act.depends_on || []).join(", ") || "—"),
        fact("Started", fmtTime(act.started_at)),
        fact("Finished", fmtTime(act.finished_at)),
        fact("Duration", took(act.duration_s, act.started_at, act.finished_at))),
      h("div", {}, act.stderr_tail ? h("details", {}, h("summary", {}, "Last lines of stderr"),
        h("pre", { class: "log" }, act.stderr_tail)) : null));
    clear(actions);
    if (!TERMINAL.has(act.state) && !act.cancel_requested) {
      actions.append(actionButton("Cancel activity", "cancel-activity", async () => {
        if (!await confirmAction("Cancel this activity?", `${act.name} of #${id}: its job `
          + `${act.job_id ? `${act.job_id} ` : ""}is stopped and its dependents skipped.`,
        "Cancel the activity")) return;
        const r = await api(`/workflows/${id}/cancel`, { method: "POST",
          body: { activities: [act.name] } });
        toast(r.message);
        refetch();
      }, "danger"));
    } else if (act.cancel_requested && !TERMINAL.has(act.state)) {
      actions.append(h("p", { class: "note" }, "Cancel requested…"));
    }
    const rows = act.attempts.map((t) => h("tr", { testid: "attempt-row",
      "data-attempt": t.number, "data-state": t.state },
    h("td", { "data-label": "#" }, String(t.number)),
    h("td", { "data-label": "Cluster" }, show(t.cluster)),
    h("td", { "data-label": "Job id", testid: "attempt-job" }, show(t.job_id)),
    h("td", { "data-label": "State" }, badge(t.state)),
    h("td", { "data-label": "Exit" }, show(t.exit_code)),
    h("td", { "data-label": "Reason" }, show(t.reason)),
    h("td", { "data-label": "Submitted" }, fmtTime(t.submitted_at)),
    h("td", { "data-label": "Started" }, fmtTime(t.started_at)),
    h("td", { "data-label": "Finished" }, fmtTime(t.finished_at)),
    h("td", { "data-label": "Elapsed" }, took(t.elapsed_s, t.started_at, t.finished_at)),
    h("td", { "data-label": "MaxRSS", testid: "attempt-rss" }, fmtKb(t.max_rss_kb)),
    h("td", { "data-label": "CPU" }, t.cpu_s === null || t.cpu_s === undefined ? "—"
      : `${Number(t.cpu_s).toFixed(2)} s`),
    h("td", { "data-label": "Job dir", class: "path" }, show(t.jobdir))));
    clear(attempts).append(h("h2", { id: "h-attempts" }, "Attempts"),
      act.attempts.length ? table(["#", "Cluster", "Job id", "State", "Exit", "Reason",
        "Submitted", "Started", "Finished", "Elapsed", "MaxRSS", "CPU", "Job dir"], rows,
      { class: "attempts" }) : h("p", { testid: "no-attempts" }, "No job yet."));
    const numbers = act.attempts.map((t) => t.number);
    if (pick.options.length !== numbers.length) {
      clear(pick).append(...numbers.map((n) => h("option", { value: n }, String(n))));
    }
    pick.value = String(chosen ?? numbers[numbers.length - 1] ?? "");
    pick.disabled = !numbers.length;
  }

  function restart() {
    if (follower) follower.stop();
    follower = null;
    if (!act) return;
    const latest = act.attempts.length ? act.attempts[act.attempts.length - 1].number : null;
    shownAttempt = chosen ?? latest;
    clear(logBox);
    scriptBox.textContent = "";
    commandBox.textContent = "";
    if (shownAttempt === null) { logStatus.textContent = "no job yet"; return; }
    loadScript(shownAttempt);
    follower = follow(shownAttempt, stream);
  }

  async function loadScript(n) {
    try {
      const got = await api(`/workflows/${id}/activities/${enc(name)}/script${query({ attempt: n })}`);
      if (!alive || n !== shownAttempt) return;
      scriptBox.textContent = got.script ?? "(the job script is not there)";
      commandBox.textContent = got.command ?? "(no command file)";
    } catch (err) {
      if (alive) scriptBox.textContent = `cannot read the script: ${err.message}`;
    }
  }

  function follow(n, st) {
    let stopped = false;
    let timer = null;
    let offset = 0;
    let text = "";
    const base = `/workflows/${id}/activities/${enc(name)}/logs`;
    const step = async () => {
      timer = null;
      let page;
      try {
        page = await api(`${base}${query({ stream: st, offset, attempt: n })}`);
      } catch (err) {
        if (stopped) return;
        logStatus.textContent = `cannot read: ${err.message}; trying again`;
        timer = setTimeout(step, FOLLOW_MS * 3);
        return;
      }
      if (stopped) return;
      if (page.data) {
        const atEnd = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 8;
        text += page.data;
        if (text.length > KEEP) text = `…\n${text.slice(text.length - KEEP)}`;
        logBox.textContent = text;
        if (atEnd) logBox.scrollTop = logBox.scrollHeight;
      }
      offset = page.next ?? offset;
      if (page.final) {
        logStatus.textContent = `complete · ${offset} bytes`;
        logStatus.dataset.final = "true";
        if (!text) logBox.textContent = "(empty)";
        return;
      }
      logStatus.textContent = `following… ${offset} bytes`;
      logStatus.dataset.final = "false";
      // more right away while a long log is being read, else at the follow pace
      timer = setTimeout(step, page.data && page.next < page.size ? 0 : FOLLOW_MS);
    };
    step();
    return { stop() { stopped = true; if (timer) clearTimeout(timer); } };
  }

  const refetch = debounce(load, 1000);
  const unsub = subscribe((ev) => {
    if (ev.workflow_id === id && (ev.type === "workflow" || ev.activity === name)) refetch();
  }, refetch);
  load();
  return () => { alive = false; unsub(); refetch.cancel(); if (follower) follower.stop(); };
}
