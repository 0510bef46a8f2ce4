/* battwin dashboard: small hand-written SVG charts (no library, no network).
 *
 * BattwinCharts.line(container, spec)  — line / scatter chart with vertical event markers and horizontal lines
 * BattwinCharts.box(container, spec)   — box plot per bin
 *
 * Every drawn data point is a <circle class="pt"> and every series line a <path class="line" data-n="points">,
 * so what a chart shows can be checked from the DOM. The chart's <svg> carries data-points (total points
 * drawn) and data-last-x (the largest x drawn).
 */
(function () {
  "use strict";
  const NS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#1f6feb", "#c01048", "#067647", "#b54708", "#6941c6", "#0e9384"];

  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) node.setAttribute(k, String(v));
    }
    if (parent) parent.appendChild(node);
    return node;
  }

  function text(parent, x, y, str, attrs) {
    const t = el("text", Object.assign({ x: x, y: y }, attrs || {}), parent);
    t.textContent = str;
    return t;
  }

  function finite(v) {
    return typeof v === "number" && isFinite(v);
  }

  function niceStep(span, count) {
    const raw = span / Math.max(1, count);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const norm = raw / mag;
    const step = norm >= 5 ? 10 : norm >= 2 ? 5 : norm >= 1 ? 2 : 1;
    return step * mag;
  }

  function ticks(lo, hi, count) {
    if (!(hi > lo)) return [lo];
    const step = niceStep(hi - lo, count);
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
    return out;
  }

  function pad2(n) {
    return (n < 10 ? "0" : "") + n;
  }

  function timeLabel(sec, span) {
    const d = new Date(sec * 1000);
    if (span < 2 * 86400) return pad2(d.getUTCHours()) + ":" + pad2(d.getUTCMinutes());
    if (span < 400 * 86400) return d.getUTCFullYear() + "-" + pad2(d.getUTCMonth() + 1) + "-" + pad2(d.getUTCDate());
    return d.getUTCFullYear() + "-" + pad2(d.getUTCMonth() + 1);
  }

  function numLabel(v) {
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(1);
    return String(Math.round(v * 1000) / 1000);
  }

  function extent(values, extra) {
    let lo = Infinity;
    let hi = -Infinity;
    for (const v of values.concat(extra || [])) {
      if (finite(v)) {
        lo = Math.min(lo, v);
        hi = Math.max(hi, v);
      }
    }
    if (!isFinite(lo)) return null;
    if (lo === hi) {
      const d = Math.abs(lo) * 0.05 || 1;
      return [lo - d, hi + d];
    }
    return [lo, hi];
  }

  function frame(container, spec, width, height) {
    container.textContent = "";
    const svg = el("svg", { viewBox: "0 0 " + width + " " + height, role: "img", "aria-label": spec.title || "chart" }, container);
    svg.setAttribute("data-chart", spec.id || "");
    if (spec.title) text(svg, 8, 13, spec.title, { class: "title" });
    return svg;
  }

  function empty(container, spec, message) {
    container.textContent = "";
    const div = document.createElement("div");
    div.className = "empty";
    div.setAttribute("data-chart", spec.id || "");
    div.setAttribute("data-empty", "1");
    div.textContent = (spec.title ? spec.title + ": " : "") + message;
    container.appendChild(div);
  }

  /* spec: {id, title, xType: "time"|"number", xLabel, yLabel, height, yPad, yMin, yMax,
   *        series: [{name, x: [], y: [], color, mode: "line"|"dots"|"both", dash}],
   *        bands: [{name, x: [], lo: [], hi: [], color}] (a shaded interval; points without both bounds are skipped),
 *        markers: [{x, label, color}], hlines: [{y, label, color}], rings: [{x, y, label}]} */
  function line(container, spec) {
    const width = Math.max(320, Math.round(container.clientWidth || 600));
    const height = spec.height || 220;
    const series = (spec.series || []).map(function (s, k) {
      const pts = [];
      for (let i = 0; i < Math.min(s.x.length, s.y.length); i++) {
        if (finite(s.x[i]) && finite(s.y[i])) pts.push([s.x[i], s.y[i]]);
      }
      return Object.assign({ color: PALETTE[k % PALETTE.length], mode: "line" }, s, { pts: pts });
    });
    const bands = (spec.bands || []).map(function (b) {
      const pts = [];
      for (let i = 0; i < Math.min(b.x.length, b.lo.length, b.hi.length); i++) {
        if (finite(b.x[i]) && finite(b.lo[i]) && finite(b.hi[i])) pts.push([b.x[i], b.lo[i], b.hi[i]]);
      }
      return Object.assign({ color: "#c01048" }, b, { pts: pts });
    });
    const allX = [];
    const allY = [];
    for (const s of series) for (const p of s.pts) { allX.push(p[0]); allY.push(p[1]); }
    for (const b of bands) for (const p of b.pts) { allX.push(p[0]); allY.push(p[1], p[2]); }
    if (!allX.length) {
      empty(container, spec, spec.emptyText || "no data yet");
      return;
    }
    const xr = extent(allX, spec.xExtra);
    const yr = extent(allY, (spec.hlines || []).map(function (h) { return h.y; }).concat(spec.yExtra || []));
    if (finite(spec.yMin)) yr[0] = Math.min(yr[0], spec.yMin);
    if (finite(spec.yMax)) yr[1] = Math.max(yr[1], spec.yMax);
    const ypad = (yr[1] - yr[0]) * (spec.yPad === undefined ? 0.06 : spec.yPad);
    yr[0] -= ypad;
    yr[1] += ypad;
    const m = { l: 52, r: 12, t: 22, b: 34 };
    const svg = frame(container, spec, width, height);
    const pw = width - m.l - m.r;
    const ph = height - m.t - m.b;
    const sx = function (x) { return m.l + ((x - xr[0]) / (xr[1] - xr[0] || 1)) * pw; };
    const sy = function (y) { return m.t + ph - ((y - yr[0]) / (yr[1] - yr[0] || 1)) * ph; };

    const grid = el("g", { class: "grid" }, svg);
    const axis = el("g", { class: "axis" }, svg);
    for (const v of ticks(yr[0], yr[1], 5)) {
      el("line", { x1: m.l, x2: m.l + pw, y1: sy(v), y2: sy(v) }, grid);
      text(axis, m.l - 5, sy(v) + 3, numLabel(v), { "text-anchor": "end" });
    }
    const span = xr[1] - xr[0];
    let xt;
    if (spec.xType === "time") {
      xt = [];
      const n = Math.max(2, Math.floor(pw / 110));
      for (let k = 0; k <= n; k++) xt.push(xr[0] + (span * k) / n);
    } else {
      xt = ticks(xr[0], xr[1], Math.max(2, Math.floor(pw / 70)));
    }
    for (const v of xt) {
      el("line", { x1: sx(v), x2: sx(v), y1: m.t + ph, y2: m.t + ph + 4 }, axis);
      text(axis, sx(v), m.t + ph + 15, spec.xType === "time" ? timeLabel(v, span) : numLabel(v), { "text-anchor": "middle" });
    }
    el("line", { x1: m.l, x2: m.l + pw, y1: m.t + ph, y2: m.t + ph }, axis);
    el("line", { x1: m.l, x2: m.l, y1: m.t, y2: m.t + ph }, axis);
    if (spec.xLabel) text(axis, m.l + pw / 2, height - 3, spec.xLabel, { "text-anchor": "middle" });
    if (spec.yLabel) text(axis, 10, m.t + ph / 2, spec.yLabel, { "text-anchor": "middle", transform: "rotate(-90 10 " + (m.t + ph / 2) + ")" });

    for (const h of spec.hlines || []) {
      if (!finite(h.y)) continue;
      const g = el("g", { class: "hline" }, svg);
      el("line", { x1: m.l, x2: m.l + pw, y1: sy(h.y), y2: sy(h.y), stroke: h.color || "#c01048" }, g);
      if (h.label) text(g, m.l + pw - 2, sy(h.y) - 3, h.label, { "text-anchor": "end", fill: h.color || "#c01048" });
    }
    let nMarkers = 0;
    for (const mk of spec.markers || []) {
      if (!finite(mk.x) || mk.x < xr[0] || mk.x > xr[1]) continue;
      const g = el("g", { class: "marker", "data-code": mk.code || "" }, svg);
      el("line", { x1: sx(mk.x), x2: sx(mk.x), y1: m.t, y2: m.t + ph, stroke: mk.color || "#b54708" }, g);
      if (mk.label) {
        const right = sx(mk.x) > m.l + pw * 0.7;  // near the right edge: write the label to the left of the line
        text(g, sx(mk.x) + (right ? -3 : 3), m.t + 9 + (nMarkers % 3) * 10, mk.label,
          { fill: mk.color || "#b54708", "text-anchor": right ? "end" : "start" });
      }
      const tip = el("title", {}, g);
      tip.textContent = mk.title || mk.label || "";
      nMarkers++;
    }

    let nPoints = 0;
    let lastX = -Infinity;
    const clip = "clip-" + (spec.id || "c") + "-" + Math.random().toString(36).slice(2, 8);
    const defs = el("defs", {}, svg);
    const cp = el("clipPath", { id: clip }, defs);
    el("rect", { x: m.l, y: m.t - 2, width: pw, height: ph + 4 }, cp);
    const plot = el("g", { "clip-path": "url(#" + clip + ")" }, svg);
    for (const b of bands) {
      if (b.pts.length < 2) continue;
      // the upper bound left to right, then the lower bound back: one closed, shaded shape under the lines
      const upper = b.pts.map(function (p, i) { return (i ? "L" : "M") + sx(p[0]).toFixed(1) + "," + sy(p[2]).toFixed(1); });
      const lower = b.pts.slice().reverse().map(function (p) { return "L" + sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1); });
      el("path", {
        class: "band", d: upper.join("") + lower.join("") + "Z", fill: b.color, "data-series": b.name, "data-n": b.pts.length,
        "data-lo": b.pts.map(function (p) { return p[1]; }).join(","), "data-hi": b.pts.map(function (p) { return p[2]; }).join(","),
      }, plot);
    }
    for (const s of series) {
      if (!s.pts.length) continue;
      const g = el("g", { class: "series", "data-series": s.name }, plot);
      if (s.mode === "line" || s.mode === "both") {
        const d = s.pts.map(function (p, i) { return (i ? "L" : "M") + sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1); }).join("");
        el("path", { class: "line" + (s.dash ? " dash" : ""), d: d, stroke: s.color, "data-n": s.pts.length, "data-series": s.name }, g);
      }
      if (s.mode === "dots" || s.mode === "both") {
        for (const p of s.pts) {
          el("circle", { class: "pt", cx: sx(p[0]).toFixed(1), cy: sy(p[1]).toFixed(1), r: s.r || 2.4, fill: s.color, "data-series": s.name }, g);
        }
      }
      nPoints += s.pts.length;
      for (const p of s.pts) lastX = Math.max(lastX, p[0]);
    }
    for (const ring of spec.rings || []) {
      if (!finite(ring.x) || !finite(ring.y)) continue;
      const c = el("circle", { class: "anomaly", cx: sx(ring.x).toFixed(1), cy: sy(ring.y).toFixed(1), r: 6 }, plot);
      const tip = el("title", {}, c);
      tip.textContent = ring.label || "anomaly";
    }
    svg.setAttribute("data-points", String(nPoints));
    svg.setAttribute("data-last-x", String(lastX));
    svg.setAttribute("data-markers", String(nMarkers));

    const legend = el("g", { class: "legend" }, svg);
    let lx = width - m.r;
    const named = series.filter(function (s) { return s.name && s.pts.length; })
      .concat(bands.filter(function (b) { return b.name && b.pts.length >= 2; })).reverse();
    for (const s of named) {
      const w = 14 + s.name.length * 5.6;
      lx -= w + 8;
      el("rect", { x: lx, y: 6, width: 10, height: 3, fill: s.color }, legend);
      text(legend, lx + 13, 11, s.name);
    }
  }

  /* spec: {id, title, yLabel, bins: [{label, min, q1, median, q3, max, peak, n}]} */
  function box(container, spec) {
    const bins = (spec.bins || []).filter(function (b) { return finite(b.median); });
    if (!bins.length) {
      empty(container, spec, spec.emptyText || "no data yet");
      return;
    }
    const width = Math.max(320, Math.round(container.clientWidth || 600));
    const height = spec.height || 220;
    const m = { l: 52, r: 12, t: 22, b: 34 };
    const svg = frame(container, spec, width, height);
    const pw = width - m.l - m.r;
    const ph = height - m.t - m.b;
    const vals = [];
    for (const b of bins) vals.push(b.min, b.max, b.peak);
    const yr = extent(vals);
    const pad = (yr[1] - yr[0]) * 0.08;
    yr[0] -= pad;
    yr[1] += pad;
    const sy = function (y) { return m.t + ph - ((y - yr[0]) / (yr[1] - yr[0])) * ph; };
    const grid = el("g", { class: "grid" }, svg);
    const axis = el("g", { class: "axis" }, svg);
    for (const v of ticks(yr[0], yr[1], 5)) {
      el("line", { x1: m.l, x2: m.l + pw, y1: sy(v), y2: sy(v) }, grid);
      text(axis, m.l - 5, sy(v) + 3, numLabel(v), { "text-anchor": "end" });
    }
    el("line", { x1: m.l, x2: m.l + pw, y1: m.t + ph, y2: m.t + ph }, axis);
    el("line", { x1: m.l, x2: m.l, y1: m.t, y2: m.t + ph }, axis);
    if (spec.yLabel) text(axis, 10, m.t + ph / 2, spec.yLabel, { "text-anchor": "middle", transform: "rotate(-90 10 " + (m.t + ph / 2) + ")" });
    if (spec.xLabel) text(axis, m.l + pw / 2, height - 3, spec.xLabel, { "text-anchor": "middle" });
    const slot = pw / bins.length;
    const bw = Math.min(36, slot * 0.55);
    let nPeaks = 0;
    bins.forEach(function (b, k) {
      const cx = m.l + slot * (k + 0.5);
      const g = el("g", { class: "box", "data-bin": k, "data-n": b.n }, svg);
      el("line", { x1: cx, x2: cx, y1: sy(b.max), y2: sy(b.q3) }, g);
      el("line", { x1: cx, x2: cx, y1: sy(b.q1), y2: sy(b.min) }, g);
      el("line", { x1: cx - bw / 4, x2: cx + bw / 4, y1: sy(b.max), y2: sy(b.max) }, g);
      el("line", { x1: cx - bw / 4, x2: cx + bw / 4, y1: sy(b.min), y2: sy(b.min) }, g);
      el("rect", { x: cx - bw / 2, y: sy(b.q3), width: bw, height: Math.max(1, sy(b.q1) - sy(b.q3)) }, g);
      el("line", { class: "median", x1: cx - bw / 2, x2: cx + bw / 2, y1: sy(b.median), y2: sy(b.median) }, g);
      if (finite(b.peak)) {
        el("circle", { class: "pt peak", cx: cx, cy: sy(b.peak), r: 3, fill: "#c01048" }, g);
        nPeaks++;
      }
      const tip = el("title", {}, g);
      tip.textContent = b.label + ": mean temperature median " + numLabel(b.median) + " °C (" + b.n + " cycles)" +
        (finite(b.peak) ? ", peak " + numLabel(b.peak) + " °C" : "");
      if (bins.length <= 14 || k % 2 === 0) text(axis, cx, m.t + ph + 15, b.label, { "text-anchor": "middle" });
    });
    svg.setAttribute("data-points", String(bins.length));
    svg.setAttribute("data-peaks", String(nPeaks));
    const legend = el("g", { class: "legend" }, svg);
    el("rect", { x: width - 250, y: 5, width: 10, height: 7, fill: "#d1e0ff", stroke: "#2970ff" }, legend);
    text(legend, width - 236, 11, "mean temp. per cycle");
    el("circle", { cx: width - 120, cy: 8, r: 3, fill: "#c01048" }, legend);
    text(legend, width - 113, 11, "peak temp. in bin");
  }

  /* spec: {id, title, xLabel, yLabel, height, bins: [{label, count, title, color}], emptyText}
   * one bar per bin, its height the count; each bar carries data-count and data-label */
  function bars(container, spec) {
    const bins = spec.bins || [];
    if (!bins.length) {
      empty(container, spec, spec.emptyText || "no data yet");
      return;
    }
    const width = Math.max(320, Math.round(container.clientWidth || 600));
    const height = spec.height || 220;
    const m = { l: 44, r: 12, t: 22, b: 34 };
    const svg = frame(container, spec, width, height);
    const pw = width - m.l - m.r;
    const ph = height - m.t - m.b;
    let top = 0;
    for (const b of bins) top = Math.max(top, b.count);
    top = Math.max(1, top);
    const sy = function (y) { return m.t + ph - (y / top) * ph; };
    const grid = el("g", { class: "grid" }, svg);
    const axis = el("g", { class: "axis" }, svg);
    for (const v of ticks(0, top, Math.min(5, top)).filter(function (v) { return v === Math.round(v); })) {
      el("line", { x1: m.l, x2: m.l + pw, y1: sy(v), y2: sy(v) }, grid);
      text(axis, m.l - 5, sy(v) + 3, numLabel(v), { "text-anchor": "end" });
    }
    el("line", { x1: m.l, x2: m.l + pw, y1: m.t + ph, y2: m.t + ph }, axis);
    el("line", { x1: m.l, x2: m.l, y1: m.t, y2: m.t + ph }, axis);
    if (spec.yLabel) text(axis, 10, m.t + ph / 2, spec.yLabel, { "text-anchor": "middle", transform: "rotate(-90 10 " + (m.t + ph / 2) + ")" });
    if (spec.xLabel) text(axis, m.l + pw / 2, height - 3, spec.xLabel, { "text-anchor": "middle" });
    const slot = pw / bins.length;
    const bw = Math.max(1, slot * 0.8);
    const every = Math.max(1, Math.ceil(bins.length / Math.max(1, Math.floor(pw / 60))));
    let total = 0;
    bins.forEach(function (b, k) {
      const x = m.l + slot * k + (slot - bw) / 2;
      const g = el("g", { class: "bar", "data-count": b.count, "data-label": b.label }, svg);
      if (b.count > 0) {
        el("rect", { x: x.toFixed(1), y: sy(b.count).toFixed(1), width: bw.toFixed(1), height: Math.max(1, m.t + ph - sy(b.count)).toFixed(1), fill: b.color || "#1f6feb" }, g);
        text(g, x + bw / 2, sy(b.count) - 3, String(b.count), { "text-anchor": "middle" });
      }
      const tip = el("title", {}, g);
      tip.textContent = b.title || b.label + ": " + b.count;
      if (k % every === 0) text(axis, x + bw / 2, m.t + ph + 15, b.label, { "text-anchor": "middle" });
      total += b.count;
    });
    svg.setAttribute("data-bars", String(bins.length));
    svg.setAttribute("data-total", String(total));
  }

  window.BattwinCharts = { line: line, box: box, bars: bars, timeLabel: timeLabel };
})();
