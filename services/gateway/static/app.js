// clipjet web page: pick a source, set in/out points on the player, submit, follow the job, get the clip.
// Plain ES2020, no build step, no third-party code. The API key lives in localStorage (or arrives as #key=…).
"use strict";

const KEY_STORE = "clipjet.apiKey";
const DEFAULT_FPS = 30;
const POLL_MS = 500; // polling fallback when the gateway has no /events stream
const RECONNECT_MS = 1000; // pause before resuming a dropped event stream
const MAX_RECONNECTS = 5; // dropped event streams resumed before falling back to polling
const ENDED = ["done", "failed", "canceled", "expired"];
const YOUTUBE_HOSTS = /(^|\.)(youtube\.com|youtu\.be|youtube-nocookie\.com)$/i;

const $ = (id) => document.getElementById(id);
const page = {
  key: $("api-key"), keyState: $("key-state"), file: $("file"), url: $("source-url"),
  sourceState: $("source-state"), player: $("player"), playhead: $("playhead"), inSec: $("in-sec"),
  outSec: $("out-sec"), fps: $("fps"), length: $("clip-length"), subs: $("subs"), burn: $("burn"),
  lang: $("lang"), precision: $("precision"), submit: $("submit"), progress: $("progress"),
  jobState: $("job-state"), result: $("result"), downloads: $("downloads"),
};
const state = { source: null, inSec: null, outSec: null, busy: false, resultUrls: [], fpsTyped: false, frame: null };

// ---- the API key ---------------------------------------------------------------------------------------------
function apiKey() { return localStorage.getItem(KEY_STORE) || ""; }

function keyFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const key = params.get("key");
  if (key) {
    history.replaceState(null, "", location.pathname + location.search); // not kept in the address bar
    const stored = localStorage.getItem(KEY_STORE);
    const given = key.trim();
    // a link must not silently swap the key this browser uses (uploads and clips would go to another key)
    if (stored && stored !== given &&
        !confirm(`Replace the API key kept in this browser (id ${keyId(stored)}) with the one in the link (id ${keyId(given)})?`)) {
      return;
    }
    localStorage.setItem(KEY_STORE, given);
  }
}

function keyId(token) {
  const parts = token.split("_");
  return parts.length >= 3 ? parts[1] : "?";
}

async function checkKey() {
  if (!apiKey()) { page.keyState.textContent = "paste your API key (clipjet keys create)"; return; }
  page.key.value = apiKey();
  try {
    await api("GET", "/api/usage");
    page.keyState.textContent = `key OK (id ${keyId(apiKey())})`;
  } catch (err) {
    page.keyState.textContent = `key refused: ${err.message}`;
  }
}

class ApiError extends Error {
  constructor(status, code, message) { super(`${code}: ${message}`); this.status = status; this.code = code; }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${apiKey()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; } // e.g. a proxy's HTML error page
  if (!response.ok) {
    const error = (data && data.error) || { code: `http_${response.status}`, message: response.statusText };
    throw new ApiError(response.status, error.code, error.message);
  }
  return data;
}

// ---- the source ----------------------------------------------------------------------------------------------
function useFile(file) {
  if (state.source && state.source.previewUrl) URL.revokeObjectURL(state.source.previewUrl);
  const previewUrl = URL.createObjectURL(file);
  state.source = { kind: "file", file, previewUrl, uploadedKey: null };
  page.player.src = previewUrl;
  page.sourceState.textContent = `${file.name} (${formatBytes(file.size)}): uploaded when you make the clip`;
  resetPoints();
}

function useUrl(text) {
  let url;
  try { url = new URL(text); } catch { page.sourceState.textContent = "that is not a URL"; return; }
  if (!["http:", "https:"].includes(url.protocol)) { page.sourceState.textContent = "use an http(s) URL"; return; }
  const type = YOUTUBE_HOSTS.test(url.hostname) ? "youtube" : "url";
  state.source = { kind: type, url: url.href };
  resetPoints();
  if (type === "youtube") {
    page.player.removeAttribute("src");
    page.player.load();
    page.sourceState.textContent = "a video page: no preview here, type the in and out times";
  } else {
    page.player.src = url.href;
    page.sourceState.textContent = `URL source: ${url.href}`;
  }
}

async function sourceForJob() {
  const source = state.source;
  if (source.kind !== "file") return { type: source.kind, url: source.url };
  if (!source.uploadedKey) source.uploadedKey = await upload(source.file);
  return { type: "upload", key: source.uploadedKey };
}

// ---- uploads: a slot from the gateway, the bytes straight to object storage ----------------------------------
async function upload(file) {
  const contentType = file.type || "application/octet-stream";
  const slot = await api("POST", "/api/uploads", { filename: file.name, contentType, sizeBytes: file.size });
  const shown = (sent) => showProgress(sent / Math.max(file.size, 1), `uploading ${formatBytes(sent)} of ${formatBytes(file.size)}`);
  if (!slot.parts) {
    await put(slot.url, file, slot.headers, shown);
    return slot.key;
  }
  let done = 0;
  for (const part of slot.parts) { // one part at a time: a part is up to partSize bytes (64 MiB by default)
    const start = (part.partNumber - 1) * slot.partSize;
    const blob = file.slice(start, Math.min(start + slot.partSize, file.size));
    await put(part.url, blob, {}, (sent) => shown(done + sent));
    done += blob.size;
  }
  await api("POST", "/api/uploads/complete", { key: slot.key, uploadId: slot.uploadId });
  return slot.key;
}

function put(url, blob, headers, onProgress) {
  // XMLHttpRequest, not fetch: it reports upload progress. The signed headers must be sent as they are.
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("PUT", url);
    for (const [name, value] of Object.entries(headers || {})) request.setRequestHeader(name, value);
    request.upload.onprogress = (event) => onProgress(event.loaded);
    request.onload = () => (request.status >= 200 && request.status < 300 ? resolve()
      : reject(new Error(`object storage refused the upload (HTTP ${request.status})`)));
    request.onerror = () => reject(new Error("could not reach object storage (its CORS must allow this page: S3_CORS_ORIGINS)"));
    request.send(blob);
  });
}

// ---- in and out points ---------------------------------------------------------------------------------------
// The frame rate: 30 until measured while the video plays (the shortest gap between two presented frames' media
// times, once seen FPS_SAMPLES times, so a frame the player dropped does not count), unless the user typed one.
const FPS_SAMPLES = 3;
const MAX_FRAME_GAP_SEC = 0.1; // slower than 10 fps: not measured
const SAME_GAP_SEC = 0.0005;

function measureFrameRate() {
  if (!("requestVideoFrameCallback" in HTMLVideoElement.prototype)) return;
  const onFrame = (_now, frame) => {
    const last = state.frame;
    if (last && last.src === page.player.currentSrc) {
      const gap = frame.mediaTime - last.mediaTime;
      if (gap > 0.001 && gap < last.shortest - SAME_GAP_SEC) Object.assign(last, { shortest: gap, seen: 1 });
      else if (Math.abs(gap - last.shortest) <= SAME_GAP_SEC) last.seen += 1;
      last.mediaTime = frame.mediaTime;
      if (!state.fpsTyped && last.seen >= FPS_SAMPLES && last.shortest <= MAX_FRAME_GAP_SEC) {
        page.fps.value = String(Math.round(100 / last.shortest) / 100);
      }
    } else {
      state.frame = { src: page.player.currentSrc, mediaTime: frame.mediaTime, shortest: Infinity, seen: 0 };
    }
    page.player.requestVideoFrameCallback(onFrame);
  };
  page.player.requestVideoFrameCallback(onFrame);
}

function fps() {
  const value = Number(page.fps.value);
  return value > 0 ? value : DEFAULT_FPS;
}

function resetPoints() {
  state.inSec = null; state.outSec = null;
  page.inSec.value = ""; page.outSec.value = "";
  showPoints();
}

function setPoint(which, seconds) {
  const value = Math.max(0, Math.round(seconds * 1e6) / 1e6);
  state[which] = value;
  page[which].value = value.toFixed(3);
  showPoints();
}

function stepFrames(frames) {
  const player = page.player;
  if (!player.currentSrc) return;
  player.pause();
  const frame = Math.round(player.currentTime * fps()) + frames; // frame n shows from n/fps on
  const end = Number.isFinite(player.duration) ? player.duration : Infinity;
  player.currentTime = Math.min(Math.max(frame / fps(), 0), end);
}

function showPoints() {
  const { inSec, outSec } = state;
  const ready = state.source && inSec !== null && outSec !== null;
  if (ready && outSec > inSec) {
    page.length.value = `clip of ${(outSec - inSec).toFixed(3)} s (${formatTime(inSec)} to ${formatTime(outSec)})`;
  } else if (ready) {
    page.length.value = "the out point must come after the in point";
  } else {
    page.length.value = "";
  }
  page.submit.disabled = !(ready && outSec > inSec) || state.busy;
}

function onKey(event) {
  const target = event.target;
  const typing = target instanceof HTMLInputElement && !["checkbox", "file", "button"].includes(target.type);
  if (typing || target instanceof HTMLSelectElement || event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key;
  if (key === "i" || key === "I") setPoint("inSec", page.player.currentTime);
  else if (key === "o" || key === "O") setPoint("outSec", page.player.currentTime);
  else if (key === "ArrowLeft" || key === "ArrowRight") {
    const direction = key === "ArrowLeft" ? -1 : 1;
    stepFrames(direction * (event.shiftKey ? Math.round(fps()) : 1));
  } else return;
  event.preventDefault(); // the player's own arrow keys jump 5 s
  event.stopPropagation();
}

// ---- the job -------------------------------------------------------------------------------------------------
async function submitJob() {
  state.busy = true;
  showPoints();
  clearResult();
  try {
    const source = await sourceForJob();
    showProgress(0, "submitting");
    const body = {
      source, startSec: state.inSec, endSec: state.outSec, precision: page.precision.value,
      subs: { enabled: page.subs.checked, burnIn: page.subs.checked && page.burn.checked, lang: page.lang.value || "auto" },
    };
    const accepted = await api("POST", "/api/jobs", body);
    showProgress(0, `job ${accepted.id} ${accepted.status}`);
    showJob(await follow(accepted.id));
  } catch (err) {
    showProgress(0, `failed: ${err.message}`);
  } finally {
    state.busy = false;
    showPoints();
  }
}

async function follow(jobId) {
  const ended = await followEvents(jobId);
  return ended || pollJob(jobId);
}

// Server-Sent Events read with fetch() (EventSource cannot send the Authorization header). Null: no stream here.
async function followEvents(jobId) {
  let lastEventId = null;
  for (let attempt = 0; attempt <= MAX_RECONNECTS; attempt += 1) {
    const headers = { Authorization: `Bearer ${apiKey()}`, Accept: "text/event-stream" };
    if (lastEventId !== null) headers["Last-Event-ID"] = lastEventId;
    let response;
    try {
      response = await fetch(`/api/jobs/${encodeURIComponent(jobId)}/events`, { headers });
    } catch {
      await sleep(RECONNECT_MS);
      continue;
    }
    if (response.status === 404) return null; // a gateway without the stream: poll instead
    if (!response.ok || !response.body) return null;
    const ended = await readEvents(response.body, (id) => { lastEventId = id; }).catch(() => null);
    if (ended) return ended;
    await sleep(RECONNECT_MS);
  }
  return null;
}

async function readEvents(body, onId) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { type: "message", data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return null;
    buffer += value;
    const lines = buffer.split(/\r\n|\r|\n/);
    buffer = lines.pop();
    for (const line of lines) {
      if (line === "") {
        if (event.data.length) {
          const data = JSON.parse(event.data.join("\n"));
          if (event.type === "end") { reader.cancel().catch(() => {}); return data; }
          if (event.type === "progress") showProgress(data.pct, `${data.status}${data.stage ? `: ${data.stage}` : ""}`);
        }
        event = { type: "message", data: [] };
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") event.type = text;
        else if (field === "data") event.data.push(text);
        else if (field === "id") onId(text);
      }
    }
  }
}

async function pollJob(jobId) {
  for (;;) {
    const job = await api("GET", `/api/jobs/${encodeURIComponent(jobId)}`);
    if (ENDED.includes(job.status)) return job;
    showProgress(job.progress, `${job.status}${job.stage ? `: ${job.stage}` : ""}`);
    await sleep(POLL_MS);
  }
}

// ---- the result ----------------------------------------------------------------------------------------------
function showJob(job) {
  if (job.status !== "done") {
    const why = job.errorCode ? ` (${job.errorCode}: ${job.errorMessage || ""})` : "";
    showProgress(page.progress.value, `job ${job.status}${why}`);
    return;
  }
  const urls = job.urls;
  const result = job.result || {};
  const span = result.actualEndSec !== undefined
    ? `, ${formatTime(result.actualStartSec)} to ${formatTime(result.actualEndSec)}` : "";
  showProgress(1, `done${span}`);
  page.result.src = urls.video;
  page.result.hidden = false;
  addDownload(urls.video, "Download the clip (MP4)");
  if (urls.srt) addDownload(urls.srt, "Subtitles (SRT)");
  if (urls.vtt) { addDownload(urls.vtt, "Subtitles (WebVTT)"); addTrack(urls.vtt); }
  if (urls.words) addDownload(urls.words, "Word timings (JSON)");
}

function addDownload(url, text) {
  const item = document.createElement("li");
  const link = document.createElement("a");
  link.href = url;
  link.textContent = text;
  link.download = ""; // the signed URL answers Content-Disposition: attachment with the file's name
  link.rel = "noopener";
  item.append(link);
  page.downloads.append(item);
}

async function addTrack(vttUrl) {
  // Read through fetch (the bucket's CORS) into a blob: URL, so the player needs no crossorigin mode.
  try {
    const response = await fetch(vttUrl);
    if (!response.ok) return;
    const trackUrl = URL.createObjectURL(await response.blob());
    state.resultUrls.push(trackUrl);
    const track = document.createElement("track");
    Object.assign(track, { kind: "subtitles", label: "Subtitles", src: trackUrl, default: true });
    page.result.append(track);
  } catch {
    // subtitles stay downloadable; the player just shows none
  }
}

function clearResult() {
  page.result.pause();
  page.result.removeAttribute("src");
  page.result.replaceChildren();
  page.result.hidden = true;
  page.downloads.replaceChildren();
  state.resultUrls.forEach((url) => URL.revokeObjectURL(url));
  state.resultUrls = [];
}

// ---- small helpers -------------------------------------------------------------------------------------------
function showProgress(fraction, text) {
  page.progress.value = Math.min(Math.max(Number(fraction) || 0, 0), 1);
  page.jobState.textContent = text;
}

function formatTime(seconds) {
  const minutes = Math.floor(seconds / 60);
  return `${minutes}:${(seconds - minutes * 60).toFixed(3).padStart(6, "0")}`;
}

function formatBytes(bytes) {
  const units = ["bytes", "KiB", "MiB", "GiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
}

function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

// ---- wiring --------------------------------------------------------------------------------------------------
function pointFromField(which) {
  const text = page[which].value;
  state[which] = text === "" ? null : Math.max(0, Number(text));
  showPoints();
}

function start() {
  keyFromFragment();
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    localStorage.setItem(KEY_STORE, page.key.value.trim());
    checkKey();
  });
  page.file.addEventListener("change", () => { if (page.file.files.length) useFile(page.file.files[0]); });
  $("url-form").addEventListener("submit", (event) => { event.preventDefault(); useUrl(page.url.value.trim()); });
  $("back-frame").addEventListener("click", () => stepFrames(-1));
  $("fwd-frame").addEventListener("click", () => stepFrames(1));
  $("set-in").addEventListener("click", () => setPoint("inSec", page.player.currentTime));
  $("set-out").addEventListener("click", () => setPoint("outSec", page.player.currentTime));
  page.fps.addEventListener("input", () => { state.fpsTyped = true; });
  page.inSec.addEventListener("input", () => pointFromField("inSec"));
  page.outSec.addEventListener("input", () => pointFromField("outSec"));
  page.player.addEventListener("timeupdate", () => { page.playhead.textContent = formatTime(page.player.currentTime); });
  page.player.addEventListener("seeked", () => { page.playhead.textContent = formatTime(page.player.currentTime); });
  page.player.addEventListener("error", () => {
    if (state.source && state.source.kind === "url") page.sourceState.textContent += " (no preview: type the in and out times)";
  });
  page.subs.addEventListener("change", () => { page.burn.disabled = page.lang.disabled = !page.subs.checked; });
  $("job-form").addEventListener("submit", (event) => { event.preventDefault(); if (!page.submit.disabled) submitJob(); });
  document.addEventListener("keydown", onKey, true);
  measureFrameRate();
  checkKey();
}

start();
