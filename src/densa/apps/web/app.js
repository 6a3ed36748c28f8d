// densa's drawing page: pointer strokes on a canvas, live predictions from POST /api/predict.
// At most one request is in flight; while drawing, a new one goes out at most every MIN_GAP ms.
"use strict";

const MIN_GAP = 100; // ms between requests while drawing
const SEND_SIZE = 140; // px: the drawing is sent at this size
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
  try { // show it, fitted on the pad; the server gets the file's own bytes
    const bmp = await createImageBitmap(f);
    const s = Math.min(pad.width / bmp.width, pad.height / bmp.height);
    const w = bmp.width * s, h = bmp.height * s;
    ctx.drawImage(bmp, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
  } catch (err) { /* the browser can't show it; the server will say what is wrong */ }
  file = f;
  inked = true;
  schedule();
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
  guess.textContent = a.predicted_class;
  guess.dataset.class = a.predicted_class;
  confidence.textContent = `${(100 * a.probability).toFixed(1)}% sure`;
  statusLine.textContent = "";
  statusLine.classList.remove("error");
  seen.src = a.input_image;
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
  confidence.textContent = "";
  statusLine.textContent = message;
  statusLine.classList.toggle("error", isError);
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
