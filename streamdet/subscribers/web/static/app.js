// streamdet web: one EventSource, bounded arrays, canvases. No framework, no build step.
"use strict";

const SPAN_SECONDS = 300;      // the score timeline shows the last five minutes of each source's audio (two on a phone)
const KEEP_POINTS = 1200;
const KEEP_EVENTS = 50;
const SPEC_COLUMNS = 1500;     // 30 s of 20-ms frames
const $ = (id) => document.getElementById(id);

const page = {                 // read by the browser test; everything in it is bounded
  points: 0, framesDrawn: 0, events: 0, snapshots: 0, connected: false, dropped: 0, clipsPlayed: 0, failed: 0, live: 0,
};
window.streamdet = page;

const sources = new Map();     // name -> {run, scores, events, downs, spec, specMels, specUpto, onScore}
let daemons = new Map();
let endpoints = [];
let hours = null;
let selected = null;

function source(name) {
  if (!sources.has(name)) {
    const spec = document.createElement("canvas");
    spec.width = SPEC_COLUMNS; spec.height = 64;
    sources.set(name, { run: null, scores: [], events: [], downs: [], spec, specMels: 64, specUpto: null, open: null });
    const option = document.createElement("option");
    option.value = option.textContent = name;
    $("source").appendChild(option);
    if (selected === null) selected = name;
  }
  return sources.get(name);
}

function newRun(s, run) {       // a daemon (re)started: its stream time starts again
  if (s.run === run) return;
  s.run = run; s.scores = []; s.events = []; s.downs = []; s.specUpto = null; s.open = null;
}

function bounded(list, n) { if (list.length > n) list.splice(0, list.length - n); }

// -- messages -------------------------------------------------------------------------------------
function onMessage(m) {
  if (m.type === "status") { onStatus(m, Date.now() / 1000); drawStatus(); return; }
  const s = source(m.source);
  if (m.run_id) newRun(s, m.run_id);
  if (m.type === "loss") {
    s.scores.push([m.t_start, m.t_end, m.score, !!m.silent]);
    bounded(s.scores, KEEP_POINTS);
    page.points++;
  } else if (m.type === "spec") {
    drawFrames(s, m);
  } else if (m.type === "gap") {
    s.downs.push([m.t, m.t + (m.duration_s || 0.5)]); bounded(s.downs, 100);
    s.scores.push(null);        // the line breaks here
  } else if (m.type === "source_down") {
    s.downs.push([m.t, null]); bounded(s.downs, 100);
  } else if (m.type === "source_up") {
    const last = s.downs[s.downs.length - 1];
    if (last && last[1] === null) last[1] = m.t;
  } else if (m.type === "event") {
    if (m.state === "start") s.open = m.onset;
    else { s.open = null; s.events.push([m.onset, m.offset]); bounded(s.events, 100); addEvent(m); }
  }
}

// One item the page cannot draw costs that item, never the rest of the page: counted, shown in
// the console, and the next item goes on.
function each(what, f) {
  try { f(); } catch (err) { page.failed++; console.warn(`streamdet: could not show ${what}:`, err); }
}

function onSnapshot(snap) {
  page.snapshots++;
  for (const [name, st] of Object.entries(snap.sources || {})) {
    each(`source ${name}`, () => {
      const s = source(name);
      s.run = null;             // what the snapshot holds replaces what this page had
      s.spec.getContext("2d").clearRect(0, 0, s.spec.width, s.spec.height);
      for (const m of st.scores) each("a score", () => onMessage({ ...m, type: "loss", source: name }));
      for (const m of st.frames) each("spectrogram frames", () => onMessage(m));
    });
  }
  $("events").tBodies[0].replaceChildren();
  for (const m of [...(snap.events || [])].reverse()) {
    each("an event", () => {
      addEvent(m);
      const s = sources.get(m.source);
      if (s && s.run === m.run_id) s.events.push([m.onset, m.offset]);
    });
  }
  each("the status", () => {
    daemons = new Map();        // each daemon's age as the server saw it, on this page's clock
    for (const d of snap.daemons) onStatus(d, Date.now() / 1000 - Math.max(0, snap.now - d.seen));
    endpoints = snap.endpoints || [];
    drawStatus();
  });
  each("the hours", () => { hours = snap.hours; drawHours(); });
  each("the server", () => showServer(snap.server));
  if (!snap.clips) $("clip").hidden = true;
}

// -- score timeline -------------------------------------------------------------------------------
function drawTimeline() {
  const canvas = $("timeline"), s = sources.get(selected);
  fit(canvas);
  const g = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
  g.clearRect(0, 0, w, h);
  if (!s) return;
  const points = s.scores.filter((p) => p !== null);
  const end = points.length ? points[points.length - 1][1] : 0;
  const start = end - (canvas.clientWidth < 600 ? SPAN_SECONDS * 0.4 : SPAN_SECONDS);   // new audio enters on the right
  const x = (t) => ((t - start) / (end - start)) * w;
  const y = (v) => h - 4 - v * (h - 8);
  g.fillStyle = "#5c2b2b";
  for (const [a, b] of s.downs) g.fillRect(x(a), 0, Math.max(2, x(b === null ? end : b) - x(a)), h);
  g.fillStyle = "rgba(240, 180, 41, 0.35)";
  for (const [a, b] of s.events) g.fillRect(x(a), 0, Math.max(2, x(b) - x(a)), h);
  if (s.open !== null) g.fillRect(x(s.open), 0, Math.max(2, x(end) - x(s.open)), h);
  const threshold = onScore(s);
  g.strokeStyle = "#e57373"; g.beginPath(); g.moveTo(0, y(threshold)); g.lineTo(w, y(threshold)); g.stroke();
  g.strokeStyle = "#4fc3f7"; g.lineWidth = 1.5; g.beginPath();
  let last = null;
  for (const p of s.scores) {
    if (p === null) { last = null; continue; }
    const [t0, t1, score] = p;
    if (t1 < start) continue;
    const px = x((t0 + t1) / 2), py = y(score);
    if (last === null || t0 - last > 2.0) g.moveTo(px, py); else g.lineTo(px, py);   // no line across a gap
    last = t1;
  }
  g.stroke();
  $("score-note").textContent = points.length ? `${selected}: the last ${Math.round(end - start)} s of audio; now ${points[points.length - 1][2].toFixed(2)}` : "";
}

function onScore(s) {
  for (const d of daemons.values()) if (d.sources && selected in d.sources && d.detector) return d.detector.on_score;
  return 0.5;
}

// -- spectrogram ----------------------------------------------------------------------------------
const LUT = (() => {           // black -> purple -> orange -> pale yellow (a magma-like ramp), 256 entries
  const stops = [[0, 0, 4], [80, 18, 123], [183, 55, 121], [251, 136, 97], [252, 253, 191]];
  const out = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const x = (i / 255) * (stops.length - 1), k = Math.min(stops.length - 2, Math.floor(x)), f = x - k;
    for (let c = 0; c < 3; c++) out[i * 3 + c] = stops[k][c] + f * (stops[k + 1][c] - stops[k][c]);
  }
  return out;
})();

function levels(b64) { return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)); }

function paint(canvas, m, columnsFromRight, range) {
  // Each message has its own 8-bit scale (lo..hi); colours follow `range`, the same for every
  // message of a source, so that loudness reads the same across the picture.
  const g = canvas.getContext("2d"), n = m.n_frames, mels = m.n_mels;
  const image = g.createImageData(n, mels), data = levels(m.frames);
  const [low, high] = range || [m.lo, m.hi], step = (m.hi - m.lo) / 255, gain = 255 / Math.max(1e-6, high - low);
  for (let f = 0; f < n; f++) {
    for (let b = 0; b < mels; b++) {
      const v = Math.max(0, Math.min(255, Math.round((m.lo + data[f * mels + b] * step - low) * gain))), o = ((mels - 1 - b) * n + f) * 4;   // low bands at the bottom
      image.data[o] = LUT[v * 3]; image.data[o + 1] = LUT[v * 3 + 1]; image.data[o + 2] = LUT[v * 3 + 2]; image.data[o + 3] = 255;
    }
  }
  g.putImageData(image, canvas.width - columnsFromRight, 0);
}

function drawFrames(s, m) {
  const c = s.spec, g = c.getContext("2d");
  if (m.n_mels !== c.height) { c.height = m.n_mels; }
  let shift = m.n_frames;
  if (s.specUpto !== null && m.t > s.specUpto + 2 * m.frame_s) shift += Math.min(50, Math.round((m.t - s.specUpto) / m.frame_s));  // a gap shows as a gap
  g.drawImage(c, -shift, 0);
  g.fillStyle = "#202020"; g.fillRect(c.width - shift, 0, shift, c.height);
  s.range = s.range ? [Math.min(m.lo, s.range[0] + 0.02 * (m.lo - s.range[0])), Math.max(m.hi, s.range[1] + 0.02 * (m.hi - s.range[1]))] : [m.lo, m.hi];
  paint(c, m, m.n_frames, s.range);
  s.specUpto = m.t + m.n_frames * m.frame_s;
  page.framesDrawn += m.n_frames;
}

function drawSpectrogram() {
  const canvas = $("spectrogram"), s = sources.get(selected);
  fit(canvas);
  const g = canvas.getContext("2d");
  g.imageSmoothingEnabled = false;
  g.fillStyle = "#000"; g.fillRect(0, 0, canvas.width, canvas.height);
  if (s) g.drawImage(s.spec, 0, 0, canvas.width, canvas.height);
}

// -- events, clips, hours, status -----------------------------------------------------------------
function addEvent(m) {
  page.events++;
  const body = $("events").tBodies[0], row = body.insertRow(0);
  row.className = "bird";
  const when = new Date(m.ts * 1000).toLocaleTimeString();
  const band = m.band_hz ? `${(m.band_hz[0] / 1000).toFixed(1)}-${(m.band_hz[1] / 1000).toFixed(1)}` : "";
  for (const text of [when, m.source, `${(m.duration || 0).toFixed(1)} s`, (m.peak_score || 0).toFixed(2), band]) row.insertCell().textContent = text;
  const cell = row.insertCell();
  if (m.clip_url) {
    const button = document.createElement("button");
    button.textContent = "play";
    button.className = "play";
    button.onclick = () => playClip(m.clip_url);
    cell.appendChild(button);
  }
  while (body.rows.length > KEEP_EVENTS) body.deleteRow(body.rows.length - 1);
}

async function playClip(clip) {
  const url = clip.split("/").map(encodeURIComponent).join("/"), player = $("player");
  $("clip").hidden = false;
  player.src = "clips/" + url;
  player.onloadedmetadata = () => { page.clipsPlayed++; page.clipDuration = player.duration; };
  player.play().catch(() => {});   // a browser may refuse sound before a gesture; the controls stay
  const response = await fetch("api/clip-spectrogram/" + url);
  if (!response.ok) return;
  const m = await response.json(), canvas = $("clip-spectrogram"), off = document.createElement("canvas");
  off.width = m.n_frames; off.height = m.n_mels;
  paint(off, m, m.n_frames);
  fit(canvas);
  const g = canvas.getContext("2d");
  g.imageSmoothingEnabled = false;
  g.drawImage(off, 0, 0, canvas.width, canvas.height);
  page.clipSpectrogram = m.n_frames;
}

function drawHours() {
  if (!hours) return;
  const canvas = $("hours");
  fit(canvas);
  const g = canvas.getContext("2d"), w = canvas.width, h = canvas.height, top = Math.max(1, ...hours.hours);
  g.clearRect(0, 0, w, h);
  g.fillStyle = "#f0b429";
  hours.hours.forEach((n, i) => { const bh = (n / top) * (h - 14); g.fillRect((i * w) / 24 + 1, h - 12 - bh, w / 24 - 2, bh); });
  g.fillStyle = "#8b98a5"; g.font = "10px sans-serif";
  for (const i of [0, 6, 12, 18]) g.fillText(String(i), (i * w) / 24 + 2, h - 1);
  $("hours-note").textContent = `today ${hours.hours.reduce((a, b) => a + b, 0)}, most in one hour ${top}`;
  drawWeek();
}

function drawWeek() {          // one row a day (today on top), one cell an hour, brighter for more
  const canvas = $("week");
  fit(canvas);
  const g = canvas.getContext("2d"), w = canvas.width, h = canvas.height, days = Object.keys(hours.grid);
  const label = 78, rowH = h / days.length, cellW = (w - label - 40) / 24;
  const top = Math.max(1, ...days.flatMap((d) => hours.grid[d]));
  g.clearRect(0, 0, w, h);
  g.font = `${Math.min(12, rowH * 0.7)}px sans-serif`;
  days.forEach((day, r) => {
    g.fillStyle = "#8b98a5";
    g.fillText(day.slice(5), 2, r * rowH + rowH * 0.75);
    hours.grid[day].forEach((n, i) => {
      g.fillStyle = n ? `rgba(240, 180, 41, ${0.2 + 0.8 * (n / top)})` : "#1d262e";
      g.fillRect(label + i * cellW, r * rowH + 1, cellW - 1, rowH - 2);
    });
    g.fillStyle = "#e6edf3";
    g.fillText(String(hours.days[day]), w - 36, r * rowH + rowH * 0.75);
  });
}

// Daemons by run (two on one host are two); a new run of a daemon replaces its ended or silent one.
function onStatus(m, heard) {
  const key = `${m.daemon}/${m.run_id}`;
  if (!daemons.has(key)) for (const [k, d] of daemons) if (d.daemon === m.daemon && !alive(d)) daemons.delete(k);
  daemons.set(key, { ...m, heard });
}

// Running and heard from within three of its status intervals: a killed daemon sends no "stopped".
function alive(d) { return d.state === "running" && Date.now() / 1000 - d.heard <= 3 * (d.status_interval_s || 5); }

function daemonState(d) {
  if (d.state !== "running") return d.state;
  const silent = Date.now() / 1000 - d.heard;
  return alive(d) ? "running" : `silent for ${Math.round(silent)} s`;
}

function drawStatus() {
  const body = $("status").tBodies[0];
  body.replaceChildren();
  for (const d of daemons.values()) {
    const state = daemonState(d), up = alive(d);
    for (const [name, s] of Object.entries(d.sources || {})) {
      const row = body.insertRow();
      row.className = up ? "" : "dead";
      const cells = [d.daemon, state, name, !up ? "-" : s.finished ? "finished" : (s.state || "up"), s.rtf !== undefined ? `${s.rtf}x` : "",
        s.gaps, s.dropped_samples, d.model ? d.model.sha256 : "", d.model ? Number(d.model.threshold).toFixed(3) : ""];
      for (const c of cells) row.insertCell().textContent = c === undefined ? "" : String(c);
    }
  }
  showLiveness();
}

// The badge says what the station is doing, not only whether this page is connected.
function showLiveness() {
  const badge = $("connection"), running = [...daemons.values()].filter(alive);
  if (!page.connected) { badge.textContent = "reconnecting"; badge.className = "badge lost"; }
  else if (running.length) { badge.textContent = "live"; badge.className = "badge live"; }
  else if (daemons.size) { badge.textContent = "no daemon running"; badge.className = "badge lost"; }
  else { badge.textContent = `waiting for a daemon${endpoints.length ? " on " + endpoints.join(", ") : ""}`; badge.className = "badge lost"; }
  page.live = running.length;
}

function showServer(s) {
  if (s) $("server").textContent = `web server: ${s.browsers} page(s) connected, ${s.messages} messages, ${s.unreadable} unreadable skipped, ${s.dropped_browsers} slow page(s) dropped`;
}

function fit(canvas) {         // the backing store follows the CSS size and the screen's density
  const ratio = window.devicePixelRatio || 1, w = Math.round(canvas.clientWidth * ratio), h = Math.round(canvas.clientHeight * ratio);
  if (w > 0 && h > 0 && (canvas.width !== w || canvas.height !== h)) { canvas.width = w; canvas.height = h; }
}

// -- connection -----------------------------------------------------------------------------------
function connect() {
  const events = new EventSource("api/stream");
  const badge = $("connection");
  events.onopen = () => { page.connected = true; showLiveness(); };
  events.onerror = () => { page.connected = false; showLiveness(); };  // EventSource retries by itself
  events.addEventListener("snapshot", (e) => each("the snapshot", () => onSnapshot(JSON.parse(e.data))));
  events.addEventListener("msg", (e) => each("a message", () => onMessage(JSON.parse(e.data))));
  events.addEventListener("hours", (e) => { hours = JSON.parse(e.data); drawHours(); });
  events.addEventListener("server", (e) => showServer(JSON.parse(e.data)));
  events.addEventListener("dropped", () => { page.dropped++; });
}

$("source").onchange = (e) => { selected = e.target.value; };
connect();
setInterval(() => { drawTimeline(); drawSpectrogram(); }, 250);
setInterval(() => each("the status", drawStatus), 1000);          // a daemon that falls silent is seen to   // four pictures a second: enough, and easy on a phone
