// densa's drawing page: pointer strokes on a canvas, live predictions from POST /api/predict.
// At most one request is in flight; while drawing, a new one goes out at most every MIN_GAP ms.
"use strict";

const MIN_GAP = 100; // ms between requests while drawing
const SEND_SIZE = 140; // px: the drawing is sent at this size
const MAX_BYTES = 1 << 20; // the server's limit on a request body (densa.apps.serve.MAX_BODY)
const PHOTO_SIDE = 1600; // px: larger photos are scaled down to this longer side before sending
const SENDABLE = ["image/png", "image/jpeg", "image/bmp", "image/gif", "image/webp"];
const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const bars = document.getElementById("bars");
const statusLine = document.getElementById("status");
const guess = document.getElementById("guess");
const confidence = document.getElementById("confidence");
const seen = document.getElementById("seen");
let rows = {};
let drawing = null; // the pointer id that is drawing, if any
let last = null; // its last point
let inked = false; // anything on the canvas?
let file = null; // a chosen or dropped file, sent as is until someone draws on it
let inFlight = false, dirty = false, timer = null, lastSent = 0, generation = 0;

function resetCanvas() {
  const dpr = window.devicePixelRatio || 1;
  pad.width = Math.round(280 * dpr);
  pad.height = Math.round(280 * dpr);
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
  ctx.strokeStyle = ctx.fillStyle = "#000";
  ctx.lineWidth = pad.width / 15; // MNIST-like stroke for a digit that fills most of the pad
  ctx.lineCap = ctx.lineJoin = "round";
  inked = false;
  file = null;
}

function point(e) {
  const r = pad.getBoundingClientRect();
  return [((e.clientX - r.left) * pad.width) / r.width, ((e.clientY - r.top) * pad.height) / r.height];
}

pad.addEventListener("pointerdown", (e) => {
  if (drawing !== null || (e.pointerType === "mouse" && e.button !== 0)) return;
  drawing = e.pointerId;
  pad.setPointerCapture(e.pointerId);
  last = point(e);
  ctx.beginPath();
  ctx.arc(last[0], last[1], ctx.lineWidth / 2, 0, 2 * Math.PI);
  ctx.fill();
  inked = true;
  file = null;
  schedule();
  e.preventDefault();
});

pad.addEventListener("pointermove", (e) => {
  if (e.pointerId !== drawing) return;
  const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [e];
  ctx.beginPath();
  ctx.moveTo(last[0], last[1]);
  for (const ev of events.length ? events : [e]) {
    last = point(ev);
    ctx.lineTo(last[0], last[1]);
  }
  ctx.stroke();
  schedule();
  e.preventDefault();
});

function endStroke(e) {
  if (e.pointerId !== drawing) return;
  drawing = null;
  schedule();
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

document.getElementById("clear").addEventListener("click", () => {
  resetCanvas();
  generation++;
  showIdle("Draw a digit");
});

// -------------------------------------------------------------- files: choose or drop

document.getElementById("file").addEventListener("change", (e) => {
  if (e.target.files.length) useFile(e.target.files[0]);
  e.target.value = "";
});
const drop = document.getElementById("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) useFile(e.dataTransfer.files[0]);
});

async function useFile(f) {
  resetCanvas();
  generation++;
  let picture = null;
  try { // show it, fitted on the pad
    picture = await openPicture(f);
    const s = Math.min(pad.width / picture.width, pad.height / picture.height);
    const w = picture.width * s, h = picture.height * s;
    ctx.drawImage(picture.source, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
  } catch (err) { /* the browser can't show it; the server will say what is wrong */ }
  try {
    file = picture ? await sendable(f, picture) : f;
  } catch (err) {
    showIdle(err.message, true);
    return;
  }
  inked = true;
  schedule();
}

async function openPicture(f) { // {source, width, height} drawable on a canvas; SVG via an <img>
  if (f.type !== "image/svg+xml") {
    const bmp = await createImageBitmap(f);
    return { source: bmp, width: bmp.width, height: bmp.height };
  }
  const img = new Image();
  const url = URL.createObjectURL(f);
  try {
    img.src = url;
    await img.decode();
  } finally {
    URL.revokeObjectURL(url);
  }
  const w = img.naturalWidth || 512, h = img.naturalHeight || 512; // an SVG may have no size of its own
  return { source: img, width: w, height: h };
}

async function sendable(f, picture) { // the file itself if the server takes it as is, else a smaller JPEG/PNG
  const large = Math.max(picture.width, picture.height) > PHOTO_SIDE;
  if (SENDABLE.includes(f.type) && f.size <= MAX_BYTES && !large) return f;
  const s = Math.min(1, PHOTO_SIDE / Math.max(picture.width, picture.height));
  const c = document.createElement("canvas");
  c.width = Math.max(1, Math.round(picture.width * s));
  c.height = Math.max(1, Math.round(picture.height * s));
  const g = c.getContext("2d");
  g.fillStyle = "#fff"; // an SVG or PNG with transparency: on white paper
  g.fillRect(0, 0, c.width, c.height);
  g.imageSmoothingQuality = "high";
  g.drawImage(picture.source, 0, 0, c.width, c.height);
  for (const q of [0.92, 0.8, 0.6]) {
    const blob = await new Promise((ok) => c.toBlob(ok, "image/jpeg", q));
    if (blob && blob.size <= MAX_BYTES) return blob;
  }
  throw new Error(`the image is too big to send even scaled down (${(f.size / 1048576).toFixed(1)} MB); try a smaller photo`);
}

// -------------------------------------------------------------- requests, throttled

function schedule() {
  dirty = true;
  markPending();
  if (inFlight || timer !== null) return;
  timer = setTimeout(send, Math.max(0, lastSent + MIN_GAP - performance.now()));
}

function markPending() { // for tests and the curious: is an answer still on its way?
  document.body.dataset.pending = inFlight || dirty || timer !== null ? "1" : "0";
}

async function send() {
  timer = null;
  if (!dirty || inFlight) return markPending();
  dirty = false;
  if (!inked) return markPending();
  inFlight = true;
  lastSent = performance.now();
  const mine = generation;
  try {
    const body = file || (await snapshot());
    const type = file ? file.type || "application/octet-stream" : "image/png";
    const r = await fetch("/api/predict?top_k=3", { method: "POST", headers: { "Content-Type": type }, body });
    const answer = await r.json();
    if (mine !== generation) return; // cleared meanwhile
    if (r.ok) show(answer);
    else showIdle(answer.detail || `error ${r.status}`, answer.error !== "no_digit");
  } catch (err) {
    if (mine === generation) showIdle(`no answer from the server (${err.message})`, true);
  } finally {
    inFlight = false;
    if (dirty) schedule();
    else markPending();
  }
}

function snapshot() { // the drawing at SEND_SIZE px: plenty for a 20x20 digit, and a quarter of the work
  const small = document.createElement("canvas");
  small.width = small.height = SEND_SIZE;
  const c = small.getContext("2d");
  c.imageSmoothingQuality = "high";
  c.drawImage(pad, 0, 0, SEND_SIZE, SEND_SIZE);
  return new Promise((ok) => small.toBlob(ok, "image/png"));
}

// -------------------------------------------------------------- showing answers

function show(a) {
  let best = null;
  for (const [name, p] of Object.entries(a.probabilities)) {
    const row = rows[name];
    if (!row) continue;
    row.el.dataset.p = p.toFixed(6);
    row.bar.style.width = `${(100 * p).toFixed(1)}%`;
    row.pct.textContent = `${(100 * p).toFixed(1)}%`;
    if (best === null || p > a.probabilities[best]) best = name;
  }
  for (const [name, row] of Object.entries(rows)) row.el.classList.toggle("top", name === best);
  const d = a.decision;
  guess.textContent = d.accepted ? a.predicted_class : "?";
  guess.dataset.class = d.accepted ? a.predicted_class : "";
  guess.dataset.status = d.status;
  confidence.textContent = d.accepted ? `${(100 * a.probability).toFixed(1)}% sure` : d.label;
  statusLine.textContent = d.accepted ? "" : d.reason;
  statusLine.classList.remove("error");
  statusLine.classList.toggle("refused", !d.accepted);
  seen.src = a.input_image;
  seen.hidden = false;
}

function showIdle(message, isError = false) {
  for (const row of Object.values(rows)) {
    row.el.dataset.p = "0";
    row.el.classList.remove("top");
    row.bar.style.width = "0";
    row.pct.textContent = "";
  }
  guess.textContent = "?";
  guess.dataset.class = "";
  guess.dataset.status = "";
  confidence.textContent = "";
  statusLine.textContent = message;
  statusLine.classList.toggle("error", isError);
  statusLine.classList.remove("refused");
  seen.hidden = true; // the black box stays: no broken-image icon, nothing moves
  seen.removeAttribute("src");
}

async function init() {
  resetCanvas();
  const r = await fetch("/api/health");
  const h = await r.json();
  for (const name of h.classes) {
    const el = document.createElement("div");
    el.className = "row";
    el.dataset.class = name;
    el.dataset.p = "0";
    el.innerHTML = '<span class="label"></span><div class="track"><div class="bar"></div></div><span class="pct"></span>';
    el.querySelector(".label").textContent = name;
    bars.appendChild(el);
    rows[name] = { el, bar: el.querySelector(".bar"), pct: el.querySelector(".pct") };
  }
  document.getElementById("model").textContent = `model ${h.model} · preprocessing: ${h.preprocess} · densa ${h.densa}`;
  document.body.dataset.ready = "1";
}
init();
