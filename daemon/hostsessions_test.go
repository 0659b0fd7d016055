package daemon

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sandbox"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// TestPreamblesNeedTheSession: the hook lane and the frame socket open
// only with the token of an open host session, and end with it; an older
// preamble is told which versions the daemon speaks.
func TestPreamblesNeedTheSession(t *testing.T) {
	td := startDaemon(t, sandbox.ProcessRuntime{}, fastSupervision)

	// lane opens a hook lane with raw bytes and returns the daemon's answer.
	lane := func(preamble []byte) (net.Conn, byte, string) {
		t.Helper()
		c, err := net.Dial("unix", td.socket)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(preamble); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1)
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatalf("no answer to %q: %v", preamble, err)
		}
		if b[0] == wire.PreambleOK {
			c.SetDeadline(time.Time{})
			return c, b[0], ""
		}
		why, _ := io.ReadAll(c)
		return c, b[0], string(why)
	}

	for _, tc := range []struct {
		name     string
		preamble []byte
		why      string
	}{
		{"version 1", []byte("DPLANE1\n"), `speaks "DPLANE2" and "DPFRAME2"`},
		{"version 1 frames", []byte("DPFRAME1\n"), `speaks "DPLANE2" and "DPFRAME2"`},
		{"no session", wire.LanePreambleWithToken(bytes.Repeat([]byte{7}, wire.TokenLen)), "no open host session has this token"},
	} {
		if _, ans, why := lane(tc.preamble); ans != wire.PreambleRefused || !strings.Contains(why, tc.why) {
			t.Errorf("%s: answer %d %q, want a refusal saying %q", tc.name, ans, why, tc.why)
		}
	}
	if f, why := openFrameSocket(t, td.socket, bytes.Repeat([]byte{7}, wire.TokenLen)); f != nil || !strings.Contains(why, "no open host session") {
		t.Errorf("frame socket with a token of no session: %v %q", f, why)
	}

	// A session's token opens both; ending the session closes both.
	token, end := rawHostSessionEnd(t, td.socket)
	lc, ans, why := lane(wire.LanePreambleWithToken(token))
	if ans != wire.PreambleOK {
		t.Fatalf("hook lane with the session's token refused: %q", why)
	}
	f, why := openFrameSocket(t, td.socket, token)
	if f == nil {
		t.Fatalf("frame socket with the session's token refused: %q", why)
	}
	defer f.Close()
	fc, err := net.FileConn(f)
	if err != nil {
		t.Fatal(err)
	}
	defer fc.Close()
	end()
	for name, c := range map[string]net.Conn{"hook lane": lc, "frame socket": fc} {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if n, err := c.Read(make([]byte, 64<<10)); err == nil {
			// The lane may say goodbye (a stopping frame) before it closes.
			if _, err = io.ReadAll(c); err != nil {
				t.Errorf("%s after its session ended: read %d bytes, then %v; want it closed", name, n, err)
			}
		} else if err != io.EOF {
			t.Errorf("%s after its session ended: %v, want it closed", name, err)
		}
	}
	// The ended session's token opens nothing.
	if _, ans, why := lane(wire.LanePreambleWithToken(token)); ans != wire.PreambleRefused || !strings.Contains(why, "no open host session") {
		t.Errorf("hook lane with an ended session's token: answer %d %q", ans, why)
	}
}

// flakyWatcher fails its first failures updates, then records versions.
type flakyWatcher struct {
	mu       sync.Mutex
	failures int
	versions []uint64
}

func (w *flakyWatcher) Update(ctx context.Context, call schema.RouteWatcher_update) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.failures > 0 {
		w.failures--
		return errors.New("the host is not ready for this table")
	}
	tb, err := call.Args().Table()
	if err != nil {
		return err
	}
	w.versions = append(w.versions, tb.Version())
	return nil
}

func (w *flakyWatcher) last() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.versions) == 0 {
		return 0
	}
	return w.versions[len(w.versions)-1]
}

// TestRouteWatcherRetries: a host whose watcher fails to take a route
// table (an error or a timeout) gets it again, and then newer ones; the
// daemon does not stop pushing to it for the rest of the session.
func TestRouteWatcherRetries(t *testing.T) {
	td := startDaemon(t, sandbox.ProcessRuntime{}, fastSupervision)
	sess, _, end := rawHostSessionCap(t, td.socket)
	defer end()
	fw := &flakyWatcher{failures: 2}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	fut, release := sess.WatchRoutes(ctx, func(p schema.HostSession_watchRoutes_Params) error {
		return p.SetWatcher(schema.RouteWatcher_ServerToClient(fw))
	})
	res, err := fut.Struct()
	if err != nil {
		t.Fatal(err)
	}
	tb, _ := res.Table()
	first := tb.Version()
	release()

	td.install(t, pluginDir(t, testplugManifest("watched", nil, hooks("request", "GET", "/watched/:id", "1s", "fail-open", 0))))
	waitFor(t, 20*time.Second, "the table with the new plugin, pushed after two failed pushes", func() bool { return fw.last() > first })
	got := fw.last()
	td.install(t, pluginDir(t, testplugManifest("watched2", nil, hooks("request", "GET", "/watched2/:id", "1s", "fail-open", 0))))
	waitFor(t, 20*time.Second, "a newer table after the retries", func() bool { return fw.last() > got })
}

// TestLaneDisconnectCancels: when a host's hook lane closes with calls in
// flight, the daemon cancels them at once (the plugin stops working for
// nobody) instead of letting them run to their deadlines.
func TestLaneDisconnectCancels(t *testing.T) {
	td := startWithPlugins(t, fastSupervision, testPlugin{name: "slow", extra: hooks("request", "GET", "/slow/:id", "20s", "fail-open", 0)})
	token := rawHostSession(t, td.socket)
	c, err := net.Dial("unix", td.socket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(wire.LanePreambleWithToken(token)); err != nil {
		t.Fatal(err)
	}
	if b := make([]byte, 1); func() error { _, err := io.ReadFull(c, b); return err }() != nil || b[0] != wire.PreambleOK {
		t.Fatal("hook lane refused")
	}
	lane := wire.NewLaneClient(c)
	before := td.dispatches.Load()
	called := make(chan error, 1)
	go func() {
		_, _, err := lane.Call(context.Background(), func(f schema.LaneFrame) error {
			ld, err := f.NewDispatch()
			if err != nil {
				return err
			}
			ld.SetPhase(schema.Phase_request)
			rq, err := ld.NewRequest()
			if err != nil {
				return err
			}
			return wire.WriteRequest(rq, &wire.Request{Method: "GET", Path: "/slow/1", RawQuery: "sleep=15s", Header: http.Header{}})
		})
		called <- err
	}()
	cancelled := func() uint64 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := td.ctl.Inspect(ctx, "slow")
		if err != nil {
			t.Fatal(err)
		}
		return st.Hooks[0].ByPolicy["cancelled"]
	}
	waitFor(t, 5*time.Second, "the call at the daemon", func() bool { return td.dispatches.Load() >= before+1 })
	lane.Close()
	<-called
	waitFor(t, 5*time.Second, "the call cancelled after its host's lane closed (its deadline is 20 s, the plugin sleeps 15 s)", func() bool { return cancelled() >= 1 })
}
