// A small SVG line chart: numbers in, an <svg> out. Written for this dashboard; each
// series' path carries data-series and data-count, so tests can read what is drawn.

const SVG = "http://www.w3.org/2000/svg";
export const COLORS = ["#2f6fde", "#e8710a", "#1a7f37", "#c62828", "#7b3fbf", "#00838f"];

function el(name, attrs = {}, parent = null) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

// About `count` round tick values covering [lo, hi].
function ticks(lo, hi, count = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

function label(v) {
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(1);
  return +v.toPrecision(4) + "";
}

// series: [{name, points: [[x, y], ...], color?, dots?}]
export function lineChart(series, { width = 620, height = 240, xLabel = "", yLabel = "" } = {}) {
  const m = { left: 64, right: 16, top: 28, bottom: 36 };
  const svg = el("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  const all = series.flatMap((s) => s.points).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  let [x0, x1] = xs.length ? [Math.min(...xs), Math.max(...xs)] : [0, 1];
  let [y0, y1] = ys.length ? [Math.min(...ys), Math.max(...ys)] : [0, 1];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
  const pad = (y1 - y0) * 0.05;
  y0 -= pad; y1 += pad;
  const W = width - m.left - m.right;
  const H = height - m.top - m.bottom;
  const sx = (x) => m.left + ((x - x0) / (x1 - x0)) * W;
  const sy = (y) => m.top + H - ((y - y0) / (y1 - y0)) * H;

  for (const t of ticks(y0, y1)) {
    el("line", { class: "grid", x1: m.left, x2: m.left + W, y1: sy(t), y2: sy(t) }, svg);
    el("text", { x: m.left - 6, y: sy(t) + 4, "text-anchor": "end" }, svg).textContent = label(t);
  }
  for (const t of ticks(x0, x1, 6)) {
    el("text", { x: sx(t), y: m.top + H + 16, "text-anchor": "middle" }, svg).textContent = label(t);
  }
  el("line", { class: "axis", x1: m.left, x2: m.left, y1: m.top, y2: m.top + H }, svg);
  el("line", { class: "axis", x1: m.left, x2: m.left + W, y1: m.top + H, y2: m.top + H }, svg);
  if (xLabel) el("text", { x: m.left + W / 2, y: height - 4, "text-anchor": "middle" }, svg).textContent = xLabel;
  if (yLabel) {
    const y = m.top + H / 2;
    el("text", { x: 12, y, transform: `rotate(-90 12 ${y})`, "text-anchor": "middle" }, svg).textContent = yLabel;
  }

  const legend = el("g", { class: "legend" }, svg);
  let lx = m.left;
  series.forEach((s, i) => {
    const color = s.color || COLORS[i % COLORS.length];
    const pts = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
    const d = pts.map(([x, y], j) => `${j ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join("");
    el("path", {
      d, fill: "none", stroke: color, "stroke-width": 1.6,
      "data-series": s.name, "data-count": pts.length,
    }, svg);
    if (s.dots) for (const [x, y] of pts) el("circle", { cx: sx(x), cy: sy(y), r: 3, fill: color }, svg);
    el("rect", { x: lx, y: 8, width: 10, height: 10, fill: color }, legend);
    const text = el("text", { x: lx + 14, y: 17 }, legend);
    text.textContent = s.name;
    lx += 24 + s.name.length * 7;
  });
  return svg;
}
