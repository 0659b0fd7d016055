package plugin

// BridgeScript is the page side of the UI bridge, protocol version 1: a
// small, dependency-free JavaScript source that a plugin page (manifest
// [[ui.pages]]) inlines in a <script> element, before its own scripts. It
// never contains "</script" or "<!--", so it can be inlined as it is; with
// html/template, pass it as template.JS(plugin.BridgeScript).
//
// Hosts show a page in an iframe sandboxed with "allow-scripts
// allow-forms": the page runs in an opaque origin and gets neither the
// user's cookies nor the Authorization header (the host strips both before
// the plugin sees the request). The bridge is how such a page talks to the
// host's UI, through window.postMessage; nothing in it carries a token, a
// cookie or the user's identity. The route hook that renders the page
// knows the user (Request.UserID) and should render what the user sees on
// the server, reloading for live data (a <meta http-equiv="refresh"> or
// location.reload()).
//
// Every message is a JSON object with "dim": 1 (the protocol version) and a
// "type". The host sends one type, to the page:
//
//	{"dim": 1, "type": "context",
//	 "theme": {"mode": "dark"|"light", "background": "#rrggbb", "surface": "#rrggbb",
//	           "text": "#rrggbb", "accent": "#rrggbb", "font": "<css font-family>"},
//	 "media_id": <int>|null, "plugin": "<name>", "page": "<page id>", "slot": "<slot>"}
//
// once the page says it is ready, and again whenever any of it changes (a
// theme switch, a player moving to another media item). The page sends
// these to the host (window.parent):
//
//	{"dim": 1, "type": "ready"}                       ask for the context
//	{"dim": 1, "type": "navigate", "to": "/media/42"}  go to one of the host's own pages
//	{"dim": 1, "type": "resize", "height": <px>}       set the iframe's height
//	{"dim": 1, "type": "notify", "text": "<text>"}     show a toast (≤ 200 characters)
//
// A host navigates only to its own app routes (/dashboard, /library/<id>,
// /media/<id>, /preferences, /preferences/<plugin>, /plugins/<plugin>/<page
// id>) and ignores anything else; it clamps a height to 0..4000 and shows a
// notification's text (at most 200 characters) as text, never as HTML.
//
// The script defines window.dim:
//
//	dim.onContext(fn)  calls fn(context) for every context message, and at once
//	                   if one already arrived
//	dim.context        the last context message, or null
//	dim.navigate(to)   asks the host to navigate
//	dim.resize()       sends document.documentElement.scrollHeight; called on
//	                   load, on every context and, where the browser has a
//	                   ResizeObserver, whenever the page's size changes
//	dim.notify(text)   asks the host to show text; hosts show at most 200
//	                   characters
//
// It sends "ready" as soon as it runs. On every context it applies the
// theme to document.documentElement: the data-theme attribute ("dark" or
// "light") and the CSS custom properties --dim-bg, --dim-surface,
// --dim-text, --dim-accent and --dim-font, which the page's styles use
// with fallbacks (a page opened directly, outside a host, gets no
// context): color: var(--dim-text, #222). Colours that are not #rrggbb and
// fonts with characters other than letters, digits, spaces, quotes,
// commas, dots and dashes are ignored. Messages are accepted only from the
// parent window (event.source === window.parent) and only with "dim": 1.
const BridgeScript = `(function () {
"use strict";
if (window.dim) { return; }
var host = window.parent, framed = host !== window, handlers = [], lastHeight = -1;
function post(msg) { if (framed) { host.postMessage(msg, "*"); } }
var vars = {background: "--dim-bg", surface: "--dim-surface", text: "--dim-text", accent: "--dim-accent", font: "--dim-font"};
function valid(key, v) {
  if (typeof v !== "string") { return false; }
  if (key === "font") { return /^[A-Za-z0-9 ,'".-]{1,200}$/.test(v); }
  return /^#[0-9A-Fa-f]{6}$/.test(v);
}
function applyTheme(t) {
  if (!t || typeof t !== "object") { return; }
  var root = document.documentElement;
  for (var key in vars) {
    if (Object.prototype.hasOwnProperty.call(vars, key) && valid(key, t[key])) { root.style.setProperty(vars[key], t[key]); }
  }
  if (t.mode === "dark" || t.mode === "light") { root.setAttribute("data-theme", t.mode); }
}
var dim = {
  version: 1,
  context: null,
  onContext: function (fn) {
    handlers.push(fn);
    if (dim.context) { fn(dim.context); }
  },
  navigate: function (to) { post({dim: 1, type: "navigate", to: String(to)}); },
  resize: function () {
    var h = Math.ceil(document.documentElement.scrollHeight);
    if (h === lastHeight) { return; }
    lastHeight = h;
    post({dim: 1, type: "resize", height: h});
  },
  notify: function (text) { post({dim: 1, type: "notify", text: String(text)}); }
};
window.dim = dim;
window.addEventListener("message", function (event) {
  var m = event.data;
  if (!framed || event.source !== window.parent || !m || typeof m !== "object" || m.dim !== 1 || m.type !== "context") { return; }
  dim.context = m;
  applyTheme(m.theme);
  for (var i = 0; i < handlers.length; i++) {
    try { handlers[i](m); } catch (err) { if (window.console) { console.error(err); } }
  }
  dim.resize();
});
window.addEventListener("load", function () {
  dim.resize();
  if (typeof ResizeObserver === "function") {
    new ResizeObserver(function () { dim.resize(); }).observe(document.documentElement);
  }
});
post({dim: 1, type: "ready"});
})();
`
