package plugin_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/plugin"
	"github.com/dimplugd/dimplugd/sdk-go/plugin/plugintest"
)

type mixed struct {
	closed bool
	host   *plugin.Host
}

func (m *mixed) Init(ctx context.Context, h *plugin.Host) error { m.host = h; return nil }

func (m *mixed) HookRequest(ctx context.Context, hook string, req *plugin.Request) (*plugin.Response, error) {
	switch hook {
	case "deny":
		return &plugin.Response{Status: 403, Body: []byte("no")}, nil
	case "panic":
		panic("boom")
	case "error":
		return nil, errors.New("backend unreachable")
	case "kv":
		if err := m.host.KV.Set(ctx, "k", []byte("v")); err != nil {
			return nil, err
		}
		keys, err := m.host.KV.List(ctx, "", 0)
		if err != nil {
			return nil, err
		}
		req.Header.Set("X-Keys", strings.Join(keys, ","))
		return nil, m.host.KV.Delete(ctx, "other")
	}
	req.Header.Set("X-Hook", hook)
	return nil, nil
}

func (m *mixed) Close(ctx context.Context) error { m.closed = true; return nil }

func TestRequestHooks(t *testing.T) {
	p := &mixed{}
	h := plugintest.Start(t, p, plugintest.WithKV(map[string][]byte{"other": []byte("x")}))

	req := &plugin.Request{Method: "GET", Path: "/x", Header: http.Header{}}
	if resp, err := h.Request("tag", req); err != nil || resp != nil || req.Header.Get("X-Hook") != "tag" {
		t.Fatalf("tag: resp=%v err=%v header=%v", resp, err, req.Header)
	}
	if resp, err := h.Request("deny", &plugin.Request{Method: "GET", Path: "/x"}); err != nil || resp == nil || resp.Status != 403 {
		t.Fatalf("deny: resp=%+v err=%v", resp, err)
	}
	if _, err := h.Request("panic", &plugin.Request{Method: "GET", Path: "/x"}); err == nil || !strings.Contains(err.Error(), `hook "panic" panicked: boom`) {
		t.Fatalf("panic: err=%v", err)
	}
	if _, err := h.Request("error", &plugin.Request{Method: "GET", Path: "/x"}); err == nil || !strings.Contains(err.Error(), "backend unreachable") {
		t.Fatalf("error: err=%v", err)
	}
	req = &plugin.Request{Method: "GET", Path: "/x", Header: http.Header{}}
	if _, err := h.Request("kv", req); err != nil || req.Header.Get("X-Keys") != "k,other" {
		t.Fatalf("kv: err=%v keys=%q", err, req.Header.Get("X-Keys"))
	}
	if kv := h.KV(); string(kv["k"]) != "v" || kv["other"] != nil {
		t.Fatalf("kv after: %q", kv)
	}
	// A phase the plugin has no handler for is an error, not a crash.
	if _, err := h.Route("tag", &plugin.Request{Method: "GET", Path: "/x"}); err == nil || !strings.Contains(err.Error(), "no route handler") {
		t.Fatalf("route on a request-only plugin: err=%v", err)
	}
	if err := h.Health(); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if !p.closed {
		t.Error("Close was not called on shutdown")
	}
}

func TestServeRejectsNonPlugins(t *testing.T) {
	a, b := pipe(t)
	defer a.Close()
	err := plugin.ServeConn(context.Background(), b, struct{}{})
	if err == nil || !strings.Contains(err.Error(), "implements no hook interface") {
		t.Fatalf("got %v", err)
	}
}

func TestServeOutsideDaemon(t *testing.T) {
	// The test binary has no fd 3 socket.
	if err := plugin.Serve(&mixed{}); !errors.Is(err, plugin.ErrNotUnderDaemon) {
		t.Fatalf("got %v, want ErrNotUnderDaemon", err)
	}
}

type framer struct{}

func (framer) FilterFrame(ctx context.Context, s *plugin.Stream, f *plugin.Frame) ([]*plugin.Frame, error) {
	switch {
	case len(f.Data) == 0:
		return nil, nil // drop
	case f.Data[0] == 'x':
		for i := range f.Data {
			f.Data[i] = 'y' // in place
		}
		return []*plugin.Frame{f}, nil
	}
	out, err := s.NewFrame(ctx, len(f.Data)+len(s.Kind))
	if err != nil {
		return nil, err
	}
	copy(out.Data, s.Kind)
	copy(out.Data[len(s.Kind):], f.Data)
	return []*plugin.Frame{out, {Seq: f.Seq, Data: []byte("tail")}}, nil
}

func (framer) ObserveFrame(ctx context.Context, s *plugin.Stream, f *plugin.Frame) {}

// TestFramesThroughHarness drives a frame filter through plugintest over
// the real frame socket and shared memory.
func TestFramesThroughHarness(t *testing.T) {
	h := plugintest.Start(t, framer{})
	st := h.OpenStream("video/segment", "transform", plugin.StreamMeta{MediaID: 1})
	out, err := st.Filter(&plugin.Frame{Seq: 2, Data: []byte("abc")})
	if err != nil || len(out) != 2 || string(out[0].Data) != "video/segmentabc" || string(out[1].Data) != "tail" {
		t.Fatalf("new frames: %v, %+v", err, out)
	}
	if out, err = st.Filter(&plugin.Frame{Seq: 3}); err != nil || len(out) != 0 {
		t.Fatalf("drop: %v, %+v", err, out)
	}
	// Received frames are read-only: a filter that writes into one fails
	// its stream with an error that says so, and the plugin lives on.
	big := bytes.Repeat([]byte("x"), 1<<20)
	out, err = st.Filter(&plugin.Frame{Seq: 1, Data: big})
	if err == nil || !strings.Contains(err.Error(), "faulted") || !strings.Contains(err.Error(), "received frames are read-only") {
		t.Fatalf("writing into a received frame: %v, %d frames", err, len(out))
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st = h.OpenStream("video/segment", "transform", plugin.StreamMeta{MediaID: 1})
	if out, err = st.Filter(&plugin.Frame{Seq: 5, Data: []byte("abc")}); err != nil || len(out) != 2 {
		t.Fatalf("after the fault, a new stream: %v, %+v", err, out)
	}
	obs := h.OpenStream("video/segment", "observe", plugin.StreamMeta{})
	if err := obs.Observe(&plugin.Frame{Seq: 4, Data: []byte("seen")}); err != nil {
		t.Fatal(err)
	}
}

// lifecycle records stream opens and closes.
type lifecycle struct {
	framer
	mu     sync.Mutex
	events []string
}

func (l *lifecycle) OpenStream(ctx context.Context, s *plugin.Stream) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, fmt.Sprintf("open %s", s.Kind))
	if s.Kind == "audio/segment" {
		return errors.New("no audio here")
	}
	return nil
}

func (l *lifecycle) CloseStream(ctx context.Context, s *plugin.Stream, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, fmt.Sprintf("close %s: %v", s.Kind, err))
}

// TestStreamLifecycle: OpenStream before the first frame (an error fails
// the stream), CloseStream after the last, with why; plugintest's Close and
// Cancel return once the plugin is done.
func TestStreamLifecycle(t *testing.T) {
	l := &lifecycle{}
	h := plugintest.Start(t, l)
	st := h.OpenStream("video/segment", "transform", plugin.StreamMeta{})
	if _, err := st.Filter(&plugin.Frame{Seq: 3}); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st = h.OpenStream("video/segment", "transform", plugin.StreamMeta{})
	if err := st.Cancel(); err != nil {
		t.Fatal(err)
	}
	st = h.OpenStream("audio/segment", "transform", plugin.StreamMeta{})
	if _, err := st.Filter(&plugin.Frame{Seq: 1, Data: []byte("a")}); err == nil || !strings.Contains(err.Error(), "no audio here") {
		t.Fatalf("a refused stream: %v", err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	l.mu.Lock()
	got := strings.Join(l.events, "; ")
	l.mu.Unlock()
	want := "open video/segment; close video/segment: <nil>; open video/segment; close video/segment: " + plugin.ErrStreamCanceled.Error() +
		"; open audio/segment; close audio/segment: no audio here"
	if got != want {
		t.Fatalf("events\n got %s\nwant %s", got, want)
	}
}

// TestStreamsNoGoroutineLeak: the plugin side of 100 streams — finished,
// cancelled, refused — leaves no goroutine behind (each stream's worker
// ends with it).
func TestStreamsNoGoroutineLeak(t *testing.T) {
	h := plugintest.Start(t, &lifecycle{})
	run := func(i int) {
		kind := "video/segment"
		if i%3 == 2 {
			kind = "audio/segment" // refused by OpenStream
		}
		st := h.OpenStream(kind, "transform", plugin.StreamMeta{})
		_, _ = st.Filter(&plugin.Frame{Seq: uint64(i), Data: []byte("abc")})
		var err error
		if i%3 == 1 {
			err = st.Cancel()
		} else {
			err = st.Close()
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	run(0)
	time.Sleep(300 * time.Millisecond) // the first flush timer
	g0 := runtime.NumGoroutine()
	for i := 0; i < 100; i++ {
		run(i)
	}
	var g1 int
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if g1 = runtime.NumGoroutine(); g1 <= g0 {
			break
		}
	}
	if g1 > g0 {
		buf := make([]byte, 1<<20)
		t.Fatalf("goroutines grew from %d to %d over 100 streams:\n%s", g0, g1, buf[:runtime.Stack(buf, true)])
	}
}
