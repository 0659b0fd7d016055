package plugin_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/dimplugd/dimplugd/sdk-go/plugin"
)

// TestBridgeScriptProtocol checks the script against protocol v1 as
// BridgeScript documents it: the page sends exactly ready, navigate,
// resize and notify, accepts only context, only from its parent and only
// with "dim": 1, and applies the theme as the documented CSS properties.
func TestBridgeScriptProtocol(t *testing.T) {
	s := plugin.BridgeScript
	var sent []string
	for _, m := range regexp.MustCompile(`\{dim: 1, type: "([a-z]+)"`).FindAllStringSubmatch(s, -1) {
		sent = append(sent, m[1])
	}
	slices.Sort(sent)
	if want := []string{"navigate", "notify", "ready", "resize"}; !slices.Equal(sent, want) {
		t.Errorf("the page sends %q, want %q", sent, want)
	}
	for _, want := range []string{
		`event.source !== window.parent`,
		`m.dim !== 1`,
		`m.type !== "context"`,
		`postMessage(msg, "*")`,
		`to: String(to)`,
		`height: h`,
		`text: String(text)`,
		`document.documentElement.scrollHeight`,
		`"data-theme"`,
		`background: "--dim-bg"`, `surface: "--dim-surface"`, `text: "--dim-text"`, `accent: "--dim-accent"`, `font: "--dim-font"`,
		`ResizeObserver`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("the script lacks %s", want)
		}
	}
	// Nothing that reads or sends credentials.
	for _, bad := range []string{"cookie", "localStorage", "sessionStorage", "Authorization", "token", "fetch(", "XMLHttpRequest", "innerHTML", "eval("} {
		if strings.Contains(s, bad) {
			t.Errorf("the script mentions %s", bad)
		}
	}
}

// TestBridgeScriptInlinable: the script can go inside <script> as it is.
func TestBridgeScriptInlinable(t *testing.T) {
	s := strings.ToLower(plugin.BridgeScript)
	for _, bad := range []string{"</script", "<!--", "<script", "]]>"} {
		if strings.Contains(s, bad) {
			t.Errorf("the script contains %q", bad)
		}
	}
	if len(s) > 4096 {
		t.Errorf("the script is %d bytes; keep it under 4 KiB", len(s))
	}
	for i, r := range plugin.BridgeScript {
		if r > 0x7e || (r < 0x20 && r != '\n') {
			t.Fatalf("byte %d: %q is not printable ASCII", i, r)
		}
	}
}

// bridgeHarness runs the script under Node with a fake window, document
// and parent, and asserts what it does; it prints one line per failure.
const bridgeHarness = `
const vm = require("vm");
const src = require("fs").readFileSync(process.argv[2], "utf8");
let failures = 0;
function check(ok, what) { if (!ok) { failures++; console.log("FAIL: " + what); } }
function page(framed) {
  const p = {posted: [], listeners: {}, props: {}, attrs: {}, observed: false, handled: []};
  const parent = {postMessage(m, origin) { p.posted.push({m: JSON.parse(JSON.stringify(m)), origin}); }};
  const root = {scrollHeight: 321.4, style: {setProperty(k, v) { p.props[k] = v; }}, setAttribute(k, v) { p.attrs[k] = v; }};
  const win = {addEventListener(t, f) { (p.listeners[t] = p.listeners[t] || []).push(f); }, console};
  win.parent = framed ? parent : win;
  p.parent = parent; p.win = win; p.root = root;
  const ctx = {window: win, document: {documentElement: root}, console,
    ResizeObserver: class { constructor(cb) { p.resized = cb; } observe(el) { p.observed = el === root; } }};
  vm.createContext(ctx);
  vm.runInContext(src, ctx);
  p.dim = win.dim;
  p.rerun = () => vm.runInContext(src, ctx);
  p.fire = (type, ev) => (p.listeners[type] || []).forEach(f => f(ev));
  return p;
}
const theme = {mode: "dark", background: "#101010", surface: "#202020", text: "#eeeeee", accent: "#ff8800", font: "system-ui, \"Segoe UI\", sans-serif"};

let p = page(true);
check(JSON.stringify(p.posted) === JSON.stringify([{m: {dim: 1, type: "ready"}, origin: "*"}]), "ready on start: " + JSON.stringify(p.posted));
check(p.dim && p.dim.context === null && p.dim.version === 1, "window.dim with no context");
p.dim.onContext(c => p.handled.push(c.media_id));
p.posted = [];
p.fire("message", {source: {}, data: {dim: 1, type: "context", theme, media_id: 1}});
p.fire("message", {source: p.parent, data: {dim: 2, type: "context", theme, media_id: 2}});
p.fire("message", {source: p.parent, data: {dim: 1, type: "other", media_id: 3}});
p.fire("message", {source: p.parent, data: "{\"dim\":1,\"type\":\"context\"}"});
check(p.dim.context === null && p.handled.length === 0 && p.posted.length === 0, "ignores messages from others, other versions and types");
p.fire("message", {source: p.parent, data: {dim: 1, type: "context", theme, media_id: 42, plugin: "x", page: "y", slot: "nav"}});
check(p.dim.context && p.dim.context.media_id === 42, "keeps the context");
check(JSON.stringify(p.handled) === "[42]", "calls onContext handlers: " + JSON.stringify(p.handled));
check(p.props["--dim-bg"] === "#101010" && p.props["--dim-surface"] === "#202020" && p.props["--dim-text"] === "#eeeeee" &&
  p.props["--dim-accent"] === "#ff8800" && p.props["--dim-font"] === theme.font, "applies the theme: " + JSON.stringify(p.props));
check(p.attrs["data-theme"] === "dark", "sets data-theme");
check(JSON.stringify(p.posted) === JSON.stringify([{m: {dim: 1, type: "resize", height: 322}, origin: "*"}]), "resizes on context: " + JSON.stringify(p.posted));
let late = [];
p.dim.onContext(c => late.push(c.media_id));
check(JSON.stringify(late) === "[42]", "a late onContext gets the last context at once");

p.props = {}; p.attrs = {};
p.fire("message", {source: p.parent, data: {dim: 1, type: "context", media_id: 7,
  theme: {mode: "evil", background: "red;background:url(//x)", text: "#12345", accent: "#abcdef", font: "x; background: url(//evil)"}}});
check(JSON.stringify(p.props) === JSON.stringify({"--dim-accent": "#abcdef"}), "ignores bad theme values: " + JSON.stringify(p.props));
check(!("data-theme" in p.attrs), "ignores a bad mode");

p.posted = [];
p.dim.navigate("/media/42");
p.dim.notify(42);
p.dim.resize(); // same height: not sent again
p.root.scrollHeight = 500;
p.fire("load", {});
check(p.observed, "observes the page's size after load");
p.root.scrollHeight = 600;
p.resized();
const want = [{dim: 1, type: "navigate", to: "/media/42"}, {dim: 1, type: "notify", text: "42"},
  {dim: 1, type: "resize", height: 500}, {dim: 1, type: "resize", height: 600}];
check(JSON.stringify(p.posted.map(x => x.m)) === JSON.stringify(want), "navigate, notify, resize: " + JSON.stringify(p.posted.map(x => x.m)));

const alone = page(false);
alone.posted = [];
alone.dim.navigate("/dashboard");
alone.fire("message", {source: alone.win, data: {dim: 1, type: "context", theme}});
check(alone.dim.context === null, "a page opened directly takes no context from itself");
check(alone.posted.length === 0, "a page opened directly posts nothing");
const twice = page(true);
twice.rerun();
check(twice.win.dim === twice.dim && twice.posted.length === 1, "inlined twice, it runs once");
process.exit(failures ? 1 : 0);
`

// TestBridgeScriptRuns runs the script under Node, when it is installed,
// with a fake window: what it sends, what it accepts, the theme it applies.
func TestBridgeScriptRuns(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed")
	}
	dir := t.TempDir()
	harness, script := filepath.Join(dir, "harness.js"), filepath.Join(dir, "bridge.js")
	if err := os.WriteFile(harness, []byte(bridgeHarness), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(script, []byte(plugin.BridgeScript), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(node, harness, script).CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Errorf("node: %v\n%s", err, out)
	}
}
