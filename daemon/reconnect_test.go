//go:build linux

package daemon

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/host"
)

// restartLoad is what a host saw while its daemon restarted.
type restartLoad struct {
	normal, policy, failed, hung atomic.Int64
	mu                           sync.Mutex
	failures                     []string
	byPolicy                     []string     // why calls were answered by policy
	lastAbnormal                 atomic.Int64 // unix nanos of the last answer that was not normal
}

func (l *restartLoad) String() string {
	return fmt.Sprintf("%d answered normally, %d by policy (fail-open skipped / fail-closed 503), %d failed otherwise, %d hung",
		l.normal.Load(), l.policy.Load(), l.failed.Load(), l.hung.Load())
}

// hookedPlugins installs a fail-open and a fail-closed testplug on a daemon
// process: GET /open/:id and GET /closed/:id.
func hookedPlugins(t *testing.T, d *daemonProc) {
	t.Helper()
	for _, p := range []struct{ name, route, failure string }{{"openplug", "/open/:id", "fail-open"}, {"closedplug", "/closed/:id", "fail-closed"}} {
		d.ctl(false, "install", "--yes", pluginDir(t, testplugManifest(p.name, nil, hooks("request", "GET", p.route, "2s", p.failure, 0))))
		d.waitRunning(p.name, 0)
	}
}

// classify sorts one dispatch's outcome.
func (l *restartLoad) classify(path string, res *host.Result, err error, took time.Duration) {
	plugin := "openplug"
	if strings.HasPrefix(path, "/closed/") {
		plugin = "closedplug"
	}
	switch {
	case took >= 5*time.Second:
		l.hung.Add(1)
		l.note("%s hung for %s", path, took)
	case err != nil:
		l.failed.Add(1)
		l.note("%s: %v", path, err)
	case res.Kind == host.MutateRequest && res.RequestMutation.Header.Get("X-Test-Request") == plugin:
		l.normal.Add(1)
		return
	case plugin == "openplug" && res.Kind == host.Continue && len(res.Skipped) > 0:
		l.policy.Add(1)
		l.notePolicy("%s skipped: %v", path, res.Skipped)
	case plugin == "closedplug" && res.Kind == host.FailClosed && res.FailureResponse().Status == 503:
		l.policy.Add(1)
		l.notePolicy("%s failed closed: %s", path, res.FailureResponse().Body)
	default:
		l.failed.Add(1)
		l.note("%s: %+v", path, res)
	}
	l.lastAbnormal.Store(time.Now().UnixNano())
}

// notePolicy keeps why the first few calls were answered by policy.
func (l *restartLoad) notePolicy(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.byPolicy) < 10 {
		l.byPolicy = append(l.byPolicy, fmt.Sprintf(format, args...))
	}
}

func (l *restartLoad) note(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.failures) < 10 {
		l.failures = append(l.failures, fmt.Sprintf(format, args...))
	}
}

// underLoad runs 4 clients dispatching to both hooks on s until stop is
// closed; every call has 5 s (longer counts as hung).
func underLoad(s *host.Session, stop <-chan struct{}) (*restartLoad, func()) {
	l := &restartLoad{}
	var wg sync.WaitGroup
	for c := 0; c < 4; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				path := fmt.Sprintf("/open/%d", i)
				if (i+c)%2 == 1 {
					path = fmt.Sprintf("/closed/%d", i)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 6*time.Second)
				start := time.Now()
				res, err := s.Dispatch(ctx, host.PhaseRequest, get(path), nil)
				l.classify(path, res, err, time.Since(start))
				cancel()
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	return l, wg.Wait
}

// TestHostRidesThroughDaemonRestarts: a host keeps one session while its
// daemon is restarted gracefully (SIGTERM, start again) and killed with
// SIGKILL and started again. Under load, no request fails or hangs: each is
// answered normally or by its hook's policy while the daemon or the plugin
// is away, and hooks answer normally again by themselves.
func TestHostRidesThroughDaemonRestarts(t *testing.T) {
	d := newDaemonProc(t)
	d.start()
	hookedPlugins(t, d)
	s := dial(t, d.socket)
	if res := dispatch(t, s, host.PhaseRequest, get("/closed/1"), nil); res.Kind != host.MutateRequest {
		t.Fatalf("before the restarts: %+v", res)
	}
	// An upgrade: the running daemon stops gracefully and another
	// binary starts on the same state.
	next := filepath.Join(t.TempDir(), "dimplugd-next")
	copyFile(t, buildBin(t, "./cmd/dimplugd", false), next, 0o755)
	for _, c := range []struct {
		name string
		down func()
	}{
		{"graceful restart", d.stop},
		{"upgrade to a new binary", func() { d.stop(); d.bin = next }},
		{"kill -9", d.kill9},
	} {
		t.Run(c.name, func(t *testing.T) {
			stop := make(chan struct{})
			load, wait := underLoad(s, stop)
			time.Sleep(300 * time.Millisecond)
			reconnects := s.Reconnects()
			open := openStream(t, s, "video/segment") // no plugin takes it: frames come straight back
			c.down()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := open.Recv(ctx); !errors.Is(err, host.ErrStreamCut) {
				t.Errorf("a stream open when the daemon went away: %v, want host.ErrStreamCut", err)
			}
			time.Sleep(200 * time.Millisecond) // the daemon stays away for a moment
			d.start()
			ready := time.Now()
			d.waitRunning("openplug", 0)
			d.waitRunning("closedplug", 0)
			waitFor(t, 20*time.Second, "hooks answering normally again", func() bool {
				return time.Unix(0, load.lastAbnormal.Load()).Before(time.Now().Add(-200 * time.Millisecond))
			})
			normalAgain := time.Unix(0, load.lastAbnormal.Load()).Sub(ready)
			// New streams work with the new daemon.
			st := openStream(t, s, "video/segment")
			if out := roundTrip(t, st, []int{4096}); string(out[0]) != string(pattern(0, 4096)) {
				t.Error("a stream through the new daemon changed its frame")
			}
			st.CloseSend()
			close(stop)
			wait()
			t.Logf("%s: %s; hooks answered normally again %s after the new daemon was ready (its plugins running %s after); %d reconnects",
				c.name, load, normalAgain.Round(time.Millisecond), time.Since(ready).Round(time.Millisecond), s.Reconnects()-reconnects)
			if load.failed.Load() != 0 || load.hung.Load() != 0 {
				t.Errorf("%s: %s; first failures: %q", c.name, load, load.failures)
			}
			if load.policy.Load() == 0 || load.normal.Load() == 0 {
				t.Errorf("%s: %s: want answers by policy while the daemon was away and normal ones around it", c.name, load)
			}
			if s.Reconnects() == reconnects {
				t.Error("the session did not reconnect")
			}
		})
	}
}

// TestHostStartsBeforeDaemon: a host started while the daemon is down
// serves at once — with its cached route table, fail-closed hooks answer
// 503 and fail-open ones are skipped; without one, nothing is hooked — and
// hooked routes work as soon as the daemon is up.
func TestHostStartsBeforeDaemon(t *testing.T) {
	d := newDaemonProc(t)
	d.start()
	hookedPlugins(t, d)
	cache := filepath.Join(t.TempDir(), "routes.json")
	first := dial(t, d.socket, host.WithRouteCache(cache))
	first.Close()
	d.stop()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := host.Dial(ctx, d.socket); err == nil {
		t.Fatal("Dial without WithStartDegraded succeeded with no daemon")
	}
	cold := dial(t, d.socket, host.WithStartDegraded())
	warm := dial(t, d.socket, host.WithStartDegraded(), host.WithRouteCache(cache))
	if cold.Connected() || warm.Connected() {
		t.Fatal("connected to no daemon")
	}
	if res := dispatch(t, cold, host.PhaseRequest, get("/closed/1"), nil); res.Kind != host.Continue {
		t.Errorf("no table known: %+v, want the request untouched", res)
	}
	res := dispatch(t, warm, host.PhaseRequest, get("/closed/1"), nil)
	if res.Kind != host.FailClosed || res.FailureResponse().Status != 503 || !strings.Contains(res.Failure.Message, "dimplugd is not reachable") {
		t.Errorf("fail-closed hook while the daemon is away: %+v", res)
	}
	if res := dispatch(t, warm, host.PhaseRequest, get("/open/1"), nil); res.Kind != host.Continue || len(res.Skipped) != 1 {
		t.Errorf("fail-open hook while the daemon is away: %+v", res)
	}
	if res := dispatch(t, warm, host.PhaseRequest, get("/unhooked"), nil); res.Kind != host.Continue || len(res.Skipped) != 0 {
		t.Errorf("unhooked route: %+v", res)
	}
	if _, err := warm.OpenStream(ctx, "video/segment", host.StreamMeta{}); !errors.Is(err, host.ErrDaemonAway) {
		t.Errorf("a stream while the daemon is away: %v", err)
	}

	d.start()
	for _, s := range []*host.Session{cold, warm} {
		waitFor(t, 20*time.Second, "hooks answering through the new daemon", func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			res, err := s.Dispatch(ctx, host.PhaseRequest, get("/closed/1"), nil)
			return err == nil && res.Kind == host.MutateRequest
		})
	}
}

// TestGracefulStopDrains: a daemon stopped with SIGTERM (by the service
// manager, for a restart or an upgrade) stops accepting work, lets the hook
// calls in flight finish, and only then closes its connections and stops
// its plugins: a slow call under way is answered normally.
func TestGracefulStopDrains(t *testing.T) {
	d := newDaemonProc(t)
	d.start()
	hookedPlugins(t, d)
	s := dial(t, d.socket, host.WithoutDirectLanes()) // through the daemon
	type answer struct {
		res *host.Result
		err error
	}
	done := make(chan answer, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		res, err := s.Dispatch(ctx, host.PhaseRequest, get("/closed/1?sleep=1500ms"), nil)
		done <- answer{res, err}
	}()
	time.Sleep(800 * time.Millisecond) // the call is at the plugin (the hook's deadline is 2s)
	d.stop()
	a := <-done
	if a.err != nil || a.res.Kind != host.MutateRequest || a.res.RequestMutation.Header.Get("X-Test-Request") != "closedplug" {
		t.Fatalf("a call in flight during a graceful stop: %+v, %v; want it answered normally", a.res, a.err)
	}
	if !strings.Contains(d.log.String(), "draining: waiting for hook calls in flight") {
		t.Errorf("the daemon did not say it drained:\n%s", d.log)
	}
}
