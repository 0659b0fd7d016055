package daemon

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/host"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// TestDirectLane: a host calls a phase's only hook over a direct lane to the
// plugin, with the same results and the same contract (deadline, failure
// policy, circuit breaker) as through the daemon, and falls back to the
// daemon when the plugin goes away.
func TestDirectLane(t *testing.T) {
	sup := fastSupervision
	sup.BreakerFailures = 3
	sup.BreakerCooldown = 300 * time.Millisecond
	sup.BackoffInitial = 500 * time.Millisecond
	td := startDaemon(t, testRuntime(t), sup)
	td.install(t, pluginDir(t, testplugManifest("direct", nil, hooks("request", "GET", "/d/:id", "100ms", "fail-closed", 0))))
	first := waitState(t, td.ctl, "direct", 30*time.Second, "running", running)
	s := dial(t, td.socket)

	// The first request asks for the lane; soon requests stop reaching
	// the daemon.
	deadline := time.Now().Add(10 * time.Second)
	for {
		before := td.dispatches.Load()
		res := dispatch(t, s, host.PhaseRequest, get("/d/1?x=1"), nil)
		if res.Kind != host.MutateRequest || res.RequestMutation.Header.Get("X-Test-Request") != "direct" ||
			res.RequestMutation.RawQuery != "x=1&seen=direct" || strings.Join(res.Applied, ",") != "direct/request-hook" {
			t.Fatalf("result: %+v", res)
		}
		if td.dispatches.Load() == before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the session never called the plugin directly")
		}
		time.Sleep(20 * time.Millisecond)
	}
	before := td.dispatches.Load()

	cases := []struct {
		path   string
		status int
		want   string
	}{
		{"/d/forbidden", 403, "forbidden by direct"},
		{"/d/1?sleep=1s", 503, "exceeded its 100ms deadline on GET /d/:id"},
		{"/d/1?panic=1", 502, "panicked"},
	}
	for _, c := range cases {
		res := dispatch(t, s, host.PhaseRequest, get(c.path), nil)
		var status int
		var body string
		switch res.Kind {
		case host.Respond:
			status, body = res.Response.Status, string(res.Response.Body)
		case host.FailClosed:
			status, body = res.FailureResponse().Status, string(res.FailureResponse().Body)
		}
		if status != c.status || !strings.Contains(body, c.want) {
			t.Errorf("%s: %d %q, want %d with %q", c.path, status, body, c.status, c.want)
		}
	}
	if n := td.dispatches.Load() - before; n != 0 {
		t.Errorf("%d requests went through the daemon while a direct lane was up", n)
	}
	// The host reports its direct calls: inspect counts them (the timeout
	// and the panic as failures).
	deadline = time.Now().Add(5 * time.Second)
	for {
		st, err := td.ctl.Inspect(context.Background(), "direct")
		if err != nil {
			t.Fatal(err)
		}
		if st.Hooks[0].Calls >= uint64(len(cases)+1) && st.Hooks[0].Failures >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("inspect does not count the direct calls: %+v", st.Hooks)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Three timeouts in a row open the breaker (the daemon's settings,
	// carried by the route table).
	for i := 0; i < 2; i++ {
		dispatch(t, s, host.PhaseRequest, get("/d/1?sleep=1s"), nil)
	}
	start := time.Now()
	res := dispatch(t, s, host.PhaseRequest, get("/d/1"), nil)
	if res.Kind != host.FailClosed || res.Failure.Kind != schema.HookErrorKind_unavailable || !strings.Contains(res.Failure.Message, "circuit breaker opened after 3 consecutive failures") {
		t.Fatalf("open breaker: %+v", res)
	}
	if time.Since(start) > 50*time.Millisecond {
		t.Errorf("an open breaker took %s to answer", time.Since(start))
	}
	time.Sleep(350 * time.Millisecond)
	if res := dispatch(t, s, host.PhaseRequest, get("/d/1"), nil); res.Kind != host.MutateRequest {
		t.Fatalf("probe after the cool-down: %+v", res)
	}

	// The plugin dies: the lane breaks and the daemon answers, clearly.
	syscall.Kill(first.PID, syscall.SIGKILL)
	waitState(t, td.ctl, "direct", 10*time.Second, "backoff", func(s *host.PluginStatus) bool { return s.State == StateBackoff })
	res = dispatch(t, s, host.PhaseRequest, get("/d/1"), nil)
	if res.Kind != host.FailClosed || !strings.Contains(res.Failure.Message, "is not running") {
		t.Fatalf("while the plugin is down: %+v", res)
	}
	waitState(t, td.ctl, "direct", 20*time.Second, "restarted", func(s *host.PluginStatus) bool { return s.State == StateRunning && s.PID != first.PID })
	deadline = time.Now().Add(10 * time.Second)
	for {
		res := dispatch(t, s, host.PhaseRequest, get("/d/2"), nil)
		if res.Kind != host.MutateRequest {
			t.Fatalf("after the restart: %+v", res)
		}
		b := td.dispatches.Load()
		dispatch(t, s, host.PhaseRequest, get("/d/3"), nil)
		if td.dispatches.Load() == b {
			break // direct again
		}
		if time.Now().After(deadline) {
			t.Fatal("the session did not get a new direct lane after the restart")
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = context.Background
}

// TestDirectLaneRefusalSaysWhy: a plugin that serves the hook lane (fd 4)
// but no frame socket (fd 5), over which the daemon hands plugins their
// direct lanes, gets no direct lane; the session says why (not "is not
// running"), and its calls go through the daemon with the same results.
func TestDirectLaneRefusalSaysWhy(t *testing.T) {
	td := startDaemon(t, testRuntime(t), fastSupervision)
	td.install(t, pluginDir(t, testplugManifest("noframes", []string{"-no-frames"}, hooks("request", "GET", "/n/:id", "2s", "fail-closed", 0))))
	waitState(t, td.ctl, "noframes", 30*time.Second, "running", running)
	s := dial(t, td.socket)
	var why string
	waitFor(t, 10*time.Second, "the session to hear why it has no direct lane", func() bool {
		res := dispatch(t, s, host.PhaseRequest, get("/n/1"), nil)
		if res.Kind != host.MutateRequest || res.RequestMutation.Header.Get("X-Test-Request") != "noframes" {
			t.Fatalf("result through the daemon: %+v", res)
		}
		var granted bool
		granted, why = s.DirectLane("noframes")
		if granted {
			t.Fatal("a direct lane to a plugin without a frame socket")
		}
		return why != ""
	})
	for _, want := range []string{`plugin "noframes" serves no frame socket`, "PluginInfo.frames, fd 5", "calls to it go through the daemon"} {
		if !strings.Contains(why, want) {
			t.Errorf("refusal %q does not say %q", why, want)
		}
	}
}

// TestDirectPhases: phases with several hooks from several plugins run over
// direct lanes, in the daemon's order and under its phase policy — a host
// calling the plugins itself answers exactly what the daemon answers (a
// session without direct lanes is the reference) — and none of it goes
// through the daemon.
func TestDirectPhases(t *testing.T) {
	// Priorities run against the names (pc, pb, pa), so the order is the
	// priorities', not the table's.
	td := startWithPlugins(t, fastSupervision,
		testPlugin{name: "pa", extra: hooks("request", "GET", "/multi/:id", "2s", "fail-open", 30) + hooks("response", "GET", "/multi/:id", "2s", "fail-open", 30)},
		testPlugin{name: "pb", extra: hooks("request", "GET", "/multi/:id", "150ms", "fail-closed", 20) + hooks("response", "GET", "/multi/:id", "2s", "fail-open", 20)},
		testPlugin{name: "pc", extra: hooks("request", "GET", "/multi/:id", "150ms", "fail-open", 10) + hooks("response", "GET", "/multi/:id", "150ms", "fail-open", 10)},
	)
	direct := dial(t, td.socket)
	viaDaemon := dial(t, td.socket, host.WithoutDirectLanes())
	resp := func() *host.Response { return &host.Response{Status: 200, Header: http.Header{}, Body: []byte("x")} }

	// Every lane of the phase is asked for at once; then nothing reaches
	// the daemon.
	waitFor(t, 10*time.Second, "the session to run both phases directly", func() bool {
		before := td.dispatches.Load()
		dispatch(t, direct, host.PhaseRequest, get("/multi/1"), nil)
		dispatch(t, direct, host.PhaseResponse, get("/multi/1"), resp())
		return td.dispatches.Load() == before
	})
	for _, p := range []string{"pa", "pb", "pc"} {
		if ok, why := direct.DirectLane(p); !ok {
			t.Fatalf("no direct lane to %s: %s", p, why)
		}
	}
	before := td.dispatches.Load()

	same := func(t *testing.T, what string, got, want *host.Result) {
		t.Helper()
		norm := func(r *host.Result) string {
			r.ResponseMutation.Header.Del("X-Test-Hits") // each plugin's own counter
			s := fmt.Sprintf("kind=%d applied=%v mutreq=%+v mutresp=%+v", r.Kind, r.Applied, r.RequestMutation, r.ResponseMutation)
			if r.Response != nil {
				s += fmt.Sprintf(" respond=%d %q", r.Response.Status, r.Response.Body)
			}
			if r.Failure != nil {
				s += fmt.Sprintf(" failure=%s/%s %d %q", r.Failure.Plugin, r.Failure.Hook, r.Failure.Kind, r.Failure.Message)
			}
			for _, e := range r.Skipped {
				s += fmt.Sprintf(" skipped=%s/%s %d %q", e.Plugin, e.Hook, e.Kind, e.Message)
			}
			return s
		}
		if g, w := norm(got), norm(want); g != w {
			t.Errorf("%s:\ndirect:     %s\nvia daemon: %s", what, g, w)
		}
	}
	cases := []struct {
		name, path string
		check      func(t *testing.T, r *host.Result)
	}{
		{"in priority order", "/multi/1?x=1", func(t *testing.T, r *host.Result) {
			if r.Kind != host.MutateRequest || r.RequestMutation.RawQuery != "x=1&seen=pc&seen=pb&seen=pa" ||
				strings.Join(r.Applied, ",") != "pc/request-hook,pb/request-hook,pa/request-hook" {
				t.Errorf("%+v", r)
			}
		}},
		{"the first answer ends the phase", "/multi/forbidden", func(t *testing.T, r *host.Result) {
			if r.Kind != host.Respond || r.Response.Status != 403 || strings.Join(r.Applied, ",") != "pc/request-hook" {
				t.Errorf("%+v", r)
			}
		}},
		{"a fail-open timeout is skipped, a fail-closed one fails the request", "/multi/1?sleep=400ms", func(t *testing.T, r *host.Result) {
			if r.Kind != host.FailClosed || r.Failure.Plugin != "pb" || r.Failure.Kind != schema.HookErrorKind_timeout ||
				len(r.Skipped) != 1 || r.Skipped[0].Plugin != "pc" {
				t.Errorf("%+v", r)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := dispatch(t, direct, host.PhaseRequest, get(c.path), nil)
			c.check(t, got)
			same(t, c.path, got, dispatch(t, viaDaemon, host.PhaseRequest, get(c.path), nil))
		})
	}
	// Response hooks run in reverse (pa, pb, pc); a fail-open timeout
	// (pc's, 150 ms, while pa and pb sleep 200 ms within their 2 s) is
	// skipped.
	t.Run("response phase", func(t *testing.T) {
		got := dispatch(t, direct, host.PhaseResponse, get("/multi/1"), resp())
		if got.Kind != host.MutateResponse || strings.Join(got.ResponseMutation.Header.Values("X-Test-Response"), ",") != "pa,pb,pc" {
			t.Errorf("%+v", got)
		}
		same(t, "response", got, dispatch(t, viaDaemon, host.PhaseResponse, get("/multi/1"), resp()))
		got = dispatch(t, direct, host.PhaseResponse, get("/multi/1?respsleep=200ms"), resp())
		if len(got.Skipped) != 1 || got.Skipped[0].Plugin != "pc" || strings.Join(got.Applied, ",") != "pa/response-hook,pb/response-hook" {
			t.Errorf("skipped timeout: %+v", got)
		}
		same(t, "response with a timeout", got, dispatch(t, viaDaemon, host.PhaseResponse, get("/multi/1?respsleep=200ms"), resp()))
	})
	if n := td.dispatches.Load() - before; n != int64(len(cases)+2) {
		t.Errorf("%d dispatches reached the daemon, want only the %d of the session without direct lanes", n, len(cases)+2)
	}

	// A plugin of the phase dies: its fail-closed hook fails the request
	// as unavailable (on its lane, which broke, or through the daemon while
	// it restarts), and the phase is direct again once it is back.
	pb, err := td.ctl.Inspect(context.Background(), "pb")
	if err != nil {
		t.Fatal(err)
	}
	syscall.Kill(pb.PID, syscall.SIGKILL)
	waitState(t, td.ctl, "pb", 10*time.Second, "backoff", func(s *host.PluginStatus) bool { return s.State == StateBackoff })
	for range 2 {
		r := dispatch(t, direct, host.PhaseRequest, get("/multi/1"), nil)
		if r.Kind != host.FailClosed || r.Failure.Plugin != "pb" || r.Failure.Kind != schema.HookErrorKind_unavailable {
			t.Fatalf("while pb is down: %+v", r)
		}
	}
	waitState(t, td.ctl, "pb", 20*time.Second, "restarted", func(s *host.PluginStatus) bool { return s.State == StateRunning && s.PID != pb.PID })
	waitFor(t, 10*time.Second, "the phase to be direct again", func() bool {
		b := td.dispatches.Load()
		r := dispatch(t, direct, host.PhaseRequest, get("/multi/1?x=1"), nil)
		if r.RequestMutation.RawQuery != "x=1&seen=pc&seen=pb&seen=pa" {
			t.Fatalf("after the restart: %+v", r)
		}
		return td.dispatches.Load() == b
	})
}

func hasHookOf(t *host.RouteTable, plugin string) bool {
	for _, e := range t.Entries {
		for _, h := range e.Hooks {
			if h.Plugin == plugin {
				return true
			}
		}
	}
	return false
}
