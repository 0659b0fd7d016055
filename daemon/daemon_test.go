package daemon

import (
	"context"
	"errors"
	"net/http"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/host"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

const requestHook = `
[[hooks]]
name = "tag"
phase = "request"
method = "GET"
route = "/api/v1/media/:id"
deadline = "%s"
failure = "%s"
`

func hooks(phase, method, route, deadline, failure string, priority int) string {
	return "\n[[hooks]]\nname = \"" + phase + "-hook\"\nphase = \"" + phase + "\"\nmethod = \"" + method +
		"\"\nroute = \"" + route + "\"\ndeadline = \"" + deadline + "\"\nfailure = \"" + failure +
		"\"\npriority = " + itoa(priority) + "\n"
}

func itoa(i int) string {
	if i < 0 {
		return "-" + itoa(-i)
	}
	if i < 10 {
		return string(rune('0' + i))
	}
	return itoa(i/10) + string(rune('0'+i%10))
}

func get(path string) *host.Request {
	p, q, _ := strings.Cut(path, "?")
	return &host.Request{Method: "GET", Path: p, RawQuery: q, Header: http.Header{"Accept": {"application/json"}}}
}

func dispatch(t *testing.T, s *host.Session, phase host.Phase, req *host.Request, resp *host.Response) *host.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := s.Dispatch(ctx, phase, req, resp)
	if err != nil {
		t.Fatalf("dispatch %s %s: %v", phase, req.Path, err)
	}
	return res
}

// TestPhasesAndOrdering drives every phase through real plugin processes:
// two plugins hook the same route; request hooks run in priority order,
// response hooks in reverse; a plugin can answer early, own a route and
// observe.
func TestPhasesAndOrdering(t *testing.T) {
	td := startDaemon(t, testRuntime(t), fastSupervision)
	td.install(t, pluginDir(t, testplugManifest("alpha", nil,
		hooks("request", "GET", "/api/v1/media/:id", "2s", "fail-open", 1)+
			hooks("response", "GET", "/api/v1/media/:id", "2s", "fail-open", 1)+
			hooks("observe", "*", "/api/v1/media/:id", "2s", "fail-open", 0))))
	td.install(t, pluginDir(t, testplugManifest("beta", nil,
		hooks("request", "GET", "/api/v1/media/:id", "2s", "fail-open", 2)+
			hooks("response", "GET", "/api/v1/media/:id", "2s", "fail-open", 2)+
			hooks("route", "GET", "/api/v1/stream/:gid/data/*path", "2s", "fail-closed", 0))))
	for _, n := range []string{"alpha", "beta"} {
		waitState(t, td.ctl, n, 30*time.Second, "running", running)
	}
	s := dial(t, td.socket)

	t.Run("request phase mutates in priority order", func(t *testing.T) {
		res := dispatch(t, s, host.PhaseRequest, get("/api/v1/media/42?x=1"), nil)
		if res.Kind != host.MutateRequest {
			t.Fatalf("kind = %v, want MutateRequest (%+v)", res.Kind, res)
		}
		if got := res.RequestMutation.Header.Values("X-Test-Request"); strings.Join(got, ",") != "alpha,beta" {
			t.Errorf("X-Test-Request = %v, want [alpha beta]", got)
		}
		if got := res.RequestMutation.RawQuery; got != "x=1&seen=alpha&seen=beta" {
			t.Errorf("query = %q", got)
		}
		if strings.Join(res.Applied, " ") != "alpha/request-hook beta/request-hook" {
			t.Errorf("applied = %v", res.Applied)
		}
	})
	t.Run("request phase answers early", func(t *testing.T) {
		res := dispatch(t, s, host.PhaseRequest, get("/api/v1/media/forbidden"), nil)
		if res.Kind != host.Respond || res.Response.Status != 403 || string(res.Response.Body) != "forbidden by alpha" {
			t.Fatalf("got %+v, want alpha's 403", res)
		}
	})
	t.Run("response phase runs in reverse order", func(t *testing.T) {
		resp := &host.Response{Status: 200, Header: http.Header{"Content-Type": {"application/json"}}, Body: []byte(`{}`)}
		res := dispatch(t, s, host.PhaseResponse, get("/api/v1/media/42"), resp)
		if res.Kind != host.MutateResponse {
			t.Fatalf("kind = %v, want MutateResponse", res.Kind)
		}
		if got := res.ResponseMutation.Header.Values("X-Test-Response"); strings.Join(got, ",") != "beta,alpha" {
			t.Errorf("X-Test-Response = %v, want [beta alpha]", got)
		}
	})
	t.Run("route phase: the owner answers with captured params", func(t *testing.T) {
		res := dispatch(t, s, host.PhaseRoute, get("/api/v1/stream/9/data/720p/3.m4s"), nil)
		if res.Kind != host.Respond || string(res.Response.Body) != "owned by beta: /api/v1/stream/9/data/720p/3.m4s gid=9,path=720p/3.m4s" {
			t.Fatalf("got %+v", res)
		}
	})
	t.Run("unmatched routes change nothing", func(t *testing.T) {
		res := dispatch(t, s, host.PhaseRequest, get("/api/v1/library/1"), nil)
		if res.Kind != host.Continue || len(res.Applied) != 0 {
			t.Fatalf("got %+v, want Continue", res)
		}
		rt, err := s.Routes(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if ps := rt.Match("GET", "/api/v1/library/1"); ps != nil {
			t.Errorf("route table matches an unhooked route: %v", ps)
		}
		if ps := rt.Match("GET", "/api/v1/media/1"); len(ps) != 3 {
			t.Errorf("route table phases for media = %v, want request, response, observe", ps)
		}
	})
	t.Run("observe stores into KV", func(t *testing.T) {
		res := dispatch(t, s, host.PhaseObserve, get("/api/v1/media/77"), &host.Response{Status: 200})
		if res.Kind != host.Continue {
			t.Fatalf("observe kind = %v", res.Kind)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			v, ok, _ := td.store.KV("alpha").Get("observed")
			if ok && string(v) == "/api/v1/media/77" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("observer never stored the path (got %q)", v)
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// TestDeadlinesAndPanics checks that a slow or panicking plugin degrades one
// call with a clear error, according to the hook's failure policy.
func TestDeadlinesAndPanics(t *testing.T) {
	td := startDaemon(t, testRuntime(t), fastSupervision)
	td.install(t, pluginDir(t, testplugManifest("slowopen", nil, hooks("request", "GET", "/open/:id", "100ms", "fail-open", 0))))
	td.install(t, pluginDir(t, testplugManifest("slowclosed", nil, hooks("request", "GET", "/closed/:id", "100ms", "fail-closed", 0))))
	waitState(t, td.ctl, "slowopen", 30*time.Second, "running", running)
	waitState(t, td.ctl, "slowclosed", 30*time.Second, "running", running)
	s := dial(t, td.socket)

	start := time.Now()
	res := dispatch(t, s, host.PhaseRequest, get("/open/1?sleep=2s"), nil)
	if took := time.Since(start); took > 1500*time.Millisecond {
		t.Errorf("a 100ms deadline took %s", took)
	}
	if res.Kind != host.Continue || len(res.Skipped) != 1 || res.Skipped[0].Kind != schema.HookErrorKind_timeout ||
		!strings.Contains(res.Skipped[0].Message, "exceeded its 100ms deadline on GET /open/:id") {
		t.Fatalf("fail-open timeout: got %+v", res)
	}

	res = dispatch(t, s, host.PhaseRequest, get("/closed/1?sleep=2s"), nil)
	if res.Kind != host.FailClosed || res.Failure.Plugin != "slowclosed" || res.FailureResponse().Status != 503 {
		t.Fatalf("fail-closed timeout: got %+v", res)
	}
	if body := string(res.FailureResponse().Body); !strings.Contains(body, `plugin "slowclosed"`) || !strings.Contains(body, "deadline") {
		t.Errorf("failure body %q does not name the plugin and the reason", body)
	}

	res = dispatch(t, s, host.PhaseRequest, get("/closed/1?panic=1"), nil)
	if res.Kind != host.FailClosed || res.FailureResponse().Status != 502 || !strings.Contains(res.Failure.Message, "panicked") {
		t.Fatalf("panic: got %+v", res)
	}
	// The panic was contained: the plugin still answers.
	res = dispatch(t, s, host.PhaseRequest, get("/closed/2"), nil)
	if res.Kind != host.MutateRequest {
		t.Fatalf("after panic: got %+v", res)
	}
	st, _ := td.ctl.Inspect(context.Background(), "slowclosed")
	if st.Restarts != 0 {
		t.Errorf("a panicking handler restarted the plugin (%d restarts)", st.Restarts)
	}
}

// TestPluginCrashRestartAndQuarantine kills a plugin with SIGKILL: hosts get
// a clear error while it is down, the daemon restarts it with backoff, and a
// plugin that keeps crashing is quarantined.
func TestPluginCrashRestartAndQuarantine(t *testing.T) {
	sup := fastSupervision
	sup.BackoffInitial = 700 * time.Millisecond
	td := startDaemon(t, testRuntime(t), sup)
	td.install(t, pluginDir(t, testplugManifest("victim", nil, hooks("request", "GET", "/api/v1/media/:id", "1s", "fail-closed", 0))))
	st := waitState(t, td.ctl, "victim", 30*time.Second, "running", running)
	s := dial(t, td.socket)

	if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	down := waitState(t, td.ctl, "victim", 10*time.Second, "backoff", func(s *host.PluginStatus) bool { return s.State == StateBackoff })
	if !strings.Contains(down.Detail, "killed by signal SIGKILL") && !strings.Contains(down.Detail, "signal") {
		t.Errorf("backoff detail %q does not say how the plugin died", down.Detail)
	}
	start := time.Now()
	res := dispatch(t, s, host.PhaseRequest, get("/api/v1/media/1"), nil)
	if time.Since(start) > 500*time.Millisecond {
		t.Errorf("dispatch to a dead plugin took %s; it must fail fast", time.Since(start))
	}
	if res.Kind != host.FailClosed || res.Failure.Kind != schema.HookErrorKind_unavailable ||
		!strings.Contains(res.Failure.Message, "is not running") || res.FailureResponse().Status != 503 {
		t.Fatalf("while down: got %+v", res)
	}

	back := waitState(t, td.ctl, "victim", 20*time.Second, "restarted", func(s *host.PluginStatus) bool {
		return s.State == StateRunning && s.PID != st.PID
	})
	if back.Restarts != 1 {
		t.Errorf("restarts = %d, want 1", back.Restarts)
	}
	if res := dispatch(t, s, host.PhaseRequest, get("/api/v1/media/1"), nil); res.Kind != host.MutateRequest {
		t.Fatalf("after restart: got %+v", res)
	}

	// A crash loop ends in quarantine.
	td.install(t, pluginDir(t, testplugManifest("crasher", []string{"-crash"}, hooks("request", "GET", "/crash/:id", "1s", "fail-closed", 0))))
	q := waitState(t, td.ctl, "crasher", 30*time.Second, "quarantined", func(s *host.PluginStatus) bool { return s.State == StateQuarantined })
	if !strings.Contains(q.Detail, "crashed 3 times") || !strings.Contains(q.Detail, "dimplugctl restart crasher") {
		t.Errorf("quarantine detail %q does not explain what happened and what to do", q.Detail)
	}
	res = dispatch(t, s, host.PhaseRequest, get("/crash/1"), nil)
	if res.Kind != host.FailClosed || !strings.Contains(res.Failure.Message, "quarantined") {
		t.Fatalf("quarantined: got %+v", res)
	}
	logs, err := td.ctl.Logs(context.Background(), "crasher", 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !containsLine(logs, "crashing on purpose") || !containsLine(logs, "quarantined") {
		t.Errorf("logs lack the plugin's stderr or the quarantine note: %+v", logs)
	}
	// restart lifts the quarantine (and the plugin crashes again).
	if _, err := td.ctl.Restart(context.Background(), "crasher"); err != nil {
		t.Fatal(err)
	}
	waitState(t, td.ctl, "crasher", 10*time.Second, "out of quarantine", func(s *host.PluginStatus) bool { return s.State != StateQuarantined })
}

func containsLine(lines []host.LogLine, s string) bool {
	for _, l := range lines {
		if strings.Contains(l.Text, s) {
			return true
		}
	}
	return false
}

// TestHandshakeMismatch: a plugin or a host offering only an unsupported
// protocol version gets a clear error naming both sides' versions, on both
// sides.
func TestHandshakeMismatch(t *testing.T) {
	td := startDaemon(t, testRuntime(t), fastSupervision)
	td.install(t, pluginDir(t, testplugManifest("future", []string{"-versions", "99"}, hooks("request", "GET", "/x/:id", "1s", "fail-open", 0))))
	st := waitState(t, td.ctl, "future", 30*time.Second, "failed", func(s *host.PluginStatus) bool { return s.State == StateFailed })
	if want := `plugin protocol version mismatch: plugin "future" speaks v99 but the daemon speaks v1`; !strings.Contains(st.Detail, want) {
		t.Errorf("daemon side: detail %q, want it to contain %q", st.Detail, want)
	}
	if st.Restarts != 0 {
		t.Errorf("a version mismatch was retried %d times; restarting cannot fix it", st.Restarts)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		logs, _ := td.ctl.Logs(context.Background(), "future", 0, nil)
		if containsLine(logs, "plugin protocol version mismatch: the daemon speaks v1 but this plugin speaks v99") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("plugin side: its stderr never reported the mismatch: %+v", logs)
		}
		time.Sleep(20 * time.Millisecond)
	}

	ctx := context.Background()
	_, err := host.Dial(ctx, td.socket, host.WithProtocolVersions(99))
	var vm *schema.VersionMismatchError
	if !errors.As(err, &vm) || !strings.Contains(err.Error(), "the daemon speaks v1 but this host speaks v99") {
		t.Fatalf("host side: got %v", err)
	}
	_, err = host.DialControl(ctx, td.control, host.WithProtocolVersions(99))
	if !errors.As(err, &vm) {
		t.Fatalf("control side: got %v", err)
	}
}

// TestNoLeaksAfterStartStopCycles starts and stops a plugin 200 times and
// checks that the daemon's goroutines and file descriptors come back to
// where they were.
func TestNoLeaksAfterStartStopCycles(t *testing.T) {
	cycles := 200
	if testing.Short() {
		cycles = 20
	}
	td := startDaemon(t, testRuntime(t), fastSupervision)
	td.install(t, pluginDir(t, testplugManifest("cycler", nil, hooks("request", "GET", "/c/:id", "1s", "fail-open", 0))))
	waitState(t, td.ctl, "cycler", 30*time.Second, "running", running)
	ctx := context.Background()
	if _, err := td.ctl.Disable(ctx, "cycler"); err != nil {
		t.Fatal(err)
	}
	waitState(t, td.ctl, "cycler", 10*time.Second, "stopped", func(s *host.PluginStatus) bool { return s.State == StateStopped })
	settle()
	g0, f0 := runtime.NumGoroutine(), countFDs(t)

	s := dial(t, td.socket)
	for i := 0; i < cycles; i++ {
		if _, err := td.ctl.Enable(ctx, "cycler"); err != nil {
			t.Fatal(err)
		}
		waitState(t, td.ctl, "cycler", 20*time.Second, "running", running)
		if res := dispatch(t, s, host.PhaseRequest, get("/c/1"), nil); res.Kind != host.MutateRequest {
			t.Fatalf("cycle %d: got %+v", i, res)
		}
		if _, err := td.ctl.Disable(ctx, "cycler"); err != nil {
			t.Fatal(err)
		}
		waitState(t, td.ctl, "cycler", 20*time.Second, "stopped", func(s *host.PluginStatus) bool { return s.State == StateStopped })
	}
	s.Close()

	// go-capnp keeps a goroutine per returned call for 250ms (see the
	// probe's pitfalls): wait for the counts to settle before judging.
	var g1, f1 int
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		g1, f1 = runtime.NumGoroutine(), countFDs(t)
		if g1 <= g0+2 && f1 <= f0+1 {
			break
		}
	}
	t.Logf("after %d cycles: goroutines %d -> %d, fds %d -> %d", cycles, g0, g1, f0, f1)
	if g1 > g0+2 {
		buf := make([]byte, 1<<20)
		t.Errorf("goroutines grew from %d to %d:\n%s", g0, g1, buf[:runtime.Stack(buf, true)])
	}
	if f1 > f0+1 {
		t.Errorf("file descriptors grew from %d to %d", f0, f1)
	}
}

func settle() { time.Sleep(600 * time.Millisecond) }

func countFDs(t testing.TB) int {
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// TestUpgradeNeedsApprovalForMore: an upgrade that asks for more than the
// operator granted is refused until approved, and leaves the installed
// version running; the grant, not the manifest, shapes the sandbox.
func TestUpgradeNeedsApprovalForMore(t *testing.T) {
	td := startDaemon(t, testRuntime(t), fastSupervision)
	v1 := testplugManifest("grower", nil, "[permissions]\nmemory = \"32MiB\"\n"+hooks("request", "GET", "/g/:id", "1s", "fail-open", 0))
	td.install(t, pluginDir(t, v1))
	first := waitState(t, td.ctl, "grower", 30*time.Second, "running", running)

	v2 := strings.Replace(strings.Replace(v1, `version = "1.0.0"`, `version = "2.0.0"`, 1), `memory = "32MiB"`, "memory = \"48MiB\"\nread_only_paths = [\"/usr/share\"]", 1)
	archive, err := host.Archive(pluginDir(t, v2))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	_, err = td.ctl.Install(ctx, archive, host.InstallOptions{Replace: true})
	if err == nil || !strings.Contains(err.Error(), "version 2.0.0 asks for more than the operator granted to version 1.0.0") ||
		!strings.Contains(err.Error(), "/usr/share") {
		t.Fatalf("unapproved upgrade: %v", err)
	}
	st, _ := td.ctl.Inspect(ctx, "grower")
	if st.Version != "1.0.0" || st.PID != first.PID || st.Grant.Memory != 32<<20 {
		t.Fatalf("a refused upgrade changed the plugin: %+v", st)
	}

	grant := st.Grant
	grant.Memory = 48 << 20
	grant.ReadOnlyPaths = []string{"/usr/share"}
	if _, err := td.ctl.Install(ctx, archive, host.InstallOptions{Replace: true, Grant: &grant}); err != nil {
		t.Fatalf("approved upgrade: %v", err)
	}
	up := waitState(t, td.ctl, "grower", 30*time.Second, "v2 running", func(s *host.PluginStatus) bool {
		return s.State == StateRunning && s.Version == "2.0.0" && s.PID != first.PID
	})
	if up.Grant.Memory != 48<<20 || len(up.Grant.ReadOnlyPaths) != 1 {
		t.Errorf("grant after upgrade: %+v", up.Grant)
	}
}

// TestStandbyRestart: with pre-started sandboxes on, a crashed plugin comes
// back from its standby, and disabling it leaves no standby behind.
func TestStandbyRestart(t *testing.T) {
	rt := testRuntime(t)
	if !rt.Sandboxed() {
		t.Skip("pre-started sandboxes need the container runtime")
	}
	sup := fastSupervision
	sup.Standby = true
	sup.BackoffInitial = 10 * time.Millisecond
	td := startDaemon(t, rt, sup)
	td.install(t, pluginDir(t, testplugManifest("phoenix", nil, hooks("request", "GET", "/p/:id", "2s", "fail-open", 0))))
	first := waitState(t, td.ctl, "phoenix", 30*time.Second, "running", running)
	u, err := td.unit("phoenix")
	if err != nil {
		t.Fatal(err)
	}
	standbyPID := func() int {
		u.mu.Lock()
		defer u.mu.Unlock()
		if u.standby == nil {
			return 0
		}
		return u.standby.prepared.Pid()
	}
	deadline := time.Now().Add(10 * time.Second)
	for standbyPID() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	sb := standbyPID()
	if sb == 0 {
		t.Fatal("no standby was prepared")
	}
	syscall.Kill(first.PID, syscall.SIGKILL)
	again := waitState(t, td.ctl, "phoenix", 20*time.Second, "restarted", func(s *host.PluginStatus) bool {
		return s.State == StateRunning && s.PID != first.PID && s.PID != 0
	})
	if again.PID != sb {
		t.Errorf("restarted as pid %d, not from the standby (pid %d)", again.PID, sb)
	}
	logs, _ := td.ctl.Logs(context.Background(), "phoenix", 0, nil)
	if !containsLine(logs, "started pre-started instance") {
		t.Errorf("logs do not mention the pre-started instance: %+v", logs)
	}
	s := dial(t, td.socket)
	if res := dispatch(t, s, host.PhaseRequest, get("/p/1"), nil); res.Kind != host.MutateRequest {
		t.Fatalf("after a standby restart: %+v", res)
	}
	deadline = time.Now().Add(10 * time.Second)
	for standbyPID() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	next := standbyPID()
	if _, err := td.ctl.Disable(context.Background(), "phoenix"); err != nil {
		t.Fatal(err)
	}
	waitState(t, td.ctl, "phoenix", 10*time.Second, "stopped", func(s *host.PluginStatus) bool { return s.State == StateStopped })
	if standbyPID() != 0 || (next != 0 && !processGone(next, 5*time.Second)) {
		t.Errorf("the standby (pid %d) outlived the disable", next)
	}
}
