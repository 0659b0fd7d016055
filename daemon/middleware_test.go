package daemon

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/host"
)

// TestMiddleware serves a real net/http mux through host.Middleware with a
// sandboxed plugin hooking it, over loopback HTTP.
func TestMiddleware(t *testing.T) {
	td := startDaemon(t, testRuntime(t), fastSupervision)
	td.install(t, pluginDir(t, testplugManifest("mw", nil,
		hooks("request", "GET", "/api/v1/media/:id", "2s", "fail-closed", 0)+
			hooks("response", "GET", "/api/v1/media/:id", "2s", "fail-open", 0)+
			hooks("route", "GET", "/plugin/*rest", "2s", "fail-closed", 0))))
	waitState(t, td.ctl, "mw", 30*time.Second, "running", running)

	mux := http.NewServeMux()
	var sawHeader, sawQuery, sawAuth, sawCookie string
	mux.HandleFunc("GET /api/v1/media/{id}", func(w http.ResponseWriter, r *http.Request) {
		sawHeader, sawQuery = r.Header.Get("X-Test-Request"), r.URL.RawQuery
		sawAuth, sawCookie = r.Header.Get("Authorization"), r.Header.Get("Cookie")
		w.Header().Set("Set-Cookie", "session=dim")
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":`+r.PathValue("id")+`}`)
	})
	mux.HandleFunc("GET /api/v1/dashboard", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "rows") })
	s := dial(t, td.socket)
	mw, err := host.NewMiddleware(context.Background(), s, mux)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(mw)
	defer srv.Close()

	fetch := func(path string) (*http.Response, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}

	resp, body := fetch("/api/v1/media/5?a=b")
	if resp.StatusCode != 200 || body != `{"id":5}` || sawHeader != "mw" || sawQuery != "a=b&seen=mw" {
		t.Fatalf("hooked request: %d %q, handler saw header %q query %q", resp.StatusCode, body, sawHeader, sawQuery)
	}
	if resp.Header.Get("X-Test-Response") != "mw" || resp.Header.Get("X-Test-Hits") != "1" {
		t.Errorf("response hook not applied: %v", resp.Header)
	}

	// Credentials: plugins never see the user's session, cannot answer
	// with a cookie, and cannot forge or drop the user's credentials or
	// Dim's cookies.
	withCreds := func(path string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		req.Header.Set("Authorization", "secret-token")
		req.Header.Set("Cookie", "token=secret-token")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	resp, body = withCreds("/api/v1/media/5?creds=1")
	if resp.StatusCode != 200 || body != "authorization= cookie=" || resp.Header.Get("Set-Cookie") != "" {
		t.Errorf("a request hook saw credentials or set a cookie: %d %q Set-Cookie %q", resp.StatusCode, body, resp.Header.Values("Set-Cookie"))
	}
	resp, body = withCreds("/api/v1/media/6?forge=1")
	if resp.StatusCode != 200 || sawAuth != "secret-token" || sawCookie != "token=secret-token" {
		t.Errorf("a request hook changed the user's credentials: Dim saw Authorization %q Cookie %q", sawAuth, sawCookie)
	}
	if got := resp.Header.Values("Set-Cookie"); len(got) != 1 || got[0] != "session=dim" {
		t.Errorf("Set-Cookie after a response hook = %q, want Dim's own only", got)
	}
	if resp.Header.Get("X-Test-Response") != "mw" || resp.Header.Get("X-Test-Saw-Set-Cookie") != "" {
		t.Errorf("the response hook saw Dim's cookie: %q", resp.Header.Get("X-Test-Saw-Set-Cookie"))
	}

	resp, body = fetch("/api/v1/media/forbidden")
	if resp.StatusCode != 403 || body != "forbidden by mw" {
		t.Errorf("early answer: %d %q", resp.StatusCode, body)
	}
	resp, body = fetch("/plugin/a/b")
	if resp.StatusCode != 200 || body != "owned by mw: /plugin/a/b rest=a/b" {
		t.Errorf("owned route: %d %q", resp.StatusCode, body)
	}
	resp, body = fetch("/api/v1/media/1?panic=1")
	if resp.StatusCode != 502 || !strings.Contains(body, `plugin "mw"`) || !strings.Contains(body, "panicked") {
		t.Errorf("fail-closed failure: %d %q", resp.StatusCode, body)
	}

	before := td.dispatches.Load()
	for i := 0; i < 20; i++ {
		if resp, body := fetch("/api/v1/dashboard"); resp.StatusCode != 200 || body != "rows" {
			t.Fatalf("unhooked: %d %q", resp.StatusCode, body)
		}
	}
	if n := td.dispatches.Load() - before; n != 0 {
		t.Errorf("20 unhooked requests made %d dispatch calls, want 0", n)
	}

	// Disabling the plugin pushes a new route table: the hooked route
	// becomes unhooked without the host asking.
	v := mw.RouteTable().Version
	if _, err := td.ctl.Disable(context.Background(), "mw"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for mw.RouteTable().Version == v {
		if time.Now().After(deadline) {
			t.Fatal("the route table was not pushed after disable")
		}
		time.Sleep(10 * time.Millisecond)
	}
	before = td.dispatches.Load()
	if resp, body := fetch("/api/v1/media/5"); resp.StatusCode != 200 || body != `{"id":5}` || resp.Header.Get("X-Test-Response") != "" {
		t.Errorf("after disable: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	if n := td.dispatches.Load() - before; n != 0 {
		t.Errorf("a request to a route no longer hooked made %d dispatch calls", n)
	}
}

// TestMiddlewareLargeResponse: a response larger than the middleware's body
// limit skips fail-open response hooks and is sent unchanged, but is
// answered 502 when a fail-closed response hook is on its route: that hook
// must see every response.
func TestMiddlewareLargeResponse(t *testing.T) {
	td := startDaemon(t, testRuntime(t), fastSupervision)
	td.install(t, pluginDir(t, testplugManifest("big", nil,
		hooks("response", "GET", "/open/:id", "2s", "fail-open", 0)+
			strings.Replace(hooks("response", "GET", "/closed/:id", "2s", "fail-closed", 0), `name = "response-hook"`, `name = "closed-hook"`, 1))))
	waitState(t, td.ctl, "big", 30*time.Second, "running", running)
	large := strings.Repeat("x", 4096)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{kind}/{id}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") == "small" {
			io.WriteString(w, "small")
			return
		}
		io.WriteString(w, large)
	})
	mw, err := host.NewMiddleware(context.Background(), dial(t, td.socket), mux, host.WithMaxBody(1024))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(mw)
	defer srv.Close()
	for _, c := range []struct {
		path, hooked string
		status       int
		body         string
	}{
		{"/open/small", "big", 200, "small"},
		{"/closed/small", "big", 200, "small"},
		{"/open/1", "", 200, large},
		{"/closed/1", "", 502, "more than fail-closed response hook big/closed-hook may be given"},
	} {
		resp, err := http.Get(srv.URL + c.path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.status || !strings.Contains(string(b), c.body) || resp.Header.Get("X-Test-Response") != c.hooked {
			t.Errorf("%s: %d %.80q (X-Test-Response %q); want %d with %.80q, hooked by %q", c.path, resp.StatusCode, b, resp.Header.Get("X-Test-Response"), c.status, c.body, c.hooked)
		}
	}
}
