// The DAG of a workflow: laid out by dagre (vendored), drawn as SVG; zoom, pan and fit.
import dagre from "./vendor/dagre.esm.js";
import { h, s, stateGroup } from "./dom.js";

const NODE_W = 170;
const NODE_H = 46;
const MIN_START_SCALE = 0.5; // below this the names are too small to read
const START_SCALE = 0.8;
const MIN_BOX_H = 320; // px: the graph box never gets smaller than this
const BOX_GAP = 12; // px kept free under the box

/**
 * Make the graph box fill the window from where it starts down to the window's bottom (at
 * least MIN_BOX_H), measured on the unscrolled page: at 1280×800 the whole box, and so a
 * fitted graph, is on the screen. False once the box has left the page.
 */
function sizeBox(box) {
  if (!box.isConnected) return false;
  const top = box.getBoundingClientRect().top + window.scrollY;
  const want = Math.max(MIN_BOX_H, Math.floor(window.innerHeight - top - BOX_GAP));
  if (box.style.height !== `${want}px`) box.style.height = `${want}px`;
  return true;
}

function short(name, max = 22) {
  return name.length > max ? `${name.slice(0, max - 1)}…` : name;
}

/**
 * Draw ``activities`` ([{name, state, depends_on}]) into ``host``; ``href(name)`` is each
 * node's link. Returns {setState(name, state), fit(), resize(), nodes}: resize() after the
 * content above the graph changed height.
 */
export function drawGraph(host, activities, href) {
  const g = new dagre.graphlib.Graph();
  g.setGraph({ rankdir: "LR", nodesep: 14, ranksep: 46, marginx: 16, marginy: 16 });
  g.setDefaultEdgeLabel(() => ({}));
  const names = new Set(activities.map((a) => a.name));
  for (const a of activities) g.setNode(a.name, { width: NODE_W, height: NODE_H });
  for (const a of activities) {
    for (const p of a.depends_on || []) if (names.has(p)) g.setEdge(p, a.name);
  }
  dagre.layout(g);
  const { width = 100, height = 100 } = g.graph();

  const edges = s("g", { class: "edges" });
  for (const e of g.edges()) {
    const pts = g.edge(e).points || [];
    if (!pts.length) continue;
    const d = pts.map((p, i) => `${i ? "L" : "M"}${p.x.toFixed(1)},${p.y.toFixed(1)}`).join("");
    edges.append(s("path", { d, class: "edge", "marker-end": "url(#arrow)" }));
  }
  const nodes = s("g", { class: "nodes" });
  const byName = new Map();
  for (const a of activities) {
    const n = g.node(a.name);
    const x = n.x - NODE_W / 2, y = n.y - NODE_H / 2;
    const stateText = s("text", { x: x + 10, y: y + 36, class: "node-state" }, a.state);
    const title = s("title", {}, `${a.name}: ${a.state}`);
    const link = s("a", {
      href: href(a.name), class: `node st-${stateGroup(a.state)}`, testid: "node",
      "data-activity": a.name, "data-state": a.state,
      "aria-label": `activity ${a.name}, ${a.state}`,
    },
    title,
    s("rect", { x, y, width: NODE_W, height: NODE_H, rx: 6, ry: 6 }),
    s("text", { x: x + 10, y: y + 18, class: "node-name" }, short(a.name)),
    stateText);
    nodes.append(link);
    byName.set(a.name, { link, stateText, title });
  }
  const svg = s("svg", {
    class: "dag", role: "group", "aria-label": `graph of ${activities.length} activities`,
    testid: "dag", tabindex: 0,
  },
  s("defs", {}, s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5,
    markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
  s("path", { d: "M0,0L10,5L0,10z", class: "arrow" }))),
  edges, nodes);

  const view = { x: 0, y: 0, w: width, h: height };
  let fitted = false; // the view is the fitted one (refitted when the box changes size)
  const apply = () => svg.setAttribute("viewBox",
    `${view.x.toFixed(1)} ${view.y.toFixed(1)} ${view.w.toFixed(1)} ${view.h.toFixed(1)}`);
  const fit = () => {
    fitted = true;
    const box = svg.getBoundingClientRect();
    const aspect = box.width && box.height ? box.width / box.height : width / height;
    // never blow a small graph up past 1.25× (a few huge boxes help nobody)
    let w = Math.max(width, box.width / 1.25 || 0), hh = Math.max(height, box.height / 1.25 || 0);
    if (w / hh < aspect) w = hh * aspect; else hh = w / aspect;
    view.x = (width - w) / 2; view.y = (height - hh) / 2; view.w = w; view.h = hh;
    apply();
  };
  const zoom = (factor, cx = 0.5, cy = 0.5) => {
    fitted = false;
    const nw = Math.min(Math.max(view.w * factor, 60), Math.max(width, height) * 8);
    const f = nw / view.w;
    view.x += (view.w - view.w * f) * cx;
    view.y += (view.h - view.h * f) * cy;
    view.w *= f; view.h *= f;
    apply();
  };
  const pan = (dx, dy) => {
    fitted = false;
    view.x += dx * view.w; view.y += dy * view.h; apply();
  };

  svg.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const box = svg.getBoundingClientRect();
    zoom(ev.deltaY > 0 ? 1.15 : 1 / 1.15, (ev.clientX - box.left) / box.width,
      (ev.clientY - box.top) / box.height);
  }, { passive: false });
  let drag = null;
  svg.addEventListener("pointerdown", (ev) => {
    if (ev.button !== 0 || ev.target.closest("a")) return;
    drag = { x: ev.clientX, y: ev.clientY };
    svg.setPointerCapture(ev.pointerId);
    svg.classList.add("dragging");
  });
  svg.addEventListener("pointermove", (ev) => {
    if (!drag) return;
    const box = svg.getBoundingClientRect();
    pan(-(ev.clientX - drag.x) / box.width, -(ev.clientY - drag.y) / box.height);
    drag = { x: ev.clientX, y: ev.clientY };
  });
  const stop = () => { drag = null; svg.classList.remove("dragging"); };
  svg.addEventListener("pointerup", stop);
  svg.addEventListener("pointercancel", stop);
  svg.addEventListener("keydown", (ev) => {
    const keys = { "+": () => zoom(1 / 1.25), "=": () => zoom(1 / 1.25), "-": () => zoom(1.25),
      0: fit, ArrowLeft: () => pan(-0.1, 0), ArrowRight: () => pan(0.1, 0),
      ArrowUp: () => pan(0, -0.1), ArrowDown: () => pan(0, 0.1) };
    if (ev.target === svg && keys[ev.key]) { ev.preventDefault(); keys[ev.key](); }
  });

  const btn = (label, text, testid, fn) => h("button", { type: "button", "aria-label": label,
    title: label, testid, onclick: fn }, text);
  const tools = h("div", { class: "graph-tools", role: "toolbar", "aria-label": "graph view" },
    btn("zoom in", "+", "zoom-in", () => zoom(1 / 1.25)),
    btn("zoom out", "−", "zoom-out", () => zoom(1.25)),
    btn("fit the whole graph", "Fit", "zoom-fit", () => {
      fit();
      frame.scrollIntoView({ block: "nearest" }); // the whole box on the screen if it fits
    }),
    h("span", { class: "hint" }, "wheel: zoom · drag: pan · keys: + − 0 arrows"));
  const frame = h("div", { class: "graph-box" }, svg);
  host.append(tools, frame);
  apply();
  const resize = () => {
    if (!sizeBox(frame)) return false;
    if (fitted) fit();
    return true;
  };
  const onWindow = () => { if (!resize()) window.removeEventListener("resize", onWindow); };
  window.addEventListener("resize", onWindow);
  // start fitted when that stays readable; a big graph starts at a readable scale on its
  // roots (the left edge), and "Fit" shows it whole
  const start = () => {
    if (!sizeBox(frame)) return;
    fit();
    const box = svg.getBoundingClientRect();
    if (!box.width || box.width / view.w >= MIN_START_SCALE) return;
    view.w = box.width / START_SCALE;
    view.h = box.height / START_SCALE;
    view.x = -8;
    const first = activities.length ? g.node(activities[0].name) : null;
    view.y = (first ? first.y : height / 2) - view.h / 2;
    fitted = false;
    apply();
  };
  requestAnimationFrame(start);

  return {
    nodes: byName,
    fit,
    resize,
    setState(name, state) {
      const n = byName.get(name);
      if (!n || n.link.getAttribute("data-state") === state) return;
      n.link.setAttribute("data-state", state);
      n.link.setAttribute("class", `node st-${stateGroup(state)}`);
      n.link.setAttribute("aria-label", `activity ${name}, ${state}`);
      n.stateText.textContent = state;
      n.title.textContent = `${name}: ${state}`;
    },
  };
}
