package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/host"
)

// TestObserversInOrder: a host serves 300 requests in a row through the
// middleware; the plugin observing them must see them in that order (a
// scrobbler's stored position moved backwards when observations raced),
// also across the session's switch from the daemon's path to its direct
// lane.
func TestObserversInOrder(t *testing.T) {
	td := startDaemon(t, testRuntime(t), fastSupervision)
	td.install(t, pluginDir(t, testplugManifest("scrobbler", nil,
		hooks("observe", "*", "/ordered/:pos", "5s", "fail-open", 0))))
	waitState(t, td.ctl, "scrobbler", 30*time.Second, "running", running)
	s := dial(t, td.socket)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ordered/{pos}", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	mw, err := host.NewMiddleware(context.Background(), s, mux, host.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}
	const n = 300
	for i := 1; i <= n; i++ {
		rec := httptest.NewRecorder()
		mw.ServeHTTP(rec, httptest.NewRequest("GET", "/ordered/"+strconv.Itoa(i), nil))
		if rec.Code != 200 {
			t.Fatalf("request %d: %d %s", i, rec.Code, rec.Body)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := mw.Close(ctx); err != nil {
		t.Fatalf("middleware close: %v", err)
	}
	// A burst of this size fits the plugin's queue (maxObserveQueue), so
	// every observation arrives, and in order: wait until the count
	// settles, then check count and inversions.
	var got, last string
	stable := 0
	if !poll(30*time.Second, func() bool {
		v, _, _ := td.store.KV("scrobbler").Get("ordered")
		got = string(v)
		if got != "" && got == last {
			stable++
		} else {
			stable = 0
		}
		last = got
		return got == strconv.Itoa(n)+" 0" || stable >= 20
	}) {
		t.Fatalf("observer count did not settle: %q", got)
	}
	var count, inversions int
	if _, err := fmt.Sscan(got, &count, &inversions); err != nil || count == 0 {
		t.Fatalf("observer saw %q", got)
	}
	if inversions != 0 {
		t.Fatalf("observations out of order: %d of %d went backwards", inversions, count)
	}
	if count != n {
		t.Errorf("%d of %d observations delivered: a burst from one host was dropped", count, n)
	}
	// The first observations go through the daemon until the session has
	// its direct lane; the rest go direct, and the switch kept the order.
	if d := td.dispatches.Load(); d == 0 || d >= n {
		t.Errorf("%d of %d observations went through the daemon: the test should see the switch to direct", d, n)
	}
	t.Logf("%d of %d observations delivered, in order; %d through the daemon", count, n, td.dispatches.Load())
}

// TestObserveQueueBound: a plugin's observe queue takes maxObserveQueue
// calls behind the one in flight and refuses the next, and runs what it
// took, in order, once the slow call ends.
func TestObserveQueueBound(t *testing.T) {
	d := &Daemon{}
	var q callQueue
	started, release := make(chan struct{}), make(chan struct{})
	if !q.push(d, func() { close(started); <-release }) {
		t.Fatal("the first call was refused")
	}
	<-started
	var ran []int
	for i := range maxObserveQueue {
		if !q.push(d, func() { ran = append(ran, i) }) {
			t.Fatalf("call %d of %d refused", i+1, maxObserveQueue)
		}
	}
	if q.push(d, func() { t.Error("the refused call ran") }) {
		t.Error("a call past maxObserveQueue was taken")
	}
	close(release)
	d.wg.Wait()
	if len(ran) != maxObserveQueue {
		t.Fatalf("%d calls ran, want %d", len(ran), maxObserveQueue)
	}
	for i, v := range ran {
		if v != i {
			t.Fatalf("call %d ran as number %d: out of order", v, i)
		}
	}
}
