package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	"github.com/chromedp/chromedp"

	"github.com/dimplugd/dimplugd/internal/browsertest"
	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/host"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

const consoleHeader = "X-Dimplugd-Console"

// consoleGlobalSettings is the global settings schema of consolePlugin.
const consoleGlobalSettings = `{
  "type": "object",
  "properties": {
    "greeting": {"type": "string", "default": "hello", "description": "What the plugin says"},
    "port":     {"type": "integer", "minimum": 1, "maximum": 65535, "default": 8080},
    "api_key":  {"type": "string", "writeOnly": true}
  },
  "additionalProperties": false
}`

// consolePlugin is a testplug directory named name with one hook and
// global settings.
func consolePlugin(t *testing.T, name string) string {
	t.Helper()
	m := testplugManifest(name, nil, hooks("request", "GET", "/"+name+"/:id", "2s", "fail-open", 0))
	m += "\n[settings.global]\nschema = \"settings/global.json\"\n"
	dir := pluginDir(t, m)
	if err := os.MkdirAll(filepath.Join(dir, "settings"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "settings", "global.json"), []byte(consoleGlobalSettings), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// consoleLogin calls the control face's consoleLogin on socket, as
// dimplugctl console does.
func consoleLogin(t *testing.T, socket string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := (&net.Dialer{}).DialContext(ctx, "unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	conn := wire.NewConn(nc, capnp.Client{}, nil)
	defer conn.Close()
	boot := schema.Daemon(conn.Bootstrap(ctx))
	defer boot.Release()
	fut, release := boot.OpenControl(ctx, func(p schema.Daemon_openControl_Params) error {
		return wire.WriteVersions(p.NewVersions, schema.SupportedVersions)
	})
	defer release()
	res, err := fut.Struct()
	if err != nil {
		t.Fatalf("open control: %v", err)
	}
	lf, lrelease := res.Control().ConsoleLogin(ctx, nil)
	defer lrelease()
	lr, err := lf.Struct()
	if err != nil {
		class, msg := wire.RemoteClass(err)
		return "", errdefs.New(class, msg)
	}
	return lr.Url()
}

// unixClient is an HTTP client that reaches the console on its Unix socket.
func unixClient(socket string) *http.Client {
	return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		},
	}}
}

// call makes one console request and decodes a JSON answer into out (when
// not nil); it returns the status and the body.
func call(t *testing.T, c *http.Client, method, u string, hdr http.Header, body string, out any) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, u, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if out != nil && res.StatusCode == 200 {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v\n%s", method, u, err, b)
		}
	}
	return res.StatusCode, string(b)
}

// TestConsoleUnixSocket: on its Unix socket (the control socket's mode, no
// login) the console lists the plugins as the control face does and
// disables and enables one, as the control face then sees.
func TestConsoleUnixSocket(t *testing.T) {
	sock := filepath.Join(shortTempDir(t, "con"), "console.sock")
	td := startDaemonConfig(t, Config{Runtime: testRuntime(t), Supervision: fastSupervision, ConsoleSocket: sock})
	td.install(t, consolePlugin(t, "alpha"))
	waitState(t, td.ctl, "alpha", 30*time.Second, "running", running)

	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("console socket %s: %v, %v; want a socket of mode 0600 like the control socket", sock, fi.Mode(), err)
	}
	c := unixClient(sock)
	const base = "http://console"

	var list []host.PluginStatus
	if code, body := call(t, c, "GET", base+"/api/plugins", nil, "", &list); code != 200 {
		t.Fatalf("list: %d %s", code, body)
	}
	want, err := td.ctl.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Name != "alpha" || list[0].State != StateRunning || len(list[0].Hooks) != 1 ||
		list[0].Hooks[0].Route != want[0].Hooks[0].Route || list[0].Version != want[0].Version {
		t.Fatalf("console lists %+v; the control face %+v", list, want)
	}

	// A change needs the console's header, even here.
	if code, body := call(t, c, "POST", base+"/api/plugins/alpha/disable", nil, "", nil); code != 403 {
		t.Fatalf("disable without the header: %d %s; want 403", code, body)
	}
	hdr := http.Header{consoleHeader: {"1"}}
	var st host.PluginStatus
	if code, body := call(t, c, "POST", base+"/api/plugins/alpha/disable", hdr, "", &st); code != 200 || st.Enabled {
		t.Fatalf("disable: %d %s", code, body)
	}
	waitState(t, td.ctl, "alpha", 20*time.Second, "stopped and disabled", func(s *host.PluginStatus) bool {
		return !s.Enabled && s.State == StateStopped
	})
	if code, body := call(t, c, "POST", base+"/api/plugins/alpha/restart", hdr, "", nil); code != 409 {
		t.Fatalf("restart of a disabled plugin: %d %s; want 409 as on the control face", code, body)
	}
	if code, body := call(t, c, "POST", base+"/api/plugins/alpha/enable", hdr, "", &st); code != 200 || !st.Enabled {
		t.Fatalf("enable: %d %s", code, body)
	}
	waitState(t, td.ctl, "alpha", 30*time.Second, "running again", running)

	var lines []host.LogLine
	if code, body := call(t, c, "GET", base+"/api/plugins/alpha/logs?tail=50", nil, "", &lines); code != 200 || len(lines) == 0 {
		t.Fatalf("logs: %d %s", code, body)
	}
	if !strings.Contains(fmt.Sprint(lines), "disabled") {
		t.Fatalf("logs do not say the plugin was disabled: %+v", lines)
	}
	if code, _ := call(t, c, "GET", base+"/api/plugins/Bad..Name", nil, "", nil); code != 400 {
		t.Fatalf("a bad name: %d; want 400 (the control face's check)", code)
	}
	if code, body := call(t, c, "GET", base+"/", nil, "", nil); code != 200 || !strings.Contains(body, "dimplugd console") {
		t.Fatalf("page: %d %.200s", code, body)
	}

	// With no TCP listener there is nothing to log in to.
	if _, err := consoleLogin(t, td.control); errdefs.Class(err) != errdefs.ErrUnavailable || !strings.Contains(err.Error(), "--console-listen") {
		t.Fatalf("consoleLogin without TCP: %v; want unavailable naming --console-listen", err)
	}

	// The socket goes with the daemon.
	td.Close()
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("console socket left after Close: %v", err)
	}
}

// consoleSession logs in through a URL from the control face and returns
// a client holding the session cookie and the session key.
func consoleSession(t *testing.T, td *testDaemon) (*http.Client, string, string) {
	t.Helper()
	u, err := consoleLogin(t, td.control)
	if err != nil {
		t.Fatalf("consoleLogin: %v", err)
	}
	c := &http.Client{Timeout: 20 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	res, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	loc := res.Header.Get("Location")
	key, ok := strings.CutPrefix(loc, "/#k=")
	if res.StatusCode != http.StatusSeeOther || !ok || len(res.Cookies()) != 1 {
		t.Fatalf("login: %s, Location %q, cookies %v", res.Status, loc, res.Cookies())
	}
	ck := res.Cookies()[0]
	if !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode {
		t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict", ck)
	}
	c.Jar = &oneCookie{c: ck}
	// The same URL does not work twice.
	res, err = (&http.Client{CheckRedirect: c.CheckRedirect}).Get(u)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusForbidden || len(res.Cookies()) != 0 {
		t.Fatalf("second use of a login URL: %s; want 403", res.Status)
	}
	return c, "http://" + td.ConsoleAddr(), key
}

// oneCookie is a cookie jar holding one cookie for every URL.
type oneCookie struct{ c *http.Cookie }

func (j *oneCookie) SetCookies(*url.URL, []*http.Cookie) {}
func (j *oneCookie) Cookies(*url.URL) []*http.Cookie     { return []*http.Cookie{j.c} }

// TestConsoleTCP: on loopback TCP the console needs a session from a
// one-time login URL (see also package console's tests for expiry), the
// listener's own Host, and for changes the session key and no foreign
// Origin; settings writes are validated by the daemon, field by field.
func TestConsoleTCP(t *testing.T) {
	td := startDaemonConfig(t, Config{Runtime: testRuntime(t), Supervision: fastSupervision, ConsoleListen: "127.0.0.1:0"})
	td.install(t, consolePlugin(t, "beta"))
	waitState(t, td.ctl, "beta", 30*time.Second, "running", running)
	base := "http://" + td.ConsoleAddr()
	anon := &http.Client{Timeout: 20 * time.Second}

	// Without a session: nothing.
	if code, body := call(t, anon, "GET", base+"/api/plugins", http.Header{consoleHeader: {"1"}}, "", nil); code != 401 {
		t.Fatalf("list without a session: %d %s; want 401", code, body)
	}
	if code, body := call(t, anon, "POST", base+"/api/plugins/beta/disable", http.Header{consoleHeader: {"1"}}, "", nil); code != 401 {
		t.Fatalf("disable without a session: %d %s; want 401", code, body)
	}

	c, base2, key := consoleSession(t, td)
	if base2 != base {
		t.Fatalf("login URL is for %s, the console listens on %s", base2, base)
	}
	hdr := http.Header{consoleHeader: {key}}
	var list []host.PluginStatus
	if code, body := call(t, c, "GET", base+"/api/plugins", hdr, "", &list); code != 200 || len(list) != 1 || list[0].Name != "beta" {
		t.Fatalf("list: %d %s", code, body)
	}
	// The cookie alone (what another server on this address could get) is
	// not enough.
	if code, _ := call(t, c, "GET", base+"/api/plugins", nil, "", nil); code != 403 {
		t.Fatalf("list with the cookie but no key: %d; want 403", code)
	}
	// DNS rebinding: another name for this address.
	req, _ := http.NewRequest("GET", base+"/api/plugins", nil)
	req.Host = "rebind.example:" + strings.Split(td.ConsoleAddr(), ":")[1]
	req.Header.Set(consoleHeader, key)
	if res, err := c.Do(req); err != nil || res.StatusCode != 403 {
		t.Fatalf("wrong Host: %v %v; want 403", res, err)
	} else {
		res.Body.Close()
	}
	// CSRF: a change from another origin, or without the header.
	if code, _ := call(t, c, "POST", base+"/api/plugins/beta/disable", http.Header{consoleHeader: {key}, "Origin": {"http://evil.example"}}, "", nil); code != 403 {
		t.Fatalf("disable from another origin: %d; want 403", code)
	}
	if code, _ := call(t, c, "POST", base+"/api/plugins/beta/disable", http.Header{"Origin": {base}}, "", nil); code != 403 {
		t.Fatalf("disable without the header: %d; want 403", code)
	}
	if st := waitState(t, td.ctl, "beta", time.Second, "still enabled", running); !st.Enabled {
		t.Fatal("a refused request disabled the plugin")
	}

	// Settings: read masked, invalid writes refused per field, valid stored.
	var ps host.PluginSettings
	if code, body := call(t, c, "GET", base+"/api/plugins/beta/settings", hdr, "", &ps); code != 200 || ps.Values["port"] != float64(8080) {
		t.Fatalf("settings: %d %s", code, body)
	}
	jh := http.Header{consoleHeader: {key}, "Content-Type": {"application/json"}, "Origin": {base}}
	code, body := call(t, c, "PATCH", base+"/api/plugins/beta/settings", jh, `{"port": 70000, "greeting": 5}`, nil)
	var e struct {
		Code   string
		Fields []struct{ Field, Reason string }
	}
	json.Unmarshal([]byte(body), &e)
	if code != 422 || e.Code != "invalid" || len(e.Fields) != 2 || e.Fields[0].Field != "greeting" || e.Fields[1].Field != "port" {
		t.Fatalf("invalid settings: %d %s; want 422 naming greeting and port", code, body)
	}
	if code, body := call(t, c, "PATCH", base+"/api/plugins/beta/settings", jh, `{"port": 9090, "api_key": "s3cret"}`, &ps); code != 200 {
		t.Fatalf("valid settings: %d %s", code, body)
	}
	if ps.Values["api_key"] != "********" {
		t.Fatalf("the console shows the secret: %v", ps.Values)
	}
	got, err := td.ctl.Settings(context.Background(), "beta", host.ScopeGlobal, 0)
	if err != nil || fmt.Sprint(got.Stored["port"]) != "9090" || got.Stored["api_key"] != "********" {
		t.Fatalf("stored settings: %+v, %v; want port 9090 and a (masked) api_key", got, err)
	}

	// A change with the session, the key and the console's own origin.
	var st host.PluginStatus
	if code, body := call(t, c, "POST", base+"/api/plugins/beta/disable", http.Header{consoleHeader: {key}, "Origin": {base}}, "", &st); code != 200 || st.Enabled {
		t.Fatalf("disable: %d %s", code, body)
	}
	waitState(t, td.ctl, "beta", 20*time.Second, "disabled", func(s *host.PluginStatus) bool { return !s.Enabled && s.State == StateStopped })
}

// TestConsoleBrowser drives the console in Chromium: log in with a URL
// from the control face, see the plugin table, disable a plugin with its
// button and see its state change, as the control face does.
func TestConsoleBrowser(t *testing.T) {
	ctx := browsertest.Start(t)
	td := startDaemonConfig(t, Config{Runtime: testRuntime(t), Supervision: fastSupervision, ConsoleListen: "127.0.0.1:0"})
	td.install(t, consolePlugin(t, "gamma"))
	waitState(t, td.ctl, "gamma", 30*time.Second, "running", running)
	u, err := consoleLogin(t, td.control)
	if err != nil {
		t.Fatal(err)
	}
	tctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	row := `#plugins tbody tr[data-plugin="gamma"]`
	if err := chromedp.Do(tctx,
		chromedp.Navigate(u),
		chromedp.WaitVisible(chromedp.CSS(row+` td[data-field="state"]`)),
	); err != nil {
		t.Fatalf("open the console: %v", err)
	}
	state := func() string {
		s, _, err := browsertest.Text(tctx, row+` td[data-field="state"]`)
		if err != nil {
			t.Fatalf("read the state: %v", err)
		}
		return s
	}
	waitFor(t, 20*time.Second, "the table to show gamma running", func() bool { return state() == StateRunning })
	// The key left the address bar for the page's storage.
	loc, err := chromedp.Run(tctx, chromedp.Evaluate[string](`location.href`))
	if err != nil || strings.Contains(loc, "#k=") || strings.Contains(loc, "token") {
		t.Fatalf("address bar %q (%v): want no token and no key", loc, err)
	}
	t.Logf("before: %s", browsertest.Screenshot(t, tctx, "console-running"))

	if err := chromedp.Do(tctx, chromedp.Click(chromedp.CSS(`button[data-plugin="gamma"][data-action="disable"]`))); err != nil {
		t.Fatalf("click disable: %v", err)
	}
	waitFor(t, 20*time.Second, "the table to show gamma stopped", func() bool { return state() == StateStopped })
	enabled, _, err := browsertest.Text(tctx, row+` td[data-field="enabled"]`)
	if err != nil || enabled != "no" {
		t.Fatalf("enabled column: %q, %v; want no", enabled, err)
	}
	waitState(t, td.ctl, "gamma", 5*time.Second, "disabled, as the control face sees it", func(s *host.PluginStatus) bool {
		return !s.Enabled && s.State == StateStopped
	})

	// The detail view: hooks and the settings form from the schema.
	if err := chromedp.Do(tctx,
		chromedp.Click(chromedp.CSS(row+` td.name button`)),
		chromedp.WaitVisible(chromedp.CSS(`#settings-form input[name="port"]`)),
	); err != nil {
		t.Fatalf("open the detail view: %v", err)
	}
	route, _, err := browsertest.Text(tctx, `#hooks tbody tr td:nth-child(4)`)
	if err != nil || route != "/gamma/:id" {
		t.Fatalf("hook route %q, %v", route, err)
	}
	kind, err := chromedp.Run(tctx, chromedp.Evaluate[string](`document.querySelector('#settings-form input[name="api_key"]').type`))
	if err != nil || kind != "password" {
		t.Fatalf("secret field type %q, %v; want password", kind, err)
	}
	// An invalid value: the daemon's reason shows next to the field.
	if err := chromedp.Do(tctx,
		chromedp.SetValue(chromedp.CSS(`#settings-form input[name="port"]`), "70000"),
		chromedp.Click(chromedp.CSS(`#settings-form button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS(`.field[data-field="port"] .error`)),
	); err != nil {
		t.Fatalf("save invalid settings: %v", err)
	}
	reason, _, err := browsertest.Text(tctx, `.field[data-field="port"] .error`)
	if err != nil || !strings.Contains(reason, "65535") {
		t.Fatalf("port error %q, %v; want the daemon's reason", reason, err)
	}
	t.Logf("after: %s", browsertest.Screenshot(t, tctx, "console-disabled"))
}

// TestConsoleCLI is the operator's path with the binaries: dimplugd serve
// --console-listen, dimplugctl console prints a URL that logs in once; a
// non-loopback address is refused at start; without a console, dimplugctl
// console fails as unavailable.
func TestConsoleCLI(t *testing.T) {
	bin := buildBin(t, "./cmd/dimplugd", false)
	out, err := exec.Command(bin, "serve", "--console-listen", "0.0.0.0:8377", "--state-dir", t.TempDir()).CombinedOutput()
	if code := exitCode(err); code != 2 || !strings.Contains(string(out), "not a loopback IP address") {
		t.Fatalf("--console-listen 0.0.0.0: exit %d, %s; want 2 and a clear refusal", code, out)
	}

	p := newDaemonProc(t)
	p.args = []string{"--console-listen", "127.0.0.1:0", "--console-socket", filepath.Join(filepath.Dir(p.control), "console.sock")}
	p.start()
	stdout, stderr := p.ctl(false, "console")
	u := strings.TrimSpace(stdout)
	if !strings.HasPrefix(u, "http://127.0.0.1:") || !strings.Contains(u, "/login?token=") || strings.Contains(u, "\n") {
		t.Fatalf("dimplugctl console printed %q (stderr %q); want one login URL", stdout, stderr)
	}
	nc := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for i, want := range []int{http.StatusSeeOther, http.StatusForbidden} {
		res, err := nc.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != want {
			t.Fatalf("use %d of the URL: %s; want %d", i+1, res.Status, want)
		}
	}
	// The console socket serves without a login.
	var list []host.PluginStatus
	if code, body := call(t, unixClient(filepath.Join(filepath.Dir(p.control), "console.sock")), "GET", "http://console/api/plugins", nil, "", &list); code != 200 {
		t.Fatalf("console socket: %d %s", code, body)
	}

	q := newDaemonProc(t)
	q.cgroup += "-off" // its own, while p runs
	q.start()
	_, stderr = q.ctl(true, "console")
	if !strings.Contains(stderr, "console is off") {
		t.Fatalf("dimplugctl console without a console: %q", stderr)
	}
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}
