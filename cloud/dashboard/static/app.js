/* battwin dashboard: fleet table and battery pages, polling the dashboard server's JSON endpoints.
 * Everything shown comes from /api/*; nothing here knows any device, value or threshold by itself. */
(function () {
  "use strict";
  const Charts = window.BattwinCharts;
  const state = { info: null, timer: null, route: null, sort: { key: "thing", dir: "asc" }, fleet: null, busy: false, seq: 0 };
  const ALARM_COLORS = { critical: "#c01048", warning: "#b54708", info: "#667085" };

  // -- helpers ---------------------------------------------------------------------------------------
  function h(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "text") node.textContent = String(v);
      else if (k === "onclick") node.addEventListener("click", v);
      else if (k === "onsubmit") node.addEventListener("submit", v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of [].concat(children || [])) {
      if (c === null || c === undefined) continue;
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return node;
  }
  function fmt(v, digits, unit) {
    if (typeof v !== "number" || !isFinite(v)) return "–";
    return v.toFixed(digits) + (unit || "");
  }
  function pct(v) {
    return typeof v === "number" && isFinite(v) ? (100 * v).toFixed(1) + " %" : "–";
  }
  function when(ts) {
    if (typeof ts !== "number") return "–";
    const d = new Date(ts * 1000);
    return d.toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }
  function simBadge(simulated) {
    if (simulated === true) return h("span", { class: "badge sim", "data-testid": "simulated-badge", title: "simulated data (tagged simulated by the device)", text: "SIMULATED" });
    if (simulated === false) return h("span", { class: "badge real", title: "real data (not simulated)", text: "REAL DATA" });
    return null;
  }
  async function getJson(url, options) {
    const resp = await fetch(url, Object.assign({ cache: "no-store" }, options || {}));
    let body = null;
    try { body = await resp.json(); } catch (e) { body = { error: "bad_response", message: String(e) }; }
    if (!resp.ok) {
      const err = new Error((body && (body.message || body.error)) || resp.statusText);
      err.status = resp.status;
      err.body = body;
      throw err;
    }
    return body;
  }
  function setStatus(ok, text) {
    const el = document.getElementById("poll-status");
    el.dataset.state = ok ? "ok" : "error";
    el.textContent = text;
  }

  // -- routing -----------------------------------------------------------------------------------------
  function parseRoute() {
    const m = location.hash.match(/^#\/thing\/(.+)$/);
    return m ? { page: "thing", thing: decodeURIComponent(m[1]) } : { page: "fleet" };
  }
  function go() {
    state.route = parseRoute();
    state.seq++;
    const view = document.getElementById("view");
    view.textContent = "";
    if (state.route.page === "fleet") buildFleet(view);
    else buildThing(view, state.route.thing);
    poll();
  }
  async function poll() {
    if (state.busy) return;
    state.busy = true;
    const seq = state.seq;
    try {
      if (state.route.page === "fleet") await pollFleet(seq);
      else await pollThing(seq, state.route.thing);
      setStatus(true, "updated " + new Date().toLocaleTimeString());
    } catch (e) {
      setStatus(false, "error: " + e.message);
    } finally {
      state.busy = false;
    }
  }

  // -- fleet ---------------------------------------------------------------------------------------------
  const COLUMNS = [
    { key: "thing", label: "thing" },
    { key: "source", label: "source" },
    { key: "soh", label: "SoH", num: true },
    { key: "rul_cycles", label: "RUL (cycles)", num: true },
    { key: "temperature_c", label: "temperature", num: true },
    { key: "last_seen", label: "last seen", num: true },
    { key: "open_alarms", label: "open alarms", num: true },
  ];
  function buildFleet(view) {
    document.title = "battwin — fleet";
    view.appendChild(h("h1", { text: "Fleet" }));
    view.appendChild(h("p", { class: "summary-line", id: "fleet-summary", text: "loading…" }));
    const panel = function (id, title, note, body) {
      return h("section", { class: "panel", id: "panel-" + id }, [h("h2", { text: title }), h("div", { class: "note", text: note }), body]);
    };
    view.appendChild(h("div", { class: "charts fleet-overview", id: "fleet-overview" }, [
      panel("soh-hist", "SoH distribution", "Batteries per 2-point SoH bin (newest health estimate of each).",
        h("div", { class: "chart", id: "chart-soh-hist", "data-testid": "chart-soh-hist" })),
      panel("at-risk", "At risk: ranked by remaining useful life", "Fewest cycles to end of life first; 80 % range p10–p90 when the forecast has one.",
        h("div", { class: "risk" }, [h("table", { class: "grid", id: "at-risk" }, [
          h("thead", {}, h("tr", {}, ["#", "thing", "SoH", "RUL (cycles)", "RUL 80 %", "cycle", "model"].map(function (t) { return h("th", { text: t }); }))),
          h("tbody", {}),
        ]), h("p", { class: "note", id: "at-risk-note" })])),
      panel("fleet-fade", "Fade curves", "Measured SoH (capacity / C0) per complete discharge, every battery.",
        h("div", { class: "chart", id: "chart-fleet-fade", "data-testid": "chart-fleet-fade" })),
      panel("fleet-alarms", "Alarms over time", "Alarms raised across the fleet, per time bin (device clocks).",
        h("div", { class: "chart", id: "chart-fleet-alarms", "data-testid": "chart-fleet-alarms" })),
    ]));
    if (state.info && state.info.retrain) {
      view.appendChild(h("section", { class: "panel", id: "panel-retrain" }, [
        h("h2", { text: "Retraining" }),
        h("div", { class: "note", text: "The fleet loop, locally: the lake's cycles → a training job running the SageMaker entry point → " +
          "the champion/challenger gate on held-out cells → a new SohModel version the agents load without restart." }),
        h("button", { id: "retrain-button", type: "button", text: "Retrain now", onclick: startRetrain }),
        h("p", { id: "retrain-status", text: "" }),
      ]));
    }
    view.appendChild(h("h2", { text: "Batteries" }));
    const head = h("tr", {}, COLUMNS.map(function (c) {
      return h("th", { "data-key": c.key, "data-sort": state.sort.key === c.key ? state.sort.dir : null, onclick: function () { sortBy(c.key); }, text: c.label });
    }));
    view.appendChild(h("table", { class: "grid", id: "fleet-table" }, [h("thead", {}, head), h("tbody", {})]));
    view.appendChild(h("p", { class: "muted", text: "Click a column to sort, a thing to open its battery page. " +
      "“last seen” is the device's own clock (simulated and replayed clocks run ahead of the wall clock)." }));
  }
  function sortBy(key) {
    state.sort = { key: key, dir: state.sort.key === key && state.sort.dir === "asc" ? "desc" : "asc" };
    document.querySelectorAll("#fleet-table th").forEach(function (th) {
      if (th.dataset.key === key) th.setAttribute("data-sort", state.sort.dir);
      else th.removeAttribute("data-sort");
    });
    renderFleet();
  }
  function sortValue(row, key) {
    if (key === "open_alarms") return (row.open_alarms || []).length;
    return row[key];
  }
  async function pollFleet(seq) {
    const retrain = state.info && state.info.retrain;
    const [data, overview, loop] = await Promise.all([getJson("/api/fleet"), getJson("/api/fleet/overview"),
      retrain ? getJson("/api/retrain") : null]);
    if (seq !== state.seq) return;
    state.fleet = data;
    renderFleet();
    renderOverview(overview);
    if (loop) renderRetrain(loop);
  }
  async function startRetrain() {
    const button = document.getElementById("retrain-button");
    button.disabled = true;
    try {
      renderRetrain(await getJson("/api/retrain", { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" }));
    } catch (e) {
      document.getElementById("retrain-status").textContent = "could not start: " + e.message;
      button.disabled = false;
    }
  }
  function renderRetrain(r) {
    const button = document.getElementById("retrain-button");
    const el = document.getElementById("retrain-status");
    if (!button || !el) return;
    button.disabled = !!r.running;
    const parts = [];
    if (r.running) parts.push("running" + (r.job ? " (" + r.job + ")" : "") + "…");
    const last = r.last;
    if (last && !r.running) {
      let text = "last run: " + last.status;
      const d = last.decision || {};
      if (typeof d.challenger_score === "number") text += ", challenger " + fmt(d.challenger_score, 3) + " pp";
      if (typeof d.champion_score === "number") text += " vs champion " + fmt(d.champion_score, 3) + " pp";
      if (last.job && typeof last.job.TrainingTimeInSeconds === "number") text += ", job " + fmt(last.job.TrainingTimeInSeconds, 0) + " s";
      if (last.reason) text += " — " + last.reason;
      parts.push(text);
    }
    const c = r.champion;
    parts.push(c ? "champion: " + (c.model_version || "?") + " (component " + c.component_version + ")" : "no champion yet: the shipped model");
    el.textContent = parts.join(" · ");
    el.setAttribute("data-status", r.running ? "running" : (last ? last.status : "idle"));
  }
  function renderOverview(o) {
    const hist = o.soh_histogram;
    Charts.bars(document.getElementById("chart-soh-hist"), {
      id: "soh-hist", xLabel: "SoH", yLabel: "batteries", height: 220, emptyText: "no health estimate yet",
      bins: hist.bins.map(function (b) {
        return { label: (100 * b.lo).toFixed(0) + "–" + (100 * b.hi).toFixed(0) + " %", count: b.count,
          color: typeof o.eol_threshold === "number" && b.hi <= o.eol_threshold + 1e-9 ? "#c01048" : "#1f6feb",
          title: (100 * b.lo).toFixed(0) + "–" + (100 * b.hi).toFixed(0) + " %: " + b.count + (b.things.length ? " (" + b.things.join(", ") + ")" : "") };
      }),
    });
    const tbody = document.querySelector("#at-risk tbody");
    tbody.textContent = "";
    o.at_risk.forEach(function (r, k) {
      const range = typeof r.rul_p10 === "number" ? fmt(r.rul_p10, 0) + "–" + (typeof r.rul_p90 === "number" ? fmt(r.rul_p90, 0) : "beyond horizon") : "–";
      tbody.appendChild(h("tr", { "data-risk-thing": r.thing, "data-rul": r.rul_cycles }, [
        h("td", { class: "num", text: String(k + 1) }),
        h("td", {}, [h("a", { href: "#/thing/" + encodeURIComponent(r.thing), text: r.thing }), " ", simBadge(r.simulated)]),
        h("td", { class: "num", "data-col": "soh", text: pct(r.soh) }),
        h("td", { class: "num", "data-col": "rul_cycles", text: fmt(r.rul_cycles, 0) }),
        h("td", { class: "num", "data-col": "rul_range", text: range }),
        h("td", { class: "num", "data-col": "cycle_index", text: fmt(r.cycle_index, 0) }),
        h("td", { "data-col": "model_version", text: r.model_version || "physics fit", title: r.model_version || "physics fit" }),
      ]));
    });
    document.getElementById("at-risk-note").textContent = (o.without_rul ? o.without_rul + " without an RUL forecast yet. " : "") +
      "SoH model in use: " + (o.models || []).map(function (m) { return (m.model_version || "none (physics fit)") + " × " + m.count; }).join(", ") + ".";
    const hl = typeof o.eol_threshold === "number" ? [{ y: o.eol_threshold, label: "EOL threshold " + pct(o.eol_threshold), color: "#c01048" }] : [];
    Charts.line(document.getElementById("chart-fleet-fade"), {
      id: "fleet-fade", xType: "number", xLabel: "cycle", yLabel: "SoH", height: 260, hlines: hl,
      series: o.curves.map(function (c) { return { name: c.thing, x: c.cycle, y: c.soh, mode: "line" }; }),
      emptyText: "no complete discharge yet",
    });
    Charts.bars(document.getElementById("chart-fleet-alarms"), {
      id: "fleet-alarms", xLabel: "time (device clocks)", yLabel: "raised", height: 220, emptyText: "no alarm raised",
      bins: o.alarms.bins.map(function (b) {
        const span = o.alarms.bins.length ? o.alarms.bins[o.alarms.bins.length - 1].t1 - o.alarms.bins[0].t0 : 0;
        const codes = Object.keys(b.codes).map(function (c) { return c + " ×" + b.codes[c]; }).join(", ");
        return { label: Charts.timeLabel(b.t0, span), count: b.count, color: "#b54708", title: when(b.t0) + ": " + b.count + (codes ? " (" + codes + ")" : "") };
      }),
    });
  }
  function renderFleet() {
    const data = state.fleet;
    const tbody = document.querySelector("#fleet-table tbody");
    if (!data || !tbody) return;
    const rows = data.items.slice();
    const key = state.sort.key;
    const dir = state.sort.dir === "asc" ? 1 : -1;
    rows.sort(function (a, b) {
      const va = sortValue(a, key);
      const vb = sortValue(b, key);
      if (va === vb) return String(a.thing).localeCompare(String(b.thing));
      if (va === null || va === undefined) return 1;
      if (vb === null || vb === undefined) return -1;
      return (typeof va === "number" && typeof vb === "number" ? va - vb : String(va).localeCompare(String(vb))) * dir;
    });
    tbody.textContent = "";
    for (const r of rows) {
      const alarms = (r.open_alarms || []).map(function (a) {
        return h("span", { class: "badge alarm-" + a.severity, title: a.message || "", text: a.code });
      });
      tbody.appendChild(h("tr", { "data-thing": r.thing }, [
        h("td", {}, [h("a", { href: "#/thing/" + encodeURIComponent(r.thing), text: r.thing }), " ", simBadge(r.simulated)]),
        h("td", { text: r.source || "–" }),
        h("td", { class: "num", "data-col": "soh", text: pct(r.soh) }),
        h("td", { class: "num", "data-col": "rul_cycles", text: fmt(r.rul_cycles, 0) }),
        h("td", { class: "num", "data-col": "temperature_c", text: fmt(r.temperature_c, 1, " °C") }),
        h("td", { "data-col": "last_seen", text: when(r.last_seen) }),
        h("td", { "data-col": "open_alarms" }, alarms.length ? alarms : ["–"]),
      ]));
    }
    const sims = rows.filter(function (r) { return r.simulated === true; }).length;
    document.getElementById("fleet-summary").textContent =
      rows.length + " batteries (" + sims + " simulated, " + (rows.length - sims) + " real data) — " +
      rows.reduce(function (n, r) { return n + (r.open_alarms || []).length; }, 0) + " open alarms";
  }

  // -- one battery ---------------------------------------------------------------------------------------
  const CHARTS = [
    ["live-voltage", "Voltage (live)", ""],
    ["live-current", "Current (live)", ""],
    ["live-temperature", "Temperature (live)", ""],
    ["capacity-time", "Capacity over time", ""],
    ["capacity-cycles", "Capacity over cycles", ""],
    ["fade", "Predicted vs measured fade, forecast to end of life", "wide"],
    ["temperature-dist", "Temperature distribution across cycles", ""],
  ];
  function buildThing(view, thing) {
    document.title = "battwin — " + thing;
    view.appendChild(h("p", {}, [h("a", { href: "#/", text: "← fleet" })]));
    view.appendChild(h("h1", { id: "thing-title" }, [thing]));
    view.appendChild(h("p", { class: "muted", id: "thing-source", text: "" }));
    view.appendChild(h("div", { class: "tiles", id: "tiles" }));
    const charts = h("div", { class: "charts" });
    for (const [id, title, cls] of CHARTS) {
      const notes = {
        "capacity-time": "Measured discharge capacity; dashed lines are alarms, red rings anomalies.",
        "capacity-cycles": "Measured discharge capacity per cycle; red rings are anomalies.",
        "fade": "Measured SoH = capacity / C0; the estimate after each cycle; the newest forecast to the EOL threshold.",
        "temperature-dist": "Per bin of discharge cycles: box of the cycles' mean temperature, dot for the peak.",
      };
      charts.appendChild(h("section", { class: "panel " + cls }, [
        h("h2", { text: title }),
        notes[id] ? h("div", { class: "note", text: notes[id] }) : null,
        id === "fade" ? h("div", { class: "note", id: "fade-note" }) : null,
        h("div", { class: "chart", id: "chart-" + id, "data-testid": "chart-" + id }),
      ]));
    }
    charts.appendChild(h("section", { class: "panel" }, [
      h("h2", { text: "Alarms and anomalies" }),
      h("div", { class: "events", id: "events" }),
    ]));
    // the live charts side by side would be cramped: stack them in the first column pair
    const side = h("aside", { class: "panel", id: "shadow-panel" });
    view.appendChild(h("div", { class: "layout" }, [charts, side]));
    buildShadowPanel(side, thing);
  }

  function tile(k, v, testid) {
    return h("div", { class: "tile" }, [h("div", { class: "k", text: k }), h("div", { class: "v" + (v.length > 12 ? " small" : ""), "data-testid": testid, text: v })]);
  }

  async function pollThing(seq, thing) {
    const [data, shadow] = await Promise.all([
      getJson("/api/things/" + encodeURIComponent(thing)),
      state.info && state.info.shadow ? getJson("/api/things/" + encodeURIComponent(thing) + "/shadow").catch(function (e) { return { error: e.message }; }) : null,
    ]);
    if (seq !== state.seq) return;
    renderThing(data);
    if (shadow) renderShadow(shadow);
  }

  /* the 80 % RUL range (p10–p90) of the latest health record; "" when the record has none */
  function rulRange(r) {
    if (!r || typeof r.p10 !== "number") return "";
    return " (80 %: " + fmt(r.p10, 0) + "–" + (typeof r.p90 === "number" ? fmt(r.p90, 0) : "beyond the horizon") + ")";
  }

  function renderThing(d) {
    const title = document.getElementById("thing-title");
    title.textContent = "";
    title.appendChild(document.createTextNode(d.thing + " "));
    const badge = simBadge(d.simulated);
    if (badge) title.appendChild(badge);
    document.getElementById("thing-source").textContent = "source " + (d.source || "–") + " · " +
      d.counts.cycles + " cycle records, " + d.counts.health + " health estimates, " + d.counts.alarms + " alarm events";
    const s = d.summary || {};
    const tiles = document.getElementById("tiles");
    tiles.textContent = "";
    const open = (s.alarms || []).map(function (a) { return a.code; });
    [
      ["SoH", pct(s.soh), "tile-soh"],
      ["RUL", fmt(s.rul_cycles, 0, " cycles") + rulRange(d.fade.rul_range), "tile-rul"],
      ["capacity", fmt(s.capacity_ah, 3, " Ah"), "tile-capacity"],
      ["C0", fmt(d.fade.c0_ah, 3, " Ah"), "tile-c0"],
      ["cycle", fmt(s.cycle_index, 0), "tile-cycle"],
      ["voltage", fmt(s.voltage_v, 2, " V"), "tile-voltage"],
      ["current", fmt(s.current_a, 2, " A"), "tile-current"],
      ["temperature", fmt(s.temperature_c, 1, " °C"), "tile-temperature"],
      ["method", (d.fade.method || "–") + (d.fade.model_version ? " · " + d.fade.model_version : ""), "tile-method"],
      ["last seen", when(s.last_seen).replace(" UTC", ""), "tile-last-seen"],
      ["open alarms", open.length ? open.join(", ") : "none", "tile-alarms"],
    ].forEach(function (t) { tiles.appendChild(tile(t[0], t[1], t[2])); });

    const marker = function (a) {
      const label = (a.anomaly && a.state === "raised" ? "⚑ " : "") + a.code + (a.state === "cleared" ? " cleared" : "");
      const ev = evidence(a);
      return { x: a.ts, label: label, code: a.code, color: a.state === "cleared" ? "#98a2b3" : (ALARM_COLORS[a.severity] || "#b54708"),
        title: when(a.ts) + " " + a.code + " " + a.state + ": " + (a.message || "") + (ev ? " — " + ev : "") };
    };
    const live = d.live;
    const markers = d.alarms.filter(function (a) { return a.state !== "cleared" && live.ts.length && a.ts >= live.ts[0]; }).map(marker);
    const liveSpec = function (id, title, key, unit, color) {
      return { id: id, title: title + " (" + unit + ")", xType: "time", height: 170, markers: markers,
        xExtra: markers.map(function (m) { return m.x; }),
        series: [{ name: key, x: live.ts, y: live[key], color: color, mode: "line" }], emptyText: "no telemetry yet" };
    };
    Charts.line(document.getElementById("chart-live-voltage"), liveSpec("live-voltage", "pack voltage", "voltage_v", "V", "#1f6feb"));
    Charts.line(document.getElementById("chart-live-current"), liveSpec("live-current", "current, + = charging", "current_a", "A", "#067647"));
    Charts.line(document.getElementById("chart-live-temperature"), liveSpec("live-temperature", "mean temperature", "temperature_c", "°C", "#c01048"));

    const cap = d.capacity;
    const rings = function (xs) {
      const out = [];
      cap.anomaly.forEach(function (a, k) { if (a) out.push({ x: xs[k], y: cap.capacity_ah[k], label: "anomaly at cycle " + cap.cycle[k] }); });
      return out;
    };
    const allMarkers = d.alarms.map(marker);
    Charts.line(document.getElementById("chart-capacity-time"), {
      id: "capacity-time", xType: "time", yLabel: "Ah", height: 220, markers: allMarkers, rings: rings(cap.ts),
      xExtra: cap.ts.length ? allMarkers.map(function (m) { return m.x; }) : [],
      series: [{ name: "capacity", x: cap.ts, y: cap.capacity_ah, color: "#1f6feb", mode: "dots" }], emptyText: "no complete discharge yet",
    });
    Charts.line(document.getElementById("chart-capacity-cycles"), {
      id: "capacity-cycles", xType: "number", xLabel: "cycle", yLabel: "Ah", height: 220, rings: rings(cap.cycle),
      series: [{ name: "capacity", x: cap.cycle, y: cap.capacity_ah, color: "#1f6feb", mode: "dots" }], emptyText: "no complete discharge yet",
    });
    const f = d.fade;
    const hl = [];
    if (typeof f.eol_threshold === "number") hl.push({ y: f.eol_threshold, label: "EOL threshold " + pct(f.eol_threshold), color: "#c01048" });
    const fadeMarkers = [];
    if (typeof f.eol_cycle === "number") fadeMarkers.push({ x: f.eol_cycle, label: "forecast EOL: cycle " + f.eol_cycle.toFixed(0), color: "#c01048", code: "eol" });
    const fadeNote = document.getElementById("fade-note");
    if (fadeNote) {
      fadeNote.textContent = typeof f.forecast.truncated_at === "number"
        ? "Forecast shown to cycle " + f.forecast.truncated_at.toFixed(0) + " of its " + (f.forecast.horizon || 0).toFixed(0) + "-cycle horizon" +
          (typeof f.eol_cycle === "number" ? "." : "; it does not reach the EOL threshold within the horizon.")
        : "";
      if (f.eol_band && typeof f.eol_cycle === "number") {
        fadeNote.textContent += " End of life is where a measured capacity is expected to read below the threshold: the " +
          "forecast lowered by " + f.eol_band.sigmas.toFixed(1) + " × this cell's scatter (" +
          (100 * f.eol_band.lowered_by).toFixed(1) + " %), so it comes before the dashed line crosses.";
      }
      if ((f.forecast.soh_lo || []).some(function (v) { return typeof v === "number"; })) {
        fadeNote.textContent += " The shaded band is the forecast's 80 % interval: 8 in 10 future capacities are " +
          "expected inside it; RUL 80 % is where its edges cross the threshold.";
      }
    }
    Charts.line(document.getElementById("chart-fade"), {
      id: "fade", xType: "number", xLabel: "cycle", yLabel: "SoH", height: 260, hlines: hl, markers: fadeMarkers,
      xExtra: typeof f.eol_cycle === "number" ? [f.eol_cycle] : [],
      bands: [{ name: "80 % interval", x: f.forecast.cycle, lo: f.forecast.soh_lo || [], hi: f.forecast.soh_hi || [], color: "#c01048" }],
      series: [
        { name: "measured (capacity / C0)", x: cap.cycle, y: cap.soh, color: "#1f6feb", mode: "dots" },
        { name: "estimated SoH", x: f.estimate.cycle, y: f.estimate.soh, color: "#067647", mode: "line" },
        { name: "forecast", x: f.forecast.cycle, y: f.forecast.soh, color: "#c01048", mode: "line", dash: true },
      ],
      emptyText: "no health estimate yet",
    });
    Charts.box(document.getElementById("chart-temperature-dist"), {
      id: "temperature-dist", yLabel: "°C", xLabel: "discharge cycles", height: 220,
      bins: d.temperature.map(function (b) {
        return { label: b.first_cycle === b.last_cycle ? String(b.first_cycle) : b.first_cycle + "–" + b.last_cycle,
          min: b.mean_c.min, q1: b.mean_c.q1, median: b.mean_c.median, q3: b.mean_c.q3, max: b.mean_c.max, peak: b.peak_c, n: b.n };
      }),
      emptyText: "no discharge with temperatures yet",
    });
    renderEvents(d);
  }

  // an alarm's evidence (its details: the values compared, the baseline, the window) as "key value" pairs
  function evidence(a) {
    const d = a.details || {};
    return Object.keys(d).filter(function (k) { return d[k] !== null && d[k] !== undefined; }).map(function (k) {
      return k + " " + (typeof d[k] === "number" ? +d[k].toPrecision(4) : String(d[k]));
    }).join(", ");
  }

  function renderEvents(d) {
    const rows = d.alarms.map(function (a) {
      const ev = a.anomaly && a.state === "raised" ? evidence(a) : "";
      return { ts: a.ts, kind: a.state === "event" ? "event" : (a.anomaly ? "anomaly alarm " : "alarm ") + a.state, code: a.code,
        severity: a.severity, text: (a.message || "") + (ev ? " — evidence: " + ev : "") };
    }).concat(d.anomalies.map(function (a) {
      return { ts: a.ts, kind: "anomaly", code: "capacity", severity: "warning",
        text: "cycle " + a.cycle + ": " + fmt(a.capacity_ah, 3) + " Ah, neighbours' median " + fmt(a.expected_ah, 3) + " Ah" };
    }));
    rows.sort(function (a, b) { return b.ts - a.ts; });
    const box = document.getElementById("events");
    box.textContent = "";
    if (!rows.length) {
      box.appendChild(h("p", { class: "muted", text: "no alarms or anomalies" }));
      return;
    }
    box.appendChild(h("table", { id: "events-table" }, [
      h("thead", {}, h("tr", {}, ["time (device clock)", "event", "code", "detail"].map(function (t) { return h("th", { text: t }); }))),
      h("tbody", {}, rows.slice(0, 200).map(function (r) {
        return h("tr", { "data-kind": r.kind }, [
          h("td", { text: when(r.ts) }), h("td", { text: r.kind }),
          h("td", {}, [h("span", { class: "badge alarm-" + (r.kind === "alarm cleared" ? "info" : r.severity), text: r.code })]),
          h("td", { text: r.text }),
        ]);
      })),
    ]));
  }

  // -- configuration shadow -------------------------------------------------------------------------
  const FIELDS = [
    ["source.sample_interval_s", "sample interval (s)", "0.1"],
    ["health.eol_threshold", "EOL threshold (SoH, 0–1)", "0.01"],
    ["alarms.max_temperature_c", "over-temperature limit (°C)", "0.5"],
  ];
  function getPath(tree, path) {
    let node = tree;
    for (const k of path.split(".")) node = node && typeof node === "object" ? node[k] : undefined;
    return node;
  }
  function nest(path, value) {
    const keys = path.split(".");
    const out = {};
    let node = out;
    keys.slice(0, -1).forEach(function (k) { node[k] = {}; node = node[k]; });
    node[keys[keys.length - 1]] = value;
    return out;
  }
  function flatten(tree, prefix, out) {
    out = out || [];
    for (const [k, v] of Object.entries(tree || {})) {
      const p = prefix ? prefix + "." + k : k;
      if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, p, out);
      else out.push([p, v]);
    }
    return out;
  }
  function buildShadowPanel(side, thing) {
    side.appendChild(h("h2", { text: "Configuration (device shadow battwin-config)" }));
    if (!state.info || !state.info.shadow) {
      side.appendChild(h("p", { class: "muted", text: "This dashboard was started without shadow control." }));
      return;
    }
    side.appendChild(h("div", { class: "note", text: state.info.shadow }));
    const form = h("form", { class: "shadow-form", id: "shadow-form", onsubmit: function (ev) { ev.preventDefault(); submitShadow(thing); } });
    for (const [path, label, step] of FIELDS) {
      form.appendChild(h("label", { for: "f-" + path, text: label }));
      form.appendChild(h("input", { id: "f-" + path, name: path, type: "number", step: step, "data-field": path, placeholder: "unchanged" }));
    }
    form.appendChild(h("label", { for: "f-other", text: "other live field (dotted path) = value" }));
    form.appendChild(h("div", { class: "row" }, [
      h("input", { id: "f-other", name: "other", placeholder: "e.g. telemetry.batch_max_samples" }),
      h("input", { id: "f-other-value", name: "other-value", placeholder: "value" }),
    ]));
    form.appendChild(h("button", { type: "submit", id: "shadow-apply", text: "Set desired" }));
    form.appendChild(h("div", { class: "msg", id: "shadow-msg" }));
    side.appendChild(form);
    side.appendChild(h("div", { id: "shadow-state" }));
  }
  function parseValue(raw) {
    const t = raw.trim();
    if (t === "") return undefined;
    if (t === "null") return null;
    if (t === "true" || t === "false") return t === "true";
    const n = Number(t);
    return isFinite(n) && /^[-+0-9.eE]+$/.test(t) ? n : t;
  }
  function merge(a, b) {
    for (const [k, v] of Object.entries(b)) {
      if (v && typeof v === "object" && a[k] && typeof a[k] === "object") merge(a[k], v);
      else a[k] = v;
    }
    return a;
  }
  async function submitShadow(thing) {
    const msg = document.getElementById("shadow-msg");
    const desired = {};
    document.querySelectorAll("#shadow-form input[data-field]").forEach(function (input) {
      const v = parseValue(input.value);
      if (v !== undefined) merge(desired, nest(input.dataset.field, v));
    });
    const other = document.getElementById("f-other").value.trim();
    if (other) merge(desired, nest(other, parseValue(document.getElementById("f-other-value").value) ?? null));
    if (!Object.keys(desired).length) {
      msg.className = "msg err";
      msg.textContent = "nothing to set: enter a value";
      return;
    }
    const button = document.getElementById("shadow-apply");
    button.disabled = true;
    msg.className = "msg";
    msg.textContent = "sending…";
    try {
      const view = await getJson("/api/things/" + encodeURIComponent(thing) + "/shadow", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ desired: desired }),
      });
      msg.textContent = "desired state accepted (version " + view.version + "); waiting for the device to report…";
      renderShadow(view);
    } catch (e) {
      msg.className = "msg err";
      msg.textContent = "refused: " + e.message;
    } finally {
      button.disabled = false;
    }
  }
  function kvTable(id, cls, pairs, empty) {
    if (!pairs.length) return h("p", { class: "muted", id: id, text: empty });
    return h("table", { class: "kv " + cls, id: id }, h("tbody", {}, pairs.map(function (p) {
      return h("tr", { "data-field": p[0] }, [h("td", { text: p[0] }), h("td", { text: typeof p[1] === "object" ? JSON.stringify(p[1]) : String(p[1]) })]);
    })));
  }
  function renderShadow(view) {
    const box = document.getElementById("shadow-state");
    if (!box) return;
    box.textContent = "";
    if (view.error) {
      box.appendChild(h("p", { class: "msg err", text: "shadow unavailable: " + view.error }));
      return;
    }
    document.querySelectorAll("#shadow-form input[data-field]").forEach(function (input) {
      const v = getPath(view.reported, input.dataset.field);
      if (v !== undefined) input.placeholder = "reported: " + v;
    });
    box.appendChild(h("h2", { text: "Rejected by the device" }));
    box.appendChild(kvTable("shadow-rejected", "rejected", Object.entries(view.rejected || {}), "nothing rejected"));
    box.appendChild(h("h2", { text: "Pending (desired ≠ reported)" }));
    box.appendChild(kvTable("shadow-delta", "pending", flatten(view.delta || {}), "nothing pending"));
    box.appendChild(h("h2", { text: "Desired" }));
    box.appendChild(kvTable("shadow-desired", "", flatten(view.desired || {}), "nothing desired"));
    box.appendChild(h("h2", { text: "Reported by the device" + (view.reported_at ? " (" + when(view.reported_at) + ")" : "") }));
    const details = h("details", { class: "reported" }, [h("summary", { text: "all live values" })]);
    details.appendChild(kvTable("shadow-reported", "", flatten(view.reported || {}).sort(), view.exists ? "nothing reported" : "no shadow yet"));
    box.appendChild(details);
  }

  // -- start -------------------------------------------------------------------------------------------
  async function start() {
    try {
      state.info = await getJson("/api/info");
      document.getElementById("api-info").textContent = "data: " + state.info.api;
      document.getElementById("foot").textContent = "Polling every " + (state.info.poll_ms / 1000) + " s. " +
        (state.info.shadow ? "Configuration edits: " + state.info.shadow + "." : "No shadow control.");
    } catch (e) {
      setStatus(false, "error: " + e.message);
      state.info = { poll_ms: 2000, shadow: null, api: "?" };
    }
    window.addEventListener("hashchange", go);
    go();
    state.timer = setInterval(poll, state.info.poll_ms || 1500);
  }
  document.addEventListener("DOMContentLoaded", start);
})();
