package daemon

import (
	"context"
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
