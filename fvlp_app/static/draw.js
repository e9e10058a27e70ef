// The drawing page: strokes on a canvas (pointer events: mouse, pen, touch), a query after
// every stroke and every description edit, and the ranks' movement since the previous query.
"use strict";

const canvas = document.getElementById("canvas");
const context = canvas.getContext("2d");
const description = document.getElementById("description");
const statusLine = document.getElementById("status");
const resultsList = document.getElementById("results");
const strokeCount = document.getElementById("strokes");

const strokes = [];        // each stroke: a list of [x, y] points in canvas pixels
let current = null;        // the stroke being drawn
let previousRanks = {};    // photo_id -> rank in the last answer
let queries = 0;           // answers shown (tests wait on it)
let pending = null;        // the request in flight, aborted when a newer one starts
let session = null;        // a practical test in progress: {session, photo_id, ranks}

function redraw() {
  context.fillStyle = "#fff";
  context.fillRect(0, 0, canvas.width, canvas.height);
  context.strokeStyle = "#000";
  context.lineWidth = 3;
  context.lineCap = "round";
  context.lineJoin = "round";
  for (const stroke of strokes) {
    context.beginPath();
    stroke.forEach(([x, y], i) => (i === 0 ? context.moveTo(x, y) : context.lineTo(x, y)));
    if (stroke.length === 1) context.lineTo(stroke[0][0] + 0.1, stroke[0][1]);
    context.stroke();
  }
  strokeCount.textContent = `(${strokes.length} stroke${strokes.length === 1 ? "" : "s"})`;
}

function point(event) {
  const box = canvas.getBoundingClientRect();
  return [(event.clientX - box.left) * (canvas.width / box.width), (event.clientY - box.top) * (canvas.height / box.height)];
}

canvas.addEventListener("pointerdown", (event) => {
  canvas.setPointerCapture(event.pointerId);
  current = [point(event)];
  strokes.push(current);
  redraw();
});
canvas.addEventListener("pointermove", (event) => {
  if (!current) return;
  current.push(point(event));
  redraw();
});
function endStroke() {
  if (!current) return;
  current = null;
  search();
}
canvas.addEventListener("pointerup", endStroke);
canvas.addEventListener("pointercancel", endStroke);

document.getElementById("undo").addEventListener("click", () => {
  strokes.pop();
  redraw();
  search();
});
document.getElementById("clear").addEventListener("click", () => {
  strokes.length = 0;
  previousRanks = {};
  redraw();
  resultsList.replaceChildren();
  setStatus("Draw the first stroke.");
});
let typing = null;
description.addEventListener("input", () => {
  clearTimeout(typing);
  typing = setTimeout(search, 400);
});

function setStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

async function search() {
  if (strokes.length === 0) return;
  if (pending) pending.abort();
  pending = new AbortController();
  const body = { sketch: canvas.toDataURL("image/png"), description: description.value || null, k: 10 };
  if (session) body.session = session.session;
  setStatus("Searching...");
  try {
    const response = await fetch("/api/query", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
      signal: pending.signal,
    });
    const answer = await response.json();
    if (!response.ok) {
      setStatus(answer.error || `error ${response.status}`, true);
      return;
    }
    show(answer);
    if (session && answer.target_rank !== undefined) showTargetRank(answer.target_rank);
  } catch (error) {
    if (error.name !== "AbortError") setStatus(`request failed: ${error}`, true);
  }
}

function show(answer) {
  const items = answer.results.map((hit) => {
    const item = document.createElement("li");
    item.dataset.photoId = hit.photo_id;
    const image = document.createElement("img");
    image.src = hit.thumbnail;
    image.alt = hit.photo_id;
    const before = previousRanks[hit.photo_id];
    const move = document.createElement("div");
    if (before === undefined) {
      move.className = "new";
      move.textContent = `#${hit.rank} new`;
    } else if (before === hit.rank) {
      move.textContent = `#${hit.rank} =`;
    } else {
      move.className = before > hit.rank ? "up" : "down";
      move.textContent = `#${hit.rank} ${before > hit.rank ? "\u2191" : "\u2193"}${Math.abs(before - hit.rank)}`;
    }
    const label = document.createElement("div");
    label.textContent = `${hit.photo_id} (${hit.score.toFixed(3)})`;
    item.append(image, move, label);
    return item;
  });
  resultsList.replaceChildren(...items);
  previousRanks = Object.fromEntries(answer.results.map((hit) => [hit.photo_id, hit.rank]));
  queries += 1;
  setStatus(`${answer.variant} query over ${answer.gallery_size} photos`);
  statusLine.dataset.queries = String(queries);
}

function showTargetRank(rank) {
  session.ranks.push(rank);
  const line = document.getElementById("target-rank");
  line.dataset.rank = String(rank);
  line.textContent = `Its rank now: #${rank} (after each query: ${session.ranks.join(", ")})`;
}

// Practical test (the paper's): draw the face shown; its rank after every query is recorded
// as a human episode in the results store when the drawer finishes.
document.getElementById("practice").addEventListener("click", async () => {
  const response = await fetch("/api/practice", { method: "POST" });
  const answer = await response.json();
  if (!response.ok) {
    setStatus(answer.error || `error ${response.status}`, true);
    return;
  }
  document.getElementById("clear").click();
  session = { ...answer, ranks: [] };
  document.getElementById("target").hidden = false;
  document.getElementById("target-image").src = answer.thumbnail;
  document.getElementById("target-rank").textContent = "Draw the first stroke.";
  document.getElementById("recorded").textContent = "";
  document.getElementById("finish").hidden = false;
});

document.getElementById("finish").addEventListener("click", async () => {
  if (!session) return;
  const response = await fetch(`/api/practice/${session.session}/finish`, { method: "POST" });
  const answer = await response.json();
  if (!response.ok) {
    setStatus(answer.error || `error ${response.status}`, true);
    return;
  }
  const recorded = document.getElementById("recorded");
  recorded.dataset.runId = answer.run_id;
  recorded.textContent = `Recorded as ${answer.run_id}: m@B ${answer.m_at_B.toFixed(1)} over ${answer.steps} steps.`;
  document.getElementById("finish").hidden = true;
  session = null;
});

// Replay: a stored episode played step by step as queries (with its caption), and the true
// photo's rank after each step: the paper's retrieval-vs-completion figure, live.
async function loadEpisodeList() {
  const answer = await (await fetch("/api/episodes")).json();
  const select = document.getElementById("replay-photo");
  select.replaceChildren(...answer.photo_ids.map((id) => new Option(id, id)));
  document.getElementById("replay").disabled = !answer.replayable;
}

function drawImage(url) {
  return new Promise((resolve) => {
    const image = new Image();
    image.onload = () => {
      context.fillStyle = "#fff";
      context.fillRect(0, 0, canvas.width, canvas.height);
      context.drawImage(image, 0, 0, canvas.width, canvas.height);
      resolve();
    };
    image.src = url;
  });
}

document.getElementById("replay").addEventListener("click", async () => {
  const photoId = document.getElementById("replay-photo").value;
  const response = await fetch(`/api/episodes/${encodeURIComponent(photoId)}`);
  const episode = await response.json();
  const line = document.getElementById("replay-ranks");
  if (!response.ok) {
    setStatus(episode.error || `error ${response.status}`, true);
    return;
  }
  session = null;
  strokes.length = 0;
  previousRanks = {};
  description.value = episode.caption || "";
  line.dataset.done = "false";
  const ranks = [];
  for (const [index, step] of episode.steps.entries()) {
    await drawImage(step);
    const body = { sketch: canvas.toDataURL("image/png"), description: description.value || null, k: 10, target: photoId };
    const reply = await fetch("/api/query", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    const answer = await reply.json();
    if (!reply.ok) {
      setStatus(answer.error || `error ${reply.status}`, true);
      return;
    }
    show(answer);
    ranks.push(answer.target_rank);
    line.textContent = `${photoId}: rank after step ${ranks.map((r, i) => `${i + 1}: #${r}`).join(", ")}`;
  }
  line.dataset.done = "true";
  line.dataset.ranks = ranks.join(",");
  strokeCount.textContent = `(replayed ${episode.steps.length} steps)`;
});

loadEpisodeList();
redraw();
