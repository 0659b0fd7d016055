// app.js is the example host's web UI, a stand-in for Dim's: a sidebar, a
// dashboard, library and media pages, and Preferences — each with the slots
// plugins fill, read from the UI document (GET /api/v1/plugins/ui) on every
// page change, so plugins that stop or are disabled disappear on the next
// load. Plugin pages run in sandboxed iframes (never allow-same-origin) and
// talk to this page only through the bridge below (docs/protocol.md, "The
// page bridge").
"use strict";

const PLUGIN_API = "/api/v1/plugins/";

// ---- session: Dim keeps its token in a cookie the UI reads; so do we ----

function token() {
  const m = /(?:^|;\s*)token=([^;]*)/.exec(document.cookie);
  return m ? decodeURIComponent(m[1]) : "";
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (token()) headers.Authorization = token();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await resp.text();
  let data = text;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (_) {}
  return { status: resp.status, ok: resp.ok, data };
}

const el = DimForms.el; // one element builder for the page and its forms

function toast(text, from) {
  const t = el("div", { class: "toast" }, from ? el("span", { class: "from", text: from }) : null, el("span", { class: "text", text }));
  document.getElementById("toasts").append(t);
  setTimeout(() => t.remove(), 8000);
}

// ---- theme ----

function theme() {
  return localStorage.getItem("theme") === "light" ? "light" : "dark";
}

function setTheme(mode) {
  localStorage.setItem("theme", mode);
  document.documentElement.dataset.theme = mode;
  Bridge.broadcast();
}

// themeOf is the theme plugin pages get: the host's own colours.
function themeOf() {
  const cs = getComputedStyle(document.documentElement);
  const v = (n) => cs.getPropertyValue(n).trim();
  return { mode: theme(), background: v("--bg"), surface: v("--surface"), text: v("--text"), accent: v("--accent"), font: v("--font") };
}

// ---- the page bridge (protocol 1) ----
//
// Host → page: {dim: 1, type: "context", theme, media_id, plugin, page, slot}
//   after the page says "ready", and whenever any of it changes.
// Page → host: {dim: 1, type: "ready"} | {dim: 1, type: "navigate", to}
//   | {dim: 1, type: "resize", height} | {dim: 1, type: "notify", text}.
// Only messages from a frame this page made, from an opaque origin, count;
// "navigate" only goes to this UI's own routes. Nothing in the bridge
// carries the user's token or identity.
const Bridge = (() => {
  const frames = new Set(); // {iframe, plugin, page, slot, mediaId} of the frames on the page
  const routes = [/^\/dashboard$/, /^\/library\/\d+$/, /^\/media\/\d+$/, /^\/preferences$/, /^\/preferences\/[a-z0-9-]+$/, /^\/plugins\/[a-z0-9-]+\/[a-z0-9-]+$/];
  const log = []; // what pages said, newest last (tests read it)
  window.__dimBridgeLog = log;

  function context(f) {
    return { dim: 1, type: "context", theme: themeOf(), media_id: f.mediaId ?? null, plugin: f.plugin, page: f.page, slot: f.slot };
  }

  function frame(plugin, page, mediaId) {
    if (/\ballow-same-origin\b/.test(page.sandbox) || /\ballow-top-navigation\b/.test(page.sandbox)) {
      return el("p", { class: "error", text: `${plugin.name}: page "${page.id}" asks for a sandbox this host does not give; not shown.` });
    }
    const url = new URL(page.url, location.origin);
    if (url.origin !== location.origin || !url.pathname.startsWith(PLUGIN_API + plugin.name + "/")) {
      return el("p", { class: "error", text: `${plugin.name}: page "${page.id}" is not under the plugin's own path; not shown.` });
    }
    if (mediaId != null) url.searchParams.set("media_id", String(mediaId));
    const iframe = el("iframe", {
      class: "plugin-page slot-" + page.slot,
      sandbox: page.sandbox,
      src: url.pathname + url.search,
      title: `${page.title} (${plugin.name})`,
      referrerpolicy: "no-referrer",
      "data-plugin": plugin.name,
      "data-page": page.id,
    });
    frames.add({ iframe, plugin: plugin.name, page: page.id, slot: page.slot, mediaId });
    return iframe;
  }

  // live returns the frames still on the page, forgetting the others.
  function live() {
    for (const f of frames) if (!f.iframe.isConnected && f.seen) frames.delete(f);
    return [...frames].filter((f) => f.iframe.isConnected && (f.seen = true));
  }

  function broadcast() {
    for (const f of live()) f.iframe.contentWindow.postMessage(context(f), "*");
  }

  window.addEventListener("message", (ev) => {
    // A frame's window is the same object from its insertion on, through
    // every navigation inside it: match the sender by it.
    const f = live().find((x) => x.iframe.contentWindow === ev.source);
    if (!f || ev.origin !== "null") return; // not one of our sandboxed frames
    const m = ev.data;
    if (!m || typeof m !== "object" || m.dim !== 1 || typeof m.type !== "string") return;
    log.push({ plugin: f.plugin, page: f.page, type: m.type, to: m.to, height: m.height, text: m.text });
    if (log.length > 200) log.shift();
    switch (m.type) {
      case "ready":
        ev.source.postMessage(context(f), "*");
        break;
      case "navigate":
        if (typeof m.to === "string" && routes.some((r) => r.test(m.to))) go(m.to);
        break;
      case "resize":
        if (typeof m.height === "number" && Number.isFinite(m.height) && f.slot !== "player-overlay") f.iframe.style.height = Math.max(0, Math.min(4000, Math.round(m.height))) + "px";
        break;
      case "notify":
        if (typeof m.text === "string") toast(m.text.slice(0, 200), f.plugin);
        break;
    }
  });

  return { frame, broadcast };
})();

// ---- the UI document ----

let uiDoc = { plugins: [], slots: [] };

async function loadUI() {
  const r = await api("GET", PLUGIN_API + "ui");
  if (r.ok && r.data && r.data.format === 1) uiDoc = r.data;
  else uiDoc = { plugins: [], slots: [] };
}

// pages lists the pages of one slot, in plugin order.
function pages(slot) {
  const out = [];
  for (const p of uiDoc.plugins || []) for (const pg of p.pages || []) if (pg.slot === slot) out.push({ plugin: p, page: pg });
  return out;
}

// ---- the router ----

function go(path) {
  if (path !== location.pathname) history.pushState(null, "", path);
  route();
}

document.addEventListener("click", (ev) => {
  const a = ev.target.closest && ev.target.closest("a[data-link]");
  if (!a || ev.button !== 0 || ev.metaKey || ev.ctrlKey) return;
  ev.preventDefault();
  go(a.getAttribute("href"));
});
window.addEventListener("popstate", () => route());

const main = () => document.getElementById("main");

async function route() {
  const path = location.pathname;
  if (!token() && path !== "/login") return go("/login");
  await loadUI();
  await sidebar();
  const routes = [
    [/^\/login$/, loginPage],
    [/^\/(dashboard)?$/, dashboardPage],
    [/^\/library\/(\d+)$/, libraryPage],
    [/^\/media\/(\d+)$/, mediaPage],
    [/^\/preferences(?:\/([a-z0-9-]+))?$/, preferencesPage],
    [/^\/plugins\/([a-z0-9-]+)\/([a-z0-9-]+)$/, pluginPage],
  ];
  for (const [re, page] of routes) {
    const m = re.exec(path);
    if (m) {
      document.body.dataset.page = "loading";
      await page(...m.slice(1));
      for (const a of document.querySelectorAll("#sidebar a:not(.brand)")) a.classList.toggle("active", a.getAttribute("href") === path);
      document.body.dataset.page = path; // tests wait for this
      return;
    }
  }
  main().replaceChildren(el("h1", { text: "Not found" }));
  document.body.dataset.page = path;
}

let me = null;

async function sidebar() {
  const side = document.getElementById("sidebar");
  side.hidden = !token();
  if (!token()) return;
  if (!me) {
    const r = await api("GET", "/api/v1/auth/whoami");
    if (r.status === 401) return logout();
    me = r.data;
  }
  document.getElementById("whoami").textContent = me ? "Signed in as " + me.username : "";
  const lo = document.getElementById("logout");
  lo.hidden = false;
  lo.onclick = logout;
  const libs = await api("GET", "/api/v1/library");
  const navMain = document.getElementById("nav-main");
  navMain.replaceChildren(el("a", { href: "/dashboard", "data-link": true, text: "Dashboard" }));
  for (const l of libs.ok ? libs.data : []) navMain.append(el("a", { href: "/library/" + l.id, "data-link": true, text: l.name }));
  const nav = pages("nav");
  document.getElementById("nav-plugins-title").hidden = nav.length === 0;
  document.getElementById("nav-plugins").replaceChildren(
    ...nav.map(({ plugin, page }) => el("a", { href: `/plugins/${plugin.name}/${page.id}`, "data-link": true, "data-plugin": plugin.name, text: page.title })),
  );
}

function logout() {
  document.cookie = "token=; Path=/; Max-Age=0; SameSite=Lax";
  me = null;
  go("/login");
}

// ---- pages ----

function loginPage() {
  document.getElementById("sidebar").hidden = true;
  const user = el("input", { id: "username", autocomplete: "username" });
  const pass = el("input", { id: "password", type: "password", autocomplete: "current-password" });
  const msg = el("p", { class: "error", role: "alert" });
  const form = el("form", { class: "login panel" },
    el("h1", { text: "Sign in" }),
    el("div", { class: "field" }, el("label", { for: "username", text: "Username" }), user),
    el("div", { class: "field" }, el("label", { for: "password", text: "Password" }), pass),
    msg, el("button", { type: "submit", text: "Sign in" }),
    el("p", { class: "muted", text: "Demo accounts: admin/admin (owner), kid/kid." }));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const r = await api("POST", "/api/v1/auth/login", { username: user.value, password: pass.value });
    if (!r.ok || !r.data || !r.data.token) {
      msg.textContent = "Wrong username or password.";
      return;
    }
    document.cookie = `token=${encodeURIComponent(r.data.token)}; Path=/; SameSite=Lax`;
    me = null;
    go("/dashboard");
  });
  main().replaceChildren(form);
}

function cards(list) {
  return el("div", { class: "cards" }, ...(list || []).map((c) =>
    el("a", { class: "card", href: "/media/" + c.id, "data-link": true, "data-media": c.id },
      el("strong", { text: c.name }), c.rating ? el("span", { class: "rating", text: c.rating }) : null)));
}

function failure(r, what) {
  const text = typeof r.data === "string" ? r.data : r.data && (r.data.error || r.data.message) ? r.data.error || r.data.message : JSON.stringify(r.data);
  return el("div", { class: "panel error", id: "failure", "data-status": r.status }, el("strong", { text: `${what}: ${r.status}` }), el("p", { text }));
}

async function dashboardPage() {
  const r = await api("GET", "/api/v1/dashboard");
  const root = [el("h1", { text: "Dashboard" })];
  const dc = pages("dashboard-card");
  if (dc.length) root.push(el("div", { class: "dash-cards" }, ...dc.map(({ plugin, page }) => Bridge.frame(plugin, page))));
  if (!r.ok) root.push(failure(r, "The dashboard did not load"));
  else for (const [title, list] of Object.entries(r.data || {})) root.push(el("section", { class: "row", "data-row": title }, el("h2", { text: title }), cards(list)));
  main().replaceChildren(...root);
}

async function libraryPage(id) {
  const r = await api("GET", `/api/v1/library/${id}/media`);
  if (!r.ok) return main().replaceChildren(failure(r, "The library did not load"));
  const root = [];
  for (const [name, list] of Object.entries(r.data || {})) root.push(el("h1", { text: name }), cards(list));
  main().replaceChildren(...root);
}

async function mediaPage(id) {
  const r = await api("GET", `/api/v1/media/${id}`);
  if (!r.ok) return main().replaceChildren(el("h1", { text: "Media " + id }), failure(r, "This media is not available"));
  const m = r.data;
  const player = el("div", { class: "player", id: "player" }, el("span", { class: "title", text: "▶ " + m.name }));
  for (const { plugin, page } of pages("player-overlay")) player.append(Bridge.frame(plugin, page, m.id));
  const actions = el("div", { class: "actions", id: "media-actions" });
  const panel = el("div", { id: "action-panel" });
  for (const { plugin, page } of pages("media-action")) {
    const b = el("button", { type: "button", class: "secondary", "data-plugin": plugin.name, "data-page": page.id, text: page.title });
    b.addEventListener("click", () => panel.replaceChildren(Bridge.frame(plugin, page, m.id)));
    actions.append(b);
  }
  main().replaceChildren(el("div", { class: "media" },
    el("h1", { id: "media-title", text: m.name }),
    el("p", { class: "muted", text: [m.year, m.rating, (m.genres || []).join(", ")].filter(Boolean).join(" · ") }),
    el("p", { text: m.description }), player, actions, panel));
}

async function preferencesPage(tab) {
  const withPrefs = (uiDoc.plugins || []).filter((p) => p.preferences);
  tab = tab || "appearance";
  const tabs = el("nav", { class: "tabs", "aria-label": "Preferences" },
    el("a", { href: "/preferences", "data-link": true, class: tab === "appearance" ? "active" : null, text: "Appearance" }),
    ...withPrefs.map((p) => el("a", { href: "/preferences/" + p.name, "data-link": true, "data-plugin": p.name, class: tab === p.name ? "active" : null, text: p.name })));
  const body = el("div", { class: "panel", id: "preferences-body" });
  main().replaceChildren(el("h1", { text: "Preferences" }), tabs, body);
  if (tab === "appearance") {
    const sel = el("select", { id: "theme" }, el("option", { value: "dark", text: "Dark" }), el("option", { value: "light", text: "Light" }));
    sel.value = theme();
    sel.addEventListener("change", () => setTheme(sel.value));
    body.replaceChildren(el("div", { class: "field" }, el("label", { for: "theme", text: "Theme" }), sel));
    return;
  }
  const p = withPrefs.find((x) => x.name === tab);
  if (!p) return body.replaceChildren(el("p", { class: "muted", text: `No plugin "${tab}" with preferences is running.` }));
  const r = await api("GET", p.preferences.url);
  if (!r.ok) return body.replaceChildren(failure(r, "These settings did not load"));
  if (r.data.problem) body.append(el("p", { class: "error", text: "Your saved settings no longer fit this plugin version: " + r.data.problem }));
  const holder = el("div");
  body.append(el("p", { class: "muted", text: p.description || "" }), holder);
  DimForms.render(holder, r.data, async (changes) => {
    const w = await api("PATCH", p.preferences.url, changes);
    if (w.ok) return w.data;
    throw w.data && typeof w.data === "object" ? w.data : { error: String(w.data), problems: [] };
  });
}

async function pluginPage(name, id) {
  const plugin = (uiDoc.plugins || []).find((p) => p.name === name);
  const page = plugin && (plugin.pages || []).find((pg) => pg.id === id && pg.slot === "nav");
  if (!page) return main().replaceChildren(el("h1", { text: "Not available" }), el("p", { class: "muted", text: `The plugin ${name} is not running, or has no page ${id}.` }));
  main().replaceChildren(el("h1", { text: page.title }), Bridge.frame(plugin, page));
}

document.documentElement.dataset.theme = theme();
route();
