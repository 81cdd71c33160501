// datakeg review: the page. Plain JavaScript, no library; text only ever goes in through
// textContent (never innerHTML), so nothing a model wrote can run in the page.
"use strict";

const TOKEN = document.querySelector('meta[name="datakeg-token"]').content;
const $ = (id) => document.getElementById(id);
const FILTERS = ["split", "kind", "status", "file", "reason", "q"];
const WINDOW = 200;

const state = {
  filters: {},
  ids: [],          // every pair the filters let through, in order
  counts: {},
  items: new Map(), // id -> brief row of the list window
  offset: 0,
  index: 0,         // position in ids (0-based); shown as index + 1 / n
  pair: null,       // the current pair's detail
  editing: false,
  ticket: 0,        // counts navigations
};

// ------------------------------------------------------------------ server calls
async function api(path, body) {
  const init = { headers: { "X-Datakeg-Token": TOKEN } };
  if (body !== undefined) {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  let data = null;
  try { data = await res.json(); } catch (e) { data = { error: `${res.status} ${res.statusText}` }; }
  if (!res.ok) { const err = new Error(data.error || res.statusText); err.status = res.status; err.data = data; throw err; }
  return data;
}

function query(extra) {
  const p = new URLSearchParams();
  for (const k of FILTERS) if (state.filters[k]) p.set(k, state.filters[k]);
  for (const [k, v] of Object.entries(extra || {})) p.set(k, v);
  return p.toString();
}

// ------------------------------------------------------------------ position in the URL hash
function saveHash() {
  const p = new URLSearchParams();
  for (const k of FILTERS) if (state.filters[k]) p.set(k, state.filters[k]);
  p.set("i", String(state.index + 1));
  if (state.pair) p.set("id", state.pair.id);
  history.replaceState(null, "", "#" + p.toString());
  try { localStorage.setItem("datakeg-review:" + location.pathname, p.toString()); } catch (e) { /* private mode */ }
}

function readHash() {
  let raw = location.hash.slice(1);
  if (!raw) { try { raw = localStorage.getItem("datakeg-review:" + location.pathname) || ""; } catch (e) { raw = ""; } }
  const p = new URLSearchParams(raw);
  const f = {};
  for (const k of FILTERS) if (p.get(k)) f[k] = p.get(k);
  return { filters: f, i: parseInt(p.get("i") || "1", 10) - 1, id: p.get("id") };
}

// ------------------------------------------------------------------ list
async function loadList(keepId) {
  const offset = Math.max(0, state.index - 50);
  const data = await api("/api/pairs?" + query({ offset, limit: WINDOW }));
  state.ids = data.ids;
  state.counts = data.counts;
  state.offset = data.offset;
  state.items = new Map(data.items.map((it) => [it.id, it]));
  if (keepId) {
    const at = state.ids.indexOf(keepId);
    if (at >= 0) state.index = at;
  }
  state.index = Math.min(Math.max(0, state.index), Math.max(0, state.ids.length - 1));
  if (state.index < state.offset || state.index >= state.offset + WINDOW) return loadList(null);
  renderCounts();
  renderList();
}

function renderCounts() {
  const c = state.counts;
  $("counts").textContent = `${c.shown} of ${c.total} pairs shown: ${c.pending} pending, ${c.kept} kept, ` +
    `${c.rejected} rejected, ${c.restored} restored, ${c.edited} edited`;
  $("bulk-keep").textContent = `Keep all ${c.shown} shown`;
  $("bulk-reject").textContent = `Reject all ${c.shown} shown`;
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (cls) td.className = cls;
  tr.appendChild(td);
}

function renderList() {
  const body = document.querySelector("#list tbody");
  body.replaceChildren();
  const end = Math.min(state.ids.length, state.offset + WINDOW);
  for (let k = state.offset; k < end; k++) {
    const it = state.items.get(state.ids[k]);
    if (!it) continue;
    const tr = document.createElement("tr");
    tr.dataset.index = String(k);
    tr.dataset.id = it.id;
    if (k === state.index) tr.className = "current";
    cell(tr, k + 1);
    cell(tr, it.split);
    cell(tr, it.file);
    cell(tr, it.section);
    cell(tr, it.kind === "reject" ? `dropped: ${it.reason || "?"}` : "delivered");
    cell(tr, it.status + (it.edited ? " (edited)" : "") + (it.note ? " \u270e" : ""), "status-" + it.status);
    cell(tr, it.question, "q");
    tr.addEventListener("click", () => go(k));
    body.appendChild(tr);
  }
}

// ------------------------------------------------------------------ one pair
async function go(index) {
  if (state.editing) cancelEdit();
  if (!state.ids.length) { state.pair = null; renderPair(); saveHash(); return; }
  state.index = Math.min(Math.max(0, index), state.ids.length - 1);
  if (state.index < state.offset || state.index >= state.offset + WINDOW) await loadList(null);
  const id = state.ids[state.index];
  if (!state.pair || state.pair.id !== id) message("");
  const ticket = ++state.ticket;  // keys pressed fast: only the last navigation shows its pair
  let pair;
  try {
    pair = await api("/api/pair?id=" + encodeURIComponent(id));
  } catch (err) {
    if (ticket === state.ticket) message(err.message);
    return;
  }
  if (ticket !== state.ticket) return;
  state.pair = pair;
  renderPair();
  renderList();
  const row = document.querySelector(`#list tr[data-index="${state.index}"]`);
  if (row) row.scrollIntoView({ block: "nearest" });
  saveHash();
}

function renderPair() {
  const p = state.pair;
  $("position").textContent = `${p ? state.index + 1 : 0} / ${state.ids.length}`;
  const fields = ["question", "answer"];
  if (!p) {
    for (const f of fields) $(f).value = "";
    $("meta").textContent = "No pair matches the filters.";
    $("chunk").textContent = "";
    $("badge").textContent = "";
    $("original").textContent = "";
    $("note").value = "";
    $("turns").replaceChildren();
    return;
  }
  const turns = $("turns");
  turns.replaceChildren();
  if (p.turns && p.turns.length) {
    const h = document.createElement("p");
    h.className = "turns-title";
    h.textContent = `Later turns of this conversation (${p.turns.length}; shown as generated, the edit changes the first question and answer):`;
    turns.appendChild(h);
    for (const t of p.turns) {
      const d = document.createElement("div");
      d.className = "turn turn-" + t.role;
      d.textContent = `${t.role}: ${t.content}`;
      turns.appendChild(d);
    }
  }
  $("question").value = p.question;
  $("answer").value = p.answer;
  $("note").value = p.note || "";
  $("badge").textContent = p.status + (p.edited ? ", edited" : "") + (p.included ? "" : ", not in the dataset");
  $("badge").className = "badge status-" + p.status;
  let meta = `${p.split} \u00b7 ${p.file}` + (p.section ? ` \u00b7 ${p.section}` : "") +
    (p.kind === "reject" ? ` \u00b7 dropped (${p.reason || "?"})` : " \u00b7 delivered") + ` \u00b7 version ${p.version}`;
  if (p.similar_question) meta += `\nsimilar to: ${p.similar_question}`;
  $("meta").textContent = meta;
  $("original").textContent = p.edited ? `As generated:\nQ: ${p.original_question}\nA: ${p.original_answer}` : "";
  $("restore").hidden = p.kind !== "reject";
  $("undo").disabled = !p.can_undo;
  $("source-where").textContent = p.chunk == null ? "(not traced)" : `${p.file}, chunk ${p.chunk + 1}`;
  renderChunk(p.chunk_text || "", p.support || []);
}

function renderChunk(text, spans) {
  const pre = $("chunk");
  pre.replaceChildren();
  if (!text) { pre.textContent = "(the source text of this pair is not recorded in this output folder)"; return; }
  let at = 0;
  for (const [a, b] of spans) {
    if (a > at) pre.appendChild(document.createTextNode(text.slice(at, a)));
    const m = document.createElement("mark");
    m.textContent = text.slice(a, b);
    pre.appendChild(m);
    at = b;
  }
  if (at < text.length) pre.appendChild(document.createTextNode(text.slice(at)));
}

function message(text, ok) {
  $("message").textContent = text || "";
  $("message").className = ok ? "ok" : "";
}

// ------------------------------------------------------------------ decisions
async function decide(action, extra) {
  const p = state.pair;
  if (!p) return;
  try {
    const result = await api("/api/decide", { id: p.id, action, version: p.version, ...(extra || {}) });
    state.pair = result;
    if (action === "edit") stopEdit();
    const advance = action === "keep" || action === "reject" || action === "restore";
    const before = state.index;
    await loadList(null);
    const stillThere = state.ids[before] === p.id;
    if (advance) await go(stillThere ? before + 1 : before);
    else await go(state.ids.indexOf(p.id) >= 0 ? state.ids.indexOf(p.id) : before);
    await refreshSummary();
    message(action === "edit" ? "Saved: the edit passed the quality gates and the leakage audit." : "", true);
    return true;
  } catch (err) {
    message(err.message);
    if (err.status === 409 && state.pair) {  // changed in another tab: show it as it is now
      try { state.pair = await api("/api/pair?id=" + encodeURIComponent(p.id)); renderPair(); } catch (e) { /* gone */ }
    }
    return false;
  }
}

function startEdit() {
  if (!state.pair) return;
  state.editing = true;
  for (const f of ["question", "answer"]) $(f).readOnly = false;
  $("save").hidden = false;
  $("cancel").hidden = false;
  $("edit").hidden = true;
  const q = $("question");
  q.focus();
  q.setSelectionRange(q.value.length, q.value.length);
}

function stopEdit() {
  state.editing = false;
  for (const f of ["question", "answer"]) $(f).readOnly = true;
  $("save").hidden = true;
  $("cancel").hidden = true;
  $("edit").hidden = false;
}

function cancelEdit() {
  stopEdit();
  renderPair();
  document.activeElement.blur();
}

async function saveEdit() {
  const ok = await decide("edit", { question: $("question").value, answer: $("answer").value });
  if (ok) document.activeElement.blur();
  // refused: stay in the edit, the message says why
}

async function bulk(action) {
  const n = state.ids.length;
  if (!n) return;
  if (!window.confirm(`${action === "keep" ? "Keep" : "Reject"} all ${n} pairs the filters show?`)) return;
  try {
    const r = await api("/api/bulk", { action, filters: state.filters, expected: n });
    const id = state.pair && state.pair.id;
    await loadList(id);
    await go(state.index);
    await refreshSummary();
    message(`${action === "keep" ? "Kept" : "Rejected"} ${r.changed} pair(s).`, true);
  } catch (err) { message(err.message); }
}

async function refreshSummary() {
  try {
    const f = await api("/api/facets");
    const s = f.summary;
    $("summary").textContent = `reviewed ${s.reviewed} \u00b7 kept ${s.kept} \u00b7 edited ${s.edited} \u00b7 ` +
      `rejected ${s.rejected} \u00b7 restored ${s.restored}`;
    return f;
  } catch (err) { message(err.message); return null; }
}

// ------------------------------------------------------------------ wiring
async function applyFilters() {
  for (const k of FILTERS) state.filters[k] = $("f-" + k).value.trim();
  state.index = 0;
  await loadList(null);
  await go(0);
}

function fillSelect(id, values) {
  const sel = $(id);
  for (const v of values) {
    const o = document.createElement("option");
    o.value = v;
    o.textContent = v;
    sel.appendChild(o);
  }
}

function typing(el) {
  return el && (el.tagName === "TEXTAREA" && !el.readOnly || el.tagName === "INPUT" || el.tagName === "SELECT");
}

document.addEventListener("keydown", (ev) => {
  const el = document.activeElement;
  if (state.editing) {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); saveEdit(); }
    else if (ev.key === "Escape") { ev.preventDefault(); cancelEdit(); }
    return;
  }
  if (typing(el)) {
    if (ev.key === "Escape") el.blur();
    return;
  }
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const keys = {
    j: () => go(state.index + 1), ArrowDown: () => go(state.index + 1),
    k: () => go(state.index - 1), ArrowUp: () => go(state.index - 1),
    a: () => decide(state.pair && state.pair.kind === "reject" ? "restore" : "keep"),
    x: () => decide("reject"),
    r: () => state.pair && state.pair.kind === "reject" && decide("restore"),
    e: () => startEdit(),
    u: () => decide("undo"),
    n: () => $("note").focus(),
    "/": () => $("f-q").focus(),
    g: () => { const n = parseInt(window.prompt("Go to pair number", String(state.index + 1)) || "", 10); if (n > 0) go(n - 1); },
    "?": () => { $("help").open = !$("help").open; },
  };
  const fn = keys[ev.key];
  if (fn) { ev.preventDefault(); fn(); }
});

$("note").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter") { ev.preventDefault(); decide("note", { note: $("note").value }).then(() => $("note").blur()); }
});
for (const k of FILTERS) {
  const el = $("f-" + k);
  el.addEventListener(k === "q" ? "input" : "change", () => {
    clearTimeout(el._t);
    el._t = setTimeout(applyFilters, k === "q" ? 200 : 0);
  });
}
$("f-q").addEventListener("keydown", (ev) => { if (ev.key === "Enter") { ev.preventDefault(); el_blur(ev.target); } });
function el_blur(el) { clearTimeout(el._t); applyFilters().then(() => el.blur()); }
$("filters").addEventListener("submit", (ev) => ev.preventDefault());
$("prev").addEventListener("click", () => go(state.index - 1));
$("next").addEventListener("click", () => go(state.index + 1));
$("keep").addEventListener("click", () => decide(state.pair && state.pair.kind === "reject" ? "restore" : "keep"));
$("reject").addEventListener("click", () => decide("reject"));
$("restore").addEventListener("click", () => decide("restore"));
$("edit").addEventListener("click", startEdit);
$("save").addEventListener("click", saveEdit);
$("cancel").addEventListener("click", cancelEdit);
$("undo").addEventListener("click", () => decide("undo"));
$("bulk-keep").addEventListener("click", () => bulk("keep"));
$("bulk-reject").addEventListener("click", () => bulk("reject"));
$("apply").addEventListener("click", async () => {
  try {
    const r = await api("/api/apply", {});
    message(`Applied: train ${r.rows.train}, valid ${r.rows.valid}, test ${r.rows.test} rows written.`, true);
  } catch (err) { message(err.message); }
});

(async function start() {
  const facets = await refreshSummary();
  if (facets) { fillSelect("f-file", facets.files); fillSelect("f-reason", facets.reasons); }
  const saved = readHash();
  state.filters = saved.filters;
  for (const k of FILTERS) $("f-" + k).value = state.filters[k] || "";
  state.index = Math.max(0, saved.i);
  await loadList(saved.id);
  await go(state.index);
  document.body.dataset.ready = "1";
})();
