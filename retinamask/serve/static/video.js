// The page's video half: "Use the camera" (getUserMedia -> JPEG frames over WS v1/stream -> the answers'
// masks, boxes, labels and track ids drawn on the frame each answers, frames/s and latency shown) and
// "Upload a video" (POST v1/videos -> the job's progress -> the annotated MP4 playing, links to the results).
// Uses app.js's helpers (colour, drawDetections, status, $). No external resources.
"use strict";

const live = {
  ws: null, stream: null, sent: 0, sentAt: new Map(), frames: new Map(), answers: 0, times: [],
  log: [], last: null, lastCanvas: null, timer: null, busy: false,
};
const KEEP_LOG = 50;  // the last answers, with the JPEG each answered (window.live.log: the tests read it)

function keyHeader(headers) {
  if ($("key").value) headers["Authorization"] = `Bearer ${$("key").value}`;
  return headers;
}

function trackLabel(d) {
  const id = d.track_id !== undefined && d.track_id !== null ? `#${d.track_id} ` : "";
  return `${id}${d.category_name} ${d.score.toFixed(2)}`;
}

// ``source`` (a canvas or image of the frame) with the detections at or above the slider, into ``canvas``: each
// track in its own colour, labelled with its id. Returns the labels' texts.
function drawFrame(canvas, source, detections) {
  const threshold = parseFloat($("score").value);
  const shown = detections.filter((d) => d.score >= threshold).sort((a, b) => b.score - a.score);
  return drawDetections(canvas, source, shown, {
    hue: (d) => colour(d.track_id ?? d.category_id),
    labelOf: trackLabel,
    minWidth: 640,
    smooth: true,
  }).texts;
}

// ---- the camera

function wsUrl() {
  const params = new URLSearchParams({ track: $("track").checked ? "1" : "0" });
  if ($("key").value) params.set("api_key", $("key").value);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const path = location.pathname.replace(/[^/]*$/, "");
  return `${scheme}//${location.host}${path}v1/stream?${params}`;
}

async function startCamera() {
  if (live.ws) return stopCamera();
  const video = $("camera-video");
  try {
    live.stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
  } catch (e) {
    status(`no camera: ${e.message || e}`, true);
    return;
  }
  video.srcObject = live.stream;
  await video.play();
  Object.assign(live, { sent: 0, answers: 0, times: [], log: [], last: null });
  live.sentAt.clear();
  live.frames.clear();
  const ws = new WebSocket(wsUrl());
  ws.binaryType = "arraybuffer";
  live.ws = ws;
  ws.onopen = () => { live.timer = setInterval(pump, 15); status("camera on: frames go to the server"); };
  ws.onmessage = (e) => answered(JSON.parse(e.data));
  ws.onclose = (e) => {
    const clean = e.code === 1000 || e.code === 1005;
    if (!clean) status(`the camera stream closed: ${e.code}${e.reason ? " " + e.reason : ""}`, true);
    document.body.dataset.camera = clean ? "off" : `closed ${e.code}`;
    stopCamera(true);
  };
  $("live").hidden = false;
  $("camera").textContent = "Stop the camera";
  document.body.dataset.camera = "on";
}

function stopCamera(closed) {
  clearInterval(live.timer);
  if (live.ws && !closed) live.ws.close(1000);
  live.ws = null;
  if (live.stream) live.stream.getTracks().forEach((t) => t.stop());
  live.stream = null;
  $("camera").textContent = "Use the camera";
  if (!closed) status(`camera off (${live.answers} frames answered)`);
}

// Send the camera's current frame when fewer than 2 are unanswered: the server always has the next one
// ready, and keeps only the latest (it counts the ones it drops).
async function pump() {
  const video = $("camera-video");
  const ws = live.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN || live.busy || !video.videoWidth) return;
  const answeredUpTo = live.last ? live.last.frame + 1 : 0;
  if (live.sent - answeredUpTo >= 2) return;
  live.busy = true;
  try {
    const frame = document.createElement("canvas");
    frame.width = video.videoWidth;
    frame.height = video.videoHeight;
    frame.getContext("2d").drawImage(video, 0, 0);
    const blob = await new Promise((done) => frame.toBlob(done, "image/jpeg", 0.9));
    const bytes = new Uint8Array(await blob.arrayBuffer());
    if (live.ws !== ws || ws.readyState !== WebSocket.OPEN) return;
    const index = live.sent++;
    live.frames.set(index, { canvas: frame, bytes });
    live.sentAt.set(index, performance.now());
    ws.send(bytes);
  } finally {
    live.busy = false;
  }
}

function base64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

function answered(answer) {
  const now = performance.now();
  const sent = live.frames.get(answer.frame);
  for (const index of live.frames.keys()) if (index <= answer.frame) live.frames.delete(index);
  const latency = now - live.sentAt.get(answer.frame);
  for (const index of live.sentAt.keys()) if (index <= answer.frame) live.sentAt.delete(index);
  live.answers++;
  live.last = answer;
  live.times.push(now);
  while (live.times.length && now - live.times[0] > 2000) live.times.shift();
  const texts = sent ? drawFrame($("live-overlay"), sent.canvas, answer.detections) : [];
  if (sent) live.lastCanvas = sent.canvas;
  live.log.push({ frame: answer.frame, detections: answer.detections, drawn: texts, jpeg: sent ? base64(sent.bytes) : null });
  if (live.log.length > KEEP_LOG) live.log.shift();
  const fps = live.times.length > 1 ? (1000 * (live.times.length - 1)) / (now - live.times[0]) : 0;
  $("live-stats").textContent = `${fps.toFixed(1)} frames/s, latency ${latency.toFixed(0)} ms ` +
    `(server ${answer.latency_ms.toFixed(0)} ms), ${answer.detections.length} detections, ` +
    `${answer.dropped_total} frames dropped by the server (it keeps the latest)`;
  document.body.dataset.liveAnswers = String(live.answers);
}

// ---- an uploaded video

async function uploadVideo(file) {
  const job = $("job");
  job.hidden = false;
  $("job-video").hidden = true;
  $("job-links").hidden = true;
  document.body.dataset.videoState = "uploading";
  $("job-status").textContent = `sending ${file.name} (${(file.size / 1048576).toFixed(1)} MB)…`;
  const query = new URLSearchParams({ track: $("track").checked ? "1" : "0", score_threshold: $("score").value });
  const headers = keyHeader({ "Content-Type": file.type || "application/octet-stream", "X-Filename": file.name });
  try {
    const response = await fetch(`v1/videos?${query}`, { method: "POST", headers, body: file });
    const body = await response.json();
    if (!response.ok) throw new Error(`${response.status}: ${body.error ? body.error.message : response.statusText}`);
    await follow(body);
  } catch (e) {
    $("job-status").textContent = String(e.message || e);
    $("job-status").classList.add("error");
    document.body.dataset.videoState = "error";
  }
}

async function follow(job) {
  let body = job;
  for (;;) {
    const total = body.frames_total;
    $("job-progress").value = total ? body.frames_done / total : 0;
    const eta = body.eta_s !== null && body.eta_s !== undefined ? `, ETA ${body.eta_s.toFixed(0)} s` : "";
    const fps = body.fps ? `, ${body.fps.toFixed(1)} frames/s` : "";
    $("job-status").textContent = `${body.state}: ${body.frames_done}/${total ?? "?"} frames${fps}${eta}`;
    document.body.dataset.videoProgress = String(body.frames_done);
    if (["done", "failed", "cancelled"].includes(body.state)) break;  // its state is shown with its video
    document.body.dataset.videoState = body.state;
    await new Promise((done) => setTimeout(done, 300));
    const response = await fetch(job.urls.status, { headers: keyHeader({}) });
    body = await response.json();
    if (!response.ok) throw new Error(`${response.status}: ${body.error ? body.error.message : response.statusText}`);
  }
  if (body.error) $("job-status").textContent += ` (${body.error})`;
  if (body.state === "done" || body.frames_done > 0) await show(body);
  document.body.dataset.videoState = body.state;
}

async function show(body) {
  const video = $("job-video");
  // with an API key the video is fetched with its header (a <video src> cannot send one); else streamed
  video.src = $("key").value ? URL.createObjectURL(await (await fetch(body.urls.video, { headers: keyHeader({}) })).blob())
    : body.urls.video;
  video.hidden = false;
  video.play().catch(() => {});  // muted: autoplay is allowed; else the controls start it
  const links = $("job-links");
  const names = [["the annotated MP4", body.urls.video], ["results.jsonl", body.urls.results_jsonl]];
  if (body.urls.results_ytvis && body.state === "done") names.push(["results_ytvis.json", body.urls.results_ytvis]);
  links.replaceChildren(...names.map(([text, href]) => {
    const a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    a.download = "";
    return a;
  }).flatMap((a, i) => (i ? [document.createTextNode(" · "), a] : [a])));
  links.hidden = false;
}

$("camera").addEventListener("click", () => { startCamera(); });
// a video dropped on the image drop goes to the jobs (capture: before app.js sends it to v1/predict)
$("drop").addEventListener("drop", (e) => {
  const file = e.dataTransfer && e.dataTransfer.files[0];
  if (!file || !file.type.startsWith("video/")) return;
  e.preventDefault();
  e.stopImmediatePropagation();
  $("drop").classList.remove("over");
  uploadVideo(file);
}, true);
$("video-file").addEventListener("change", (e) => { if (e.target.files[0]) uploadVideo(e.target.files[0]); });
$("score").addEventListener("input", () => {  // the slider filters the last answer again, no new frame
  if (live.lastCanvas && live.last) drawFrame($("live-overlay"), live.lastCanvas, live.last.detections);
});
window.live = live;
