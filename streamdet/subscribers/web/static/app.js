// streamdet web: one EventSource, bounded arrays, canvases. No framework, no build step.
"use strict";

const SPAN_SECONDS = 300;      // the score timeline shows the last five minutes of each source's audio (two on a phone)
const KEEP_POINTS = 1200;
const KEEP_EVENTS = 50;
const SPEC_COLUMNS = 1500;     // 30 s of 20-ms frames
const $ = (id) => document.getElementById(id);

const page = {                 // read by the browser test; everything in it is bounded
  points: 0, framesDrawn: 0, events: 0, snapshots: 0, connected: false, dropped: 0, clipsPlayed: 0, failed: 0, live: 0, axes: {},
};
window.streamdet = page;

const sources = new Map();     // name -> {run, scores, events, downs, spec, specMels, specUpto, onScore}
let daemons = new Map();
let endpoints = [];
let hours = null;
let selected = null;
const liveEvents = [];          // the newest first, as the server keeps them
function keepLive(m) { liveEvents.unshift(m); liveEvents.length = Math.min(liveEvents.length, KEEP_EVENTS); }

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
    else { s.open = null; s.events.push([m.onset, m.offset]); bounded(s.events, 100); keepLive(m); if ($("day").value === "live") addEvent(m); }
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
  csrf = snap.csrf; reviewing = !!snap.clips;
  liveEvents.length = 0;
  if ($("day").value === "live") $("events").tBodies[0].replaceChildren();
  for (const m of [...(snap.events || [])].reverse()) {
    each("an event", () => {
      keepLive(m);
      if ($("day").value === "live") addEvent(m);
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
  loadDays();
}

// -- axes -----------------------------------------------------------------------------------------
// Canvas text in CSS pixels times the screen's density, so labels read the same on a phone.
const LABEL_PX = 11;
function px(n) { return n * (window.devicePixelRatio || 1); }
function label(g, text, x, y, align = "left", colour = "#8b98a5") {
  g.font = `${px(LABEL_PX)}px sans-serif`; g.fillStyle = colour; g.textAlign = align; g.textBaseline = "middle";
  g.fillText(text, x, y);
  g.textAlign = "left"; g.textBaseline = "alphabetic";
}
function timeStep(span) { return [5, 10, 15, 30, 60, 120, 300, 600].find((step) => span / step <= 6) || 1200; }
// Ticks along the bottom, in seconds before `end` (the newest audio): "-60 s" ... "0 s".
function timeTicks(g, x, start, end, y, grid = true) {
  const step = timeStep(end - start), ticks = [];
  for (let ago = 0; end - ago >= start; ago += step) {
    const px_ = x(end - ago);
    g.fillStyle = "#2a3540"; g.fillRect(px_, grid ? 0 : y - px(14), 1, grid ? y - px(8) : px(4));
    label(g, ago ? `-${ago} s` : "0 s", px_, y - px(5), ago ? "center" : "right");
    ticks.push(ago);
  }
  return ticks;
}
function melOf(hz) { return 2595 * Math.log10(1 + hz / 700); }   // the HTK mel scale of the daemon's front end
// kHz ticks up the left of a picture whose rows run from band[0] (bottom) to band[1] (top), mel- or
// log-spaced; the highest tick carries the unit.
function khzTicks(g, band, scale, top, bottom, x) {
  const [lo, hi] = band, f = scale === "mel" ? melOf : Math.log, shown = [];
  for (const khz of [0.5, 1, 2, 3, 4, 6, 8, 10, 12, 16]) {
    const hz = khz * 1000;
    if (hz < lo || hz > hi) continue;
    const y = bottom - ((f(hz) - f(lo)) / (f(hi) - f(lo))) * (bottom - top);
    if (y < top + px(LABEL_PX / 2) || y > bottom - px(LABEL_PX / 2)) continue;   // a label cut by the edge
    if (shown.length && Math.abs(y - shown[shown.length - 1][1]) < px(LABEL_PX + 2)) continue;
    shown.push([khz, y]);
  }
  shown.forEach(([khz, y], i) => label(g, i === shown.length - 1 ? `${khz} kHz` : `${khz}`, x - px(3), y, "right"));
  return shown.map(([khz]) => khz);
}

// -- score timeline -------------------------------------------------------------------------------
function drawTimeline() {
  const canvas = $("timeline"), s = sources.get(selected);
  fit(canvas);
  const g = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
  g.clearRect(0, 0, w, h);
  if (!s) return;
  const left = px(30), bottom = h - px(16), right = w - px(58);   // room for the score axis, the time ticks and the thresholds' values
  const points = s.scores.filter((p) => p !== null);
  const end = points.length ? points[points.length - 1][1] : 0;
  const start = end - (canvas.clientWidth < 600 ? SPAN_SECONDS * 0.4 : SPAN_SECONDS);   // new audio enters on the right
  const x = (t) => left + ((t - start) / (end - start)) * (right - left);
  const y = (v) => bottom - 4 - Math.max(0, Math.min(1, v)) * (bottom - 8);
  const axes = { score: [], time: timeTicks(g, x, start, end, h) };
  for (const v of [0, 0.25, 0.5, 0.75, 1]) {
    g.fillStyle = "#2a3540"; g.fillRect(left, y(v), right - left, 1);
    label(g, v.toFixed(v % 0.5 ? 2 : 1), left - px(4), y(v), "right");
    axes.score.push(v);
  }
  g.save(); g.beginPath(); g.rect(left, 0, right - left, bottom); g.clip();
  g.fillStyle = "#5c2b2b";
  for (const [a, b] of s.downs) g.fillRect(x(a), 0, Math.max(2, x(b === null ? end : b) - x(a)), bottom);
  g.fillStyle = "rgba(240, 180, 41, 0.35)";
  for (const [a, b] of s.events) g.fillRect(x(a), 0, Math.max(2, x(b) - x(a)), bottom);
  if (s.open !== null) g.fillRect(x(s.open), 0, Math.max(2, x(end) - x(s.open)), bottom);
  const [on, off] = hysteresis(s);
  g.strokeStyle = "#e57373"; g.lineWidth = px(1); g.beginPath(); g.moveTo(left, y(on)); g.lineTo(right, y(on)); g.stroke();
  g.setLineDash([px(4), px(4)]); g.beginPath(); g.moveTo(left, y(off)); g.lineTo(right, y(off)); g.stroke(); g.setLineDash([]);
  g.strokeStyle = "#4fc3f7"; g.lineWidth = px(1.5); g.beginPath();
  let last = null;
  for (const p of s.scores) {
    if (p === null) { last = null; continue; }
    const [t0, t1, score] = p;
    if (t1 < start) continue;
    const px_ = x((t0 + t1) / 2), py = y(score);
    if (last === null || t0 - last > 2.0) g.moveTo(px_, py); else g.lineTo(px_, py);   // no line across a gap
    last = t1;
  }
  g.stroke(); g.restore();
  label(g, `on ${on.toFixed(2)}`, right + px(4), y(on) - (Math.abs(y(on) - y(off)) < px(13) ? px(6) : 0), "left", "#e57373");
  label(g, `off ${off.toFixed(2)}`, right + px(4), y(off) + (Math.abs(y(on) - y(off)) < px(13) ? px(6) : 0), "left", "#e57373");
  axes.on = on.toFixed(2); axes.off = off.toFixed(2);
  page.axes.timeline = axes;
  $("score-note").textContent = points.length ? `${selected}: score (0-1) over the last ${Math.round(end - start)} s of audio; now ${points[points.length - 1][2].toFixed(2)}` : "";
}

// The event thresholds of the daemon publishing the selected source: an event opens at `on` and
// closes when the score falls below `off` (the hysteresis).
function hysteresis(s) {
  for (const d of daemons.values()) if (d.sources && selected in d.sources && d.detector) return [Number(d.detector.on_score), Number(d.detector.off_score ?? d.detector.on_score)];
  return [0.5, 0.35];
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
  s.frameS = m.frame_s; s.band = m.band_hz;
  page.framesDrawn += m.n_frames;
}

function drawSpectrogram() {
  const canvas = $("spectrogram"), s = sources.get(selected);
  fit(canvas);
  const g = canvas.getContext("2d"), w = canvas.width, h = canvas.height, left = px(42), bottom = h - px(16);
  g.clearRect(0, 0, w, h);
  g.imageSmoothingEnabled = false;
  g.fillStyle = "#000"; g.fillRect(left, 0, w - left, bottom);
  if (!s) return;
  g.drawImage(s.spec, left, 0, w - left, bottom);
  const span = SPEC_COLUMNS * (s.frameS || 0.02);
  page.axes.spectrogram = { khz: khzTicks(g, s.band || [500, 10000], "mel", 0, bottom, left), time: timeTicks(g, (t) => left + (t / span) * (w - left), 0, span, h, false) };
}

// -- events, clips, hours, status -----------------------------------------------------------------
function addEvent(m, body = $("events").tBodies[0], at = 0) {
  page.events++;
  const row = body.insertRow(at);
  row.className = "bird";
  const when = new Date(m.ts * 1000).toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
  const band = m.band_hz ? `${(m.band_hz[0] / 1000).toFixed(1)}-${(m.band_hz[1] / 1000).toFixed(1)}` : "";
  for (const text of [when, m.source, `${(m.duration || 0).toFixed(1)} s`, (m.peak_score || 0).toFixed(2), band]) row.insertCell().textContent = text;
  const cell = row.insertCell();
  if (m.clip_url) {
    const button = document.createElement("button");
    button.textContent = "play";
    button.className = "play";
    cell.appendChild(button);
    row.classList.add("playable");
    row.dataset.clip = m.clip_url;
    row.onclick = () => playClip(m.clip_url, row);   // the whole row, not only its button
  }
  const verdict = row.insertCell();
  if (m.clip_url && reviewing) reviewButtons(verdict, m.clip_url, m.review || null);
  while (at === 0 && body.rows.length > KEEP_EVENTS) body.deleteRow(body.rows.length - 1);   // live: the newest 50; a past day: all it sends
  return row;
}

// -- review: the operator says what a clip really held, stored in its sidecar ------------------
const VERDICTS = [["bird", "bird"], ["not_bird", "not a bird"]];
let csrf = null, reviewing = false;

function reviewButtons(cell, clip, current) {
  cell.replaceChildren();
  cell.className = "review";
  for (const [label, text] of VERDICTS) {
    const button = document.createElement("button");
    button.textContent = text;
    button.className = `verdict ${label}${current === label ? " chosen" : ""}`;
    button.onclick = (e) => { e.stopPropagation(); review(cell, clip, current === label ? null : label); };   // a second click takes it back
    cell.appendChild(button);
  }
}

async function review(cell, clip, label) {
  const response = await fetch("api/review", {
    method: "POST", headers: { "Content-Type": "application/json", "X-Streamdet-Csrf": csrf || "" }, body: JSON.stringify({ clip, label }),
  });
  if (!response.ok) { cell.title = (await response.text()).trim(); page.reviewFailed = (page.reviewFailed || 0) + 1; return; }
  const row = await response.json();
  reviewButtons(cell, clip, row.review);
  page.reviews = (page.reviews || 0) + 1;
  loadDays();
}

// -- history: any kept day's events and checks, from the clips' sidecars -----------------------
async function loadDays() {
  if (!reviewing) return;
  const response = await fetch("api/days");
  if (!response.ok) return;
  const d = await response.json(), select = $("day"), chosen = select.value;
  select.replaceChildren(new Option("live", "live"));
  for (const [day, n] of Object.entries(d.days)) select.appendChild(new Option(`${day} (${n.events} events)`, day));
  select.value = [...select.options].some((o) => o.value === chosen) ? chosen : "live";
  $("reviews-note").textContent = `reviewed: ${d.reviews.bird} bird, ${d.reviews.not_bird} not a bird`;
  page.days = Object.keys(d.days).length;
  loadChecks(select.value === "live" ? Object.keys(d.days)[0] : select.value);
}

// One day's rows of one kind ("event" or "check") into `table`, newest first; how many.
async function listDay(day, kind, table) {
  const response = await fetch("api/day/" + encodeURIComponent(day));
  if (!response.ok) return null;
  const rows = (await response.json()).filter((m) => m.kind === kind), body = $(table).tBodies[0];
  body.replaceChildren();
  for (const m of rows) each(`a past ${kind}`, () => addEvent(m, body, -1));
  return rows.length;
}

async function showDay(day) {
  const body = $("events").tBodies[0];
  if (day === "live") { body.replaceChildren(); for (const m of [...liveEvents].reverse()) each("an event", () => addEvent(m)); return; }
  page.pastEvents = await listDay(day, "event", "events");
  loadChecks(day);
}

async function loadChecks(day) {
  if (!day) { $("checks").tBodies[0].replaceChildren(); return; }
  page.checks = await listDay(day, "check", "checks");
  $("checks-panel").hidden = false;
}

async function playClip(clip, row) {
  const url = clip.split("/").map(encodeURIComponent).join("/"), player = $("player");
  for (const r of document.querySelectorAll("tr.playing")) r.classList.remove("playing");
  if (row) row.classList.add("playing");
  $("clip").hidden = false;
  $("clip-name").textContent = row ? `${row.cells[0].textContent}, ${row.cells[1].textContent}` : clip;
  player.src = "clips/" + url;
  player.onloadedmetadata = () => { page.clipsPlayed++; page.clipDuration = player.duration; };
  player.play().catch(() => {});   // a browser may refuse sound before a gesture; the controls stay
  const response = await fetch("api/clip-spectrogram/" + url);
  if (!response.ok) return;
  const m = await response.json(), canvas = $("clip-spectrogram"), off = document.createElement("canvas");
  off.width = m.n_frames; off.height = m.n_mels;
  paint(off, m, m.n_frames);
  fit(canvas);
  const g = canvas.getContext("2d"), w = canvas.width, h = canvas.height, left = px(42), bottom = h - px(16), span = m.n_frames * m.frame_s;
  g.clearRect(0, 0, w, h);
  g.imageSmoothingEnabled = false;
  g.drawImage(off, left, 0, w - left, bottom);
  // Ticks from the clip's start: "0 s" on the left.
  const step = timeStep(span), ticks = [];
  for (let t = 0; t <= span; t += step) {
    const tx = left + (t / span) * (w - left);
    g.fillStyle = "#2a3540"; g.fillRect(tx, bottom + px(1), 1, px(4));
    label(g, `${t} s`, tx, h - px(5), t ? "center" : "left");
    ticks.push(t);
  }
  page.axes.clip = { khz: khzTicks(g, m.band_hz, "log", 0, bottom, left), time: ticks };
  page.clipSpectrogram = m.n_frames;
}

function drawHours() {
  if (!hours) return;
  const canvas = $("hours");
  fit(canvas);
  const g = canvas.getContext("2d"), w = canvas.width, h = canvas.height, top = Math.max(1, ...hours.hours), base = px(16);
  g.clearRect(0, 0, w, h);
  g.fillStyle = "#f0b429";
  hours.hours.forEach((n, i) => { const bh = (n / top) * (h - base - px(4)); g.fillRect((i * w) / 24 + 1, h - base - bh, w / 24 - 2, bh); });
  for (const i of [0, 6, 12, 18]) label(g, `${String(i).padStart(2, "0")}:00`, (i * w) / 24 + 2, h - px(5));
  label(g, `${top}`, w - 2, px(7), "right");
  $("hours-note").textContent = `today ${hours.hours.reduce((a, b) => a + b, 0)}, most in one hour ${top}`;
  drawWeek();
}

function drawWeek() {          // one row a day (today on top), one cell an hour, brighter for more
  const canvas = $("week");
  fit(canvas);
  const g = canvas.getContext("2d"), w = canvas.width, h = canvas.height, days = Object.keys(hours.grid);
  const name = px(44), count = px(36), rowH = h / days.length, cellW = (w - name - count) / 24;
  const top = Math.max(1, ...days.flatMap((d) => hours.grid[d]));
  g.clearRect(0, 0, w, h);
  days.forEach((day, r) => {
    label(g, day.slice(5), 2, r * rowH + rowH / 2);
    hours.grid[day].forEach((n, i) => {
      g.fillStyle = n ? `rgba(240, 180, 41, ${0.2 + 0.8 * (n / top)})` : "#1d262e";
      g.fillRect(name + i * cellW, r * rowH + 1, cellW - 1, rowH - 2);
    });
    label(g, String(hours.days[day]), w - 2, r * rowH + rowH / 2, "right", "#e6edf3");
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
        s.gaps, s.dropped_samples, d.model ? d.model.sha256 : "", d.detector ? `${Number(d.detector.on_score).toFixed(2)} / ${Number(d.detector.off_score).toFixed(2)}` : ""];
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
$("day").onchange = (e) => showDay(e.target.value);
connect();
setInterval(() => { drawTimeline(); drawSpectrogram(); }, 250);
setInterval(() => each("the status", drawStatus), 1000);
setInterval(loadDays, 60000);   // new checks and other pages' reviews          // a daemon that falls silent is seen to   // four pictures a second: enough, and easy on a phone
