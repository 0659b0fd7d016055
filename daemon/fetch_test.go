package daemon

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/host"
)

// TestFetchCapability: a sandboxed plugin has no network, but reaches the
// hosts the operator granted through the daemon's Fetcher capability, and
// nothing else — not another port, not a redirect elsewhere.
func TestFetchCapability(t *testing.T) {
	var hits int
	allowed := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits++
		if r.URL.Path == "/redirect" {
			http.Redirect(w, r, r.URL.Query().Get("to"), http.StatusFound)
			return
		}
		io.WriteString(w, "subtitles for "+r.URL.Path)
	}))
	defer allowed.Close()
	var forbiddenHits int
	forbidden := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { forbiddenHits++ }))
	defer forbidden.Close()
	allowedHost := strings.TrimPrefix(allowed.URL, "http://")

	td := startDaemon(t, testRuntime(t), fastSupervision)
	td.install(t, pluginDir(t, testplugManifest("fetcher", nil,
		fmt.Sprintf("[permissions]\noutbound_hosts = [%q]\n", allowedHost)+hooks("request", "GET", "/f/:id", "10s", "fail-open", 0))))
	td.install(t, pluginDir(t, testplugManifest("offline", nil, hooks("request", "GET", "/o/:id", "10s", "fail-open", 0))))
	waitState(t, td.ctl, "fetcher", 30*time.Second, "running", running)
	waitState(t, td.ctl, "offline", 30*time.Second, "running", running)
	s := dial(t, td.socket)

	fetch := func(route, target string) *host.Response {
		t.Helper()
		res := dispatch(t, s, host.PhaseRequest, get(route+"?fetch="+url.QueryEscape(target)), nil)
		if res.Kind != host.Respond {
			t.Fatalf("fetch %s via %s: got %+v", target, route, res)
		}
		return res.Response
	}
	if r := fetch("/f/1", allowed.URL+"/movie/42.srt"); r.Status != 200 || string(r.Body) != "subtitles for /movie/42.srt" {
		t.Errorf("granted host: %d %q", r.Status, r.Body)
	}
	if r := fetch("/f/1", forbidden.URL+"/x"); r.Status != 598 || !strings.Contains(string(r.Body), "may not connect to") {
		t.Errorf("host outside the grant: %d %q", r.Status, r.Body)
	}
	// The daemon returns redirects; following one is a new fetch, checked
	// against the grant like the first.
	if r := fetch("/f/1", allowed.URL+"/redirect?to="+url.QueryEscape(forbidden.URL+"/y")); r.Status != 598 ||
		!strings.Contains(string(r.Body), "may not connect to "+strings.TrimPrefix(forbidden.URL, "http://")) {
		t.Errorf("a redirect outside the grant: %d %q", r.Status, r.Body)
	}
	if forbiddenHits != 0 {
		t.Errorf("the host outside the grant received %d requests", forbiddenHits)
	}
	if r := fetch("/o/1", allowed.URL+"/z"); r.Status != 599 {
		t.Errorf("a plugin without a grant got a fetch capability: %d %q", r.Status, r.Body)
	}
	if hits != 2 {
		t.Errorf("granted host got %d requests, want 2", hits)
	}
}
