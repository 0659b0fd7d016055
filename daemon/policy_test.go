package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/host"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// TestCircuitBreakerAndDeadlineOverride: a hook that keeps timing out stops
// being called until a probe succeeds; the operator can change a hook's
// deadline without reinstalling.
func TestCircuitBreakerAndDeadlineOverride(t *testing.T) {
	sup := fastSupervision
	sup.BreakerFailures = 3
	sup.BreakerCooldown = 300 * time.Millisecond
	td := startDaemon(t, testRuntime(t), sup)
	td.install(t, pluginDir(t, testplugManifest("flaky", nil, hooks("request", "GET", "/b/:id", "50ms", "fail-open", 0))))
	waitState(t, td.ctl, "flaky", 30*time.Second, "running", running)
	// The daemon's breaker (inspect shows it); TestDirectLane covers the
	// same contract on a host's direct lane.
	s := dial(t, td.socket, host.WithoutLane())

	for i := 0; i < 3; i++ {
		res := dispatch(t, s, host.PhaseRequest, get("/b/1?sleep=1s"), nil)
		if len(res.Skipped) != 1 || res.Skipped[0].Kind != schema.HookErrorKind_timeout {
			t.Fatalf("slow call %d: %+v", i, res)
		}
	}
	// Open: even a fast request is not sent to the plugin.
	start := time.Now()
	res := dispatch(t, s, host.PhaseRequest, get("/b/1"), nil)
	if len(res.Skipped) != 1 || !strings.Contains(res.Skipped[0].Message, "circuit breaker opened after 3 consecutive failures") {
		t.Fatalf("open circuit: %+v", res)
	}
	if took := time.Since(start); took > 40*time.Millisecond {
		t.Logf("note: a short-circuited dispatch took %s", took)
	}
	st, _ := td.ctl.Inspect(context.Background(), "flaky")
	if h := st.Hooks[0]; h.Circuit != "open" || h.Failures != 3 || h.Calls != 3 {
		t.Errorf("inspect while open: %+v", h)
	}
	// After the cool-down a good probe closes it.
	time.Sleep(350 * time.Millisecond)
	if res := dispatch(t, s, host.PhaseRequest, get("/b/1"), nil); res.Kind != host.MutateRequest {
		t.Fatalf("probe: %+v", res)
	}
	if res := dispatch(t, s, host.PhaseRequest, get("/b/1"), nil); res.Kind != host.MutateRequest {
		t.Fatalf("closed again: %+v", res)
	}

	// Operator override: 50ms → 2s lets the slow request through.
	st, err := td.ctl.SetHookDeadline(context.Background(), "flaky", "request-hook", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if h := st.Hooks[0]; h.Deadline != "2s" || !h.DeadlineOverridden {
		t.Fatalf("after override: %+v", h)
	}
	if res := dispatch(t, s, host.PhaseRequest, get("/b/1?sleep=200ms"), nil); res.Kind != host.MutateRequest {
		t.Fatalf("with the longer deadline: %+v", res)
	}
	if _, err := td.ctl.SetHookDeadline(context.Background(), "flaky", "nosuch", time.Second); err == nil || !strings.Contains(err.Error(), `has no hook "nosuch"`) {
		t.Errorf("override of a missing hook: %v", err)
	}
	st, _ = td.ctl.SetHookDeadline(context.Background(), "flaky", "request-hook", 0)
	if h := st.Hooks[0]; h.Deadline != "50ms" || h.DeadlineOverridden {
		t.Errorf("after reset: %+v", h)
	}
}

// TestRouteConflicts: two plugins cannot own overlapping routes; the second
// install is refused with a clear error and leaves nothing behind.
func TestRouteConflicts(t *testing.T) {
	td := startDaemon(t, testRuntime(t), fastSupervision)
	td.install(t, pluginDir(t, testplugManifest("owner", nil, hooks("route", "GET", "/api/v1/stream/:gid/hls/*file", "1s", "fail-closed", 0))))
	archive, err := host.Archive(pluginDir(t, testplugManifest("usurper", nil, hooks("route", "*", "/api/v1/stream/:id/hls/master.m3u8", "1s", "fail-closed", 0))))
	if err != nil {
		t.Fatal(err)
	}
	_, err = td.ctl.Install(context.Background(), archive, host.InstallOptions{Enable: true})
	if err == nil || !strings.Contains(err.Error(), `plugin "usurper" hook "route-hook" wants to own * /api/v1/stream/:id/hls/master.m3u8, which overlaps GET /api/v1/stream/:gid/hls/*file owned by plugin "owner"`) {
		t.Fatalf("conflicting install: %v", err)
	}
	if _, err := td.ctl.Inspect(context.Background(), "usurper"); err == nil {
		t.Error("the refused plugin was left installed")
	}
	// Installed disabled it is allowed; enabling it is refused.
	if _, err := td.ctl.Install(context.Background(), archive, host.InstallOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := td.ctl.Enable(context.Background(), "usurper"); err == nil || !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(err.Error(), "route conflict") {
		t.Errorf("conflicting enable: %v", err)
	}
	// Disjoint routes are fine.
	td.install(t, pluginDir(t, testplugManifest("neighbour", nil, hooks("route", "GET", "/api/v1/stream/:gid/dash/*file", "1s", "fail-closed", 0))))
}

// TestBodyLimits: hooked request bodies are buffered up to the limit, and a
// larger one is refused with 413 — never truncated; a large response skips
// the response hooks and reaches the client whole.
func TestBodyLimits(t *testing.T) {
	td := startDaemon(t, testRuntime(t), fastSupervision)
	td.install(t, pluginDir(t, testplugManifest("bodies", nil,
		hooks("request", "POST", "/up/:id", "2s", "fail-open", 0)+hooks("response", "GET", "/down/:id", "2s", "fail-open", 0))))
	waitState(t, td.ctl, "bodies", 30*time.Second, "running", running)
	s := dial(t, td.socket)
	mux := http.NewServeMux()
	var got []byte
	mux.HandleFunc("POST /up/{id}", func(w http.ResponseWriter, r *http.Request) { got, _ = io.ReadAll(r.Body) })
	big := bytes.Repeat([]byte("x"), 3000)
	mux.HandleFunc("GET /down/{id}", func(w http.ResponseWriter, r *http.Request) { w.Write(big) })
	mw, err := host.NewMiddleware(context.Background(), s, mux, host.WithMaxBody(1024), host.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(mw)
	defer srv.Close()

	resp, err := http.Post(srv.URL+"/up/1", "text/plain", bytes.NewReader(bytes.Repeat([]byte("a"), 1000)))
	if err != nil || resp.StatusCode != 200 || len(got) != 1000 {
		t.Fatalf("body under the limit: %v %v, handler got %d bytes", err, resp.StatusCode, len(got))
	}
	got = nil
	resp, err = http.Post(srv.URL+"/up/1", "text/plain", bytes.NewReader(bytes.Repeat([]byte("a"), 1025)))
	if err != nil || resp.StatusCode != http.StatusRequestEntityTooLarge || got != nil {
		t.Fatalf("body over the limit: %v %v, handler got %d bytes", err, resp.StatusCode, len(got))
	}
	resp, err = http.Get(srv.URL + "/down/1")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Equal(b, big) || resp.Header.Get("X-Test-Response") != "" {
		t.Fatalf("large response: %d, %d bytes, hooks applied: %q", resp.StatusCode, len(b), resp.Header.Get("X-Test-Response"))
	}
}

// TestKillPluginUnderLoad kills plugins while 16 clients send requests: with
// fail-open hooks no request fails; with fail-closed hooks every failure is
// a 502/503 naming the plugin; no request hangs or gets a wrong answer.
func TestKillPluginUnderLoad(t *testing.T) {
	sup := fastSupervision
	sup.BackoffInitial = 100 * time.Millisecond
	sup.QuarantineCrashes = 100
	td := startDaemon(t, testRuntime(t), sup)
	td.install(t, pluginDir(t, testplugManifest("open", nil, hooks("request", "GET", "/open/:id", "2s", "fail-open", 0))))
	td.install(t, pluginDir(t, testplugManifest("closed", nil, hooks("request", "GET", "/closed/:id", "2s", "fail-closed", 0))))
	for _, n := range []string{"open", "closed"} {
		waitState(t, td.ctl, n, 30*time.Second, "running", running)
	}
	s := dial(t, td.socket)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{kind}/{id}", func(w http.ResponseWriter, r *http.Request) {
		// Echo what the plugin added, so a wrong answer shows.
		fmt.Fprintf(w, "%s %s %s", r.PathValue("id"), r.Header.Get("X-Test-Request"), r.URL.Query().Get("seen"))
	})
	mw, err := host.NewMiddleware(context.Background(), s, mux, host.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(mw)
	defer srv.Close()
	client := &http.Client{Timeout: 10 * time.Second}

	var (
		stop                               atomic.Bool
		ok, degraded, failedClosed, bad, n atomic.Int64
		mu                                 sync.Mutex
		firstBad                           string
	)
	report := func(s string) {
		bad.Add(1)
		mu.Lock()
		if firstBad == "" {
			firstBad = s
		}
		mu.Unlock()
	}
	var wg sync.WaitGroup
	for c := 0; c < 16; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			kind := "open"
			if c%2 == 1 {
				kind = "closed"
			}
			for i := 0; !stop.Load(); i++ {
				n.Add(1)
				id := fmt.Sprintf("%d-%d", c, i)
				resp, err := client.Get(srv.URL + "/" + kind + "/" + id)
				if err != nil {
					report(fmt.Sprintf("%s request %s: %v", kind, id, err))
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				body := string(b)
				switch {
				case resp.StatusCode == 200 && body == id+" "+kind+" "+kind:
					ok.Add(1)
				case resp.StatusCode == 200 && kind == "open" && body == id+"  ":
					degraded.Add(1) // the hook was skipped: fail-open at work
				case kind == "closed" && (resp.StatusCode == 502 || resp.StatusCode == 503) && strings.Contains(body, `plugin "closed"`):
					failedClosed.Add(1)
				default:
					report(fmt.Sprintf("%s request %s: %d %q", kind, id, resp.StatusCode, body))
				}
			}
		}(c)
	}
	ctx := context.Background()
	for round := 0; round < 3; round++ {
		time.Sleep(300 * time.Millisecond)
		for _, name := range []string{"open", "closed"} {
			st, err := td.ctl.Inspect(ctx, name)
			if err == nil && st.PID != 0 {
				syscall.Kill(st.PID, syscall.SIGKILL)
			}
		}
		for _, name := range []string{"open", "closed"} {
			waitState(t, td.ctl, name, 20*time.Second, "running again", running)
		}
	}
	time.Sleep(200 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	t.Logf("%d requests: %d ok, %d degraded (fail-open), %d failed closed, %d bad", n.Load(), ok.Load(), degraded.Load(), failedClosed.Load(), bad.Load())
	if bad.Load() != 0 {
		t.Fatalf("%d requests got an error, a hang or a wrong answer; first: %s", bad.Load(), firstBad)
	}
	if ok.Load() == 0 || degraded.Load()+failedClosed.Load() == 0 {
		t.Fatalf("the kills were not observed (ok %d, degraded %d, failed closed %d)", ok.Load(), degraded.Load(), failedClosed.Load())
	}
}

// TestPolicyCounts: every call answered by policy instead of the plugin
// is counted under its cause in inspect, after a known sequence of faults:
// three missed deadlines open the breaker, two more calls meet the open
// breaker, and four calls arrive while another plugin is down after a
// crash.
func TestPolicyCounts(t *testing.T) {
	sup := fastSupervision
	sup.BreakerFailures = 3
	sup.BreakerCooldown = time.Minute
	sup.BackoffInitial = 3 * time.Second
	td := startDaemon(t, testRuntime(t), sup)
	td.install(t, pluginDir(t, testplugManifest("counted", nil, hooks("request", "GET", "/c/:id", "100ms", "fail-open", 0))))
	td.install(t, pluginDir(t, testplugManifest("victim", nil, hooks("request", "GET", "/v/:id", "1s", "fail-open", 0))))
	waitState(t, td.ctl, "counted", 30*time.Second, "running", running)
	victim := waitState(t, td.ctl, "victim", 30*time.Second, "running", running)
	s := dial(t, td.socket, host.WithoutDirectLanes()) // the daemon makes every call

	for i := 0; i < 5; i++ {
		dispatch(t, s, host.PhaseRequest, get("/c/1?sleep=300ms"), nil)
	}
	if err := syscall.Kill(victim.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitState(t, td.ctl, "victim", 10*time.Second, "backoff", func(st *host.PluginStatus) bool { return st.State == StateBackoff })
	for i := 0; i < 4; i++ {
		if res := dispatch(t, s, host.PhaseRequest, get("/v/1"), nil); res.Kind != host.Continue || len(res.Skipped) != 1 {
			t.Fatalf("a call to a plugin that is down: %+v", res)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, c := range []struct {
		plugin string
		want   map[string]uint64
	}{
		{"counted", map[string]uint64{"deadline": 3, "breaker open": 2}},
		{"victim", map[string]uint64{"not running": 4}},
	} {
		st, err := td.ctl.Inspect(ctx, c.plugin)
		if err != nil {
			t.Fatal(err)
		}
		if got := st.Hooks[0].ByPolicy; !maps.Equal(got, c.want) {
			t.Errorf("%s: answered by policy %v, want %v", c.plugin, got, c.want)
		}
	}
}
