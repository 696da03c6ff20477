// The SPG console: a small page over the control plane's /v1 API, signed in with a session
// cookie (HttpOnly) and a CSRF token sent with every change. No framework, no CDN.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = {
  csrf: null, dsnTemplate: null, selected: null, role: null, handoffSince: null, timer: null,
  usageAt: 0, usageOf: null,
};

async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
  const resp = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (resp.status === 401 && path !== "/console/session") {
    showSignIn("Your session ended; sign in again.");
    throw new Error("signed out");
  }
  const text = await resp.text();
  const data = text ? JSON.parse(text) : null;
  if (!resp.ok) {
    throw new Error((data && data.error && data.error.message) || resp.statusText);
  }
  return data;
}

function showSignIn(message) {
  state.csrf = null;
  clearInterval(state.timer);
  $("#main-view").hidden = true;
  $("#sign-out").hidden = true;
  $("#sign-in-view").hidden = false;
  $("#sign-in-error").textContent = message || "";
}

function showMain(session) {
  state.csrf = session.csrf;
  state.dsnTemplate = session.dsn_template;
  $("#sign-in-view").hidden = true;
  $("#main-view").hidden = false;
  $("#sign-out").hidden = false;
  $("#whoami").textContent = "signed in";
  refresh();
  clearInterval(state.timer);
  state.timer = setInterval(refresh, 500);
}

async function signIn(event) {
  event.preventDefault();
  const key = $("#api-key").value;
  $("#api-key").value = "";
  try {
    const resp = await fetch("/console/session", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ api_key: key }),
    });
    const data = await resp.json();
    if (!resp.ok) throw new Error(data.error ? data.error.message : resp.statusText);
    showMain(data);
  } catch (e) {
    $("#sign-in-error").textContent = "Sign-in failed: " + e.message;
  }
}

async function signOut() {
  try { await api("DELETE", "/console/session"); } catch (e) { /* signed out anyway */ }
  showSignIn("Signed out.");
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  if (cls) {
    const span = document.createElement("span");
    span.className = cls;
    span.textContent = text;
    td.appendChild(span);
  } else {
    td.textContent = text;
  }
  row.appendChild(td);
  return td;
}

function button(label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.className = "action-" + label.toLowerCase();
  b.addEventListener("click", onClick);
  return b;
}

function act(promise) {
  $("#main-error").textContent = "";
  promise.then(refresh).catch((e) => { $("#main-error").textContent = e.message; });
}

async function refresh() {
  if (!state.csrf) return;
  let dbs;
  try { dbs = await api("GET", "/v1/databases"); } catch (e) { return; }
  const body = $("#databases tbody");
  body.replaceChildren();
  for (const d of dbs) {
    const tr = document.createElement("tr");
    tr.dataset.db = d.name;
    if (d.name === state.selected) tr.className = "selected";
    cell(tr, d.name, null).className = "name";
    cell(tr, d.state, "state state-" + d.state);
    cell(tr, d.profile, null);
    cell(tr, d.scale_state, null).className = "scale";
    cell(tr, String(d.wake_count), null);
    const actions = cell(tr, "", null);
    const db = encodeURIComponent(d.name);
    actions.append(
      button("Open", () => { state.selected = d.name; state.handoffSince = null; refresh(); }),
      button("Wake", () => act(api("POST", `/v1/databases/${db}/wake`))),
      button("Stop", () => act(api("POST", `/v1/databases/${db}/stop`))),
    );
    body.appendChild(tr);
  }
  if (state.selected) await renderDetail(dbs.find((d) => d.name === state.selected));
}

function dsnFor(db) {
  const t = state.dsnTemplate || "postgresql://{role}:{password}@<gateway>/{database}?sslmode=require";
  return t.replace("{role}", state.role || "<role>").replace("{password}", "<password>")
    .replace("{database}", db);
}

async function renderDetail(d) {
  if (!d) { $("#detail").hidden = true; return; }
  $("#detail").hidden = false;
  $("#detail-name").textContent = d.name;
  $("#dsn").textContent = dsnFor(d.name);
  $("#scale-state").textContent = d.scale_state;
  $("#scale-reason").textContent = d.scale_reason ? "(" + d.scale_reason + ")" : "";
  const steps = $("#boot-steps tbody");
  steps.replaceChildren();
  for (const s of (d.last_boot ? d.last_boot.steps : [])) {
    const tr = document.createElement("tr");
    cell(tr, s.step, null);
    cell(tr, s.ms.toFixed(1) + " ms", null);
    steps.appendChild(tr);
  }
  const db = encodeURIComponent(d.name);
  const ts = (await api("GET", `/v1/databases/${db}/transitions?limit=1000`)).reverse();
  renderTransitions(ts);
  renderTimeline(ts);
  renderWakes(ts);
  renderHandoff(ts);
  // Usage lists what storage keeps: every 10 s, not at every refresh.
  if (state.usageAt && Date.now() - state.usageAt < 10000 && state.usageOf === d.name) return;
  state.usageAt = Date.now();
  state.usageOf = d.name;
  const u = await api("GET", `/v1/databases/${db}/usage`);
  const byProfile = Object.entries(u.compute_seconds_by_profile)
    .map(([p, s]) => `${p} ${s.toFixed(1)} s`).join(", ");
  $("#usage").textContent = `compute ${u.compute_seconds.toFixed(1)} s (${byProfile || "none"}), ` +
    `${u.wakes} wakes, ${u.handoffs} handoffs, ${u.bytes_written_back} bytes written back` +
    (u.stored ? `, ${u.stored.image_bytes} bytes of images and ${u.stored.wal_archive_bytes} of WAL kept` : "");
}

function renderTransitions(ts) {
  const list = $("#transitions");
  list.replaceChildren();
  for (const t of ts.slice().reverse().slice(0, 50)) {
    const li = document.createElement("li");
    li.dataset.to = t.to;
    li.textContent = `${t.at}  ${t.from || "-"} → ${t.to}  g${t.generation}  ${t.reason}`;
    list.appendChild(li);
  }
}

// Coloured spans of each state over the last three hours (or since the database was created,
// if that is later), from the transitions.
function renderTimeline(ts) {
  const svg = $("#timeline");
  svg.replaceChildren();
  const width = svg.width.baseVal.value;
  const now = Date.now();
  const first = ts.length ? Date.parse(ts[0].at) : now;
  const from = Math.max(now - 3 * 3600 * 1000, Math.min(first, now - 60 * 1000));
  const x = (t) => Math.max(0, (t - from) / (now - from) * width);
  for (let i = 0; i < ts.length; i++) {
    const start = Date.parse(ts[i].at);
    const end = i + 1 < ts.length ? Date.parse(ts[i + 1].at) : now;
    if (end < from) continue;
    const r = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    r.setAttribute("x", x(start));
    r.setAttribute("y", 5);
    r.setAttribute("width", Math.max(1, x(end) - x(start)));
    r.setAttribute("height", 30);
    r.setAttribute("class", "span state-" + ts[i].to);
    r.dataset.state = ts[i].to;
    const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
    title.textContent = `${ts[i].to} from ${ts[i].at}`;
    r.appendChild(title);
    svg.appendChild(r);
  }
}

// Milliseconds from each wake's `booting` to its `ready`, newest 30.
function renderWakes(ts) {
  const svg = $("#wake-chart");
  svg.replaceChildren();
  const wakes = [];
  for (let i = 1; i < ts.length; i++) {
    if (ts[i].from === "booting" && ts[i].to === "ready" && ts[i - 1].to === "booting") {
      wakes.push(Date.parse(ts[i].at) - Date.parse(ts[i - 1].at));
    }
  }
  const recent = wakes.slice(-30);
  const max = Math.max(100, ...recent);
  const height = svg.height.baseVal.value;
  recent.forEach((ms, i) => {
    const h = ms / max * (height - 20);
    const r = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    r.setAttribute("x", 10 + i * 28);
    r.setAttribute("y", height - h - 15);
    r.setAttribute("width", 20);
    r.setAttribute("height", Math.max(1, h));
    r.setAttribute("class", "bar");
    r.dataset.ms = ms;
    const label = document.createElementNS("http://www.w3.org/2000/svg", "text");
    label.setAttribute("x", 10 + i * 28);
    label.setAttribute("y", height - 2);
    label.setAttribute("font-size", "9");
    label.textContent = String(ms);
    svg.append(r, label);
  });
}

// The phases of the handoff started here, as the transitions record them.
function renderHandoff(ts) {
  const list = $("#handoff-phases");
  if (state.handoffSince === null) return;
  list.replaceChildren();
  for (const t of ts) {
    if (Date.parse(t.at) < state.handoffSince || !t.reason.startsWith("scale ")) continue;
    const m = /^scale (\w+) -> (\w+)/.exec(t.reason);
    if (!m) continue;
    const li = document.createElement("li");
    li.dataset.phase = m[2];
    li.textContent = `${m[2]}  (${t.at})`;
    list.appendChild(li);
  }
}

async function createDatabase(event) {
  event.preventDefault();
  const name = $("#new-db").value;
  act(api("POST", "/v1/databases", { name }).then(() => {
    $("#new-db").value = "";
    state.selected = name;
  }));
}

function newPassword() {
  const bytes = new Uint8Array(18);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function createRole(event) {
  event.preventDefault();
  const name = $("#role-name").value;
  const password = newPassword();
  const db = encodeURIComponent(state.selected);
  try {
    await api("POST", `/v1/databases/${db}/roles`, { name, password });
    state.role = name;
    $("#role-name").value = "";
    $("#role-created-name").textContent = name;
    $("#role-password").textContent = password;
    $("#role-created").hidden = false;
  } catch (e) {
    $("#main-error").textContent = e.message;
  }
}

// A branch of the open database at a point of its history (now, an LSN or a UTC moment).
async function createBranch(event) {
  event.preventDefault();
  const parent = state.selected;
  const name = $("#branch-name").value;
  const at = $("#branch-at").value.trim();
  $("#branch-made").textContent = "making the branch…";
  try {
    const b = await api("POST", `/v1/databases/${encodeURIComponent(parent)}/branches`,
      at ? { name, at } : { name });
    $("#branch-name").value = "";
    $("#branch-at").value = "";
    $("#branch-made").textContent =
      `${b.database.name}: ${b.parent} at ${b.at} (LSN ${b.lsn}), made in ${b.took_ms} ms`;
    state.selected = b.database.name;
    refresh();
  } catch (e) {
    $("#branch-made").textContent = "";
    $("#main-error").textContent = e.message;
  }
}

function handoff() {
  const db = encodeURIComponent(state.selected);
  state.handoffSince = Date.now() - 1000;
  $("#handoff-phases").replaceChildren();
  act(api("POST", `/v1/databases/${db}/handoff`, { profile: $("#handoff-profile").value }));
}

document.addEventListener("DOMContentLoaded", async () => {
  $("#sign-in-form").addEventListener("submit", signIn);
  $("#sign-out").addEventListener("click", signOut);
  $("#create-db-form").addEventListener("submit", createDatabase);
  $("#role-form").addEventListener("submit", createRole);
  $("#handoff").addEventListener("click", handoff);
  $("#branch-form").addEventListener("submit", createBranch);
  $("#copy-dsn").addEventListener("click", () => navigator.clipboard.writeText($("#dsn").textContent));
  try {
    const resp = await fetch("/console/session", { credentials: "same-origin" });
    if (resp.ok) showMain(await resp.json()); else showSignIn("");
  } catch (e) {
    showSignIn("");
  }
});
