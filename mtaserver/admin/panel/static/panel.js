// mtaserver web panel: the few scripts the pages need (no inline scripts: the CSP allows 'self' only).
// Charts on the Overview (uPlot, refreshed every 30 s from /overview/series.json), the CSRF header on
// htmx requests, and "select every message on this page" in a queue list.
"use strict";
(function () {
  const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  document.addEventListener("htmx:configRequest", (ev) => { ev.detail.headers["X-CSRF-Token"] = csrf(); });
  document.addEventListener("htmx:afterSwap", (ev) => { if (ev.target.id === "live") ev.target.removeAttribute("aria-busy"); });

  // -- queue list: select the whole page -------------------------------------------------------
  function selectPage() {
    const all = document.getElementById("select-page");
    if (!all) return;
    all.addEventListener("change", () => {
      document.querySelectorAll('#messages input[name="ids"]').forEach((c) => { c.checked = all.checked; });
    });
  }

  // -- overview charts ------------------------------------------------------------------------
  const COLORS = ["#1f5fbf", "#b3261e", "#c77700", "#6a3fb5", "#1e7b34", "#00838f", "#ad1457", "#5d4037", "#455a64", "#9e9d24"];
  const charts = {};
  let windowName = "hour";

  function label(name) {
    return name.replace(/^(rejected|queue|postscreen):/, "").replace(/:/g, " ");
  }

  let span = { from: 0, to: 0 };  // the window's time range (the x axis shows all of it, data or not)

  function opts(el, names) {
    const width = Math.max(el.clientWidth || 300, 260);
    return {
      width: width, height: 220,
      scales: {
        x: { time: true, range: () => [span.from, span.to] },
        y: { range: (u, min, max) => [0, Math.max(max, 5)] },
      },
      axes: [{}, { size: 50 }],
      legend: { live: true },
      series: [{}].concat(names.map((n, i) => ({
        label: label(n), stroke: COLORS[i % COLORS.length], width: 2, points: { show: true, size: 4 },
      }))),
    };
  }

  function draw(chart) {
    const el = document.querySelector('[data-chart="' + chart.id + '"]');
    if (!el || typeof uPlot === "undefined") return;
    const key = chart.id + ":" + chart.names.join(",");
    const old = charts[chart.id];
    if (!chart.names.length) {
      if (old) { old.plot.destroy(); delete charts[chart.id]; }
      el.innerHTML = "";
      const p = document.createElement("p");
      p.className = "empty";
      p.textContent = "Nothing counted yet.";
      el.appendChild(p);
      return;
    }
    if (old && old.key === key) { old.plot.setData(chart.data); return; }
    if (old) old.plot.destroy();
    el.innerHTML = "";
    charts[chart.id] = { key: key, plot: new uPlot(opts(el, chart.names), chart.data, el) };
  }

  async function refresh() {
    const box = document.getElementById("charts");
    if (!box) return;
    try {
      const resp = await fetch(box.dataset.series + "?window=" + windowName, { credentials: "same-origin", headers: { "Accept": "application/json" } });
      if (!resp.ok) return;
      const doc = await resp.json();
      span = { from: doc.now - doc.span, to: doc.now };
      if (doc.window !== box.dataset.loaded) {  // another window: new axes
        Object.keys(charts).forEach((id) => { charts[id].plot.destroy(); delete charts[id]; });
      }
      doc.charts.forEach(draw);
      const up = document.getElementById("charts-updated");
      if (up) up.textContent = doc.last_sample ? "Last sample " + new Date(doc.last_sample * 1000).toLocaleTimeString() + "." : "";
      box.dataset.loaded = doc.window;
    } catch (e) { /* the next poll tries again */ }
  }

  function overview() {
    if (!document.getElementById("charts")) return;
    document.querySelectorAll("button.window").forEach((b) => {
      b.addEventListener("click", () => {
        windowName = b.dataset.window;
        document.querySelectorAll("button.window").forEach((o) => o.setAttribute("aria-pressed", String(o === b)));
        refresh();
      });
    });
    refresh();
    setInterval(refresh, 30000);
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => {
        Object.keys(charts).forEach((id) => {
          const el = document.querySelector('[data-chart="' + id + '"]');
          if (el) charts[id].plot.setSize({ width: Math.max(el.clientWidth, 260), height: 220 });
        });
      }, 200);
    });
  }

  document.addEventListener("DOMContentLoaded", () => { selectPage(); overview(); });
})();
