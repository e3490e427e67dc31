// Plots as inline SVG: line charts (axes with units, legend, reference lines), a speed / quality trade-off with
// its Pareto front, and a heatmap with boxes.
// Small on purpose: the dashboard draws a handful of series of at most a few thousand points each.

const SVG = "http://www.w3.org/2000/svg";
// Okabe-Ito: distinguishable with the common colour-vision deficiencies.
export const PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#7f7f7f"];

let uid = 0;

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== null && v !== undefined) el.setAttribute(k, String(v));
  for (const c of children) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

/** About `count` round tick values (1, 2, 5 x 10^k) covering [lo, hi]. */
export function ticks(lo, hi, count = 5) {
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [];
  if (lo === hi) return [lo];
  const raw = (hi - lo) / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  // the round step nearest to the raw one (on a log scale), so a range gets about `count` ticks
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag)
    .reduce((best, v) => (Math.abs(Math.log(v / raw)) < Math.abs(Math.log(best / raw)) ? v : best));
  const out = [];
  for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function extent(values, pad = 0.05) {
  const finite = values.filter(Number.isFinite);
  if (!finite.length) return [0, 1];
  let lo = Math.min(...finite);
  let hi = Math.max(...finite);
  if (lo === hi) {
    const d = Math.abs(lo) * 0.1 || 1;
    return [lo - d, hi + d];
  }
  const d = (hi - lo) * pad;
  return [lo - d, hi + d];
}

function defaultFormat(v) {
  const a = Math.abs(v);
  if (a === 0) return "0";
  if (a >= 1e9) return `${+(v / 1e9).toPrecision(3)}G`;
  if (a >= 1e6) return `${+(v / 1e6).toPrecision(3)}M`;
  if (a >= 1e4) return `${+(v / 1e3).toPrecision(3)}k`;
  if (a < 1e-3) return v.toExponential(0);
  return String(+v.toPrecision(3));
}

/** At most `max` points, evenly spaced, the last one kept: a paper-preset job has tens of thousands of
 *  progress events, more than a chart's width in pixels. */
export function thin(points, max = 1500) {
  if (points.length <= max) return points;
  const step = points.length / max;
  const out = [];
  for (let i = 0; i < max; i++) out.push(points[Math.floor(i * step)]);
  out.push(points[points.length - 1]);
  return out;
}

/**
 * A line chart.
 * opts: title, xLabel, yLabel (with units), series [{name, points [[x, y]...], dash, marker}] (marker: a dot
 * on the last point), yFormat, xFormat, yMin / yMax (fixed range), hLines [{y, label}], vLines [{x, label}],
 * height, note (a sentence under the legend: what the reader must know to read the chart right).
 * Returns a <figure class="chart"> with the SVG, a caption and an HTML legend.
 */
export function lineChart(opts) {
  const W = 640;
  const H = opts.height || 260;
  const M = { left: 58, right: 14, top: 14, bottom: 44 };
  const id = `chart${++uid}`;
  // colours follow the position in opts.series, so a series keeps its colour (and matches the legend) while
  // another one has no points yet
  const series = opts.series.map((sr, i) => ({ ...sr, color: sr.color || PALETTE[i % PALETTE.length], points: thin(sr.points || []) }))
    .filter((sr) => sr.points.length);
  const xs = series.flatMap((sr) => sr.points.map((p) => p[0]));
  const ys = series.flatMap((sr) => sr.points.map((p) => p[1]));
  for (const l of opts.hLines || []) ys.push(l.y);
  let [x0, x1] = extent(xs, 0);
  let [y0, y1] = extent(ys);
  if (opts.yMin !== undefined) y0 = opts.yMin;
  if (opts.yMax !== undefined) y1 = Math.max(opts.yMax, y0 + 1e-9);
  if (opts.xMin !== undefined) x0 = opts.xMin;
  const fx = opts.xFormat || defaultFormat;
  const fy = opts.yFormat || defaultFormat;
  const px = (x) => M.left + ((x - x0) / (x1 - x0 || 1)) * (W - M.left - M.right);
  const py = (y) => H - M.bottom - ((y - y0) / (y1 - y0 || 1)) * (H - M.top - M.bottom);

  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": `${id}-t ${id}-d`, class: "plot" });
  svg.append(s("title", { id: `${id}-t` }, opts.title));
  const summary = series.map((sr) => {
    const last = sr.points[sr.points.length - 1];
    return `${sr.name}: ${sr.points.length} points, last ${fy(last[1])} at ${opts.xLabel} ${fx(last[0])}`;
  }).join("; ");
  svg.append(s("desc", { id: `${id}-d` }, summary || "no data yet"));

  const clip = `${id}-clip`;
  svg.append(s("defs", {}, s("clipPath", { id: clip },
    s("rect", { x: M.left, y: M.top, width: W - M.left - M.right, height: H - M.top - M.bottom }))));

  const axes = s("g", { class: "axes" });
  for (const t of ticks(y0, y1, 5)) {
    axes.append(s("line", { x1: M.left, x2: W - M.right, y1: py(t), y2: py(t), class: "grid" }));
    axes.append(s("text", { x: M.left - 6, y: py(t), class: "tick", "text-anchor": "end", "dominant-baseline": "middle" }, fy(t)));
  }
  for (const t of xs.length ? ticks(x0, x1, 6) : []) {
    axes.append(s("line", { x1: px(t), x2: px(t), y1: H - M.bottom, y2: H - M.bottom + 4, class: "axis" }));
    axes.append(s("text", { x: px(t), y: H - M.bottom + 16, class: "tick", "text-anchor": "middle" }, fx(t)));
  }
  axes.append(s("line", { x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom, class: "axis" }));
  axes.append(s("line", { x1: M.left, x2: M.left, y1: M.top, y2: H - M.bottom, class: "axis" }));
  axes.append(s("text", { x: (M.left + W - M.right) / 2, y: H - 6, class: "label", "text-anchor": "middle" }, opts.xLabel));
  axes.append(s("text", { x: 12, y: (M.top + H - M.bottom) / 2, class: "label", "text-anchor": "middle",
    transform: `rotate(-90 12 ${(M.top + H - M.bottom) / 2})` }, opts.yLabel));
  svg.append(axes);

  const plot = s("g", { "clip-path": `url(#${clip})` });
  const markers = s("g", { class: "markers" });
  for (const l of opts.hLines || []) {
    plot.append(s("line", { x1: M.left, x2: W - M.right, y1: py(l.y), y2: py(l.y), class: "ref" }));
    plot.append(s("text", { x: W - M.right - 4, y: py(l.y) - 4, class: "ref-label", "text-anchor": "end" }, l.label));
  }
  for (const l of opts.vLines || []) {
    plot.append(s("line", { x1: px(l.x), x2: px(l.x), y1: M.top, y2: H - M.bottom, class: "ref" }));
    plot.append(s("text", { x: px(l.x) + 4, y: M.top + 10, class: "ref-label" }, l.label));
  }
  series.forEach((sr) => {
    const color = sr.color;
    let d = "";
    let pen = false;
    for (const [x, y] of sr.points) {
      if (!Number.isFinite(x) || !Number.isFinite(y)) {
        pen = false;
        continue;
      }
      d += `${pen ? "L" : "M"}${px(x).toFixed(1)},${py(y).toFixed(1)}`;
      pen = true;
    }
    plot.append(s("path", { d, class: "line", stroke: color, "stroke-dasharray": sr.dash || null, "data-series": sr.name }));
    if (sr.points.length === 1 || sr.marker) {
      const [x, y] = sr.points[sr.points.length - 1];
      markers.append(s("circle", { cx: px(x), cy: py(y), r: sr.marker ? 4 : 3, fill: color }));
    }
  });
  svg.append(plot, markers); // dots unclipped: a last point on the plot's edge shows whole
  if (!series.length) {
    svg.append(s("text", { x: W / 2, y: H / 2, class: "empty-plot", "text-anchor": "middle" }, opts.empty || "no data yet"));
  }

  const legend = document.createElement("ul");
  legend.className = "legend";
  opts.series.forEach((sr, i) => {
    const li = document.createElement("li");
    const swatch = s("svg", { viewBox: "0 0 24 8", width: 24, height: 8, "aria-hidden": "true" },
      s("line", { x1: 0, x2: 24, y1: 4, y2: 4, stroke: sr.color || PALETTE[i % PALETTE.length], "stroke-width": 3,
        "stroke-dasharray": sr.dash || null }));
    li.append(swatch, document.createTextNode(" " + sr.name));
    legend.append(li);
  });
  for (const l of opts.hLines || []) legend.append(referenceItem(l.label));

  return chartFigure("chart", opts, svg, legend);
}

/**
 * Indices of the points no other point dominates, by speed-up ascending: a point dominates another when it is
 * at least as fast (x, higher is better) and at least as good (y, higher or lower is better as told) and
 * strictly better in one. Equal points dominate neither other. (core.evaluation.compare.pareto_front.)
 */
export function paretoFront(points, higherIsBetter) {
  const sign = higherIsBetter ? 1 : -1;
  const ok = points.map((p, i) => i).filter((i) => Number.isFinite(points[i][0]) && Number.isFinite(points[i][1]));
  const dominates = (a, b) => a[0] >= b[0] && sign * a[1] >= sign * b[1] && (a[0] > b[0] || sign * a[1] > sign * b[1]);
  return ok.filter((i) => !ok.some((j) => j !== i && dominates(points[j], points[i])))
    .sort((i, j) => points[i][0] - points[j][0] || sign * (points[j][1] - points[i][1]));
}

/**
 * A speed / quality trade-off: one labelled marker per point (with ± sd bars when given), the Pareto front
 * joined by a line.
 * opts: title, xLabel, yLabel (with units), points [{name, x, y, sd, id}], higherIsBetter (of y), vLines
 * [{x, label}] (e.g. the teacher at 1× when its quality is unknown), xFormat, yFormat, note.
 * Returns a <figure class="chart tradeoff"> with the SVG, a caption and an HTML legend naming the front.
 */
export function tradeoffChart(opts) {
  const W = 640;
  const H = opts.height || 300;
  const M = { left: 58, right: 24, top: 18, bottom: 44 };
  const id = `chart${++uid}`;
  const points = (opts.points || []).filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y))
    .map((p, i) => ({ ...p, color: p.color || PALETTE[i % PALETTE.length] }));
  const front = paretoFront(points.map((p) => [p.x, p.y]), opts.higherIsBetter).map((i) => points[i]);
  const xs = [...points.map((p) => p.x), ...(opts.vLines || []).map((l) => l.x)];
  const ys = points.flatMap((p) => [p.y - (p.sd || 0), p.y + (p.sd || 0)]);
  const [x0, x1] = extent(xs, 0.08);
  const [y0, y1] = extent(ys, 0.12);
  const fx = opts.xFormat || ((v) => `${+v.toPrecision(3)}×`);
  const fy = opts.yFormat || defaultFormat;
  const px = (x) => M.left + ((x - x0) / (x1 - x0 || 1)) * (W - M.left - M.right);
  const py = (y) => H - M.bottom - ((y - y0) / (y1 - y0 || 1)) * (H - M.top - M.bottom);

  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": `${id}-t ${id}-d`, class: "plot tradeoff" });
  svg.append(s("title", { id: `${id}-t` }, opts.title));
  const said = (p) => `${p.name} at ${fx(p.x)}: ${fy(p.y)}${p.sd ? ` ± ${fy(p.sd)}` : ""}`;
  svg.append(s("desc", { id: `${id}-d` }, points.length
    ? `${points.length} point${points.length > 1 ? "s" : ""}: ${points.map(said).join("; ")}. ` +
      `Pareto front (${opts.higherIsBetter ? "higher" : "lower"} ${opts.yLabel} is better): ${front.map((p) => p.name).join(", ")}.`
    : "no points"));

  const axes = s("g", { class: "axes" });
  for (const t of ticks(y0, y1, 5)) {
    axes.append(s("line", { x1: M.left, x2: W - M.right, y1: py(t), y2: py(t), class: "grid" }));
    axes.append(s("text", { x: M.left - 6, y: py(t), class: "tick", "text-anchor": "end", "dominant-baseline": "middle" }, fy(t)));
  }
  for (const t of xs.length ? ticks(x0, x1, 6) : []) {
    axes.append(s("line", { x1: px(t), x2: px(t), y1: H - M.bottom, y2: H - M.bottom + 4, class: "axis" }));
    axes.append(s("text", { x: px(t), y: H - M.bottom + 16, class: "tick", "text-anchor": "middle" }, fx(t)));
  }
  axes.append(s("line", { x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom, class: "axis" }));
  axes.append(s("line", { x1: M.left, x2: M.left, y1: M.top, y2: H - M.bottom, class: "axis" }));
  axes.append(s("text", { x: (M.left + W - M.right) / 2, y: H - 6, class: "label", "text-anchor": "middle" }, opts.xLabel));
  axes.append(s("text", { x: 12, y: (M.top + H - M.bottom) / 2, class: "label", "text-anchor": "middle",
    transform: `rotate(-90 12 ${(M.top + H - M.bottom) / 2})` }, opts.yLabel));
  svg.append(axes);

  const plot = s("g", {});
  for (const l of opts.vLines || []) {
    plot.append(s("line", { x1: px(l.x), x2: px(l.x), y1: M.top, y2: H - M.bottom, class: "ref" }));
    plot.append(s("text", { x: px(l.x) + 4, y: M.top + 10, class: "ref-label" }, l.label));
  }
  if (front.length) {
    plot.append(s("path", { class: "line front", stroke: "#57606a", "data-series": "Pareto front",
      d: front.map((p, i) => `${i ? "L" : "M"}${px(p.x).toFixed(1)},${py(p.y).toFixed(1)}`).join("") }));
  }
  for (const p of points) {
    const onFront = front.includes(p);
    const g = s("g", { class: `point${onFront ? " on-front" : ""}`, "data-name": p.name, "data-id": p.id });
    if (p.sd) {
      const [a, b] = [py(p.y - p.sd), py(p.y + p.sd)];
      g.append(s("path", { class: "errorbar", stroke: p.color, "stroke-width": 1.5,
        d: `M${px(p.x) - 4},${a}H${px(p.x) + 4}M${px(p.x)},${a}V${b}M${px(p.x) - 4},${b}H${px(p.x) + 4}` }));
    }
    g.append(s("circle", { cx: px(p.x), cy: py(p.y), r: onFront ? 5 : 4, fill: onFront ? p.color : "#fff", stroke: p.color,
      "stroke-width": 2 }, s("title", {}, said(p))));
    const right = px(p.x) > W - M.right - 120;
    g.append(s("text", { x: px(p.x) + (right ? -8 : 8), y: py(p.y) - 8, class: "tick", "text-anchor": right ? "end" : "start" }, p.name));
    plot.append(g);
  }
  svg.append(plot);
  if (!points.length) {
    svg.append(s("text", { x: W / 2, y: H / 2, class: "empty-plot", "text-anchor": "middle" }, opts.empty || "nothing to place"));
  }

  const legend = document.createElement("ul");
  legend.className = "legend";
  for (const p of points) {
    const li = document.createElement("li");
    li.append(s("svg", { viewBox: "0 0 12 12", width: 12, height: 12, "aria-hidden": "true" },
      s("circle", { cx: 6, cy: 6, r: 4, fill: front.includes(p) ? p.color : "#fff", stroke: p.color, "stroke-width": 2 })),
    document.createTextNode(` ${said(p)}${front.includes(p) ? " (on the front)" : ""}`));
    legend.append(li);
  }
  if (front.length) {
    const li = document.createElement("li");
    li.className = "front";
    li.append(s("svg", { viewBox: "0 0 24 8", width: 24, height: 8, "aria-hidden": "true" },
      s("line", { x1: 0, x2: 24, y1: 4, y2: 4, stroke: "#57606a", "stroke-width": 3 })),
    document.createTextNode(` Pareto front: ${front.map((p) => p.name).join(" → ")}`));
    legend.append(li);
  }
  for (const l of opts.vLines || []) legend.append(referenceItem(l.label));

  return chartFigure("chart tradeoff", opts, svg, legend);
}

/** A legend item for a reference line (the teacher's value, a target). */
function referenceItem(label) {
  const li = document.createElement("li");
  li.append(s("svg", { viewBox: "0 0 24 8", width: 24, height: 8, "aria-hidden": "true" },
    s("line", { x1: 0, x2: 24, y1: 4, y2: 4, class: "ref" })), document.createTextNode(" " + label));
  return li;
}

/** A chart's figure: its title as caption, the SVG, the legend and the note under it if any. */
function chartFigure(className, opts, svg, legend) {
  const figure = document.createElement("figure");
  figure.className = className;
  const caption = document.createElement("figcaption");
  caption.textContent = opts.title;
  figure.append(caption, svg, legend);
  if (opts.note) {
    const note = document.createElement("p");
    note.className = "chart-note";
    note.textContent = opts.note;
    figure.append(note);
  }
  return figure;
}

// viridis, 9 stops: perceptually uniform and readable in grey.
const VIRIDIS = ["#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725"];

function hex(c) {
  return [1, 3, 5].map((i) => parseInt(c.slice(i, i + 2), 16));
}

export function viridis(t) {
  t = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0));
  const pos = t * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(pos));
  const a = hex(VIRIDIS[i]);
  const b = hex(VIRIDIS[i + 1]);
  const f = pos - i;
  return `rgb(${a.map((v, k) => Math.round(v + (b[k] - v) * f)).join(",")})`;
}

/**
 * A square heatmap of `matrix` (n x n) with axis labels 0..n-1 and `boxes` ([first, last] index ranges) drawn
 * on the diagonal. opts: title, axisLabel, boxes, vmin, vmax, format.
 */
export function heatmap(opts) {
  const m = opts.matrix;
  const n = m.length;
  const id = `heat${++uid}`;
  const cell = Math.max(12, Math.min(36, Math.floor(420 / Math.max(1, n))));
  const M = { left: 46, top: 10, right: 86, bottom: 46 };
  const size = cell * n;
  const W = M.left + size + M.right;
  const H = M.top + size + M.bottom;
  const flat = m.flat().filter(Number.isFinite);
  const vmin = opts.vmin ?? Math.min(...flat);
  const vmax = opts.vmax ?? Math.max(...flat);
  const norm = (v) => (v - vmin) / (vmax - vmin || 1);
  const fmt = opts.format || ((v) => v.toFixed(3));

  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": `${id}-t ${id}-d`, class: "plot heatmap" });
  svg.append(s("title", { id: `${id}-t` }, opts.title));
  const boxes = opts.boxes || [];
  svg.append(s("desc", { id: `${id}-d` },
    `${n} by ${n} matrix, values ${fmt(vmin)} to ${fmt(vmax)}; ` +
    (boxes.length ? `boxes: ${boxes.map(([a, b]) => (a === b ? `${a}` : `${a}-${b}`)).join(", ")}` : "no boxes")));
  const cells = s("g", { class: "cells" });
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      const v = m[i][j];
      cells.append(s("rect", { x: M.left + j * cell, y: M.top + i * cell, width: cell, height: cell, fill: viridis(norm(v)) },
        s("title", {}, `${opts.axisLabel} ${i} vs ${j}: ${fmt(v)}`)));
    }
  }
  svg.append(cells);
  const every = n > 26 ? Math.ceil(n / 13) : 1;
  const labels = s("g", { class: "axes" });
  for (let i = 0; i < n; i += every) {
    labels.append(s("text", { x: M.left - 5, y: M.top + (i + 0.5) * cell, class: "tick", "text-anchor": "end", "dominant-baseline": "middle" }, i));
    labels.append(s("text", { x: M.left + (i + 0.5) * cell, y: M.top + size + 14, class: "tick", "text-anchor": "middle" }, i));
  }
  labels.append(s("text", { x: M.left + size / 2, y: H - 8, class: "label", "text-anchor": "middle" }, opts.axisLabel));
  svg.append(labels);
  const boxLayer = s("g", { class: "boxes" });
  for (const [a, b] of boxes) {
    const x = M.left + a * cell;
    const w = (b - a + 1) * cell;
    boxLayer.append(s("rect", { x: x + 1, y: M.top + a * cell + 1, width: w - 2, height: w - 2, class: "cluster-box" }));
  }
  svg.append(boxLayer);
  // colour bar
  const barX = M.left + size + 18;
  const gradId = `${id}-grad`;
  const grad = s("linearGradient", { id: gradId, x1: 0, y1: 1, x2: 0, y2: 0 });
  VIRIDIS.forEach((c, i) => grad.append(s("stop", { offset: i / (VIRIDIS.length - 1), "stop-color": c })));
  svg.append(s("defs", {}, grad));
  svg.append(s("rect", { x: barX, y: M.top, width: 14, height: size, fill: `url(#${gradId})`, class: "colorbar" }));
  for (const t of ticks(vmin, vmax, 4)) {
    const y = M.top + size - norm(t) * size;
    svg.append(s("line", { x1: barX + 14, x2: barX + 18, y1: y, y2: y, class: "axis" }));
    svg.append(s("text", { x: barX + 20, y, class: "tick", "dominant-baseline": "middle" }, fmt(t)));
  }
  const figure = document.createElement("figure");
  figure.className = "chart heat";
  const caption = document.createElement("figcaption");
  caption.textContent = opts.title;
  figure.append(caption, svg);
  if (opts.legend) {
    const p = document.createElement("p");
    p.className = "legend-note";
    p.textContent = opts.legend;
    figure.append(p);
  }
  return figure;
}
