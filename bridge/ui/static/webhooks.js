// Webhook deliveries that gave up (dead letters): list and redeliver.
import { api } from "./api.js";
import { clear, fmtTime, h, show, table } from "./dom.js";
import { actionButton, confirmAction, errorBox, toast } from "./ui.js";

export function deadView(main) {
  let alive = true;
  const box = h("div", { testid: "dead-list", "aria-busy": "true" });
  main.append(h("h1", {}, "Dead webhook deliveries"),
    h("p", { class: "note" }, "Deliveries that used all their attempts or grew too old. "
      + "Redelivering one queues it (and those held behind it) again, in order."), box);

  async function load() {
    let items;
    try { items = await api("/webhooks/dead?limit=500"); } catch (err) {
      if (alive) clear(box).append(errorBox(err));
      return;
    }
    if (!alive) return;
    const rows = items.map((d) => h("tr", { testid: "dead-row", "data-id": d.id },
      h("td", { "data-label": "Delivery" }, `#${d.id}`),
      h("td", { "data-label": "Event" }, show(d.type)),
      h("td", { "data-label": "Workflow" }, d.workflow_id
        ? h("a", { href: `#/workflows/${d.workflow_id}` }, `#${d.workflow_id}`) : "—"),
      h("td", { "data-label": "URL", class: "path" }, show(d.url)),
      h("td", { "data-label": "Tries" }, show(d.tries)),
      h("td", { "data-label": "Last error" }, show(d.last_error)),
      h("td", { "data-label": "Died" }, fmtTime(d.dead_at)),
      h("td", {}, actionButton("Redeliver", "redeliver", async () => {
        if (!await confirmAction("Redeliver this webhook?", `${d.type} of workflow #${
          d.workflow_id} to ${d.url} will be posted again.`, "Redeliver")) return;
        const r = await api(`/webhooks/dead/${d.id}/redeliver`, { method: "POST" });
        toast(r.message);
        load();
      }))));
    clear(box).append(items.length ? table(["Delivery", "Event", "Workflow", "URL", "Tries",
      "Last error", "Died", ""], rows, { class: "dead" })
      : h("p", { testid: "empty" }, "No dead deliveries."));
    box.setAttribute("aria-busy", "false");
  }
  load();
  return () => { alive = false; };
}
