// The dashboard: polls the service's own API and draws one canvas chart per sensor. No libraries.
"use strict";

const WINDOW_S = 300;           // seconds of history per chart
const STATUS_EVERY_MS = 1000;
const DATA_EVERY_MS = 2000;
const cards = new Map();        // sensor_id -> {root, canvas, values, state, readings}
let rules = {warning_ppm: 500, danger_ppm: 1000, probability: 0.7};

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

function fmtTime(ts) {
  return ts == null ? "" : new Date(ts * 1000).toLocaleTimeString();
}

function fmt(x, digits = 0) {
  return x == null ? "–" : Number(x).toFixed(digits);
}

async function getJSON(url) {
  const response = await fetch(url, {cache: "no-store"});
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

function card(sensorId) {
  if (cards.has(sensorId)) return cards.get(sensorId);
  const state = el("span", {class: "state"}, "…");
  const values = el("div", {class: "values"});
  const canvas = el("canvas", {width: 800, height: 340});
  const root = el("div", {class: "card", "data-sensor": sensorId},
    el("div", {class: "card-head"}, el("span", {class: "name"}, sensorId), state), values, canvas);
  document.getElementById("sensors").append(root);
  const entry = {root, canvas, values, state, readings: []};
  cards.set(sensorId, entry);
  return entry;
}

function drawChart(entry) {
  const canvas = entry.canvas;
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 400, h = canvas.clientHeight || 170;
  if (canvas.width !== Math.round(w * dpr)) { canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr); }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const pad = {l: 44, r: 34, t: 8, b: 18};
  const pw = w - pad.l - pad.r, ph = h - pad.t - pad.b;
  const now = Date.now() / 1000, t0 = now - WINDOW_S;
  const rs = entry.readings.filter(r => r.timestamp >= t0);
  const gasMax = Math.max(rules.danger_ppm * 1.2, ...rs.map(r => r.gas_concentration * 1.1));
  const x = t => pad.l + ((t - t0) / WINDOW_S) * pw;
  const yGas = g => pad.t + ph - (g / gasMax) * ph;
  const yProb = p => pad.t + ph - p * ph;

  ctx.font = "11px system-ui, sans-serif";
  ctx.strokeStyle = "#2a3440"; ctx.fillStyle = "#8b96a3"; ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const g = (gasMax / 4) * i, y = yGas(g);
    ctx.beginPath(); ctx.moveTo(pad.l, y); ctx.lineTo(pad.l + pw, y); ctx.stroke();
    ctx.textAlign = "right"; ctx.fillText(g.toFixed(0), pad.l - 4, y + 4);
    ctx.textAlign = "left"; ctx.fillText((i / 4).toFixed(2), pad.l + pw + 4, yProb(i / 4) + 4);
  }
  ctx.textAlign = "center";
  for (let s = 0; s <= WINDOW_S; s += 60) ctx.fillText(s === WINDOW_S ? "now" : `-${(WINDOW_S - s) / 60}m`, x(t0 + s), h - 4);

  // thresholds
  ctx.setLineDash([5, 4]);
  for (const [ppm, color] of [[rules.warning_ppm, "#e08a1e"], [rules.danger_ppm, "#d33c3c"]]) {
    ctx.strokeStyle = color; ctx.beginPath(); ctx.moveTo(pad.l, yGas(ppm)); ctx.lineTo(pad.l + pw, yGas(ppm)); ctx.stroke();
  }
  ctx.strokeStyle = "#3a5f8f"; ctx.beginPath();
  ctx.moveTo(pad.l, yProb(rules.probability)); ctx.lineTo(pad.l + pw, yProb(rules.probability)); ctx.stroke();
  ctx.setLineDash([]);

  const line = (points, color, width) => {
    ctx.strokeStyle = color; ctx.lineWidth = width; ctx.beginPath();
    let started = false, prevT = null;
    for (const [t, v] of points) {
      if (v == null || (prevT !== null && t - prevT > 10)) { started = false; prevT = t; if (v == null) continue; }
      if (!started) { ctx.moveTo(x(t), v); started = true; } else ctx.lineTo(x(t), v);
      prevT = t;
    }
    ctx.stroke();
  };
  line(rs.map(r => [r.timestamp, yGas(r.gas_concentration)]), "#f39c3d", 1.6);
  line(rs.map(r => [r.timestamp, r.probability == null ? null : yProb(r.probability)]), "#58a6ff", 1.6);
}

function renderSensor(s) {
  const entry = card(s.sensor_id);
  entry.state.textContent = s.state.replace("_", " ");
  entry.state.className = `state ${s.state}`;
  entry.root.className = `card ${s.state}`;
  entry.root.dataset.state = s.state;
  const r = s.latest || {};
  entry.values.replaceChildren(
    el("span", {}, "gas ", el("b", {class: "gas"}, fmt(r.gas_concentration)), " ppm"),
    el("span", {}, "temp ", el("b", {}, fmt(r.temperature, 1)), " °C"),
    el("span", {}, "hum ", el("b", {}, fmt(r.humidity, 1)), " %RH"),
    el("span", {}, "p(leak) ", el("b", {class: "prob"}, fmt(s.probability, 2))),
  );
  // a sensor far below the ppm levels (an open-path laser at 2 ppm): say the threshold rule cannot fire
  if (s.threshold_rule && s.threshold_rule.startsWith("inactive")) {
    entry.values.append(el("span", {class: "rule-off", title: s.threshold_rule}, "ppm rule inactive"));
  }
  // silenced through the API (POST /api/sensors/{id}/silence): alerts still show, notifications do not go out
  if (s.silenced_until != null) {
    entry.values.append(el("span", {class: "silenced", title: "notifications held back; alerts are still recorded"},
      `silenced until ${fmtTime(s.silenced_until)}`));
  }
}

async function refreshStatus() {
  const system = document.getElementById("system");
  try {
    const st = await getJSON("/api/status");
    rules = st.detection.rules || rules;
    system.textContent = st.system_running ? "running" : "stopped";
    system.className = `pill ${st.system_running ? "ok" : "bad"}`;
    const m = st.model_status;
    const model = document.getElementById("model");
    model.textContent = `model: ${m.model_type}${m.is_trained ? "" : " (untrained)"} · ${m.device}`;
    model.className = `pill ${m.model_type === "PyTorch LSTM+SVM" ? "ok" : "bad"}`;
    model.title = m.fallback_reason || "the detector in use";
    const mqtt = document.getElementById("mqtt");
    mqtt.textContent = !st.mqtt.enabled ? "MQTT: off" : st.mqtt.connected ? "MQTT: connected" : "MQTT: disconnected";
    mqtt.className = `pill ${!st.mqtt.enabled ? "" : st.mqtt.connected ? "ok" : "bad"}`;
    document.getElementById("clock").textContent = fmtTime(st.timestamp);
    const a = st.alerts;
    document.getElementById("alert-counts").textContent =
      `${a.open} open (${a.by_level.danger} danger, ${a.by_level.warning} warning, ${a.by_level.info} info), ${a.unacknowledged} unacknowledged`;
    st.sensors.forEach(renderSensor);
  } catch (err) {
    system.textContent = "service unreachable";
    system.className = "pill bad";
  }
}

async function refreshData() {
  const since = Date.now() / 1000 - WINDOW_S;
  await Promise.all([...cards.entries()].map(async ([id, entry]) => {
    try {
      const page = await getJSON(`/api/sensor/data?sensor_id=${encodeURIComponent(id)}&since=${since}&limit=2000`);
      entry.readings = page.readings;
      drawChart(entry);
    } catch (err) { /* shown by the status pill */ }
  }));
}

async function acknowledge(id, button) {
  button.disabled = true;
  const headers = {};
  let token = sessionStorage.getItem("gasleak-token");
  for (let attempt = 0; attempt < 2; attempt++) {
    if (token) headers["Authorization"] = `Bearer ${token}`;
    const response = await fetch(`/api/alerts/${id}/ack`, {method: "POST", headers});
    if (response.status === 401 && attempt === 0) {
      token = window.prompt("This service needs its API token to acknowledge alerts:");
      if (!token) break;
      sessionStorage.setItem("gasleak-token", token);
      continue;
    }
    break;
  }
  await refreshAlerts();
}

async function refreshAlerts() {
  try {
    const page = await getJSON("/api/alerts/history?limit=50");
    const body = document.querySelector("#alerts tbody");
    document.getElementById("no-alerts").style.display = page.alerts.length ? "none" : "";
    body.replaceChildren(...page.alerts.map(a => {
      const action = a.acknowledged
        ? el("span", {class: "acked"}, `acknowledged ${fmtTime(a.acknowledged_at)}`)
        : el("button", {class: "ack", "data-ack": a.id}, "Acknowledge");
      if (!a.acknowledged) action.addEventListener("click", () => acknowledge(a.id, action));
      return el("tr", {class: a.open ? "open" : "closed", "data-alert-id": a.id, "data-level": a.level},
        el("td", {}, String(a.id)),
        el("td", {}, el("span", {class: `level ${a.level}`}, a.level), a.silenced ? el("span", {class: "silenced"}, " silenced") : ""),
        el("td", {}, a.sensor_id), el("td", {title: "what fired it"}, `${a.kind} (${a.causes.join(" + ")})`), el("td", {}, fmtTime(a.start)),
        el("td", {}, a.open ? "open" : fmtTime(a.end)), el("td", {}, fmt(a.peak_ppm)),
        el("td", {}, fmt(a.peak_probability, 2)), el("td", {}, a.message), el("td", {}, action));
    }));
  } catch (err) { /* shown by the status pill */ }
}

refreshStatus().then(refreshData);
refreshAlerts();
setInterval(refreshStatus, STATUS_EVERY_MS);
setInterval(refreshData, DATA_EVERY_MS);
setInterval(refreshAlerts, DATA_EVERY_MS);
window.addEventListener("resize", () => cards.forEach(drawChart));
