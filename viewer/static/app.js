// Simulacra viewer: draws the town from the server's frames and talks the /ws protocol (docs/VIEWER.md).
// State: `live` is the latest frame (snapshot + deltas); `shown` is what is drawn (live, or a past step
// while the timeline is scrubbed). Residents glide from where they were drawn to their new tile.
"use strict";

const $ = (id) => document.getElementById(id);
const KIND_COLORS = { home: "#f1d7ae", work: "#c5d5ee", venue: "#f3c3c0", outdoor: "#cfe6ad" };

const state = {
  ws: null, seq: null, live: null, shown: null, map: null, background: null,
  tile: 12, scrubbing: false, selected: null, control: null, nextId: 1,
  anim: new Map(), // name -> {fx, fy, tx, ty, t0, dur}  (tile coordinates)
  lastDeltaAt: 0, stepInterval: 400, socialRef: null, convosRef: null, pendingStep: null,
  detailsAt: 0, run: null, curvesShown: null,
};

// ---- connection -----------------------------------------------------------------------------------

function connect() {
  const token = new URLSearchParams(location.search).get("token");
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/ws` + (token ? `?token=${encodeURIComponent(token)}` : ""));
  state.ws = ws;
  ws.onopen = () => { $("conn").className = "conn on"; status(""); };
  ws.onclose = (e) => {
    $("conn").className = "conn off";
    status(e.code === 1006 ? "disconnected (is the run still going? is the URL's token right?)" : `closed (${e.code}) ${e.reason}`);
    setTimeout(connect, 2000);
  };
  ws.onmessage = (e) => onMessage(JSON.parse(e.data));
}

function send(msg) {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) { status("not connected"); return null; }
  msg.id = `r${state.nextId++}`;
  state.ws.send(JSON.stringify(msg));
  return msg.id;
}

function status(text) { $("status").textContent = text; $("status").title = text; }

function onMessage(msg) {
  switch (msg.type) {
    case "snapshot": return onSnapshot(msg);
    case "delta": return onDelta(msg);
    case "frame":
      if (state.scrubbing && msg.step === state.pendingStep) show({ ...msg.frame, map: state.map }, 150);
      return;
    case "details": return renderDetails(msg.details);
    case "interview": return addAnswer(msg.question, msg.answer, false, msg.name);
    case "control": return setControl(msg.state);
    case "error":
      if (state.pendingInterview && msg.id === state.pendingInterview) addAnswer($("question").value, msg.message, true);
      status(`${msg.code}: ${msg.message}`);
      return;
  }
}

function onSnapshot(msg) {
  state.seq = msg.seq;
  const frame = msg.frame;
  if (frame.map) setMap(frame.map);
  state.live = { ...frame, map: state.map };
  state.firstStep = frame.first_step ?? frame.step;
  if (msg.control !== undefined) setControl(msg.control);
  if (frame.run) setRun(frame.run);
  updateTimeline();
  if (!state.scrubbing) show(state.live, 0);
}

function onDelta(msg) {
  if (state.seq !== null && msg.seq !== state.seq + 1) {
    status(`missed an update (seq ${state.seq} → ${msg.seq}); resyncing`);
    send({ type: "live" });
  }
  state.seq = msg.seq;
  const now = performance.now();
  if (state.lastDeltaAt) state.stepInterval = Math.min(1000, Math.max(60, 0.7 * state.stepInterval + 0.3 * (now - state.lastDeltaAt)));
  state.lastDeltaAt = now;
  state.live = applyDelta(state.live, msg.frame);
  if (msg.frame.metrics) addMetrics(msg.frame.metrics);
  updateTimeline();
  if (!state.scrubbing) show(state.live, state.stepInterval);
}

// Residents and objects merge by id; any other key in the delta replaces the frame's.
function applyDelta(frame, delta) {
  const out = { ...frame };
  for (const key of ["residents", "objects"]) {
    if (!delta[key]) continue;
    const byId = new Map(frame[key].map((x) => [x.id, x]));
    for (const x of delta[key]) byId.set(x.id, x);
    out[key] = [...byId.values()];
  }
  for (const [k, v] of Object.entries(delta)) if (!["residents", "objects", "since"].includes(k)) out[k] = v;
  return out;
}

// ---- map ------------------------------------------------------------------------------------------

function setMap(map) {
  state.map = map;
  const wrap = $("town-wrap");
  const avail = Math.max(300, wrap.clientWidth - 16);
  const availH = Math.max(240, wrap.clientHeight - 16);
  state.tile = Math.max(4, Math.min(28, Math.floor(Math.min(avail / map.width, availH / map.height))));
  const canvas = $("town");
  const dpr = window.devicePixelRatio || 1;
  canvas.width = map.width * state.tile * dpr;
  canvas.height = map.height * state.tile * dpr;
  canvas.style.width = `${map.width * state.tile}px`;
  canvas.style.height = `${map.height * state.tile}px`;
  state.dpr = dpr;
  state.background = drawBackground(map, state.tile, dpr);
}

function drawBackground(map, t, dpr) {
  const bg = document.createElement("canvas");
  bg.width = map.width * t * dpr; bg.height = map.height * t * dpr;
  const g = bg.getContext("2d");
  g.scale(dpr, dpr);
  const kindOf = new Map(map.places.map((p) => [p.name, p]));
  map.tiles.forEach((row, y) => {
    for (let x = 0; x < map.width; x++) {
      const info = map.legend[row[x] ?? " "] || map.floor;
      const place = info.place && kindOf.get(info.place);
      const area = place && place.parent >= 0 ? map.places.find((p) => p.id === place.parent) : place;
      g.fillStyle = place ? (place.color || (area && area.color) || KIND_COLORS[(area || place).kind] || info.color) : info.color;
      g.fillRect(x * t, y * t, t, t);
    }
  });
  // places drawn by rectangles (generated towns) get a tint; rooms an outline
  for (const p of map.places) {
    const [x0, y0, x1, y1] = p.bbox;
    const hasChar = Object.values(map.legend).some((l) => l.place === p.name);
    if (!hasChar && p.parent < 0) {
      g.globalAlpha = 0.35; g.fillStyle = p.color || KIND_COLORS[p.kind] || "#ccc";
      g.fillRect(x0 * t, y0 * t, (x1 - x0 + 1) * t, (y1 - y0 + 1) * t); g.globalAlpha = 1;
    }
    if (p.parent >= 0) {
      g.strokeStyle = "rgba(90,70,40,.45)"; g.lineWidth = 1;
      g.strokeRect(x0 * t + 0.5, y0 * t + 0.5, (x1 - x0 + 1) * t - 1, (y1 - y0 + 1) * t - 1);
    }
  }
  for (const o of map.objects) {
    g.fillStyle = "#6b5335";
    g.fillRect(o.x * t + t * 0.2, o.y * t + t * 0.2, t * 0.6, t * 0.6);
  }
  // labels: areas first, then rooms where they do not cover an area's label
  g.textAlign = "center"; g.textBaseline = "middle";
  const taken = [];
  const overlaps = (r) => taken.some((o) => r[0] < o[2] && o[0] < r[2] && r[1] < o[3] && o[1] < r[3]);
  const byDepth = [...map.places].sort((a, b) => (a.parent >= 0) - (b.parent >= 0));
  for (const p of byDepth) {
    const room = p.parent >= 0;
    const size = room ? Math.max(9, Math.min(12, t * 0.7)) : Math.max(10, Math.min(16, t * 0.95));
    g.font = `${room ? "" : "600 "}${size}px system-ui, sans-serif`;
    const label = room ? p.short : p.name;
    const w = g.measureText(label).width;
    const cx = (p.label_at[0] + 0.5) * t, cy = (room ? p.bbox[1] + 0.6 : p.label_at[1] + 0.5) * t;
    const box = [cx - w / 2 - 3, cy - size / 2 - 1, cx + w / 2 + 3, cy + size / 2 + 1];
    if (room && overlaps(box)) continue;
    taken.push(box);
    g.fillStyle = room ? "rgba(255,255,255,.6)" : "rgba(255,255,255,.8)";
    g.fillRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
    g.fillStyle = room ? "#555" : "#222";
    g.fillText(label, cx, cy);
  }
  return bg;
}

// ---- showing a frame --------------------------------------------------------------------------------

function show(frame, duration) {
  const now = performance.now();
  for (const r of frame.residents) {
    const cur = drawnTile(r.name, now);
    const from = cur || { x: r.x, y: r.y };
    state.anim.set(r.name, { fx: from.x, fy: from.y, tx: r.x, ty: r.y, t0: now, dur: cur ? duration : 0 });
  }
  state.shown = frame;
  renderStats(frame);
  renderSocial(frame.social);
  renderConvos(frame.conversations);
  if (state.scrubbing || state.curvesShown !== null) { state.curvesShown = state.scrubbing ? frame.step : null; renderCurves(); }
  const sel = state.selected && frame.residents.find((r) => r.name === state.selected);
  if (sel) {
    $("ins-now").textContent = `${sel.emoji || ""} ${sel.activity || "—"} · ${sel.place}`;
    if (state.scrubbing === false && now - state.detailsAt > 1000) requestDetails();
  }
}

function drawnTile(name, now) {
  const a = state.anim.get(name);
  if (!a) return null;
  const k = a.dur > 0 ? Math.min(1, (now - a.t0) / a.dur) : 1;
  const e = k < 0.5 ? 2 * k * k : 1 - Math.pow(-2 * k + 2, 2) / 2; // ease in-out
  return { x: a.fx + (a.tx - a.fx) * e, y: a.fy + (a.ty - a.fy) * e };
}

function colorOf(name) {
  let h = 0;
  for (const c of name) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return `hsl(${h % 360}, 55%, 42%)`;
}

function initials(name) { return name.split(/\s+/).map((w) => w[0] || "").join("").slice(0, 2).toUpperCase(); }

function draw() {
  requestAnimationFrame(draw);
  const frame = state.shown;
  if (!frame || !state.background) return;
  const canvas = $("town"), g = canvas.getContext("2d"), t = state.tile, now = performance.now();
  g.setTransform(state.dpr, 0, 0, state.dpr, 0, 0);
  g.drawImage(state.background, 0, 0, canvas.width / state.dpr, canvas.height / state.dpr);
  const radius = Math.max(6, t * 0.7);
  const bubbles = [];
  for (const r of frame.residents) {
    if (r.active === false) continue;
    const p = drawnTile(r.name, now) || { x: r.x, y: r.y };
    const cx = (p.x + 0.5) * t, cy = (p.y + 0.5) * t;
    if (r.name === state.selected) {
      g.beginPath(); g.arc(cx, cy, radius + 4, 0, 2 * Math.PI); g.fillStyle = "rgba(255,210,0,.85)"; g.fill();
    }
    g.beginPath(); g.arc(cx, cy, radius, 0, 2 * Math.PI);
    g.fillStyle = colorOf(r.name); g.fill();
    g.lineWidth = 1.5; g.strokeStyle = "#fff"; g.stroke();
    g.fillStyle = "#fff"; g.textAlign = "center"; g.textBaseline = "middle";
    g.font = `700 ${Math.max(8, radius * 0.85)}px system-ui, sans-serif`;
    g.fillText(initials(r.name), cx, cy + 0.5);
    if (r.emoji) {
      g.font = `${Math.max(12, radius * 1.4)}px "Noto Color Emoji", system-ui, sans-serif`;
      g.fillText(r.emoji, cx + radius * 1.05, cy - radius * 0.95);
    }
    if (r.speech) bubbles.push([cx, cy - radius - 4, r.speech]);
  }
  for (const [x, y, text] of bubbles) drawBubble(g, x, y, text);
  state.bubbles = bubbles.map((b) => b[2]);
}

function drawBubble(g, x, y, text) {
  const s = text.length > 48 ? text.slice(0, 47) + "…" : text;
  g.font = "12px system-ui, sans-serif";
  const w = g.measureText(s).width + 12, h = 20;
  const maxX = g.canvas.width / state.dpr - w - 2;
  const bx = Math.max(2, Math.min(maxX, x - w / 2)), by = Math.max(2, y - h - 6);
  g.fillStyle = "rgba(255,255,255,.95)"; g.strokeStyle = "#555"; g.lineWidth = 1;
  g.beginPath(); g.roundRect(bx, by, w, h, 6); g.fill(); g.stroke();
  g.beginPath(); g.moveTo(x - 4, by + h); g.lineTo(x, by + h + 6); g.lineTo(x + 4, by + h); g.fill();
  g.fillStyle = "#222"; g.textAlign = "left"; g.textBaseline = "middle";
  g.fillText(s, bx + 6, by + h / 2);
}

// ---- stats, timeline, controls --------------------------------------------------------------------

const fmt = (v, d = 1) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));

function renderStats(frame) {
  const s = frame.stats || {};
  $("stat-time").textContent = frame.time ? `${frame.time.replace("T", " ").slice(0, 16)} (${frame.time_of_day || ""})` : "–";
  $("stat-step").textContent = frame.step;
  $("stat-sps").textContent = fmt(s.steps_per_s);
  $("stat-tps").textContent = fmt(s.tokens_per_s);
  $("stat-batch").textContent = fmt(s.batch_size, 0);
  $("stat-cache").textContent = s.cache_hit_rate === undefined || s.cache_hit_rate === null ? "–" : `${(100 * s.cache_hit_rate).toFixed(0)}%`;
}

function updateTimeline() {
  const tl = $("timeline");
  tl.min = state.firstStep ?? 0;
  tl.max = state.live.step;
  if (!state.scrubbing) { tl.value = state.live.step; $("timeline-label").textContent = `live · step ${state.live.step}`; }
  $("controls").classList.toggle("hidden", state.scrubbing || !state.control);
  placeForkMark();
}

// ---- the run panel: lineage (where this run was forked) and its metric curves ------------------------

function setRun(run) {
  state.run = { name: run.name, lineage: run.lineage || [], metrics: {} };
  for (const [k, pts] of Object.entries(run.metrics || {})) state.run.metrics[k] = pts.map((p) => [p[0], p[1]]);
  $("run-panel").classList.remove("hidden");
  $("run-name").textContent = run.name;
  const items = state.run.lineage.map((f) => {
    const what = f.interventions.length ? f.interventions.join("; ") : "no intervention";
    return el("li", `forked from ${f.parent.split("/").pop()} at step ${f.step} (${f.time.replace("T", " ").slice(0, 16)}): ${what}`);
  });
  $("lineage").replaceChildren(...(items.length ? items : [el("li", "an original run (not a fork)", "muted")]));
  renderCurves();
}

function addMetrics(m) {
  if (!state.run) return;
  for (const [k, v] of Object.entries(m.values)) {
    const pts = state.run.metrics[k] || (state.run.metrics[k] = []);
    if (!pts.length || pts[pts.length - 1][0] < m.step) pts.push([m.step, v]);
  }
  renderCurves();
}

function forkStep() {
  const forks = state.run ? state.run.lineage : [];
  return forks.length ? forks[forks.length - 1].step : null;
}

function placeForkMark() {
  const mark = $("fork-mark"), step = forkStep(), tl = $("timeline");
  const lo = Number(tl.min), hi = Number(tl.max);
  if (step === null || hi <= lo) { mark.classList.add("hidden"); return; }
  mark.style.left = `${(100 * (step - lo)) / (hi - lo)}%`;
  mark.title = `forked here (step ${step})`;
  mark.classList.remove("hidden");
}

const CURVE_ORDER = ["known.", "present.", "density", "conversations", "llm.calls"];
const curveRank = (k) => CURVE_ORDER.findIndex((p) => k.startsWith(p));

function renderCurves() {
  if (!state.run) return;
  const names = Object.keys(state.run.metrics).sort((a, b) => curveRank(a) - curveRank(b) || a.localeCompare(b));
  const last = state.live ? state.live.step : 0, fork = forkStep(), shown = state.scrubbing && state.shown ? state.shown.step : null;
  const blocks = names.map((name) => {
    const pts = state.run.metrics[name], W = 300, H = 40;
    const ys = pts.map((p) => p[1]), lo = Math.min(0, ...ys), hi = Math.max(lo + 1e-9, ...ys);
    const x = (s) => (W * s) / Math.max(1, last), y = (v) => H - 3 - ((H - 6) * (v - lo)) / (hi - lo);
    const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", "data-metric": name });
    if (fork !== null) svg.append(svgEl("line", { x1: x(fork), x2: x(fork), y1: 0, y2: H, stroke: "#c0392b", "stroke-dasharray": "3 2" }));
    if (shown !== null) svg.append(svgEl("line", { x1: x(shown), x2: x(shown), y1: 0, y2: H, stroke: "#999" }));
    svg.append(svgEl("polyline", { points: pts.map((p) => `${x(p[0])},${y(p[1])}`).join(" "), fill: "none", stroke: "#4a6fa5", "stroke-width": 1.5 }));
    const div = el("div", undefined, "curve"), label = el("div", undefined, "label");
    const v = ys.length ? ys[ys.length - 1] : null;
    label.append(el("span", name), el("span", v === null ? "–" : Number.isInteger(v) ? String(v) : v.toFixed(3)));
    div.append(label, svg);
    return div;
  });
  $("curves").replaceChildren(...blocks);
}

let scrubTimer = null;
function onScrub() {
  const step = Number($("timeline").value);
  state.scrubbing = step !== state.live.step;
  $("btn-live").disabled = !state.scrubbing;
  $("timeline-label").textContent = state.scrubbing ? `step ${step} (replay)` : `live · step ${step}`;
  $("controls").classList.toggle("hidden", state.scrubbing || !state.control);
  clearTimeout(scrubTimer);
  if (!state.scrubbing) { show(state.live, 150); return; }
  scrubTimer = setTimeout(() => { state.pendingStep = step; send({ type: "get_step", step }); }, 40);
}

function goLive() {
  state.scrubbing = false;
  $("btn-live").disabled = true;
  send({ type: "live" });
  updateTimeline();
  show(state.live, 150);
}

function setControl(ctl) {
  state.control = ctl;
  if (!ctl) { $("controls").classList.add("hidden"); return; }
  $("btn-pause").textContent = ctl.paused ? "Resume" : "Pause";
  $("speed").value = String(ctl.speed);
  $("controls").classList.toggle("hidden", state.scrubbing);
}

// ---- inspector, interview -------------------------------------------------------------------------

function select(name) {
  state.selected = name;
  $("inspector").classList.toggle("hidden", !name);
  $("hint").classList.toggle("hidden", !!name);
  if (name) {
    $("ins-name").textContent = name;
    $("answers").replaceChildren();
    requestDetails();
  }
  renderSocial(state.shown && state.shown.social, true);
}

function requestDetails() {
  state.detailsAt = performance.now();
  send({ type: "details", name: state.selected });
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function renderDetails(d) {
  if (d.name !== state.selected) return;
  $("ins-name").textContent = d.name;
  $("ins-now").textContent = `${d.emoji || ""} ${d.activity || "—"} · ${d.place || ""}`;
  const p = d.persona || {};
  const bits = [p.age && `${p.age}`, p.occupation, (p.traits || []).join(", ")].filter(Boolean).join(" · ");
  $("ins-persona").textContent = bits + (p.lifestyle ? ` — ${p.lifestyle}` : "");
  $("ins-plan").replaceChildren(...(d.plan || []).map((s) => el("li", s)));
  if (!(d.plan || []).length) $("ins-plan").replaceChildren(el("li", "no plan yet", "muted"));
  const rows = (d.memories || []).map((m) => {
    const tr = el("tr");
    tr.append(el("td", m.text), el("td", m.kind || ""), el("td", fmt(m.importance, 0), "num"), el("td", fmt(m.score, 2), "num"));
    return tr;
  });
  $("ins-memories").tBodies[0].replaceChildren(...rows);
  $("ins-rels").replaceChildren(...(d.relationships || []).map((r) => {
    const li = el("li");
    const bar = el("span", "", "bar");
    bar.style.width = `${Math.round(40 * (r.strength || 0))}px`;
    li.append(bar, el("b", r.name), document.createTextNode(r.note ? ` — ${r.note}` : ""));
    return li;
  }));
}

function addAnswer(question, answer, isError, name) {
  state.pendingInterview = null;
  $("ask").disabled = false;
  const div = el("div", undefined, isError ? "qa err" : "qa");
  div.append(el("div", `Q: ${question}`, "q"), el("div", isError ? answer : `${name || ""}: ${answer}`, "a"));
  $("answers").prepend(div);
}

function onAsk(e) {
  e.preventDefault();
  const q = $("question").value.trim();
  if (!q || !state.selected) return;
  $("ask").disabled = true;
  state.pendingInterview = send({ type: "interview", name: state.selected, question: q });
}

// ---- social graph and conversations -----------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";
function svgEl(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

function renderSocial(social, force) {
  if (!social || (social === state.socialRef && !force)) return;
  state.socialRef = social;
  const svg = $("social"), n = social.nodes.length, R = 120, C = 150;
  const pos = new Map(social.nodes.map((name, i) => {
    const a = (2 * Math.PI * i) / Math.max(1, n) - Math.PI / 2;
    return [name, [C + R * Math.cos(a), C + R * Math.sin(a)]];
  }));
  const kids = [];
  for (const [a, b, s] of social.edges) {
    const [x1, y1] = pos.get(a) || [C, C], [x2, y2] = pos.get(b) || [C, C];
    const hot = a === state.selected || b === state.selected;
    kids.push(svgEl("line", { x1, y1, x2, y2, stroke: hot ? "#d08a00" : "#4a6fa5", "stroke-opacity": 0.15 + 0.7 * s, "stroke-width": 0.5 + 2 * s }));
  }
  for (const [name, [x, y]] of pos) {
    const g = svgEl("g", {});
    const c = svgEl("circle", { cx: x, cy: y, r: 9, fill: colorOf(name), stroke: name === state.selected ? "#ffcc00" : "#fff", "stroke-width": 2 });
    c.addEventListener("click", () => select(name));
    const title = svgEl("title", {}); title.textContent = name; c.append(title);
    const label = svgEl("text", { x, y: y + 3, "text-anchor": "middle", fill: "#fff" });
    label.textContent = initials(name);
    g.append(c, label);
    kids.push(g);
  }
  svg.replaceChildren(...kids);
}

function renderConvos(convos) {
  if (!convos || convos === state.convosRef) return;
  state.convosRef = convos;
  if (!convos.length) { $("convos").replaceChildren(el("p", "No conversations yet.", "muted")); return; }
  const blocks = convos.slice(-20).reverse().map((c) => {
    const div = el("div", undefined, c.ended ? "convo ended" : "convo");
    div.append(el("div", `${c.participants.join(" ↔ ")}${c.ended ? " (ended)" : ""}`, "who"));
    for (const turn of (c.turns || []).slice(-8)) div.append(el("div", `${turn.speaker}: ${turn.text}`, "turn"));
    return div;
  });
  $("convos").replaceChildren(...blocks);
}

// ---- pointer ------------------------------------------------------------------------------------------

function residentAt(evt) {
  if (!state.shown) return null;
  const rect = $("town").getBoundingClientRect(), t = state.tile, now = performance.now();
  const mx = evt.clientX - rect.left, my = evt.clientY - rect.top;
  let best = null, bestD = Math.max(8, t * 0.8);
  for (const r of state.shown.residents) {
    if (r.active === false) continue;
    const p = drawnTile(r.name, now) || r;
    const d = Math.hypot((p.x + 0.5) * t - mx, (p.y + 0.5) * t - my);
    if (d <= bestD) { best = r; bestD = d; }
  }
  return best;
}

function onHover(evt) {
  const r = residentAt(evt), tip = $("tooltip");
  if (!r) { tip.classList.add("hidden"); return; }
  tip.textContent = `${r.name}: ${r.emoji || ""} ${r.activity || "—"}${r.talking_to ? ` (talking to ${r.talking_to})` : ""}`;
  const wrap = $("town-wrap").getBoundingClientRect();
  const flip = evt.clientX - wrap.left > wrap.width - 280;  // keep it inside the town panel
  tip.style.left = flip ? "auto" : `${evt.clientX - wrap.left + 14}px`;
  tip.style.right = flip ? `${wrap.right - evt.clientX + 14}px` : "auto";
  tip.style.top = `${evt.clientY - wrap.top + 10}px`;
  tip.classList.remove("hidden");
}

// ---- test and scripting hooks ------------------------------------------------------------------------

window.viewer = {
  // Page coordinates (CSS px) of the centre of the tile a resident is shown on (where its marker settles).
  residentScreenPos(name) {
    const r = state.shown && state.shown.residents.find((x) => x.name === name);
    if (!r) return null;
    const rect = $("town").getBoundingClientRect();
    return { x: rect.left + (r.x + 0.5) * state.tile, y: rect.top + (r.y + 0.5) * state.tile, tileX: r.x, tileY: r.y };
  },
  settled() {
    const now = performance.now();
    return [...state.anim.values()].every((a) => a.dur === 0 || now - a.t0 >= a.dur);
  },
  shownStep: () => (state.shown ? state.shown.step : null),
  bubbles: () => state.bubbles || [],  // texts of the speech bubbles drawn in the last frame
  liveStep: () => (state.live ? state.live.step : null),
  selected: () => state.selected,
  scrubTo(step) { $("timeline").value = step; onScrub(); },
  lineage: () => (state.run ? state.run.lineage : null),
  curves: () => (state.run ? Object.fromEntries(Object.entries(state.run.metrics).map(([k, v]) => [k, v.length])) : null),
  forkMark: () => { const m = $("fork-mark"); return m.classList.contains("hidden") ? null : m.style.left; },
  goLive,
};

// ---- wiring -----------------------------------------------------------------------------------------

$("town").addEventListener("click", (e) => { const r = residentAt(e); if (r) select(r.name); });
$("town").addEventListener("mousemove", onHover);
$("town").addEventListener("mouseleave", () => $("tooltip").classList.add("hidden"));
$("timeline").addEventListener("input", onScrub);
$("btn-live").addEventListener("click", goLive);
$("interview").addEventListener("submit", onAsk);
$("btn-pause").addEventListener("click", () => send({ type: "control", command: state.control && state.control.paused ? "resume" : "pause" }));
$("speed").addEventListener("change", () => send({ type: "control", command: "speed", value: Number($("speed").value) }));
window.addEventListener("resize", () => { if (state.map) setMap(state.map); });
connect();
requestAnimationFrame(draw);
