"""The dashboard page the admin listener serves at ``/dashboard``: plotly.js charts of the history
(``/api/history``, one sample a second). The JavaScript is the copy the ``plotly`` Python package
ships (served at ``/static/plotly.min.js``): nothing is fetched from elsewhere."""

from __future__ import annotations

import os


def plotly_js() -> str | None:
    """The path of plotly.min.js in the installed ``plotly`` package, or None without it."""
    try:
        import plotly
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(plotly.__file__), "package_data", "plotly.min.js")
    return path if os.path.exists(path) else None


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Predis</title>
<link rel="icon" href="data:,">
<script src="/static/plotly.min.js"></script>
<style>
  body { font-family: system-ui, sans-serif; margin: 1em 2em; color: #222; }
  h1 { font-size: 1.4em; margin-bottom: 0.2em; }
  .grid { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; }
  .chart { height: 280px; border: 1px solid #ddd; }
  table { border-collapse: collapse; margin: 0.5em 0; }
  td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }
  #status { color: #666; }
  .firing { color: #b00; font-weight: bold; }
</style>
</head>
<body>
<h1>Predis</h1>
<div id="status">waiting for the first samples...</div>
<div id="ab"></div>
<div id="alerts"></div>
<table id="models"><thead><tr><th>arm</th><th>predictor</th><th>model</th><th>GETs</th>
<th>hit ratio (all)</th></tr></thead><tbody></tbody></table>
<div class="grid">
  <div id="hit" class="chart"></div>
  <div id="latency" class="chart"></div>
  <div id="precision" class="chart"></div>
  <div id="tier" class="chart"></div>
  <div id="drift" class="chart"></div>
</div>
<script>
"use strict";
window.predisSamples = [];
const layout = (title, y) => ({title: {text: title, font: {size: 14}}, margin: {l: 50, r: 10, t: 36, b: 36},
  xaxis: {type: "date"}, yaxis: {title: y}, showlegend: true, legend: {orientation: "h"}});
const charts = {
  hit: ["Hit ratio per arm (last 10 s)", "hit ratio", s => perArm(s, "hit_ratio")],
  latency: ["Prediction latency p99 per arm", "ms", s => perArm(s, "prediction_p99_ms")],
  precision: ["Prefetch precision per arm", "precision", s => perArm(s, "precision")],
  tier: ["Hot tier", "share", s => [["usage", s.tier ? s.tier.usage : null], ["hit ratio", s.tier ? s.tier.hit_ratio : null]]],
  drift: ["Key-template drift (Jensen-Shannon)", "divergence", s => [["drift", s.drift_js]]],
};
function perArm(s, field) { return Object.entries(s.arms).map(([name, a]) => [name, a[field]]); }
function fmt(x, digits) { return x === null || x === undefined ? "-" : Number(x).toPrecision(digits || 3); }
function text(el, value) { document.getElementById(el).textContent = value; }
function render() {
  const samples = window.predisSamples;
  if (!samples.length) return;
  for (const [id, [title, y, pick]] of Object.entries(charts)) {
    const traces = {};
    for (const s of samples) {
      for (const [name, value] of pick(s)) {
        const tr = traces[name] || (traces[name] = {x: [], y: [], name: name, mode: "lines", type: "scatter"});
        tr.x.push(new Date(s.t * 1000)); tr.y.push(value);
      }
    }
    Plotly.react(id, Object.values(traces), layout(title, y), {displayModeBar: false, responsive: true});
  }
  const last = samples[samples.length - 1];
  text("status", samples.length + " samples, the latest at " + new Date(last.t * 1000).toLocaleTimeString());
  const ab = last.ab;
  if (ab) {
    const parts = ["A/B test: chi-square p " + fmt(ab.chi2_p), ab.enough_data ? "enough data" : "not enough data yet",
      "winner: " + (ab.winner || "none yet")];
    for (const c of ab.comparisons) {
      parts.push(c.arms + ": difference " + fmt(c.difference) + (c.ci95 ? " (95% " + fmt(c.ci95[0]) + " to " + fmt(c.ci95[1]) + ")" : "")
        + ", sequential p " + fmt(c.sequential_p));
    }
    text("ab", parts.join("; "));
  }
  const alerts = document.getElementById("alerts");
  alerts.textContent = last.alerts.length ? "Alerts firing: " + last.alerts.join(", ") : "No alert firing";
  alerts.className = last.alerts.length ? "firing" : "";
  const body = document.querySelector("#models tbody");
  body.replaceChildren(...Object.entries(last.arms).map(([name, a]) => {
    const row = document.createElement("tr");
    for (const v of [name, a.spec, a.model || "-", a.gets, fmt(a.hit_ratio_total)]) {
      const td = document.createElement("td"); td.textContent = v; row.appendChild(td);
    }
    return row;
  }));
}
let since = 0;
async function poll() {
  try {
    const token = new URLSearchParams(location.search).get("token");  // (an admin_token, if the page had one)
    const got = await (await fetch("/api/history?since=" + since + (token ? "&token=" + encodeURIComponent(token) : ""))).json();
    if (got.length) {
      since = got[got.length - 1].t;
      window.predisSamples.push(...got);
      window.predisSamples.splice(0, Math.max(0, window.predisSamples.length - 900));
      render();
    }
  } catch (err) {
    text("status", "cannot reach the proxy: " + err);
  }
  setTimeout(poll, 1000);
}
poll();
</script>
</body>
</html>
"""
