package console

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/host"
)

// fakeControl stands in for the control face: one plugin, "p".
type fakeControl struct {
	mu      *sync.Mutex
	enabled *bool
}

func (f fakeControl) status() *host.PluginStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := "running"
	if !*f.enabled {
		st = "stopped"
	}
	return &host.PluginStatus{Name: "p", Version: "1.0.0", State: st, Enabled: *f.enabled}
}

func (f fakeControl) check(name string) error {
	if name != "p" {
		return &host.RemoteError{Msg: "plugin " + name + " is not installed", Class: errdefs.ErrNotFound}
	}
	return nil
}

func (f fakeControl) List(ctx context.Context) ([]host.PluginStatus, error) {
	return []host.PluginStatus{*f.status()}, nil
}
func (f fakeControl) Inspect(ctx context.Context, name string) (*host.PluginStatus, error) {
	return f.status(), f.check(name)
}
func (f fakeControl) set(name string, on bool) (*host.PluginStatus, error) {
	if err := f.check(name); err != nil {
		return nil, err
	}
	f.mu.Lock()
	*f.enabled = on
	f.mu.Unlock()
	return f.status(), nil
}
func (f fakeControl) Enable(ctx context.Context, name string) (*host.PluginStatus, error) {
	return f.set(name, true)
}
func (f fakeControl) Disable(ctx context.Context, name string) (*host.PluginStatus, error) {
	return f.set(name, false)
}
func (f fakeControl) Restart(ctx context.Context, name string) (*host.PluginStatus, error) {
	return f.status(), f.check(name)
}
func (f fakeControl) Logs(ctx context.Context, name string, tail int, _ func(host.LogLine)) ([]host.LogLine, error) {
	return []host.LogLine{{Stream: "stdout", Text: "<script>alert(1)</script>"}}, f.check(name)
}
func (f fakeControl) Settings(ctx context.Context, name, scope string, user int64) (*host.PluginSettings, error) {
	return &host.PluginSettings{Scope: scope, Values: map[string]any{}}, f.check(name)
}
func (f fakeControl) SetSettings(ctx context.Context, name, scope string, user int64, values map[string]any, replace bool) (*host.PluginSettings, error) {
	if v, ok := values["port"]; ok && v != json.Number("8080") {
		return nil, &host.RemoteError{Class: errdefs.ErrInvalid,
			Msg: "global settings of plugin \"p\" not saved:\nport: must be an integer, not a string\nservers[1]: must be a host name"}
	}
	return &host.PluginSettings{Scope: scope, Values: values}, nil
}
func (f fakeControl) Status(ctx context.Context) (*host.DaemonStatus, error) {
	return &host.DaemonStatus{Version: "test"}, nil
}
func (f fakeControl) Close() error { return nil }

type fixture struct {
	s       *Server
	base    string // http://127.0.0.1:PORT
	now     time.Time
	mu      sync.Mutex
	enabled bool
}

func (fx *fixture) clock() time.Time {
	fx.mu.Lock()
	defer fx.mu.Unlock()
	return fx.now
}

func (fx *fixture) advance(d time.Duration) {
	fx.mu.Lock()
	fx.now = fx.now.Add(d)
	fx.mu.Unlock()
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	fx := &fixture{now: time.Unix(1_000_000, 0), enabled: true}
	var mu sync.Mutex
	fx.s = New(Config{
		Dial: func(context.Context) (Control, error) {
			return fakeControl{mu: &mu, enabled: &fx.enabled}, nil
		},
		Now: fx.clock,
	})
	ln, err := ListenTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := fx.s.ServeTCP(ln); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fx.s.Close)
	fx.base = "http://" + fx.s.TCPAddr()
	return fx
}

// noRedirect is a client that shows redirects instead of following them.
var noRedirect = &http.Client{
	Timeout:       10 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

type req struct {
	method, path, body string
	header             map[string]string
	cookie             *http.Cookie
	host               string
}

func do(t *testing.T, base string, r req) (*http.Response, string) {
	t.Helper()
	if r.method == "" {
		r.method = http.MethodGet
	}
	hr, err := http.NewRequest(r.method, base+r.path, strings.NewReader(r.body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range r.header {
		hr.Header.Set(k, v)
	}
	if r.cookie != nil {
		hr.AddCookie(r.cookie)
	}
	if r.host != "" {
		hr.Host = r.host
	}
	res, err := noRedirect.Do(hr)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res, string(b)
}

// login redeems a fresh login URL and returns the session's cookie and key.
func (fx *fixture) login(t *testing.T) (*http.Cookie, string) {
	t.Helper()
	u, err := fx.s.LoginURL()
	if err != nil {
		t.Fatal(err)
	}
	res, body := do(t, "", req{path: u})
	if res.StatusCode != http.StatusSeeOther {
		t.Fatalf("login: %s %s", res.Status, body)
	}
	var c *http.Cookie
	for _, ck := range res.Cookies() {
		if ck.Name == cookieName {
			c = ck
		}
	}
	if c == nil || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode {
		t.Fatalf("login: session cookie %+v, want HttpOnly and SameSite=Strict", c)
	}
	loc := res.Header.Get("Location")
	key, ok := strings.CutPrefix(loc, "/#k=")
	if !ok || len(key) < 40 {
		t.Fatalf("login redirects to %q, want /#k=<key>", loc)
	}
	return c, key
}

// TestConsoleLoginURL: a login URL works once and only within its minute,
// and carries 256 random bits.
func TestConsoleLoginURL(t *testing.T) {
	fx := newFixture(t)
	u, err := fx.s.LoginURL()
	if err != nil {
		t.Fatal(err)
	}
	pu, err := url.Parse(u)
	if err != nil || pu.Host != fx.s.TCPAddr() || pu.Path != "/login" || len(pu.Query().Get("token")) != 43 {
		t.Fatalf("login URL %q: want http://%s/login?token=<43 base64url characters>", u, fx.s.TCPAddr())
	}
	if res, body := do(t, "", req{path: u}); res.StatusCode != http.StatusSeeOther {
		t.Fatalf("first use: %s %s", res.Status, body)
	}
	if res, _ := do(t, "", req{path: u}); res.StatusCode != http.StatusForbidden || len(res.Cookies()) != 0 {
		t.Fatalf("second use: %s, cookies %v; want 403 and no cookie", res.Status, res.Cookies())
	}

	expired, err := fx.s.LoginURL()
	if err != nil {
		t.Fatal(err)
	}
	fx.advance(61 * time.Second)
	if res, _ := do(t, "", req{path: expired}); res.StatusCode != http.StatusForbidden || len(res.Cookies()) != 0 {
		t.Fatalf("expired token: %s; want 403", res.Status)
	}
	if res, _ := do(t, fx.base, req{path: "/login?token=made-up"}); res.StatusCode != http.StatusForbidden {
		t.Fatalf("made-up token: %s; want 403", res.Status)
	}

	// A session ends after its 12 hours.
	c, key := fx.login(t)
	h := map[string]string{HeaderName: key}
	if res, body := do(t, fx.base, req{path: "/api/plugins", cookie: c, header: h}); res.StatusCode != 200 {
		t.Fatalf("with the session: %s %s", res.Status, body)
	}
	fx.advance(12*time.Hour + time.Second)
	if res, _ := do(t, fx.base, req{path: "/api/plugins", cookie: c, header: h}); res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("after 12h: %s; want 401", res.Status)
	}
}

// TestConsoleAuth: on TCP the API needs the cookie and the key; the Host
// must be the listener's; changes need the header and no foreign Origin.
func TestConsoleAuth(t *testing.T) {
	fx := newFixture(t)
	c, key := fx.login(t)
	h := map[string]string{HeaderName: key}
	for _, tt := range []struct {
		name string
		r    req
		want int
	}{
		{"no cookie", req{path: "/api/plugins", header: h}, 401},
		{"no cookie, post", req{method: "POST", path: "/api/plugins/p/disable", header: h}, 401},
		{"forged cookie", req{path: "/api/plugins", header: h, cookie: &http.Cookie{Name: cookieName, Value: "x"}}, 401},
		{"cookie without key", req{path: "/api/plugins", cookie: c}, 403},
		{"cookie with wrong key", req{path: "/api/plugins", cookie: c, header: map[string]string{HeaderName: "1"}}, 403},
		{"post without header", req{method: "POST", path: "/api/plugins/p/disable", cookie: c}, 403},
		{"post from another origin", req{method: "POST", path: "/api/plugins/p/disable", cookie: c,
			header: map[string]string{HeaderName: key, "Origin": "http://evil.example"}}, 403},
		{"post cross-site", req{method: "POST", path: "/api/plugins/p/disable", cookie: c,
			header: map[string]string{HeaderName: key, "Sec-Fetch-Site": "cross-site"}}, 403},
		{"rebound host", req{path: "/api/plugins", cookie: c, header: h, host: "evil.example:80"}, 403},
		{"rebound host, page", req{path: "/", host: "localhost"}, 403},
		{"delete", req{method: "DELETE", path: "/api/plugins/p", cookie: c, header: h}, 405},
		{"ok", req{path: "/api/plugins", cookie: c, header: h}, 200},
	} {
		res, body := do(t, fx.base, tt.r)
		if res.StatusCode != tt.want {
			t.Errorf("%s: %s %s; want %d", tt.name, res.Status, body, tt.want)
		}
	}
	if fx.enabled != true {
		t.Fatal("a refused request disabled the plugin")
	}
	res, body := do(t, fx.base, req{method: "POST", path: "/api/plugins/p/disable", cookie: c,
		header: map[string]string{HeaderName: key, "Origin": fx.base}})
	if res.StatusCode != 200 || !strings.Contains(body, `"state":"stopped"`) {
		t.Fatalf("disable: %s %s", res.Status, body)
	}
	for k, v := range map[string]string{
		"Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
		"X-Frame-Options":         "DENY",
		"Cache-Control":           "no-store",
	} {
		if got := res.Header.Get(k); !strings.HasPrefix(got, v) {
			t.Errorf("%s: %q, want %q", k, got, v)
		}
	}
	// Logging out ends the session.
	if res, body := do(t, fx.base, req{method: "POST", path: "/api/logout", cookie: c, header: h}); res.StatusCode != 200 {
		t.Fatalf("logout: %s %s", res.Status, body)
	}
	if res, _ := do(t, fx.base, req{path: "/api/plugins", cookie: c, header: h}); res.StatusCode != 401 {
		t.Fatalf("after logout: %s; want 401", res.Status)
	}
}

// TestConsoleSettingsErrors: a rejected write is 422 with each field.
func TestConsoleSettingsErrors(t *testing.T) {
	fx := newFixture(t)
	c, key := fx.login(t)
	h := map[string]string{HeaderName: key, "Content-Type": "application/json"}
	res, body := do(t, fx.base, req{method: "PATCH", path: "/api/plugins/p/settings", cookie: c, header: h, body: `{"port": "x"}`})
	if res.StatusCode != http.StatusUnprocessableEntity {
		t.Fatalf("invalid write: %s %s", res.Status, body)
	}
	var e apiError
	if err := json.Unmarshal([]byte(body), &e); err != nil {
		t.Fatal(err)
	}
	want := []fieldError{{"port", "must be an integer, not a string"}, {"servers[1]", "must be a host name"}}
	if e.Code != "invalid" || len(e.Fields) != 2 || e.Fields[0] != want[0] || e.Fields[1] != want[1] {
		t.Fatalf("invalid write: %+v; want fields %+v", e, want)
	}
	if res, body := do(t, fx.base, req{method: "PATCH", path: "/api/plugins/p/settings", cookie: c, header: h, body: `{"port": 8080}`}); res.StatusCode != 200 {
		t.Fatalf("valid write: %s %s", res.Status, body)
	}
	big := `{"a": "` + strings.Repeat("x", maxBody) + `"}`
	if res, body := do(t, fx.base, req{method: "PATCH", path: "/api/plugins/p/settings", cookie: c, header: h, body: big}); res.StatusCode != 422 || !strings.Contains(body, "larger than") {
		t.Fatalf("oversized write: %s %.200s", res.Status, body)
	}
	if res, body := do(t, fx.base, req{path: "/api/plugins/nope", cookie: c, header: h}); res.StatusCode != 404 {
		t.Fatalf("unknown plugin: %s %s", res.Status, body)
	}
}

func TestConsoleCheckLoopback(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:8377": true, "127.1.2.3:0": true, "[::1]:8377": true,
		"0.0.0.0:8377": false, "[::]:8377": false, "192.168.1.2:80": false, "localhost:8377": false, "8377": false, ":8377": false,
	} {
		if err := CheckLoopback(addr); (err == nil) != ok {
			t.Errorf("CheckLoopback(%q) = %v, want ok=%v", addr, err, ok)
		}
	}
	if ln, err := net.Listen("tcp", "0.0.0.0:0"); err == nil {
		s := New(Config{Dial: func(context.Context) (Control, error) { return nil, io.EOF }})
		defer s.Close()
		if err := s.ServeTCP(ln); err == nil {
			t.Fatal("ServeTCP served a wildcard address")
		}
	}
	s := New(Config{Dial: func(context.Context) (Control, error) { return nil, io.EOF }})
	defer s.Close()
	if _, err := s.LoginURL(); !errorsIs(err, errdefs.ErrUnavailable) {
		t.Fatalf("LoginURL without TCP: %v, want unavailable", err)
	}
}

func errorsIs(err, class error) bool { return errdefs.Class(err) == class }
