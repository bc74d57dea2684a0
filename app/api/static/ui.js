// The Hydrant console (docs/console.md): reads /pipeline once and /status every EVERY_MS from the worker
// that served this page; its data calls carry the token entered above (kept for this browser tab only).
"use strict";

const EVERY_MS = 2000;
const PAGE = 20; // rows per page of the topics and workers tables
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

let token = sessionStorage.getItem("hydrant-token") || "";
let pipeline = null;
let previous = null; // the last /status answer: rates are the counters' change since then
const pages = { topics: 0, workers: 0, groups: 0, lookups: 0 };

class AuthError extends Error {}

async function call(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token) headers["Authorization"] = "Bearer " + token;
  const answer = await fetch(path, Object.assign({}, options, { headers }));
  if (answer.status === 401) {
    $("auth").hidden = false;
    throw new AuthError("401");
  }
  $("auth").hidden = true;
  return answer;
}

function el(tag, attrs = {}, text = null) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = String(text);
  return node;
}

function fmt(n, digits = 0) {
  return Number(n).toLocaleString("en", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

function fill(tableId, rows) {
  const body = $(tableId).querySelector("tbody");
  body.replaceChildren(...rows.map((cells) => {
    const tr = el("tr");
    for (const cell of cells) {
      const numeric = typeof cell === "number";
      tr.append(el("td", numeric ? { class: "n" } : {}, numeric ? fmt(cell, Number.isInteger(cell) ? 0 : 1) : cell));
    }
    return tr;
  }));
}

function paged(name, rows) {
  const count = Math.max(1, Math.ceil(rows.length / PAGE));
  pages[name] = Math.min(pages[name], count - 1);
  const pager = document.querySelector(`.pager[data-for="${name}"]`);
  pager.replaceChildren();
  if (count > 1) {
    const back = el("button", { type: "button" }, "‹ previous");
    const next = el("button", { type: "button" }, "next ›");
    back.disabled = pages[name] === 0;
    next.disabled = pages[name] === count - 1;
    back.onclick = () => { pages[name] -= 1; render(previous); };
    next.onclick = () => { pages[name] += 1; render(previous); };
    pager.append(back, next, el("span", { class: "muted" }, `page ${pages[name] + 1} of ${count} (${rows.length} rows)`));
  }
  return rows.slice(pages[name] * PAGE, (pages[name] + 1) * PAGE);
}

// The graph: streams and lookups, then feature groups, then outputs and services, left to right.
function clip(text, size = 38) {
  return text.length > size ? text.slice(0, size - 1) + "…" : text;
}

function drawGraph(spec, rates, groups) {
  const svg = $("graph");
  const columns = [[], [], []];
  for (const name of Object.keys(spec.streams)) columns[0].push({ kind: "stream", name, topic: spec.streams[name].topic });
  for (const name of Object.keys(spec.lookups || {})) columns[0].push({ kind: "lookup", name, topic: spec.lookups[name].topic });
  for (const name of Object.keys(spec.features || {})) columns[1].push({ kind: "group", name });
  for (const name of Object.keys(spec.outputs || {})) columns[2].push({ kind: "output", name, topic: spec.outputs[name].topic });
  for (const name of Object.keys(spec.services || {})) columns[2].push({ kind: "service", name });
  const edges = [];
  for (const [group, g] of Object.entries(spec.features || {})) {
    for (const stream of new Set(g.aggregations.map((a) => a.stream))) edges.push(["stream:" + stream, "group:" + group]);
  }
  for (const [name, o] of Object.entries(spec.outputs || {})) {
    edges.push(["stream:" + o.from, "output:" + name]);
    for (const j of o.join || []) edges.push(["lookup:" + j.lookup, "output:" + name]);
    for (const g of o.features || []) edges.push(["group:" + g, "output:" + name]);
  }
  for (const [name, s] of Object.entries(spec.services || {})) {
    const groups = new Set((s.features || []).map((f) => (typeof f === "string" ? f.split(".")[0] : f.group)));
    for (const g of groups) edges.push(["group:" + g, "service:" + name]);
    for (const j of s.join || []) edges.push(["lookup:" + j.lookup, "service:" + name]);
  }
  const W = 270, H = 46, GAP = 14, COL = 360;
  const rows = Math.max(...columns.map((c) => c.length), 1);
  svg.setAttribute("viewBox", `0 0 ${COL * 2 + W + 20} ${rows * (H + GAP) + 10}`);
  svg.setAttribute("height", String(rows * (H + GAP) + 10));
  const defs = el("svg:defs");
  const marker = el("svg:marker", { id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto" });
  marker.append(el("svg:path", { d: "M0,0 L10,5 L0,10 z", fill: "#8392a5" }));
  defs.append(marker);
  const at = {};
  const nodes = [];
  columns.forEach((column, c) => column.forEach((node, r) => {
    const x = 10 + c * COL, y = 5 + r * (H + GAP);
    at[node.kind + ":" + node.name] = { x, y };
    const g = el("svg:g", { class: "node " + node.kind, "data-name": node.name, transform: `translate(${x},${y})` });
    const title = el("svg:title", {}, node.topic ? `${node.kind} ${node.name}: topic ${node.topic}` : `${node.kind} ${node.name}`);
    g.append(el("svg:rect", { width: W, height: H }), title);
    g.append(el("svg:text", { x: 8, y: 18 }, clip(`${node.kind} ${node.name}`)));
    const rate = node.topic ? rates[node.topic] : undefined;
    let detail = rate !== undefined ? `${fmt(rate, 1)} events/s · ${node.topic}` : node.topic || "";
    if (node.kind === "group" && groups[node.name]) detail = `${fmt(groups[node.name].keys)} keys`;
    g.append(el("svg:text", { x: 8, y: 36, class: "muted" }, clip(detail)));
    nodes.push(g);
  }));
  const lines = edges.filter(([a, b]) => at[a] && at[b]).map(([a, b]) => {
    const p = at[a], q = at[b];
    const x1 = p.x + W, y1 = p.y + H / 2, x2 = q.x, y2 = q.y + H / 2, mx = (x1 + x2) / 2;
    return el("svg:path", { class: "edge", d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}` });
  });
  svg.replaceChildren(defs, ...lines, ...nodes);
}

function rateOf(status, field) {
  const out = {};
  for (const t of status.topics) {
    const before = previous && previous.topics.find((p) => p.topic === t.topic);
    const seconds = previous ? (status.time - previous.time) / 1000 : 0;
    out[t.topic] = before && seconds > 0 ? Math.max(0, (t[field] - before[field]) / seconds) : 0;
  }
  return out;
}

function render(status, rates = null) {
  if (!status) return;
  rates = rates || status.rates || { in: {}, out: {} };
  status.rates = rates;
  $("pipeline").textContent = `${status.pipeline} · group ${status.group}`;
  const ready = $("ready");
  ready.textContent = status.ready ? "ready" : "not ready";
  ready.title = status.not_ready || "";
  ready.className = "badge " + (status.ready ? "ok" : "no");
  $("worker").textContent = `up ${fmt(status.uptime_s)} s · ${status.partitions} partitions`;
  const both = {};
  for (const t of status.topics) both[t.topic] = (rates.in[t.topic] || 0) + (rates.out[t.topic] || 0);
  if (pipeline) drawGraph(pipeline.spec, both, status.groups);
  const topics = [...status.topics].sort((a, b) => both[b.topic] - both[a.topic] || a.topic.localeCompare(b.topic));
  fill("topics", paged("topics", topics).map((t) => [
    t.topic, t.role, t.owner, rates.in[t.topic] || 0, rates.out[t.topic] || 0, t.in, t.out, t.lag, t.lag_max,
  ]));
  const reasons = $("reasons");
  reasons.replaceChildren(...Object.entries(status.dead_letters.by_reason).filter(([, n]) => n > 0)
    .map(([reason, n]) => el("span", { class: "reason", "data-reason": reason }, `${reason}: ${fmt(n)}`)));
  if (!reasons.childElementCount) reasons.append(el("span", { class: "muted" }, "none since this worker started"));
  fill("dead", status.dead_letters.last.slice(0, 10).map((d) => [
    new Date(d.time).toLocaleTimeString(), d.reason, d.error, d.source,
  ]));
  fill("groups", paged("groups", Object.entries(status.groups)).map(([name, g]) => [name, g.keys, g.buckets, g.late, g.replay_left, g.incomplete]));
  fill("lookups", paged("lookups", Object.entries(status.lookups)).map(([name, l]) => [name, l.rows, l.updates]));
  const recovery = status.recovery;
  $("recovery").textContent = `changelog records to recover: ${fmt(recovery.active || 0)} active, ${fmt(recovery.standby || 0)} standby`;
  fill("workers", paged("workers", status.workers).map((w) => [w.url + (w.me ? " (this one)" : ""), w.partitions, clip(w.ranges, 120)]));
  $("updated").textContent = "updated " + new Date(status.time).toLocaleTimeString();
}

async function loadPipeline() {
  pipeline = await (await call("/pipeline")).json();
  const select = $("lookup-target");
  const options = [];
  for (const group of Object.keys(pipeline.spec.features || {})) options.push(["group", group]);
  for (const table of Object.keys(pipeline.spec.lookups || {})) options.push(["table", table]);
  for (const service of Object.keys(pipeline.spec.services || {})) options.push(["service", service]);
  select.replaceChildren(...options.map(([kind, name]) => el("option", { value: `${kind}:${name}` }, `${kind} ${name}`)));
}

async function refresh() {
  try {
    if (!pipeline) await loadPipeline();
    const status = await (await call("/status")).json();
    const rates = { in: rateOf(status, "in"), out: rateOf(status, "out") };
    render(status, rates);
    previous = status;
    $("error").hidden = true;
  } catch (error) {
    if (!(error instanceof AuthError)) {
      $("error").textContent = "The worker did not answer: " + error.message;
      $("error").hidden = false;
    }
  }
}

$("token").value = token;
$("token-form").onsubmit = (event) => {
  event.preventDefault();
  token = $("token").value.trim();
  sessionStorage.setItem("hydrant-token", token);
  pipeline = null;
  refresh();
};

$("lookup-form").onsubmit = async (event) => {
  event.preventDefault();
  const [kind, name] = $("lookup-target").value.split(":");
  const key = $("lookup-key").value.trim();
  const out = $("lookup-result");
  try {
    let answer;
    if (kind === "service") {
      let row;
      try { row = JSON.parse(key); } catch { out.textContent = 'a service takes a JSON row, e.g. {"card_id": "c1", "amount": 5}'; return; }
      answer = await call(`/services/${encodeURIComponent(name)}`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ rows: [row] }),
      });
    } else {
      const base = kind === "group" ? "/features/" : "/tables/";
      answer = await call(base + encodeURIComponent(name) + "/" + encodeURIComponent(key));
    }
    const body = await answer.text();
    let shown = body;
    try { shown = JSON.stringify(JSON.parse(body), null, 2); } catch { /* as sent */ }
    out.textContent = `${answer.status}\n${shown}`;
    out.dataset.status = String(answer.status);
  } catch (error) {
    out.textContent = error instanceof AuthError ? "401: enter the API token above" : String(error);
    out.dataset.status = error instanceof AuthError ? "401" : "error";
  }
};

$("every").textContent = String(EVERY_MS / 1000);
refresh();
setInterval(refresh, EVERY_MS);
