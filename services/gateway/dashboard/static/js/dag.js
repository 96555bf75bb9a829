// A workflow's DAG as inline SVG: steps in columns by depth (each step one column right of
// its deepest dependency), edges from each dependency, every node coloured by its state.

import { s } from "./dom.js";

const NODE_W = 168;
const NODE_H = 46;
const GAP_X = 64;
const GAP_Y = 22;
const PAD = 12;

/** Columns and rows of the steps: [{name, type, deps, col, row, onFailure}]. */
export function layout(definition) {
  const steps = (definition.steps || []).map((step) => ({
    name: step.name,
    // A step runs a task type, or a child workflow.
    type: step.type || (step.workflow ? `workflow ${step.workflow}` : ""),
    deps: step.depends_on || [],
    forEach: Boolean(step.for_each),
    onFailure: false,
  }));
  const byName = new Map(steps.map((step) => [step.name, step]));
  const depth = new Map();
  const depthOf = (step, seen = new Set()) => {
    if (depth.has(step.name)) return depth.get(step.name);
    if (seen.has(step.name)) return 0; // the orchestrator refuses cycles; never loop here
    seen.add(step.name);
    const deps = step.deps.map((d) => byName.get(d)).filter(Boolean);
    const d = deps.length ? 1 + Math.max(...deps.map((dep) => depthOf(dep, seen))) : 0;
    depth.set(step.name, d);
    return d;
  };
  const columns = [];
  for (const step of steps) {
    step.col = depthOf(step);
    (columns[step.col] ||= []).push(step);
  }
  if (definition.on_failure && definition.on_failure.name) {
    const handler = { name: definition.on_failure.name, type: definition.on_failure.type, deps: [], onFailure: true };
    handler.col = columns.length;
    columns.push([handler]);
    steps.push(handler);
  }
  // Within a column, steps sit near the mean row of their dependencies (one pass of the
  // barycentre heuristic keeps most edges from crossing).
  for (const column of columns) {
    const order = column.map((step, i) => {
      const rows = step.deps.map((d) => byName.get(d)).filter(Boolean).map((dep) => dep.row);
      return [rows.length ? rows.reduce((a, b) => a + b, 0) / rows.length : i, i, step];
    });
    order.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    order.forEach(([, , step], row) => {
      step.row = row;
    });
  }
  return { steps, byName, columns: columns.length, rows: Math.max(1, ...columns.map((c) => c.length)) };
}

function edgePath(from, to) {
  const x1 = PAD + from.col * (NODE_W + GAP_X) + NODE_W;
  const y1 = PAD + from.row * (NODE_H + GAP_Y) + NODE_H / 2;
  const x2 = PAD + to.col * (NODE_W + GAP_X);
  const y2 = PAD + to.row * (NODE_H + GAP_Y) + NODE_H / 2;
  const mid = (x1 + x2) / 2;
  return `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2 - 4},${y2}`;
}

/** The SVG; `states` maps step name to its state; `onSelect(name)` on a click. */
export function drawDag(definition, states, onSelect, selected) {
  const { steps, byName, columns, rows } = layout(definition);
  const width = PAD * 2 + columns * NODE_W + Math.max(0, columns - 1) * GAP_X;
  const height = PAD * 2 + rows * NODE_H + Math.max(0, rows - 1) * GAP_Y;
  const edges = steps.flatMap((step) =>
    step.deps
      .filter((d) => byName.has(d))
      .map((d) => s("path", { class: "edge", d: edgePath(byName.get(d), step), "marker-end": "url(#arrow)" })),
  );
  const nodes = steps.map((step) => {
    const state = states[step.name] || "PENDING";
    const x = PAD + step.col * (NODE_W + GAP_X);
    const y = PAD + step.row * (NODE_H + GAP_Y);
    const label = step.name.length > 20 ? `${step.name.slice(0, 19)}…` : step.name;
    return s(
      "g",
      {
        class: `step state-${state}${step.onFailure ? " on-failure" : ""}${step.name === selected ? " selected" : ""}`,
        "data-step": step.name,
        "data-state": state,
        transform: `translate(${x},${y})`,
        tabindex: 0,
        role: "button",
        "aria-label": `step ${step.name}: ${state}`,
        onclick: () => onSelect(step.name),
        onkeydown: (e) => (e.key === "Enter" || e.key === " ") && onSelect(step.name),
      },
      s("title", {}, `${step.name} (${step.type})${step.onFailure ? ", on failure" : ""}: ${state}`),
      s("rect", { width: NODE_W, height: NODE_H, rx: 7 }),
      s("text", { x: 10, y: 19, class: "name" }, label),
      s("text", { x: 10, y: 36, class: "sub" }, `${state.toLowerCase()} · ${step.forEach ? "each · " : ""}${step.type}`),
    );
  });
  return s(
    "svg",
    { class: "dag", viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": "workflow steps" },
    s("defs", {}, s("marker", { id: "arrow", viewBox: "0 0 8 8", refX: 7, refY: 4, markerWidth: 8, markerHeight: 8, orient: "auto" }, s("path", { d: "M0,0 L8,4 L0,8 z", class: "arrowhead" }))),
    edges,
    nodes,
  );
}
