// A workflow's files on the cluster: browse (filter by path) and download.
import { api, download } from "./api.js";
import { clear, fmtBytes, fmtTime, h, table } from "./dom.js";
import { actionButton, errorBox, pager, toast } from "./ui.js";

const ROWS = 200;

export function artifactsView(main, [idText]) {
  const id = Number(idText);
  let files = [];
  let offset = 0;
  let alive = true;
  const filter = h("input", { id: "art-filter", type: "search", testid: "artifact-filter",
    placeholder: "part of the path", autocomplete: "off" });
  const box = h("div", { testid: "artifact-list", "aria-busy": "true" },
    h("p", {}, "Listing the files on the cluster…"));
  main.append(
    h("p", { class: "crumbs" }, h("a", { href: "#/" }, "Workflows"), " / ",
      h("a", { href: `#/workflows/${id}` }, `#${id}`), " / files"),
    h("h1", {}, `Files of workflow #${id}`),
    h("p", { class: "note" }, "Directories download as a .tar.gz."),
    h("form", { class: "filters", role: "search", onsubmit: (e) => e.preventDefault() },
      h("label", { for: "art-filter" }, "Path", filter)),
    box);
  filter.addEventListener("input", () => { offset = 0; render(); });

  function render() {
    const q = filter.value.trim().toLowerCase();
    const shown = files.filter((f) => !q || f.path.toLowerCase().includes(q));
    const rows = shown.slice(offset, offset + ROWS).map((f) => h("tr", { testid: "artifact-row",
      "data-path": f.path },
    h("td", { "data-label": "Path", class: "path" }, f.path),
    h("td", { "data-label": "Cluster" }, f.cluster),
    h("td", { "data-label": "Size" }, f.size === null ? "dir" : fmtBytes(f.size)),
    h("td", { "data-label": "Modified" }, f.mtime ? fmtTime(new Date(f.mtime * 1000)
      .toISOString()) : "—"),
    h("td", {}, actionButton("Download", "download", async () => {
      const base = f.path.split("/").filter(Boolean).pop() || "download";
      const got = await download(`/workflows/${id}/artifacts/download?path=${
        encodeURIComponent(f.path)}`, base);
      toast(`saved ${got}`);
    }))));
    clear(box).append(shown.length ? table(["Path", "Cluster", "Size", "Modified", ""], rows,
      { class: "artifacts" }) : h("p", { testid: "empty" }, "No files."),
    pager(shown.length, ROWS, offset, (o) => { offset = o; render(); }));
    box.setAttribute("aria-busy", "false");
  }

  api(`/workflows/${id}/artifacts`).then((got) => {
    if (!alive) return;
    files = got;
    render();
  }, (err) => { if (alive) { clear(box).append(errorBox(err)); box.setAttribute("aria-busy", "false"); } });
  return () => { alive = false; };
}
