// Fogline's dashboard: one script, no dependencies, rendered into the DOM (tables and
// inline SVG), reading this member's /v1 routes with the token kept in the tab.
"use strict";
(() => {
  const KEY = "fogline-token";
  const MAX_ROWS = 200;
  const TIERS = ["device", "edge", "cloud", "federated"];
  const COLORS = { device: "#8e6bbf", edge: "#2f8f6f", cloud: "#3b73c4", federated: "#c7832f", unknown: "#999" };
  const PALETTE = ["#2f8f6f", "#3b73c4", "#c7832f", "#8e6bbf", "#c23b3b", "#4aa3b5", "#7a8a2e", "#b05a9a", "#555"];

  // ---- token ---------------------------------------------------------------------------
  const here = new URL(location.href);
  if (here.searchParams.has("token")) {
    sessionStorage.setItem(KEY, here.searchParams.get("token"));
    here.searchParams.delete("token");
    history.replaceState(null, "", here.pathname + here.search + here.hash);
  }
  const token = () => sessionStorage.getItem(KEY) || "";

  class AuthError extends Error {}

  async function api(path, opts) {
    const o = Object.assign({}, opts || {});
    o.headers = Object.assign({ Authorization: "Bearer " + token() }, o.headers || {});
    const r = await fetch(path, o);
    if (r.status === 401 || r.status === 403) throw new AuthError((await r.text()).trim());
    if (!r.ok) throw new Error(r.status + ": " + (await r.text()).trim());
    return r.json();
  }

  // ---- DOM helpers ---------------------------------------------------------------------
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") e.textContent = v;
      // Through the CSSOM: the page's policy forbids inline style attributes.
      else if (k === "style") e.style.cssText = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const k of kids.flat(Infinity)) if (k !== null && k !== undefined) e.append(k);
    return e;
  }
  const SVGNS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, ...kids) {
    const e = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") e.textContent = v; else e.setAttribute(k, v);
    }
    for (const k of kids.flat(Infinity)) if (k) e.append(k);
    return e;
  }
  const main = () => document.getElementById("main");
  function show(...nodes) { main().replaceChildren(...nodes); }
  const ms = (v) => (v === null || v === undefined || Number.isNaN(v)) ? "–" : (v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : v.toFixed(0));
  const pct = (v) => (v === null || v === undefined) ? "–" : (100 * v).toFixed(1) + " %";
  const clock = (unixS) => new Date(unixS * 1000).toLocaleTimeString();

  function failed(e) {
    if (e instanceof AuthError) return login(e.message);
    show(el("p", { class: "error", id: "error", text: String(e.message || e) }));
  }

  function login(message) {
    const f = document.getElementById("login");
    main().replaceChildren();
    f.hidden = false;
    document.getElementById("login-error").textContent = message || "";
    f.onsubmit = (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(KEY, document.getElementById("token").value.trim());
      f.hidden = true;
      route();
    };
  }

  // ---- charts (inline SVG) ---------------------------------------------------------------
  function barChart(id, labels, values, title) {
    const W = 560, H = 180, L = 36, B = 34, n = Math.max(values.length, 1);
    const max = Math.max(1, ...values);
    const bw = (W - L - 6) / n;
    const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, id, role: "img", "aria-label": title });
    s.append(svg("line", { x1: L, y1: H - B, x2: W, y2: H - B, stroke: "#ccc" }));
    s.append(svg("text", { x: 2, y: 12, text: String(max) }));
    values.forEach((v, i) => {
      const h = (H - B - 16) * v / max;
      const x = L + i * bw;
      s.append(svg("rect", { class: "hbar", x: x + 1, y: H - B - h, width: Math.max(bw - 2, 1), height: h, fill: "#3b73c4", "data-count": v },
        svg("title", { text: `${labels[i]}: ${v}` })));
      if (n <= 24) s.append(svg("text", { x: x + bw / 2, y: H - B + 12, "text-anchor": "middle", text: labels[i] }));
    });
    s.append(svg("text", { x: W / 2, y: H - 4, "text-anchor": "middle", text: title }));
    return s;
  }

  function stackedBars(id, steps, keys, title) {
    const W = 560, H = 180, L = 36, B = 34, n = Math.max(steps.length, 1);
    const max = Math.max(1, ...steps.map((st) => keys.reduce((a, k) => a + (st.tiers[k] || 0), 0)));
    const bw = (W - L - 6) / n;
    const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, id, role: "img", "aria-label": title });
    s.append(svg("line", { x1: L, y1: H - B, x2: W, y2: H - B, stroke: "#ccc" }));
    s.append(svg("text", { x: 2, y: 12, text: String(max) }));
    steps.forEach((st, i) => {
      let y = H - B;
      for (const k of keys) {
        const v = st.tiers[k] || 0;
        if (!v) continue;
        const h = (H - B - 16) * v / max;
        y -= h;
        s.append(svg("rect", { x: L + i * bw + 1, y, width: Math.max(bw - 2, 1), height: h, fill: COLORS[k] || COLORS.unknown },
          svg("title", { text: `${clock(st.at)} ${k}: ${v}` })));
      }
    });
    if (steps.length) {
      s.append(svg("text", { x: L, y: H - B + 12, text: clock(steps[0].at) }));
      s.append(svg("text", { x: W, y: H - B + 12, "text-anchor": "end", text: clock(steps[steps.length - 1].at) }));
    }
    s.append(svg("text", { x: W / 2, y: H - 4, "text-anchor": "middle", text: title }));
    return s;
  }

  // Lines of (x, y) points; `logx` draws x on a log scale.
  function lineChart(id, series, opts) {
    const W = 560, H = 220, L = 44, B = 34, T = 8, R = 10;
    const pts = series.flatMap((s) => s.points).filter((p) => Number.isFinite(p[0]) && Number.isFinite(p[1]));
    const fx = opts.logx ? (v) => Math.log10(Math.max(v, 1e-3)) : (v) => v;
    let x0 = Math.min(...pts.map((p) => fx(p[0]))), x1 = Math.max(...pts.map((p) => fx(p[0])));
    let y0 = opts.y0 !== undefined ? opts.y0 : Math.min(...pts.map((p) => p[1]));
    let y1 = opts.y1 !== undefined ? opts.y1 : Math.max(...pts.map((p) => p[1]));
    if (!pts.length) { x0 = 0; x1 = 1; y0 = 0; y1 = 1; }
    if (x1 === x0) x1 = x0 + 1;
    if (y1 === y0) y1 = y0 + 1;
    const sx = (v) => L + (W - L - R) * (fx(v) - x0) / (x1 - x0);
    const sy = (v) => H - B - (H - B - T) * (v - y0) / (y1 - y0);
    const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, id, role: "img", "aria-label": opts.title });
    s.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#ccc" }));
    s.append(svg("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#ccc" }));
    const xl = opts.xlabel || ((v) => String(v));
    for (const t of opts.xticks || []) {
      if (fx(t) < x0 || fx(t) > x1) continue;
      s.append(svg("text", { x: sx(t), y: H - B + 12, "text-anchor": "middle", text: xl(t) }));
    }
    for (const t of opts.yticks || [y0, y1]) {
      s.append(svg("text", { x: L - 4, y: sy(t) + 4, "text-anchor": "end", text: (opts.ylabel || String)(t) }));
    }
    series.forEach((se, i) => {
      const p = se.points.filter((q) => Number.isFinite(q[0]) && Number.isFinite(q[1]));
      if (!p.length) return;
      const d = p.map((q, j) => (j ? "L" : "M") + sx(q[0]).toFixed(1) + " " + sy(q[1]).toFixed(1)).join(" ");
      const color = se.color || PALETTE[i % PALETTE.length];
      s.append(svg("path", { d, fill: "none", stroke: color, "stroke-width": 1.8, "data-series": se.name },
        svg("title", { text: se.name })));
      // Few points: each marked, so one alone is seen.
      if (p.length <= 60) for (const q of p) s.append(svg("circle", { cx: sx(q[0]).toFixed(1), cy: sy(q[1]).toFixed(1), r: 2.5, fill: color }));
    });
    s.append(svg("text", { x: (W + L) / 2, y: H - 4, "text-anchor": "middle", text: opts.title }));
    return s;
  }

  function legend(items) {
    return el("div", { class: "legend" }, items.map(([name, color]) => el("span", {}, el("i", { style: `background:${color}` }), name)));
  }

  // ---- Mesh ------------------------------------------------------------------------------
  async function meshPage() {
    const root = el("div", {}, el("h1", { text: "Mesh" }), el("p", { class: "muted", id: "mesh-note", text: "Members as this member sees them, updated every second." }), el("div", { id: "members" }));
    show(root);
    const draw = async () => {
      let m;
      try {
        m = await api("/v1/mesh");
      } catch (e) {
        if (e instanceof AuthError) throw e;
        document.getElementById("members").replaceChildren(el("p", { class: "muted", text: String(e.message) }));
        return;
      }
      const groups = new Map();
      for (const r of m.members) {
        const key = r.tier + " · site " + (r.site || "default");
        if (!groups.has(key)) groups.set(key, []);
        groups.get(key).push(r);
      }
      const order = [...groups.keys()].sort((a, b) => TIERS.indexOf(a.split(" ")[0]) - TIERS.indexOf(b.split(" ")[0]) || a.localeCompare(b));
      const out = order.map((k) => {
        const rows = groups.get(k).sort((a, b) => a.id.localeCompare(b.id));
        return el("section", { class: "group", "data-group": k },
          el("h2", {}, k + " ", el("span", { class: "count", text: `(${rows.length})` })),
          el("div", { class: "cards" }, rows.map(member)));
      });
      document.getElementById("members").replaceChildren(...out);
      const me = m.members.find((r) => r.this);
      document.getElementById("mesh-note").textContent = `${m.members.length} members as ${me ? me.id : "this member"} sees them; updated ${new Date().toLocaleTimeString()}.`;
    };
    await draw();
    setInterval(() => draw().catch(failed), 1000);
  }

  function member(r) {
    const load = Math.min(1, r.load || 0);
    return el("div", { class: `member tier-${r.tier}`, "data-name": r.id, "data-state": r.state },
      el("span", { class: `state state-${r.state}`, text: r.state }),
      el("div", { class: "name", text: r.id + (r.this ? " (this)" : "") }),
      el("div", { class: "bar", title: `load ${(100 * (r.load || 0)).toFixed(0)} % of its cores` }, el("span", { style: `width:${(100 * load).toFixed(0)}%` })),
      el("dl", {},
        el("dt", { text: "load" }), el("dd", { text: `${(r.load || 0).toFixed(2)} per core · ${r.in_flight} running · ${r.queued} queued` }),
        el("dt", { text: "round trip" }), el("dd", { text: r.rtt_ms === null || r.rtt_ms === undefined ? "–" : ms(r.rtt_ms) + " ms" }),
        el("dt", { text: "warm" }), el("dd", { class: "warm", text: (r.warm || []).join(", ") || "none" }),
        el("dt", { text: "starts" }), el("dd", { text: `${r.cold_starts} cold · ${r.warm_starts} warm` }),
        el("dt", { text: "address" }), el("dd", { text: r.address }),
        el("dt", { text: "heard" }), el("dd", { text: `${(r.age_ms / 1000).toFixed(1)} s ago` })));
  }

  // ---- Placements ------------------------------------------------------------------------
  async function placementsPage() {
    const filter = el("input", { id: "filter", placeholder: "filter by function", size: 24 });
    const counts = el("span", { id: "counts", class: "muted" });
    const body = el("tbody", {});
    const table = el("table", { id: "placements" },
      el("thead", {}, el("tr", {}, ["time", "function", "candidates (predicted ms)", "chosen", "ran on", "predicted", "actual", "tries", "status", "trace"].map((h, i) => el("th", { class: i >= 5 && i <= 7 ? "num" : null, text: h })))),
      body);
    show(el("div", {}, el("h1", { text: "Placements" }),
      el("p", { class: "muted", text: `Every decision as it is made: the places considered with their predicted times, the choice, and what it took. The newest ${MAX_ROWS} are shown.` }),
      el("div", { class: "toolbar" }, filter, counts), table));
    const st = { received: 0, dropped: 0, pending: [], since: performance.now(), recent: 0, rate: 0, connected: false };
    const matches = (d) => !filter.value || d.function.includes(filter.value.trim());
    filter.addEventListener("input", () => {
      for (const tr of body.children) tr.hidden = !(!filter.value || tr.dataset.function.includes(filter.value.trim()));
    });
    const flush = () => {
      st.scheduled = false;
      const batch = st.pending.splice(0);
      // Only the newest MAX_ROWS can be shown: the rest are counted, not drawn.
      const rows = batch.slice(-MAX_ROWS).reverse().map(row);
      body.prepend(...rows);
      while (body.children.length > MAX_ROWS) body.lastElementChild.remove();
      const now = performance.now();
      if (now - st.since > 1000) { st.rate = st.recent * 1000 / (now - st.since); st.recent = 0; st.since = now; }
      counts.textContent = `${st.received} received · ${st.rate.toFixed(0)}/s · ${st.dropped} dropped by the stream · ${st.connected ? "live" : "connecting"}`;
      counts.dataset.received = st.received;
    };
    const add = (list) => {
      st.received += list.length;
      st.recent += list.length;
      for (const d of list) st.pending.push(d);
      if (st.pending.length > MAX_ROWS) st.pending.splice(0, st.pending.length - MAX_ROWS);
      if (!st.scheduled) { st.scheduled = true; requestAnimationFrame(flush); }
    };
    function row(d) {
      const tr = el("tr", { "data-function": d.function, class: d.status === 200 ? null : "failed", hidden: !matches(d) },
        el("td", { text: clock(d.at) }),
        el("td", { text: d.function }),
        el("td", { class: "cands" }, d.candidates.map((c, i) => [i ? " · " : "", c.place === d.chosen ? el("b", { text: `${c.place} ${ms(c.predicted_ms)}` }) : `${c.place} ${ms(c.predicted_ms)}`])),
        el("td", { text: d.chosen + (d.explored ? " (explored)" : "") }),
        el("td", { text: d.ran_on || "–" }),
        el("td", { class: "num", text: ms(d.predicted_ms) + (d.guessed ? " (guessed)" : ""), title: d.guessed ? "the function's first call anywhere: predicted at a typical function's size" : null }),
        el("td", { class: "num", text: ms(d.actual_ms) }),
        el("td", { class: "num", text: String(d.attempts) }),
        el("td", { text: d.status === 200 ? "200" : `${d.status} ${d.error || ""}` }),
        el("td", {}, d.trace ? el("a", { href: "/ui/traces/" + d.trace, text: "trace" }) : ""));
      return tr;
    }
    try {
      const recent = await api("/v1/placements?limit=" + MAX_ROWS);
      add(recent.placements.slice().reverse());
    } catch (e) {
      if (e instanceof AuthError) throw e;
      show(el("p", { class: "error", id: "error", text: e.message }));
      return;
    }
    stream("/v1/placements/stream", (ev, data) => {
      if (ev === "dropped") { st.dropped += Number(data); return; }
      add(JSON.parse(data));
    }, (up) => { st.connected = up; flush(); });
  }

  // Reads a Server-Sent Events stream with the token in a header (EventSource cannot send
  // one); reconnects after a second when it ends.
  async function stream(path, onEvent, onState) {
    for (;;) {
      try {
        const r = await fetch(path, { headers: { Authorization: "Bearer " + token() } });
        if (r.status === 401 || r.status === 403) throw new AuthError((await r.text()).trim());
        if (!r.ok) throw new Error(r.status + ": " + (await r.text()).trim());
        onState(true);
        const reader = r.body.getReader();
        const dec = new TextDecoder();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true });
          let i;
          while ((i = buf.indexOf("\n\n")) >= 0) {
            const block = buf.slice(0, i);
            buf = buf.slice(i + 2);
            let ev = "message", data = [];
            for (const line of block.split("\n")) {
              if (line.startsWith("event: ")) ev = line.slice(7);
              else if (line.startsWith("data: ")) data.push(line.slice(6));
            }
            if (data.length) onEvent(ev, data.join("\n"));
          }
        }
      } catch (e) {
        if (e instanceof AuthError) return failed(e);
      }
      onState(false);
      await new Promise((res) => setTimeout(res, 1000));
    }
  }

  // ---- Functions -------------------------------------------------------------------------
  async function functionsPage() {
    const fs = await api("/system/functions");
    const rows = fs.sort((a, b) => a.name.localeCompare(b.name)).map((f) => el("tr", { "data-function": f.name },
      el("td", {}, el("a", { href: "/ui/functions/" + encodeURIComponent(f.name), text: f.name })),
      el("td", { text: f.image || "" }),
      el("td", { class: "num", text: String(f.invocationCount || 0) }),
      el("td", { class: "num", text: String(f.replicas || 0) })));
    show(el("div", {}, el("h1", { text: "Functions" }),
      el("table", { id: "functions" }, el("thead", {}, el("tr", {}, el("th", { text: "function" }), el("th", { text: "image / module" }), el("th", { class: "num", text: "calls here" }), el("th", { class: "num", text: "replicas" }))), el("tbody", {}, rows))));
  }

  async function functionPage(name) {
    const head = el("div", {}, el("h1", { text: name }), el("p", { class: "muted", text: "As this router placed it: latency of every call it took, where they ran, and how far its predictions were off (10-second steps, last ten minutes)." }));
    const body = el("div", { id: "function-stats" });
    show(head, body);
    const draw = async () => {
      const s = await api("/v1/functions/" + encodeURIComponent(name) + "/stats");
      const stat = (k, v, id) => el("div", { class: "stat", id }, el("div", { class: "v", text: String(v) }), el("div", { class: "k", text: k }));
      const labels = s.histogram.map((b) => b.le_ms === null ? "more" : "≤" + (b.le_ms < 1 ? b.le_ms : b.le_ms >= 1000 ? b.le_ms / 1000 + "s" : b.le_ms));
      const counts = s.histogram.map((b) => b.count);
      const tiers = TIERS.concat(["unknown"]).filter((t) => s.series.some((st) => st.tiers[t]));
      const errs = s.series.filter((st) => st.median_error !== null).map((st) => [st.at, st.median_error]);
      body.replaceChildren(
        el("div", { class: "stats" }, stat("calls", s.calls, "calls"), stat("failed", s.failed, "failed"), stat("cold starts", s.cold_starts, "cold"), stat("retried", s.retried, "retried")),
        el("div", { class: "grid2" },
          el("div", { class: "chart" }, barChart("histogram", labels, counts, "latency (ms), calls per bucket"),
            el("table", { id: "histogram-table", hidden: true }, el("tbody", {}, s.histogram.map((b, i) => el("tr", {}, el("td", { text: labels[i] }), el("td", { text: String(b.count) })))))),
          el("div", { class: "chart" }, stackedBars("tiers", s.series, tiers, "where calls ran, per 10 s"), legend(tiers.map((t) => [t, COLORS[t] || COLORS.unknown]))),
          el("div", { class: "chart" }, lineChart("errors", [{ name: "median prediction error", points: errs, color: "#c23b3b" }],
            { title: "median prediction error over time", y0: 0, yticks: [0, 0.25, 0.5, 1], ylabel: (v) => (100 * v).toFixed(0) + "%", xticks: errs.length ? [errs[0][0], errs[errs.length - 1][0]] : [], xlabel: clock }))));
    };
    await draw();
    setInterval(() => draw().catch(failed), 2000);
  }

  // ---- Traces ----------------------------------------------------------------------------
  async function tracesPage() {
    const t = await api("/v1/traces?limit=100");
    show(el("div", {}, el("h1", { text: "Recent traces" }),
      el("p", { class: "muted", text: `${t.held.traces} traces (${t.held.spans} spans) held on ${t.member}, at most ${t.held.keep}.` }),
      el("table", { id: "traces" }, el("thead", {}, el("tr", {}, ["started", "call", "function", "ingress", "status", "took (ms)", "spans"].map((h) => el("th", { text: h })))),
        el("tbody", {}, t.traces.map((r) => el("tr", {},
          el("td", { text: clock(r.start_us / 1e6) }),
          el("td", {}, el("a", { href: "/ui/traces/" + r.trace_id, text: (r.calls[0] || r.trace_id).slice(0, 12) + "…" })),
          el("td", { text: r.function || "" }), el("td", { text: r.name }), el("td", { text: r.status || "" }),
          el("td", { class: "num", text: ms(r.duration_us / 1000) }), el("td", { class: "num", text: String(r.spans) })))))));
  }

  async function tracePage(id) {
    const t = await api("/v1/traces/" + encodeURIComponent(id));
    const t0 = Math.min(...t.spans.map((s) => s.start_us));
    const t1 = Math.max(...t.spans.map((s) => s.start_us + s.duration_us));
    const span = Math.max(t1 - t0, 1);
    const rows = t.spans.map((s) => el("tr", { class: "trace-row", "data-name": s.name, "data-member": s.member },
      el("td", { style: `padding-left:${8 + 16 * s.depth}px`, text: s.name }),
      el("td", { text: s.member }),
      el("td", { class: "num", text: ms(s.duration_us / 1000) }),
      el("td", { style: "width:30%" }, el("div", { class: "span-bar", style: `margin-left:${(100 * (s.start_us - t0) / span).toFixed(2)}%;width:${Math.max(0.3, 100 * s.duration_us / span).toFixed(2)}%` })),
      el("td", { class: "cands", text: s.attrs.map(([k, v]) => `${k}=${v}`).join(" · ") })));
    show(el("div", {}, el("h1", { text: "Trace " + t.trace_id }),
      el("p", { class: "muted", text: `call ${t.calls.join(", ") || "–"} · ${t.spans.length} spans · ${ms(span / 1000)} ms` }),
      t.unreachable.length ? el("p", { class: "error", text: "not reached: " + t.unreachable.join("; ") }) : "",
      el("table", { id: "trace" }, el("thead", {}, el("tr", {}, ["step", "member", "ms", "when", "details"].map((h) => el("th", { text: h })))), el("tbody", {}, rows))));
  }

  // ---- Simulator -------------------------------------------------------------------------
  async function simulatePage() {
    const sc = await api("/v1/simulate/scenarios");
    const pick = el("select", { id: "scenario" }, sc.scenarios.map((s) => el("option", { value: s.file, text: `${s.name} (${s.file})` })));
    const seed = el("input", { id: "seed", type: "number", value: 1, size: 6 });
    const calls = el("input", { id: "invocations", type: "number", value: 20000, size: 8, min: 1 });
    const about = el("p", { class: "muted", id: "about" });
    const text = el("textarea", { id: "scenario-text", rows: 8, cols: 80, placeholder: "…or paste a scenario (TOML) here; its files are read relative to " + (sc.folder || "the scenario folder") });
    const run = el("button", { id: "run", type: "button", text: "Run" });
    const out = el("div", { id: "sim-out" });
    const describe = () => { const s = sc.scenarios.find((x) => x.file === pick.value); about.textContent = s ? s.about : ""; };
    pick.addEventListener("change", describe);
    describe();
    run.addEventListener("click", async () => {
      run.disabled = true;
      out.replaceChildren(el("p", { class: "muted", id: "sim-running", text: "Simulating…" }));
      try {
        const req = { seed: Number(seed.value), invocations: Number(calls.value) };
        if (text.value.trim()) req.text = text.value; else req.scenario = pick.value;
        const r = await api("/v1/simulate", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(req) });
        out.replaceChildren(simResult(r));
      } catch (e) {
        if (e instanceof AuthError) return failed(e);
        out.replaceChildren(el("p", { class: "error", id: "sim-error", text: e.message }));
      } finally {
        run.disabled = false;
      }
    });
    show(el("div", {}, el("h1", { text: "Simulator" }),
      el("p", { class: "muted", text: "Compare placement policies on a simulated continuum (seeded, deterministic), here in the request." }),
      sc.scenarios.length ? "" : el("p", { class: "error", text: "No scenarios in " + (sc.folder || "any folder") + " (set ui.scenarios)." }),
      el("div", { class: "toolbar" }, el("label", {}, "scenario ", pick), el("label", {}, "seed ", seed), el("label", {}, "calls ", calls), run),
      about, el("details", {}, el("summary", { text: "paste a scenario" }), text), out));
  }

  function simResult(r) {
    // A scenario with peer clusters shows their share too.
    const tiers = ["device", "edge", "cloud"].concat(r.policies.some((p) => p.tier_share.federated !== undefined) ? ["federated"] : []);
    const cols = ["policy", "p50", "p95", "p99", "mean", "deadline miss", ...tiers.map((t) => (t === "federated" ? "peer" : t)), "cold starts", "prediction error", "error floor", "failed"];
    const rows = r.policies.map((p) => el("tr", { "data-policy": p.name },
      el("td", { text: p.name }),
      ...[p.p50_ms, p.p95_ms, p.p99_ms, p.mean_ms].map((v) => el("td", { class: "num", text: ms(v) })),
      el("td", { class: "num", text: pct(p.deadline_miss) }),
      ...tiers.map((t) => el("td", { class: "num", text: pct(p.tier_share[t]) })),
      el("td", { class: "num", text: String(p.cold_starts) }),
      el("td", { class: "num", text: p.prediction_error === null ? "–" : pct(p.prediction_error) }),
      // What a prediction that knew all but how each run strays would miss by.
      el("td", { class: "num", "data-col": "floor", text: pct(p.prediction_error_floor) }),
      el("td", { class: "num", text: String(p.failed) })));
    const series = r.policies.map((p, i) => ({ name: p.name, color: PALETTE[i % PALETTE.length], points: p.cdf_ms.map((v, j) => [v, r.cdf_at[j]]) }));
    return el("div", {},
      el("p", { class: "muted", id: "sim-summary", text: `${r.scenario}, seed ${r.seed}: ${r.invocations} calls on ${r.edge_nodes} edge nodes and ${r.devices} devices (offered utilisation ${pct(r.offered_utilisation)}), simulated in ${r.took_s.toFixed(2)} s. Latencies in ms, after the warm-up.` }),
      el("table", { id: "sim-table" }, el("thead", {}, el("tr", {}, cols.map((c, i) => el("th", { class: i ? "num" : null, text: c })))), el("tbody", {}, rows)),
      el("div", { class: "chart narrow" }, lineChart("cdf", series, { title: "latency CDF (ms, log scale)", logx: true, y0: 0, y1: 1, yticks: [0, 0.25, 0.5, 0.75, 0.9, 1], ylabel: (v) => String(v), xticks: [0.1, 1, 10, 100, 1000, 10000, 100000], xlabel: (v) => String(v) }),
        legend(series.map((s) => [s.name, s.color]))));
  }

  // ---- routing ---------------------------------------------------------------------------
  function route() {
    const path = location.pathname.replace(/\/+$/, "");
    const parts = path.split("/").slice(2).map(decodeURIComponent);
    const page = parts[0] || "mesh";
    for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("active", a.dataset.page === page);
    if (!token()) return login("");
    api("/v1/status").then((s) => { document.getElementById("who").textContent = `${s.id} · ${s.tier} · v${s.version}`; }).catch(() => {});
    let p;
    switch (page) {
      case "mesh": p = meshPage(); break;
      case "placements": p = placementsPage(); break;
      case "functions": p = parts[1] ? functionPage(parts.slice(1).join("/")) : functionsPage(); break;
      case "traces": p = parts[1] ? tracePage(parts[1]) : tracesPage(); break;
      case "simulate": p = simulatePage(); break;
      default: p = Promise.reject(new Error("no page " + path + "; the pages are /ui, /ui/placements, /ui/functions, /ui/traces, /ui/simulate"));
    }
    p.catch(failed);
  }
  route();
})();
