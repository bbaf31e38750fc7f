// The studio page: settings -> GET /api/tunes/stream (server-sent events, read with fetch so a
// bearer token can go along) -> the staff re-rendered by abcjs as each bar arrives.
"use strict";

const form = document.getElementById("settings");
const statusLine = document.getElementById("status");
const list = document.getElementById("tunes");
const AUDIO = ["ogg", "flac", "wav"];
window.studioLog = [];  // one entry per render: what the page showed, for tests and curious users

function say(text, error = false) {
  statusLine.textContent = text;
  statusLine.className = error ? "error" : "";
}

function headers() {
  const token = form.elements.token.value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function detail(response) {
  try {
    const body = await response.json();
    return typeof body.detail === "string" ? body.detail
      : (body.detail || []).map(e => `${(e.loc || []).slice(1).join(".")}: ${e.msg}`).join("; ");
  } catch (e) {
    return `${response.status} ${response.statusText}`;
  }
}

async function loadModel() {
  const info = await (await fetch("/api/model")).json();
  const line = document.getElementById("model");
  if (!info.ready) {
    line.innerHTML = "";
    line.append(`${info.message} — train one with `, Object.assign(document.createElement("code"), { textContent: info.train }),
      ", then start the studio again.");
    document.getElementById("generate").disabled = true;
    return;
  }
  const select = document.getElementById("region");
  for (const label of info.labels) select.append(new Option(label, label));
  document.getElementById("token-row").hidden = !info.token_required;
  line.textContent = `${info.layers} × ${info.hidden_size} LSTM, ${(info.parameters / 1e6).toFixed(2)} M parameters, ` +
    `${info.labels.length} styles — ${info.checkpoint}`;
}

function settingsQuery(overrides = {}) {
  const query = new URLSearchParams();
  for (const el of form.elements) {
    if (!el.name || el.name === "token" || el.value.trim() === "") continue;
    query.set(el.name, el.value.trim());
  }
  for (const [k, v] of Object.entries(overrides)) {
    if (v === null || v === undefined || v === "") query.delete(k); else query.set(k, v);
  }
  return query;
}

// ---- a tune on the page ------------------------------------------------------------------------
function card(key) {
  let el = document.querySelector(`.tune[data-key="${key}"]`);
  if (el) return el;
  el = document.createElement("article");
  el.className = "tune";
  el.dataset.key = key;
  el.innerHTML = `<h2></h2><p class="meta"></p><div class="score"></div><div class="actions"></div>`;
  list.prepend(el);
  return el;
}

function draw(el, abc, event, bars) {
  const score = el.querySelector(".score");
  window.ABCJS.renderAbc(score, abc, { responsive: "resize", add_classes: true, paddingtop: 0, paddingbottom: 0 });
  window.studioLog.push({ key: el.dataset.key, event, bars, notes: score.querySelectorAll(".abcjs-note").length });
}

function finish(el, tune) {
  el.classList.remove("writing");
  el.dataset.id = tune.id;
  el.querySelector("h2").textContent = tune.title;
  const c = tune.check || {};
  const problems = Object.entries(tune.errors || {}).map(([k, v]) => `${k}: ${v}`).join("; ");
  el.querySelector(".meta").textContent = `${tune.bars} bars · ${c.parses ? "parses" : "does not parse"} · ` +
    `${c.bars_consistent ? "bars consistent with the metre" : "bars inconsistent"}` +
    (tune.repairs && tune.repairs.length ? ` · repaired: ${tune.repairs.join(", ")}` : "") +
    ` · seed ${tune.settings.seed}` + (problems ? ` · not rendered: ${problems}` : "");
  draw(el, tune.abc, "tune", tune.bars);
  const actions = el.querySelector(".actions");
  actions.innerHTML = "";
  const sound = AUDIO.find(f => tune.urls[f]);
  if (sound) {
    const audio = document.createElement("audio");
    audio.controls = true;
    audio.preload = "metadata";
    audio.src = tune.urls[sound];
    actions.append(audio);
  }
  for (const [fmt, url] of Object.entries(tune.urls)) {
    actions.append(Object.assign(document.createElement("a"), { href: url, textContent: `.${fmt}`, download: "" }));
  }
  const more = Object.assign(document.createElement("button"), { type: "button", textContent: "More like this", className: "more" });
  more.onclick = () => write(likeThis(tune.settings));
  const cont = Object.assign(document.createElement("button"), { type: "button", textContent: "Continue this tune", className: "continue" });
  cont.onclick = () => {
    form.elements.prompt.value = continuation(tune.abc);
    for (const name of ["key", "metre", "unit"]) form.elements[name].value = "";
    write(settingsQuery({ seed: null, num_tunes: 1 }));
  };
  actions.append(more, cont);
  const abcText = document.createElement("details");
  abcText.innerHTML = "<summary>ABC</summary><pre></pre>";
  abcText.querySelector("pre").textContent = tune.abc;
  el.append(abcText);
}

function likeThis(settings) {
  const query = new URLSearchParams();
  for (const [k, v] of Object.entries(settings)) {
    if (v !== null && v !== "" && k !== "seed") query.set(k, v);
  }
  query.set("num_tunes", 1);
  return query;
}

function continuation(abc) {
  // the tune without X:/T: and without its final barline, so the model carries on
  return abc.split("\n").filter(line => !/^[XT]:/.test(line)).join("\n").replace(/(:?\|\]?|\|\|)\s*$/, "|");
}

// ---- writing: the stream --------------------------------------------------------------------------
let run = 0;

async function write(query) {
  const mine = ++run;
  say("writing…");
  const started = performance.now();
  const response = await fetch(`/api/tunes/stream?${query}`, { headers: headers() });
  if (!response.ok) {
    say(await detail(response), true);
    return;
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let firstBar = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const event = (block.match(/^event: (.*)$/m) || [])[1];
      const data = JSON.parse((block.match(/^data: (.*)$/m) || [])[1] || "{}");
      if (event === "bar" && firstBar === null) firstBar = performance.now() - started;
      handle(mine, event, data, firstBar);
    }
  }
}

function handle(mine, event, data, firstBar) {
  const key = `${mine}-${data.tune}`;
  if (event === "bar" || event === "redraw") {
    const el = card(key);
    el.classList.add("writing");
    el.querySelector("h2").textContent = `${data.label} (writing)`;
    const meta = el.querySelector(".meta");
    if (event === "redraw") {
      el.dataset.redraws = Number(el.dataset.redraws || 0) + 1;
      meta.innerHTML = `<span class="redraw">bar ${data.bars + 1} does not fit the metre: drawing it again</span>`;
    } else {
      meta.textContent = `${data.bars} bars` + (el.dataset.redraws ? ` · ${el.dataset.redraws} bars drawn again` : "");
    }
    draw(el, data.abc, event, data.bars);
  } else if (event === "restart") {
    const el = card(key);
    el.querySelector(".meta").innerHTML = `<span class="redraw">starting this tune again</span>`;
  } else if (event === "written") {
    say(`tune ${data.tune + 1} written (${data.bars} bars); rendering its files…`);
  } else if (event === "tune") {
    finish(card(key), data);
  } else if (event === "done") {
    say(`${data.tunes} tune(s) written, seed ${data.seed}` + (firstBar !== null ? `; first bar after ${firstBar.toFixed(0)} ms` : ""));
  } else if (event === "error") {
    say(data.detail, true);
  }
}

form.addEventListener("submit", event => {
  event.preventDefault();
  write(settingsQuery());
});

document.getElementById("upload").addEventListener("change", async event => {
  const file = event.target.files[0];
  if (!file) return;
  const response = await fetch(`/api/prompt?filename=${encodeURIComponent(file.name)}`, {
    method: "POST", body: file, headers: headers(),
  });
  if (!response.ok) {
    say(`${file.name}: ${await detail(response)}`, true);
    return;
  }
  form.elements.prompt.value = (await response.json()).prompt;
  say(`${file.name} is the prompt: the tunes will continue it`);
});

async function loadGallery() {
  const gallery = await (await fetch("/api/gallery")).json();
  for (const tune of gallery.tunes) finish(card(`gallery-${tune.id}`), tune);
}

loadModel().then(loadGallery).catch(e => say(String(e), true));
