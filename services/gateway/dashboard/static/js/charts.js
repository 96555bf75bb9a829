// Small line charts as inline SVG: a few series over the same x values.

import { h, s } from "./dom.js";

const W = 320;
const H = 140;
const M = { top: 10, right: 10, bottom: 22, left: 44 };

/** `series`: [{name, values: [number|null], cls}]; `labels`: x labels; `format(y)`. */
export function lineChart(title, labels, series, { format = (v) => String(v), max = null } = {}) {
  const all = series.flatMap((one) => one.values).filter((v) => v !== null && Number.isFinite(v));
  const top = max ?? Math.max(1e-9, ...all) * 1.1;
  const innerW = W - M.left - M.right;
  const innerH = H - M.top - M.bottom;
  const x = (i) => M.left + (labels.length > 1 ? (i * innerW) / (labels.length - 1) : innerW / 2);
  const y = (v) => M.top + innerH - (Math.min(v, top) / top) * innerH;
  const lines = series.map((one) => {
    const points = one.values.map((v, i) => (v === null || !Number.isFinite(v) ? null : `${x(i)},${y(v)}`));
    // A gap where a bucket had nothing to measure.
    const d = points.reduce((path, p, i) => (p === null ? path : `${path}${i && points[i - 1] !== null ? "L" : "M"}${p} `), "");
    return s(
      "g",
      { class: `series ${one.cls}` },
      s("path", { d, class: "line" }),
      one.values.map((v, i) =>
        v === null || !Number.isFinite(v) ? null : s("circle", { cx: x(i), cy: y(v), r: 2.5 }, s("title", {}, `${one.name} ${labels[i]}: ${format(v)}`)),
      ),
    );
  });
  const grid = [0, 0.5, 1].map((f) =>
    s("g", { class: "grid" }, s("line", { x1: M.left, x2: W - M.right, y1: y(top * f), y2: y(top * f) }), s("text", { x: M.left - 4, y: y(top * f) + 4, class: "axis", "text-anchor": "end" }, format(top * f))),
  );
  const ticks = labels.map((label, i) =>
    (labels.length - 1 - i) % Math.ceil(labels.length / 5) === 0 ? s("text", { x: x(i), y: H - 6, class: "axis", "text-anchor": i === labels.length - 1 ? "end" : "middle" }, label) : null,
  );
  return h(
    "figure",
    { class: "chart" },
    h("figcaption", {}, title, " ", series.length > 1 ? series.map((one) => h("span", { class: `key ${one.cls}` }, one.name)) : null),
    s("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": title }, grid, ticks, lines),
  );
}
