// The retinamask page: send an image to POST /v1/predict, draw its masks, boxes, labels and scores
// from the JSON (no second request when the score slider moves). No external resources.
"use strict";

const state = { image: null, result: null };
const $ = (id) => document.getElementById(id);

function colour(categoryId) {
  const hue = (categoryId * 137.508) % 360;  // golden-angle hues: neighbours differ
  return `hsl(${hue.toFixed(1)}, 85%, 50%)`;
}

function rgbOf(css) {
  const probe = document.createElement("canvas").getContext("2d");
  probe.fillStyle = css;
  probe.fillRect(0, 0, 1, 1);
  return probe.getImageData(0, 0, 1, 1).data;
}

// COCO compressed RLE (pycocotools rleFrString) -> run lengths, column-major, starting with zeros.
function rleCounts(text) {
  const counts = [];
  let p = 0;
  while (p < text.length) {
    let x = 0, k = 0, more = true;
    while (more) {
      const c = text.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = (c & 0x20) !== 0;
      p++; k++;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

function paintMask(pixels, width, rle, rgb) {
  const [h] = rle.size;
  const counts = typeof rle.counts === "string" ? rleCounts(rle.counts) : rle.counts;
  let index = 0;
  counts.forEach((run, i) => {
    if (i % 2 === 1) {
      for (let j = index; j < index + run; j++) {
        const row = j % h, col = (j / h) | 0, o = 4 * (row * width + col);
        pixels[o] = (pixels[o] + rgb[0]) >> 1;
        pixels[o + 1] = (pixels[o + 1] + rgb[1]) >> 1;
        pixels[o + 2] = (pixels[o + 2] + rgb[2]) >> 1;
      }
    }
    index += run;
  });
}

// The detections at or above the slider's score, best first.
function visible() {
  const threshold = parseFloat($("score").value);
  return state.result.detections.filter((d) => d.score >= threshold).sort((a, b) => b.score - a.score);
}

// Label rectangles [x1, y1, x2, y2], one per [width, height], for boxes in priority order (best first): each
// overlaps no earlier label (unless the canvas has no free spot left near its box): above the box, inside its
// top edge, below it, then further down and up in label-height steps -- predict's rule (ops/draw.py layout_labels).
function layoutLabels(sizes, boxes, canvasWidth, canvasHeight) {
  const placed = [];
  sizes.forEach(([w, h], i) => {
    const [x1, y1, , y2] = boxes[i];
    const x = Math.min(Math.max(x1, 0), Math.max(canvasWidth - w, 0));
    const candidates = [y1 - h, y1, y2];
    for (let k = 1; k < 40; k++) candidates.push(y2 + k * h);
    for (let k = 2; k < 40; k++) candidates.push(y1 - k * h);
    const free = candidates.find((y) => y >= 0 && y + h <= canvasHeight &&
      !placed.some(([px1, py1, px2, py2]) => x < px2 && px1 < x + w && y < py2 && py1 < y + h));
    const y = free !== undefined ? free : Math.min(Math.max(y1 - h, 0), Math.max(canvasHeight - h, 0));
    placed.push([x, y, x + w, y + h]);
  });
  return placed;
}

// ``shown`` (best first) drawn on ``source`` (an image or a canvas) into ``canvas``: masks blended at the source's
// own resolution, then everything scaled to at least ``minWidth`` px wide (labels stay readable), boxes, and
// labels placed best first (a better label is never the one moved away, and none covers another).
// ``hue(d)``: a detection's CSS colour; ``labelOf(d)``: its label. Returns the labels' texts and rectangles.
function drawDetections(canvas, source, shown, { hue, labelOf, minWidth, smooth }) {
  const base = document.createElement("canvas");
  base.width = source.naturalWidth || source.width;
  base.height = source.naturalHeight || source.height;
  const bctx = base.getContext("2d");
  bctx.drawImage(source, 0, 0);
  const frame = bctx.getImageData(0, 0, base.width, base.height);
  const lowestFirst = [...shown].reverse();  // the best detections are drawn last, on top
  lowestFirst.forEach((d) => {
    if (d.segmentation && d.segmentation.counts !== undefined) {
      paintMask(frame.data, base.width, d.segmentation, rgbOf(hue(d)));
    }
  });
  bctx.putImageData(frame, 0, 0);
  const scale = Math.max(1, minWidth / base.width);
  canvas.width = Math.round(base.width * scale);
  canvas.height = Math.round(base.height * scale);
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = smooth;
  ctx.drawImage(base, 0, 0, canvas.width, canvas.height);
  const font = 13;
  ctx.font = `${font}px system-ui, sans-serif`;
  ctx.lineWidth = 2;
  const boxes = shown.map((d) => {
    const [x, y, w, h] = d.bbox.map((v) => v * scale);
    return [x, y, x + w, y + h];
  });
  lowestFirst.forEach((d, i) => {
    const [x1, y1, x2, y2] = boxes[shown.length - 1 - i];
    ctx.strokeStyle = hue(d);
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
  });
  const texts = shown.map(labelOf);
  const sizes = texts.map((text) => [Math.ceil(ctx.measureText(text).width) + 6, font + 4]);
  const labels = layoutLabels(sizes, boxes, canvas.width, canvas.height);
  for (let i = shown.length - 1; i >= 0; i--) {
    const [x1, y1, x2, y2] = labels[i];
    ctx.fillStyle = hue(shown[i]);
    ctx.fillRect(x1, y1, x2 - x1, y2 - y1);
    ctx.fillStyle = "#fff";
    ctx.fillText(texts[i], x1 + 3, y1 + font);
  }
  return { texts, labels };
}

function draw() {
  const shown = visible();
  const { texts, labels } = drawDetections($("overlay"), state.image, shown, {
    hue: (d) => colour(d.category_id),
    labelOf: (d) => `${d.category_name} ${d.score.toFixed(2)}`,
    minWidth: 720,
    smooth: false,
  });
  document.body.dataset.labels = JSON.stringify(texts.map((text, i) => ({ text, rect: labels[i] })));
  table(shown);
  document.body.dataset.shown = String(shown.length);
}

function table(shown) {
  const body = $("detections").tBodies[0];
  body.replaceChildren(...shown.map((d, i) => {
    const row = document.createElement("tr");
    const swatch = `<span class="swatch" style="background:${colour(d.category_id)}"></span>`;
    row.innerHTML = `<td class="num">${i + 1}</td><td>${swatch}${d.category_name}</td>` +
      `<td class="num">${d.score.toFixed(3)}</td><td class="num">${d.bbox.map((v) => v.toFixed(1)).join(", ")}</td>`;
    return row;
  }));
  const timings = $("timings").tBodies[0];
  const entries = Object.entries(state.result.timings_ms);
  timings.replaceChildren(...entries.map(([stage, ms]) => {
    const row = document.createElement("tr");
    row.innerHTML = `<td>${stage}</td><td class="num">${ms.toFixed(1)}</td>`;
    return row;
  }));
}

function status(text, error) {
  $("status").textContent = text;
  $("status").classList.toggle("error", Boolean(error));
}

async function send(file) {
  document.body.dataset.state = "busy";
  status(`sending ${file.name} (${(file.size / 1024).toFixed(0)} KB)…`);
  const headers = { "Content-Type": file.type || "application/octet-stream" };
  if ($("key").value) headers["Authorization"] = `Bearer ${$("key").value}`;
  try {
    const response = await fetch("v1/predict", { method: "POST", headers, body: file });
    const body = await response.json();
    if (!response.ok) throw new Error(`${response.status}: ${body.error ? body.error.message : response.statusText}`);
    state.result = body;
    state.image = await loadImage(file);
    $("result").hidden = false;
    draw();
    status(`${file.name}: ${body.detections.length} detections, ${body.image.width}x${body.image.height}, ` +
      `${body.backend} ${body.precision}`);
    document.body.dataset.state = "done";
  } catch (e) {
    status(String(e.message || e), true);
    document.body.dataset.state = "error";
  }
}

function loadImage(file) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot show this image"));
    img.src = URL.createObjectURL(file);
  });
}

$("file").addEventListener("change", (e) => { if (e.target.files[0]) send(e.target.files[0]); });
$("score").addEventListener("input", () => {
  $("score-value").textContent = parseFloat($("score").value).toFixed(2);
  if (state.result) draw();
});
const drop = $("drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", (e) => { if (e.dataTransfer.files[0]) send(e.dataTransfer.files[0]); });

fetch("v1/models").then((r) => r.json()).then((body) => {
  const m = body.models && body.models[0];
  $("model").textContent = m ? `${m.name}: ${m.classes.length} classes, ${m.resize}, ${m.backend} ${m.precision}` : "";
}).catch(() => { $("model").textContent = ""; });
