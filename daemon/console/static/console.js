// dimplugd operator console. Everything a plugin supplies (names,
// descriptions, logs, settings) is put into the page with textContent or
// as a form value, never as HTML.
"use strict";

const KEY = "dimplugd-console-key";
const HEADER = "X-Dimplugd-Console";
const REFRESH_MS = 2000;

let selected = null; // name of the plugin shown in the detail view
let loggedOut = false;

// The session key arrives in the fragment of the login redirect: keep it
// in this origin's storage and take it out of the address bar.
(function takeKey() {
  const m = /^#k=([A-Za-z0-9_-]+)$/.exec(location.hash);
  if (m) {
    try { localStorage.setItem(KEY, m[1]); } catch (e) { /* storage off */ }
    history.replaceState(null, "", location.pathname);
  }
})();

function key() {
  try { return localStorage.getItem(KEY) || "1"; } catch (e) { return "1"; }
}

class APIError extends Error {
  constructor(status, body) {
    super((body && body.error) || ("HTTP " + status));
    this.status = status;
    this.body = body || {};
  }
}

async function api(method, path, body) {
  const opts = { method, headers: { [HEADER]: key() }, credentials: "same-origin", cache: "no-store" };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const res = await fetch(path, opts);
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (!res.ok) {
    const err = new APIError(res.status, data);
    if (res.status === 401) showLogin(err.message);
    throw err;
  }
  return data;
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function banner(msg, info) {
  const b = document.getElementById("banner");
  if (!msg) { b.hidden = true; b.textContent = ""; return; }
  b.textContent = msg;
  b.className = info ? "banner info" : "banner";
  b.hidden = false;
}

function showLogin(msg) {
  loggedOut = true;
  banner("Not logged in. " + (msg || "") + "\nRun `dimplugctl console` as an operator and open the URL it prints.");
  document.getElementById("logout").hidden = true;
}

function stateCell(p) {
  const td = el("td", p.state, "state state-" + p.state);
  td.dataset.field = "state";
  if (p.detail) td.title = p.detail;
  return td;
}

async function refreshList() {
  const plugins = await api("GET", "/api/plugins");
  loggedOut = false;
  const tbody = document.querySelector("#plugins tbody");
  const rows = [];
  for (const p of plugins) {
    const tr = document.createElement("tr");
    tr.dataset.plugin = p.name;
    if (p.name === selected) tr.classList.add("selected");
    const name = el("td", null, "name");
    const link = el("button", p.name, "link");
    link.type = "button";
    link.addEventListener("click", () => select(p.name));
    name.appendChild(link);
    tr.appendChild(name);
    tr.appendChild(el("td", p.version));
    tr.appendChild(stateCell(p));
    const en = el("td", p.enabled ? "yes" : "no");
    en.dataset.field = "enabled";
    tr.appendChild(en);
    tr.appendChild(el("td", p.restarts));
    tr.appendChild(el("td", (p.hooks || []).length));
    const acts = el("td");
    const act = p.enabled ? "disable" : "enable";
    const b = el("button", p.enabled ? "Disable" : "Enable");
    b.type = "button";
    b.dataset.action = act;
    b.dataset.plugin = p.name;
    b.addEventListener("click", () => doAction(p.name, act));
    acts.appendChild(b);
    tr.appendChild(acts);
    rows.push(tr);
  }
  tbody.replaceChildren(...rows);
  document.getElementById("empty").hidden = plugins.length > 0;
  if (selected && !plugins.some(p => p.name === selected)) {
    selected = null;
    document.getElementById("detail").hidden = true;
  }
}

async function doAction(name, action) {
  const buttons = document.querySelectorAll("button");
  buttons.forEach(b => { b.disabled = true; });
  try {
    await api("POST", "/api/plugins/" + encodeURIComponent(name) + "/" + action);
    banner("");
  } catch (e) {
    if (e.status !== 401) banner(action + " " + name + ": " + e.message);
  } finally {
    buttons.forEach(b => { b.disabled = false; });
  }
  await refresh();
}

function fact(dl, label, value) {
  if (value === undefined || value === null || value === "") return;
  dl.appendChild(el("dt", label));
  dl.appendChild(el("dd", value));
}

function micros(d) { return d || "none"; }

async function refreshDetail() {
  if (!selected) return;
  const name = selected;
  const p = await api("GET", "/api/plugins/" + encodeURIComponent(name));
  if (name !== selected) return;
  document.getElementById("detail").hidden = false;
  document.getElementById("d-name").textContent = p.name;
  document.getElementById("d-version").textContent = p.version;
  document.getElementById("d-description").textContent = p.description || "";
  const dl = document.getElementById("d-facts");
  dl.replaceChildren();
  fact(dl, "State", p.state);
  fact(dl, "Detail", p.detail);
  fact(dl, "Enabled", p.enabled ? "yes" : "no");
  fact(dl, "PID", p.pid);
  fact(dl, "Restarts", String(p.restarts));
  fact(dl, "Last exit", p.last_exit);
  fact(dl, "Runtime", p.runtime + (p.sandboxed ? " (sandboxed)" : " (NOT sandboxed)"));
  fact(dl, "Protocol", p.protocol_version);
  fact(dl, "Installed", p.installed_at);
  fact(dl, "Started", p.started_at);
  fact(dl, "Directory", p.dir);
  document.querySelectorAll("[data-detail-action]").forEach(b => {
    const a = b.dataset.detailAction;
    b.hidden = (a === "enable" && p.enabled) || (a !== "enable" && !p.enabled);
  });

  const hooks = (p.hooks || []).map(h => {
    const tr = document.createElement("tr");
    for (const v of [h.name, h.phase, h.method, h.route, (h.deadline || "") + (h.deadline_overridden ? " (operator)" : ""),
      h.failure, h.calls, h.failures, h.circuit]) tr.appendChild(el("td", v));
    if (h.by_policy) tr.title = "answered by policy: " + Object.entries(h.by_policy).map(([k, v]) => k + " " + v).join(", ");
    return tr;
  });
  document.querySelector("#hooks tbody").replaceChildren(...hooks);
  document.getElementById("hooks").hidden = hooks.length === 0;
  document.getElementById("hooks-none").hidden = hooks.length !== 0;

  const stages = (p.streams || []).map(s => {
    const tr = document.createElement("tr");
    for (const v of [s.name, s.kind, s.role, micros(s.deadline), s.failure, s.streams, s.open, s.frames, s.dropped,
      s.missed_deadlines, s.failures]) tr.appendChild(el("td", v));
    return tr;
  });
  document.querySelector("#streams tbody").replaceChildren(...stages);
  document.getElementById("streams").hidden = stages.length === 0;
  document.getElementById("streams-none").hidden = stages.length !== 0;

  const lines = await api("GET", "/api/plugins/" + encodeURIComponent(name) + "/logs?tail=200");
  if (name !== selected) return;
  const pre = document.getElementById("logs");
  const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  pre.replaceChildren(...lines.map(l => el("div", l.time.replace("T", " ").replace(/\.\d+/, "") + " [" + l.stream + "] " + l.text, l.stream)));
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}

// ---- settings ----------------------------------------------------------

function baseField(field) {
  // "hosts[0]" and "server.port" belong to the inputs of "hosts", "server".
  return field.replace(/[.[].*$/, "");
}

function inputFor(name, prop, value) {
  const t = Array.isArray(prop.type) ? prop.type.find(x => x !== "null") : prop.type;
  let input;
  if (Array.isArray(prop.enum)) {
    input = document.createElement("select");
    if (value === undefined || value === null) input.appendChild(el("option", "(default)"));
    for (const opt of prop.enum) {
      const o = el("option", String(opt));
      o.value = JSON.stringify(opt);
      if (JSON.stringify(opt) === JSON.stringify(value)) o.selected = true;
      input.appendChild(o);
    }
    input.dataset.kind = "enum";
  } else if (t === "boolean") {
    input = document.createElement("input");
    input.type = "checkbox";
    input.checked = value === true;
    input.dataset.kind = "boolean";
  } else if (t === "integer" || t === "number") {
    input = document.createElement("input");
    input.type = "text";
    input.inputMode = t === "integer" ? "numeric" : "decimal";
    input.value = value === undefined || value === null ? "" : String(value);
    input.dataset.kind = t;
  } else if (t === "array" && prop.items && prop.items.type === "string") {
    input = document.createElement("textarea");
    input.rows = 3;
    input.value = Array.isArray(value) ? value.join("\n") : "";
    input.dataset.kind = "strings";
  } else if (t === "string") {
    input = document.createElement("input");
    input.type = prop.writeOnly ? "password" : "text";
    input.autocomplete = "off";
    input.value = value === undefined || value === null ? "" : String(value);
    input.dataset.kind = prop.writeOnly ? "secret" : "string";
  } else {
    input = document.createElement("textarea");
    input.rows = 3;
    input.value = value === undefined ? "" : JSON.stringify(value, null, 2);
    input.dataset.kind = "json";
  }
  input.name = name;
  input.id = "setting-" + name;
  input.dataset.initial = input.type === "checkbox" ? String(input.checked) : input.value;
  return input;
}

function readInput(input) {
  const v = input.value;
  switch (input.dataset.kind) {
    case "boolean": return input.checked;
    case "enum": return v === "(default)" ? null : JSON.parse(v);
    case "integer":
    case "number": {
      if (v.trim() === "") return null;
      const n = Number(v);
      return Number.isFinite(n) ? n : v; // the daemon names a bad number
    }
    case "strings": return v.split("\n").map(s => s.trim()).filter(s => s !== "");
    case "json":
      if (v.trim() === "") return null;
      try { return JSON.parse(v); } catch (e) { return v; }
    default: return v;
  }
}

function changed(input) {
  const now = input.type === "checkbox" ? String(input.checked) : input.value;
  return now !== input.dataset.initial;
}

let settingsFor = null;

async function loadSettings(name) {
  const note = document.getElementById("settings-note");
  const form = document.getElementById("settings-form");
  settingsFor = name;
  form.hidden = true;
  note.textContent = "";
  let ps;
  try {
    ps = await api("GET", "/api/plugins/" + encodeURIComponent(name) + "/settings");
  } catch (e) {
    if (name !== settingsFor) return;
    note.textContent = e.status === 404 ? "This plugin has no global settings." : "Settings: " + e.message;
    return;
  }
  if (name !== settingsFor) return;
  renderSettings(ps);
}

function renderSettings(ps) {
  const note = document.getElementById("settings-note");
  const form = document.getElementById("settings-form");
  const box = document.getElementById("settings-fields");
  let schema = {};
  try { schema = typeof ps.schema === "string" ? JSON.parse(ps.schema) : (ps.schema || {}); } catch (e) { schema = {}; }
  const props = schema.properties || {};
  const fields = [];
  for (const name of Object.keys(props)) {
    const prop = props[name] || {};
    const row = el("div", null, "field");
    row.dataset.field = name;
    const label = el("label", prop.title || name);
    const input = inputFor(name, prop, ps.values ? ps.values[name] : undefined);
    label.htmlFor = input.id;
    row.appendChild(label);
    row.appendChild(input);
    if (prop.description) row.appendChild(el("span", prop.description, "desc"));
    if (prop.writeOnly) row.appendChild(el("span", "Secret: shown masked; leave it to keep the stored value.", "desc"));
    const err = el("span", null, "error");
    err.hidden = true;
    row.appendChild(err);
    fields.push(row);
  }
  box.replaceChildren(...fields);
  document.getElementById("settings-errors").replaceChildren();
  note.textContent = ps.problem ? "The stored settings fail the current schema: " + ps.problem : "";
  form.hidden = fields.length === 0;
  if (fields.length === 0) note.textContent = "The global settings schema has no properties.";
}

async function saveSettings(ev) {
  ev.preventDefault();
  const name = settingsFor;
  const values = {};
  document.querySelectorAll("#settings-fields [name]").forEach(input => {
    if (changed(input)) values[input.name] = readInput(input);
  });
  document.querySelectorAll("#settings-fields .field").forEach(f => {
    f.classList.remove("invalid");
    const e = f.querySelector(".error");
    e.textContent = "";
    e.hidden = true;
  });
  const general = document.getElementById("settings-errors");
  general.replaceChildren();
  const saved = document.getElementById("settings-saved");
  saved.hidden = true;
  try {
    const ps = await api("PATCH", "/api/plugins/" + encodeURIComponent(name) + "/settings", values);
    renderSettings(ps);
    saved.hidden = false;
  } catch (e) {
    const fields = (e.body && e.body.fields) || [];
    if (fields.length === 0) general.appendChild(el("li", e.message));
    for (const f of fields) {
      const row = f.field ? document.querySelector('#settings-fields .field[data-field="' + CSS.escape(baseField(f.field)) + '"]') : null;
      if (!row) { general.appendChild(el("li", (f.field || "settings") + ": " + f.reason)); continue; }
      row.classList.add("invalid");
      const span = row.querySelector(".error");
      span.textContent = (span.textContent ? span.textContent + "; " : "") + (f.field !== row.dataset.field ? f.field + ": " : "") + f.reason;
      span.hidden = false;
    }
  }
}

// ---- wiring ------------------------------------------------------------

function select(name) {
  selected = name;
  document.querySelectorAll("#plugins tbody tr").forEach(tr => tr.classList.toggle("selected", tr.dataset.plugin === name));
  refreshDetail().catch(showError);
  loadSettings(name);
}

function showError(e) {
  if (e && e.status === 401) return;
  banner(e && e.message ? e.message : String(e));
}

async function refresh() {
  try {
    await refreshList();
    await refreshDetail();
  } catch (e) {
    showError(e);
  }
}

async function status() {
  try {
    const s = await api("GET", "/api/status");
    document.getElementById("daemon").textContent = "dimplugd " + s.daemon.version + " · " + s.daemon.runtime +
      (s.daemon.sandboxed ? " (sandboxed)" : " (NOT sandboxed)") + " · " + s.daemon.plugins + " plugin(s)";
    document.getElementById("logout").hidden = !s.login;
  } catch (e) { showError(e); }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("settings-form").addEventListener("submit", saveSettings);
  document.querySelectorAll("[data-detail-action]").forEach(b =>
    b.addEventListener("click", () => selected && doAction(selected, b.dataset.detailAction)));
  document.getElementById("logout").addEventListener("click", async () => {
    try { await api("POST", "/api/logout"); } catch (e) { /* ended anyway */ }
    try { localStorage.removeItem(KEY); } catch (e) { /* storage off */ }
    showLogin("You logged out.");
  });
  status();
  refresh();
  setInterval(() => { if (!loggedOut) refresh(); }, REFRESH_MS);
});
