// The trade-off explorer: pmerge's public API only (GET /families, /families/{id}/family, /front,
// POST /classify, /select, GET /models/{pref}); plotly.js for the plots. No build step.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  families: [],      // GET /families
  family: null,      // GET /families/{id}/family of the chosen one
  weights: [],       // the current preference, in task order, on the simplex
  fronts: {},        // family id -> its stored front (or null: none evaluated)
  compared: new Set(),
  images: [],        // File objects to classify
  timer: null,
  asked: 0,          // the latest classify request: older answers are dropped
};

// ---- the API -------------------------------------------------------------------------------

function apiKey() { return sessionStorage.getItem("pmerge-api-key") || ""; }

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (apiKey()) headers.Authorization = "Bearer " + apiKey();
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = body.detail || body.error || detail;
    } catch (e) { /* not JSON: the status says it */ }
    const error = new Error(`${response.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
    error.status = response.status;
    throw error;
  }
  return response;
}

function familyPath(id) { return "/families/" + encodeURIComponent(id); }
function showError(e) { $("error").textContent = e ? String(e.message || e) : ""; }

// ---- preferences: the API's grammar and canonical form (models_store/preference.py) ------------

function fmt(w) { return w.toFixed(6).replace(/0+$/, "").replace(/\.$/, "") || "0"; }

function normalise(values, tasks) {
  values.forEach((v, i) => {
    if (!Number.isFinite(v)) throw new Error(`preference for '${tasks[i]}' is not a finite number`);
    if (v < 0) throw new Error(`preference for '${tasks[i]}' is negative: ${v}`);
  });
  const total = values.reduce((a, b) => a + b, 0);
  if (!(total > 0)) throw new Error("preference values sum to zero; at least one must be positive");
  return values.map((v) => Math.round((v / total) * 1e6) / 1e6);
}

function parsePreference(text, tasks) {
  if (!text.trim()) return normalise(tasks.map(() => 1), tasks);
  const parts = text.trim().split(",").map((p) => p.trim());
  if (parts.some((p) => !p)) throw new Error(`empty value in preference '${text}'`);
  const number = (raw, where) => {
    if (!/^\+?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(raw.trim())) {
      throw new Error(`preference value '${raw.trim()}' for ${where} is not a number`);
    }
    return parseFloat(raw);
  };
  const named = parts.map((p) => p.includes(":"));
  if (named.some((n) => n) && !named.every((n) => n)) {
    throw new Error(`preference '${text}' mixes named (task:value) and positional values`);
  }
  if (named.every((n) => n)) {
    const values = Object.fromEntries(tasks.map((t) => [t, 0]));
    const seen = new Set();
    for (const part of parts) {
      const at = part.indexOf(":");
      const name = part.slice(0, at).trim();
      if (!(name in values)) throw new Error(`unknown task '${name}' in preference; tasks are: ${tasks.join(", ")}`);
      if (seen.has(name)) throw new Error(`task '${name}' appears twice in preference`);
      seen.add(name);
      values[name] = number(part.slice(at + 1), name);
    }
    return normalise(tasks.map((t) => values[t]), tasks);
  }
  if (parts.length !== tasks.length) {
    throw new Error(`expected ${tasks.length} preference values (one per task: ${tasks.join(", ")}), got ${parts.length}`);
  }
  return normalise(parts.map((p, i) => number(p, `position ${i + 1}`)), tasks);
}

function tasks() { return state.family ? state.family.tasks.map((t) => t.name) : []; }
function canonical(weights = state.weights) { return tasks().map((t, i) => `${t}:${fmt(weights[i])}`).join(","); }

// ---- the preference: sliders on the simplex, the text, the download ------------------------------

function buildSliders() {
  const box = $("sliders");
  box.replaceChildren();
  tasks().forEach((task, i) => {
    const row = document.createElement("label");
    row.className = "slider";
    const input = Object.assign(document.createElement("input"), { type: "range", min: 0, max: 1, step: 0.001 });
    input.dataset.testid = "slider-" + task;
    input.addEventListener("input", () => moveSlider(i, parseFloat(input.value)));
    row.append(Object.assign(document.createElement("span"), { textContent: task }), input,
               document.createElement("output"));
    box.append(row);
  });
}

// one task's weight set to `value`; the others keep their ratios and share the rest, so the sum stays 1
function moveSlider(index, value) {
  const rest = 1 - value;
  const others = state.weights.reduce((sum, w, i) => (i === index ? sum : sum + w), 0);
  const n = state.weights.length;
  const raw = state.weights.map((w, i) => {
    if (i === index) return value;
    return others > 0 ? (w * rest) / others : rest / (n - 1);
  });
  setWeights(normalise(raw, tasks()));
}

function setWeights(weights) {
  state.weights = weights;
  const rows = $("sliders").children;
  weights.forEach((w, i) => {
    rows[i].querySelector("input").value = w;
    rows[i].querySelector("output").textContent = w.toFixed(3);
  });
  $("preference").value = canonical();
  const href = familyPath(state.family.family_id) + "/models/" + encodeURIComponent(canonical());
  const link = $("download");
  link.href = href;
  link.download = `${state.family.family_id}-${canonical().replace(/[:,]/g, "_")}.safetensors`;
  const auth = apiKey() ? "-H \"Authorization: Bearer $PMERGE_API_KEY\" " : "";
  $("curl").textContent = `curl -fsS ${auth}-o model.safetensors '${location.origin}${href}'`;
  showError(null);
  drawFront();
  scheduleClassify();
}

function applyText(text) {
  try {
    setWeights(parsePreference(text, tasks()));
  } catch (e) {
    showError(e);
  }
}

// with an API key a plain link cannot send it: fetch the checkpoint and hand the browser its bytes
async function download(event) {
  if (!apiKey()) return;
  event.preventDefault();
  try {
    const blob = await (await api($("download").getAttribute("href"))).blob();
    const a = Object.assign(document.createElement("a"), { href: URL.createObjectURL(blob), download: $("download").download });
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  } catch (e) {
    showError(e);
  }
}

// ---- the front -----------------------------------------------------------------------------

async function loadFront(id) {
  if (id in state.fronts) return state.fronts[id];
  try {
    state.fronts[id] = readable(await (await api(familyPath(id) + "/front")).json());
  } catch (e) {  // no front (404), one the service refuses (503), or no JSON: the page goes on without it
    state.fronts[id] = null;
    if (id === state.family.family_id) $("front-note").textContent = e.message.replace(/^\d+: /, "");
  }
  return state.fronts[id];
}

// a point whose preference the page cannot read is left out rather than breaking every drawing
function readable(front) {
  const ok = (p) => {
    try { parsePreference(p.preference, front.tasks); return true; } catch (e) { return false; }
  };
  front.points = (front.points || []).filter(ok);
  if (front.members) front.members = front.members.filter(ok);
  return front;
}

function nearest(points) {
  let best = null;
  let distance = Infinity;
  for (const p of points) {
    const w = parsePreference(p.preference, tasks());
    const d = w.reduce((sum, v, i) => sum + Math.abs(v - state.weights[i]), 0);
    if (d < distance) [best, distance] = [p, d];
  }
  return best;
}

function scatter(points, name, symbol, size) {
  const [x, y] = [$("axis-x").value, $("axis-y").value];
  return {
    type: "scatter", mode: "markers", name, x: points.map((p) => p.accuracy[x]), y: points.map((p) => p.accuracy[y]),
    text: points.map((p) => p.preference), marker: { symbol, size },
    hovertemplate: `%{text}<br>${x} %{x:.3f}, ${y} %{y:.3f}<extra>${name}</extra>`,
  };
}

function drawFront() {
  const plot = $("front");
  const front = state.family && state.fronts[state.family.family_id];
  if (!front || typeof Plotly === "undefined") {
    if (typeof Plotly !== "undefined") Plotly.purge(plot);
    return;
  }
  const traces = [scatter(front.points, state.family.family_id, "circle", 9)];
  if (front.members) traces.push(scatter(front.members, "members", "diamond", 8));
  for (const id of state.compared) {
    if (state.fronts[id]) traces.push(scatter(state.fronts[id].points, id, "square", 8));
  }
  const here = nearest(front.points);
  if (here) traces.push(scatter([here], "nearest evaluated to the current preference", "star", 18));
  const layout = {
    margin: { l: 50, r: 10, t: 10, b: 40 }, hovermode: "closest", legend: { orientation: "h", y: -0.15 },
    xaxis: { title: { text: $("axis-x").value + " accuracy" } }, yaxis: { title: { text: $("axis-y").value + " accuracy" } },
  };
  Plotly.react(plot, traces, layout, { displaylogo: false, responsive: true }).then(() => {
    if (!plot.dataset.clicks) {  // clicking a point takes its preference
      plot.on("plotly_click", (event) => applyText(event.points[0].text));
      plot.dataset.clicks = "on";
    }
    tagPoints();
  });
  drawParallel(front);
}

// every drawn point carries its preference, for tests and tools (data order is drawing order)
function tagPoints() {
  const plot = $("front");
  plot.querySelectorAll(".scatterlayer .trace").forEach((group, i) => {
    const text = plot.data[i] && plot.data[i].text;
    group.querySelectorAll("path.point").forEach((point, j) => point.setAttribute("data-preference", text[j]));
  });
}

function drawParallel(front) {
  const box = $("parallel");
  if (tasks().length < 3) {
    Plotly.purge(box);
    box.style.display = "none";
    return;
  }
  box.style.display = "";
  const dimensions = tasks().map((t) => ({ label: t, range: [0, 1], values: front.points.map((p) => p.accuracy[t]) }));
  Plotly.react(box, [{ type: "parcoords", dimensions, line: { color: front.points.map((p) => (p.on_front ? 1 : 0)),
    colorscale: [[0, "#a8dadc"], [1, "#1d3557"]] } }], { margin: { l: 60, r: 60, t: 50, b: 20 } }, { displaylogo: false });
}

// ---- images --------------------------------------------------------------------------------

function scheduleClassify() {
  clearTimeout(state.timer);
  state.timer = setTimeout(classify, 250);
}

async function classify() {
  if (!state.images.length || !state.family) return;
  const asked = ++state.asked;
  const form = new FormData();
  state.images.forEach((f) => form.append("files", f, f.name));
  const url = `${familyPath(state.family.family_id)}/classify?top_k=3&pref=${encodeURIComponent(canonical())}`;
  try {
    const answer = await (await api(url, { method: "POST", body: form })).json();
    if (asked === state.asked) showPredictions(answer);
  } catch (e) {
    showError(e);
  }
}

function showPredictions(answer) {
  const box = $("predictions");
  box.dataset.preference = answer.preference;
  box.replaceChildren();
  answer.results.forEach((result) => {
    const row = Object.assign(document.createElement("div"), { className: "image" });
    const image = state.images[result.index];
    if (image) row.append(Object.assign(document.createElement("img"), { src: URL.createObjectURL(image), alt: image.name }));
    for (const [task, predictions] of Object.entries(result.predictions)) {
      const column = Object.assign(document.createElement("div"), { className: "task" });
      column.append(Object.assign(document.createElement("h3"), { textContent: task }));
      for (const p of predictions) {
        const bar = Object.assign(document.createElement("div"), { className: "bar" });
        Object.assign(bar.dataset, { task, label: p.label, probability: String(p.probability) });
        const fill = Object.assign(document.createElement("span"), { className: "fill" });
        fill.style.width = `${(100 * p.probability).toFixed(1)}%`;
        const track = document.createElement("span");
        track.append(fill);
        bar.append(Object.assign(document.createElement("span"), { textContent: p.label }), track,
                   Object.assign(document.createElement("span"), { textContent: (100 * p.probability).toFixed(1) + "%" }));
        column.append(bar);
      }
      row.append(column);
    }
    box.append(row);
  });
}

function takeImages(files) {
  state.images = Array.from(files).filter((f) => f.type.startsWith("image/") || !f.type);
  classify();
}

async function selectForNewTask(files) {
  const form = new FormData();
  Array.from(files).forEach((f) => form.append("files", f, f.name));
  try {
    const answer = await (await api(familyPath(state.family.family_id) + "/select", { method: "POST", body: form })).json();
    $("selected").textContent = answer.selected.preference;
    applyText(answer.selected.preference);
  } catch (e) {
    showError(e);
  }
}

// ---- families --------------------------------------------------------------------------------

async function loadFamilies() {
  try {
    state.families = await (await api("/families")).json();
  } catch (e) {
    showError(e.status === 401 ? new Error("this server needs an API key: type it above") : e);
    return;
  }
  const select = $("family");
  select.replaceChildren(...state.families.map((f) => Object.assign(document.createElement("option"), {
    value: f.family_id, textContent: `${f.family_id} (${f.method}, ${f.kind})${f.default ? " - default" : ""}`,
  })));
  const chosen = state.families.find((f) => f.default) || state.families[0];
  if (chosen) {
    select.value = chosen.family_id;
    await chooseFamily(chosen.family_id);
  }
}

function megabytes(n) { return `${(n / 1e6).toFixed(n < 1e7 ? 2 : 1)} MB`; }

async function chooseFamily(id) {
  try {
    state.family = await (await api(familyPath(id) + "/family")).json();
  } catch (e) {
    showError(e);
    return;
  }
  const names = tasks();
  $("family-info").textContent = `${state.family.method}, kind ${state.family.kind}; tasks ${names.join(", ")}`;
  const f = state.family;
  const host = f.host_bytes ? `, in host memory ${megabytes(f.host_bytes)}` : "";
  const files = f.files.map((c) => `${c.name} ${megabytes(c.disk_bytes)}, ${megabytes(c.resident_bytes)}`
    + (c.host_bytes ? ` (host ${megabytes(c.host_bytes)})` : ""));
  $("family-cost").textContent = `on disk ${megabytes(f.disk_bytes)}, on the device when served `
    + `${megabytes(f.resident_bytes)} plus its cache of variants (at most ${megabytes(f.device_cache_bytes)})`
    + `${host}: ${files.join("; ")}`;
  $("front-note").textContent = "";
  for (const [axis, pick] of [["axis-x", 0], ["axis-y", 1]]) {
    $(axis).replaceChildren(...names.map((t) => Object.assign(document.createElement("option"), { value: t, textContent: t })));
    $(axis).value = names[Math.min(pick, names.length - 1)];
  }
  buildCompare(names);
  buildSliders();
  await loadFront(id);
  setWeights(normalise(names.map(() => 1), names));
}

// other families over the same tasks, on the same axes
function buildCompare(names) {
  const box = $("compare");
  box.replaceChildren();
  state.compared.clear();
  const same = state.families.filter((f) => f.family_id !== state.family.family_id
                                            && f.tasks.join(",") === names.join(","));
  if (!same.length) return;
  box.append(Object.assign(document.createElement("p"), { textContent: "compare with:" }));
  for (const f of same) {
    const label = document.createElement("label");
    const box2 = Object.assign(document.createElement("input"), { type: "checkbox", value: f.family_id });
    box2.dataset.testid = "compare-" + f.family_id;
    box2.addEventListener("change", async () => {
      if (box2.checked) {
        state.compared.add(f.family_id);
        await loadFront(f.family_id);
      } else {
        state.compared.delete(f.family_id);
      }
      drawFront();
    });
    label.append(box2, ` ${f.family_id} (${f.method})`);
    box.append(label, document.createElement("br"));
  }
}

// ---- wiring ----------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = apiKey();
  $("api-key").addEventListener("change", () => {
    sessionStorage.setItem("pmerge-api-key", $("api-key").value.trim());
    state.fronts = {};
    loadFamilies();
  });
  $("family").addEventListener("change", () => chooseFamily($("family").value));
  $("preference").addEventListener("keydown", (e) => { if (e.key === "Enter") applyText($("preference").value); });
  $("axis-x").addEventListener("change", drawFront);
  $("axis-y").addEventListener("change", drawFront);
  $("download").addEventListener("click", download);
  $("images").addEventListener("change", () => takeImages($("images").files));
  $("select-images").addEventListener("change", () => selectForNewTask($("select-images").files));
  for (const [zone, take] of [["drop", takeImages], ["select-drop", selectForNewTask]]) {
    $(zone).addEventListener("dragover", (e) => e.preventDefault());
    $(zone).addEventListener("drop", (e) => { e.preventDefault(); take(e.dataTransfer.files); });
  }
  loadFamilies();
});
