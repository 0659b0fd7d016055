package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/frames"
	"github.com/dimplugd/dimplugd/sdk-go/host"
	"github.com/dimplugd/dimplugd/sdk-go/plugin"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

func streamStage(name, kind, role, failure, deadline string, priority int) string {
	return fmt.Sprintf("\n[[streams]]\nname = %q\nkind = %q\nrole = %q\nfailure = %q\ndeadline = %q\npriority = %d\n",
		name, kind, role, failure, deadline, priority)
}

// pattern returns n bytes that differ per frame, so that any mix-up shows.
func pattern(seq uint64, n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n && i < 256; i++ {
		b[i] = byte(uint64(i)*7 + seq*13)
	}
	for filled := 256; filled < n; filled *= 2 { // the pattern repeats every 256 bytes
		copy(b[filled:], b[:filled])
	}
	return b
}

func xor(b []byte) []byte {
	out := make([]byte, len(b))
	for i, c := range b {
		out[i] = c ^ 0x5a
	}
	return out
}

func openStream(t *testing.T, s *host.Session, kind string) *host.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := s.OpenStream(ctx, kind, host.StreamMeta{MediaID: 42, Track: "video-720p", Codec: "avc1.64001f", Timescale: 90000})
	if err != nil {
		t.Fatalf("open %s stream: %v", kind, err)
	}
	return st
}

// roundTrip sends frames of the given sizes and returns what comes back,
// copied, after checking order.
func roundTrip(t *testing.T, st *host.Stream, sizes []int) [][]byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		for i, n := range sizes {
			f, err := st.NewFrame(ctx, n)
			if err != nil {
				errc <- err
				return
			}
			copy(f.Data, pattern(uint64(i), n))
			f.Seq, f.ContentType = uint64(i), "video/iso.segment"
			if err := st.Send(ctx, f); err != nil {
				errc <- err
				return
			}
		}
		errc <- st.CloseSend()
	}()
	var out [][]byte
	for {
		f, err := st.Recv(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		out = append(out, append([]byte{}, f.Data...))
		f.Release()
	}
	if err := <-errc; err != nil {
		t.Fatalf("send: %v", err)
	}
	return out
}

// TestStreamChain sends frames from 4 KiB to 6 MiB through a chain of two
// transforms (one edits in place, one makes new frames) and an observer, and
// checks every byte and the order.
func TestStreamChain(t *testing.T) {
	td := startWithPlugins(t, fastSupervision,
		testPlugin{name: "xorer", frames: "xor", extra: streamStage("flip", "video/segment", "transform", "fail-closed", "10s", 1)},
		testPlugin{name: "tagger", frames: "tag", extra: streamStage("tag", "video/*", "transform", "fail-closed", "10s", 2)},
		testPlugin{name: "watcher", frames: "", extra: streamStage("stats", "video/segment", "observe", "fail-open", "10s", 0)},
		testPlugin{name: "audio-only", frames: "xor", extra: streamStage("flip", "audio/segment", "transform", "fail-closed", "10s", 0)},
	)
	s := dial(t, td.socket)
	st := openStream(t, s, "video/segment")
	if got := strings.Join(st.Stages(), " "); got != "xorer/flip tagger/tag watcher/stats" {
		t.Fatalf("chain = %q", got)
	}
	var roles []string
	for _, stg := range st.Chain() {
		roles = append(roles, stg.Plugin+" "+stg.Name+" "+stg.Role)
	}
	if got := strings.Join(roles, ", "); got != "xorer flip transform, tagger tag transform, watcher stats observe" {
		t.Fatalf("chain with roles = %s", got)
	}
	sizes := []int{4 << 10, 75 << 10, 256 << 10, 1 << 20, 6 << 20, 100, 0, 3 << 20}
	out := roundTrip(t, st, sizes)
	if len(out) != len(sizes) {
		t.Fatalf("got %d frames back, want %d", len(out), len(sizes))
	}
	for i, n := range sizes {
		want := append([]byte("tagger:"), xor(pattern(uint64(i), n))...)
		if !bytes.Equal(out[i], want) {
			t.Fatalf("frame %d (%d bytes): got %d bytes, not the xor-ed, tagged input", i, n, len(out[i]))
		}
	}
	// The observer saw the chain's output.
	deadline := time.Now().Add(5 * time.Second)
	for {
		v, _, _ := td.store.KV("watcher").Get("observed-frames")
		if strings.HasPrefix(string(v), fmt.Sprintf("%d ", len(sizes))) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("observer saw %q, want %d frames", v, len(sizes))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestStreamHugeFrame passes a 100 MiB frame — larger than the shared pool
// and than a Cap'n Proto message may be — through a pass-through plugin.
func TestStreamHugeFrame(t *testing.T) {
	td := startWithPlugins(t, fastSupervision,
		testPlugin{name: "passer", frames: "pass", extra: streamStage("pass", "video/segment", "transform", "fail-closed", "30s", 0)},
	)
	s := dial(t, td.socket)
	st := openStream(t, s, "video/segment")
	out := roundTrip(t, st, []int{100 << 20, 1 << 20})
	if len(out) != 2 || !bytes.Equal(out[0], pattern(0, 100<<20)) || !bytes.Equal(out[1], pattern(1, 1<<20)) {
		t.Fatalf("100 MiB frame did not round-trip byte for byte")
	}
}

// TestStreamSplitAndDrop: a stage may answer a frame with several, or with
// none.
func TestStreamSplitAndDrop(t *testing.T) {
	td := startWithPlugins(t, fastSupervision,
		testPlugin{name: "dropper", frames: "drop", extra: streamStage("drop", "audio/segment", "transform", "fail-closed", "10s", 0)},
		testPlugin{name: "splitter", frames: "split", extra: streamStage("split", "audio/segment", "transform", "fail-closed", "10s", 1)},
	)
	s := dial(t, td.socket)
	st := openStream(t, s, "audio/segment")
	sizes := []int{64 << 10, 64 << 10, 200 << 10, 8 << 10}
	out := roundTrip(t, st, sizes)
	// Frames 1 and 3 dropped; 0 and 2 split in halves.
	want := [][]byte{pattern(0, 64<<10)[:32<<10], pattern(0, 64<<10)[32<<10:], pattern(2, 200<<10)[:100<<10], pattern(2, 200<<10)[100<<10:]}
	if len(out) != len(want) {
		t.Fatalf("got %d frames, want %d", len(out), len(want))
	}
	for i := range want {
		if !bytes.Equal(out[i], want[i]) {
			t.Fatalf("frame %d differs", i)
		}
	}
	// A dropped frame frees its place in the host's window too: three
	// windows' worth of frames, half of them dropped, go through.
	st = openStream(t, s, "audio/segment")
	many := make([]int, 3*host.Window)
	for i := range many {
		many[i] = 100
	}
	if out := roundTrip(t, st, many); len(out) != 3*host.Window {
		t.Fatalf("%d frames, half dropped and the rest split: %d came back, want %d", len(many), len(out), 3*host.Window)
	}
	// dimplugctl inspect counts what each stage did.
	n := len(sizes) + len(many)
	wantStage(t, td, "dropper", "drop", "2 streams (0 open), %d frames, %d dropped, 0 missed, 0 failed", n, n/2)
	wantStage(t, td, "splitter", "split", "2 streams (0 open), %d frames, 0 dropped, 0 missed, 0 failed", n/2)
}

// wantStage checks the counters inspect shows for a plugin's stream stage.
func wantStage(t *testing.T, td *testDaemon, plugin, stage, format string, args ...any) {
	t.Helper()
	st, err := td.ctl.Inspect(context.Background(), plugin)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range st.Streams {
		if x.Name == stage {
			got := fmt.Sprintf("%d streams (%d open), %d frames, %d dropped, %d missed, %d failed", x.Streams, x.Open, x.Frames, x.Dropped, x.MissedDeadlines, x.Failures)
			if want := fmt.Sprintf(format, args...); got != want {
				t.Errorf("%s/%s: inspect says %s, want %s", plugin, stage, got, want)
			}
			return
		}
	}
	t.Errorf("%s: inspect shows no stream stage %q: %+v", plugin, stage, st.Streams)
}

// TestStreamBackPressure: with a slow plugin, the producer is held back by
// its bounded shared memory instead of queueing without bound.
func TestStreamBackPressure(t *testing.T) {
	td := startWithPlugins(t, fastSupervision,
		testPlugin{name: "slowpoke", frames: "slow", extra: streamStage("slow", "video/segment", "transform", "fail-closed", "30s", 0)},
	)
	s := dial(t, td.socket)
	st := openStream(t, s, "video/segment")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// 8 MiB frames into a 64 MiB pool, while nothing is received: sending
	// must stall after about 8 frames.
	sent := make(chan int, 100)
	go func() {
		for i := 0; i < 40; i++ {
			f, err := st.NewFrame(ctx, 8<<20)
			if err != nil {
				return
			}
			f.Seq = uint64(i)
			if st.Send(ctx, f) != nil {
				return
			}
			sent <- i
		}
	}()
	time.Sleep(2 * time.Second) // the plugin passes 40 frames in 2s; memory holds 8
	n := len(sent)
	if n > host.DefaultPoolSize/(8<<20) {
		t.Fatalf("%d frames of 8 MiB were sent while none was received: the producer was not held back", n)
	}
	t.Logf("producer stalled after %d frames of 8 MiB (pool %d MiB)", n, host.DefaultPoolSize>>20)
	// Receiving releases memory and the stream flows again.
	for i := 0; i < 12; i++ {
		f, err := st.Recv(ctx)
		if err != nil {
			t.Fatalf("recv %d: %v", i, err)
		}
		if f.Seq != uint64(i) {
			t.Fatalf("frame %d came back as %d", i, f.Seq)
		}
		f.Release()
	}
	st.Cancel()
}

// TestStreamFailures: a plugin crashing mid-stream ends a fail-closed
// stream with an error naming it, and is passed by untouched under
// fail-open; a handler error and a cancel from the host end cleanly.
func TestStreamFailures(t *testing.T) {
	sup := fastSupervision
	sup.QuarantineCrashes = 100
	td := startWithPlugins(t, sup,
		testPlugin{name: "closed-crasher", frames: "crash", extra: streamStage("c", "video/segment", "transform", "fail-closed", "10s", 0)},
		testPlugin{name: "open-crasher", frames: "crash", extra: streamStage("c", "audio/segment", "transform", "fail-open", "10s", 0)},
		testPlugin{name: "failer", frames: "fail", extra: streamStage("f", "subtitle/vtt", "transform", "fail-closed", "10s", 0)},
	)
	s := dial(t, td.socket)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	send := func(st *host.Stream, n int) {
		for i := 0; i < n; i++ {
			if err := st.Send(ctx, &host.Frame{Seq: uint64(i), Data: pattern(uint64(i), 300<<10)}); err != nil {
				return
			}
		}
		st.CloseSend()
	}

	t.Run("crash, fail-closed", func(t *testing.T) {
		st := openStream(t, s, "video/segment")
		go send(st, 6)
		var err error
		got := 0
		for {
			var f *host.Frame
			if f, err = st.Recv(ctx); err != nil {
				break
			}
			got++
			f.Release()
		}
		if err == nil || errors.Is(err, io.EOF) || !strings.Contains(err.Error(), `plugin "closed-crasher"`) || !strings.Contains(err.Error(), "mid-stream") {
			t.Fatalf("after %d frames: %v", got, err)
		}
		// Frames 0-2 were answered, but the plugin batches its answers
		// (up to 200µs) and a crash loses what was not written yet.
		if got > 3 {
			t.Errorf("%d frames came through, but the plugin crashed on frame 3", got)
		}
		t.Logf("%d of the 3 frames answered before the crash came through", got)
	})
	t.Run("crash, fail-open", func(t *testing.T) {
		st := openStream(t, s, "audio/segment")
		go send(st, 6)
		for i := 0; i < 6; i++ {
			f, err := st.Recv(ctx)
			if err != nil {
				t.Fatalf("frame %d: %v", i, err)
			}
			if f.Seq != uint64(i) || !bytes.Equal(f.Data, pattern(uint64(i), 300<<10)) {
				t.Fatalf("frame %d: seq %d, %d bytes, not the untouched input", i, f.Seq, len(f.Data))
			}
			f.Release()
		}
		if _, err := st.Recv(ctx); !errors.Is(err, io.EOF) {
			t.Fatalf("end: %v", err)
		}
	})
	t.Run("handler error", func(t *testing.T) {
		st := openStream(t, s, "subtitle/vtt")
		go send(st, 4)
		var err error
		for err == nil {
			var f *host.Frame
			if f, err = st.Recv(ctx); err == nil {
				f.Release()
			}
		}
		if !strings.Contains(err.Error(), "cannot filter frame 2") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("host cancels", func(t *testing.T) {
		st := openStream(t, s, "subtitle/vtt")
		st.Send(ctx, &host.Frame{Seq: 0, Data: []byte("WEBVTT")})
		if err := st.Cancel(); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(ctx); !errors.Is(err, context.Canceled) {
			t.Fatalf("recv after cancel: %v", err)
		}
		// The daemon and the plugin go on serving new streams.
		st = openStream(t, s, "subtitle/vtt")
		out := roundTrip(t, st, []int{10, 20})
		if len(out) != 2 {
			t.Fatalf("after a cancel: %d frames", len(out))
		}
	})
}

// TestStreamBackPressureSmallFrames: small frames travel inline, which no
// pool bounds. With a slow plugin and a host that does not receive, Send
// stops at the stream's window; receiving frees it, frames come back in
// order; a cancel with a full pipeline does not wait for the slow plugin
// to work through it, and the plugin is free for the next stream at once.
func TestStreamBackPressureSmallFrames(t *testing.T) {
	td := startWithPlugins(t, fastSupervision,
		testPlugin{name: "slowpoke", frames: "slow", extra: streamStage("slow", "video/*", "transform", "fail-closed", "60s", 0)},
	)
	s := dial(t, td.socket)
	st := openStream(t, s, "video/segment")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var sent atomic.Int64
	go func() {
		payload := make([]byte, 100) // ≤ host.InlineMax: inline
		for i := 0; ; i++ {
			if st.Send(ctx, &host.Frame{Seq: uint64(i), Data: payload}) != nil {
				return
			}
			sent.Add(1)
		}
	}()
	var prev int64 = -1
	for {
		time.Sleep(300 * time.Millisecond)
		n := sent.Load()
		if n == prev {
			break
		}
		if n > host.Window {
			t.Fatalf("%d inline frames were sent to a plugin that passes 20 a second, none received: nothing held the producer back", n)
		}
		prev = n
	}
	if prev != host.Window {
		t.Fatalf("the producer stalled after %d frames, want the window (%d)", prev, host.Window)
	}
	for i := 0; i < 5; i++ {
		f, err := st.Recv(ctx)
		if err != nil {
			t.Fatalf("recv %d: %v", i, err)
		}
		if f.Seq != uint64(i) || len(f.Data) != 100 {
			t.Fatalf("frame %d came back as %d (%d bytes)", i, f.Seq, len(f.Data))
		}
		f.Release()
	}
	time.Sleep(300 * time.Millisecond)
	if n := sent.Load(); n != host.Window+5 {
		t.Fatalf("after receiving 5, %d frames sent, want %d", n, host.Window+5)
	}
	// A window of frames waits at a plugin that takes 50ms each: 50s of work.
	if err := st.Cancel(); err != nil {
		t.Fatal(err)
	}
	next := openStream(t, s, "video/other")
	t0 := time.Now()
	out := roundTrip(t, next, []int{10})
	if len(out) != 1 {
		t.Fatalf("after a cancel: %d frames", len(out))
	}
	t.Logf("after cancelling %d queued frames, the next stream's frame took %s", host.Window, time.Since(t0).Round(time.Millisecond))
	// The cancelled frames were answered without work: the plugin's
	// count of finished frames stays put (it would climb for 50s).
	count := func() string { v, _, _ := td.store.KV("slowpoke").Get("slow-frames"); return string(v) }
	time.Sleep(300 * time.Millisecond)
	c1 := count()
	time.Sleep(500 * time.Millisecond)
	if c2 := count(); c1 != c2 {
		t.Fatalf("the plugin is still working through the cancelled frames: %s, then %s finished", c1, c2)
	}
	t.Logf("the plugin finished %s frames in all", c1)
}

// rawFrameClient speaks the frame protocol itself, to check what the
// daemon sends.
func rawFrameClient(t *testing.T, socket string) (*frames.Conn, *frames.Producer) {
	t.Helper()
	f := dialFrameSocket(t, socket)
	conn, err := frames.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	p := frames.NewProducer(conn, 1<<20)
	t.Cleanup(func() { conn.Close(); p.Close() })
	return conn, p
}

// next returns the next message of one of the kinds, skipping others.
func nextMsg(t *testing.T, c *frames.Conn, kinds ...schema.FrameMsg_Which) (schema.FrameMsg, func()) {
	t.Helper()
	for {
		msg, fm, fds, err := c.Recv()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fds {
			f.Close()
		}
		for _, k := range kinds {
			if fm.Which() == k {
				return fm, msg.Release
			}
		}
		msg.Release()
	}
}

// openRaw opens stream sid of kind on a raw client, waits until the
// daemon says it is open and returns the stream's pool scope.
func openRaw(t *testing.T, conn *frames.Conn, sid uint64, kind string) uint64 {
	t.Helper()
	if err := conn.Send(func(m schema.FrameMsg) error {
		o, err := m.NewOpen()
		if err != nil {
			return err
		}
		o.SetStream(sid)
		return o.SetKind(kind)
	}); err != nil {
		t.Fatal(err)
	}
	fm, done := nextMsg(t, conn, schema.FrameMsg_Which_opened)
	defer done()
	o, _ := fm.Opened()
	if o.Stream() != sid || o.Scope() == 0 {
		t.Fatalf("opened stream %d in scope %d, want stream %d in a scope", o.Stream(), o.Scope(), sid)
	}
	return o.Scope()
}

// sendRaw sends a frame of n bytes of the client's shared memory (a pool
// of scope), holding text, and returns its descriptor.
func sendRaw(t *testing.T, ctx context.Context, conn *frames.Conn, prod *frames.Producer, scope, sid, seq uint64, n int, text string) frames.Ref {
	t.Helper()
	slot, err := prod.Alloc(ctx, scope, int64(n))
	if err != nil {
		t.Fatal(err)
	}
	copy(slot.Data, text)
	ref := frames.Ref{Pool: slot.Pool, Offset: uint64(slot.Off), Length: uint64(slot.Len)}
	if err := conn.SendFrame(sid, frames.Header{Seq: seq}, 0, 1, nil, &ref); err != nil {
		t.Fatal(err)
	}
	return ref
}

// awaitRelease waits for the daemon to give ref back.
func awaitRelease(t *testing.T, conn *frames.Conn, ref frames.Ref) {
	t.Helper()
	fm, done := nextMsg(t, conn, schema.FrameMsg_Which_release)
	defer done()
	rel, _ := fm.Release()
	if rel.Pool() != ref.Pool || rel.Offset() != ref.Offset {
		t.Fatalf("released %d+%d, want %d+%d", rel.Pool(), rel.Offset(), ref.Pool, ref.Offset)
	}
}

// TestStreamReturnedFrames: a frame that comes back to the host that owns
// its memory, with nobody else holding it, is marked returned (the host
// frees it without a Release round trip); while an observer holds it too,
// the host releases it as usual and the daemon gives it back once both
// have.
func TestStreamReturnedFrames(t *testing.T) {
	td := startWithPlugins(t, fastSupervision,
		testPlugin{name: "passer", frames: "pass", extra: streamStage("pass", "*", "transform", "fail-closed", "10s", 0)},
		testPlugin{name: "watcher", frames: "", extra: streamStage("stats", "audio/segment", "observe", "fail-open", "10s", 0)},
	)
	conn, prod := rawFrameClient(t, td.socket)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i, tt := range []struct {
		kind     string
		returned bool
	}{{"video/segment", true}, {"audio/segment", false}} {
		t.Run(tt.kind, func(t *testing.T) {
			sid := uint64(i + 1)
			scope := openRaw(t, conn, sid, tt.kind)
			ref := sendRaw(t, ctx, conn, prod, scope, sid, 7, 4096, "returned?")
			fm, done := nextMsg(t, conn, schema.FrameMsg_Which_frame)
			f, _ := fm.Frame()
			r, err := f.Data().Ref()
			if err != nil || r.Owner() != 0 || r.Pool() != ref.Pool || r.Offset() != ref.Offset {
				t.Fatalf("frame came back as %v (%v), want our own descriptor", r, err)
			}
			if f.Returned() != tt.returned {
				t.Fatalf("returned = %v, want %v", f.Returned(), tt.returned)
			}
			done()
			if tt.returned {
				// Ours again: nothing more comes for it.
				if err := prod.Free(ref.Pool, int64(ref.Offset), int64(ref.Length)); err != nil {
					t.Fatal(err)
				}
				if n := heldRefs(td); n != 0 {
					t.Fatalf("the daemon still counts %d holds", n)
				}
				return
			}
			if err := conn.SendRelease(0, ref.Pool, ref.Offset, ref.Length); err != nil {
				t.Fatal(err)
			}
			awaitRelease(t, conn, ref)
		})
	}
}

// heldRefs is the number of descriptors the daemon counts as held.
func heldRefs(td *testDaemon) int {
	h := td.Daemon.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.refs)
}

// stubbornStream starts a plugin that works 500ms on every frame whatever
// happens (KV "stubborn" says "started", then "done"), opens stream 1 to
// it on a raw client and sends it one frame of shared memory.
func stubbornStream(t *testing.T, failure, deadline string) (*testDaemon, *frames.Conn, frames.Ref, func() string, context.Context) {
	t.Helper()
	td := startWithPlugins(t, fastSupervision,
		testPlugin{name: "stubborn", frames: "stubborn", extra: streamStage("s", "video/segment", "transform", failure, deadline, 0)},
	)
	conn, prod := rawFrameClient(t, td.socket)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	kv := func() string { v, _, _ := td.store.KV("stubborn").Get("stubborn"); return string(v) }
	scope := openRaw(t, conn, 1, "video/segment")
	return td, conn, sendRaw(t, ctx, conn, prod, scope, 1, 1, 64<<10, ""), kv, ctx
}

// TestStreamCancelKeepsMemoryUntilAnswered: when a stream is cancelled
// while a plugin works on a frame, the frame's memory goes back to the
// host only once the plugin has answered: a plugin that ignores the cancel
// must not be writing into memory the host already reuses.
func TestStreamCancelKeepsMemoryUntilAnswered(t *testing.T) {
	td, conn, ref, kv, ctx := stubbornStream(t, "fail-closed", "10s")
	for kv() != "started" {
		if ctx.Err() != nil {
			t.Fatal("the plugin never started on the frame")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := conn.SendEnd(1, "", true); err != nil {
		t.Fatal(err)
	}
	awaitRelease(t, conn, ref)
	if got := kv(); got != "done" {
		t.Fatalf("the frame's memory came back while the plugin was still on it (plugin: %q)", got)
	}
	if n := heldRefs(td); n != 0 {
		t.Fatalf("the daemon still counts %d holds", n)
	}
}

// TestStreamNoLeaks opens sessions and streams over and over — finished,
// cancelled mid-way, and abandoned by a host that closes its session — and
// checks that goroutines, file descriptors and the hub's bookkeeping come
// back to where they were.
func TestStreamNoLeaks(t *testing.T) {
	td := startWithPlugins(t, fastSupervision,
		testPlugin{name: "passer", frames: "pass", extra: streamStage("pass", "video/segment", "transform", "fail-closed", "10s", 0)},
		testPlugin{name: "watcher", frames: "", extra: streamStage("stats", "video/segment", "observe", "fail-open", "10s", 0)},
	)
	cycle := func(i int) {
		s := dial(t, td.socket)
		defer s.Close()
		st := openStream(t, s, "video/segment")
		switch i % 3 {
		case 0: // runs its course
			if out := roundTrip(t, st, []int{100, 4 << 10, 300 << 10, 0}); len(out) != 4 {
				t.Fatalf("cycle %d: %d frames", i, len(out))
			}
		case 1: // cancelled with frames in flight
			for j := 0; j < 50; j++ {
				_ = st.Send(context.Background(), &host.Frame{Seq: uint64(j), Data: pattern(uint64(j), 8<<10)})
			}
			st.Cancel()
		case 2: // the host goes away mid-stream
			for j := 0; j < 50; j++ {
				_ = st.Send(context.Background(), &host.Frame{Seq: uint64(j), Data: pattern(uint64(j), 8<<10)})
			}
		}
	}
	cycle(0)
	settle()
	hubEmpty := func() string {
		h := td.Daemon.hub
		h.mu.Lock()
		defer h.mu.Unlock()
		if len(h.refs) != 0 || len(h.streams) != 0 || len(h.stages) != 0 || len(h.peers) != 2 {
			return fmt.Sprintf("refs %d, streams %d, stages %d, peers %d (want 0, 0, 0, 2)", len(h.refs), len(h.streams), len(h.stages), len(h.peers))
		}
		return ""
	}
	g0, f0 := runtime.NumGoroutine(), countFDs(t)
	for i := 0; i < 60; i++ {
		cycle(i)
	}
	var g1, f1 int
	var hub string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		g1, f1, hub = runtime.NumGoroutine(), countFDs(t), hubEmpty()
		if g1 <= g0+2 && f1 <= f0+1 && hub == "" {
			break
		}
	}
	t.Logf("after 60 sessions: goroutines %d -> %d, fds %d -> %d", g0, g1, f0, f1)
	if g1 > g0+2 {
		buf := make([]byte, 1<<20)
		t.Errorf("goroutines grew from %d to %d:\n%s", g0, g1, buf[:runtime.Stack(buf, true)])
	}
	if f1 > f0+1 {
		t.Errorf("file descriptors grew from %d to %d", f0, f1)
	}
	if hub != "" {
		t.Errorf("the frame hub still holds %s", hub)
	}
}

// TestStreamOpenAndClose: a plugin hears of each stream before its first
// frame (and may refuse it) and after its last, with why it ended.
func TestStreamOpenAndClose(t *testing.T) {
	td := startWithPlugins(t, fastSupervision, testPlugin{name: "lifecycle", frames: "pass", extra: streamStage("pass", "video/segment", "transform", "fail-closed", "10s", 0) +
		streamStage("refuse", "audio/segment", "transform", "fail-closed", "10s", 0)})
	s := dial(t, td.socket)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	closed := func(stage, want string) {
		t.Helper()
		for {
			v, ok, _ := td.store.KV("lifecycle").Get("closed/" + stage)
			if ok && string(v) == want {
				td.store.KV("lifecycle").Delete("closed/" + stage)
				return
			}
			if ctx.Err() != nil {
				t.Fatalf("stage %s: CloseStream heard %q, want %q", stage, v, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	st := openStream(t, s, "video/segment")
	if out := roundTrip(t, st, []int{10, 20}); len(out) != 2 {
		t.Fatalf("%d frames", len(out))
	}
	closed("pass", "<nil>")

	st = openStream(t, s, "video/segment")
	st.Send(ctx, &host.Frame{Data: []byte("x")})
	st.Cancel()
	closed("pass", plugin.ErrStreamCanceled.Error())

	st = openStream(t, s, "audio/segment")
	st.Send(ctx, &host.Frame{Data: []byte("x")})
	_, err := st.Recv(ctx)
	if err == nil || !strings.Contains(err.Error(), `plugin "lifecycle"`) || !strings.Contains(err.Error(), "will not take stream") {
		t.Fatalf("a refused stream: %v", err)
	}
	v, _, _ := td.store.KV("lifecycle").Get("closed/refuse")
	for !strings.HasPrefix(string(v), "will not take stream") && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
		v, _, _ = td.store.KV("lifecycle").Get("closed/refuse")
	}
	if !strings.HasPrefix(string(v), "will not take stream") {
		t.Fatalf("CloseStream of the refused stream heard %q", v)
	}
}

// TestStreamDeadlines: a stage that misses a frame's deadline ends a
// fail-closed stream with an error naming it, and under fail-open the
// frame passes on untouched; late answers are dropped, in order, and every
// hold ends.
func TestStreamDeadlines(t *testing.T) {
	td := startWithPlugins(t, fastSupervision,
		testPlugin{name: "slow-closed", frames: "slow", extra: streamStage("s", "video/segment", "transform", "fail-closed", "20ms", 0)},
		testPlugin{name: "slow-open", frames: "slow", extra: streamStage("s", "audio/segment", "transform", "fail-open", "20ms", 0)},
	)
	s := dial(t, td.socket)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	st := openStream(t, s, "video/segment")
	for i := 0; i < 3; i++ {
		st.Send(ctx, &host.Frame{Seq: uint64(i), Data: pattern(uint64(i), 8<<10)})
	}
	_, err := st.Recv(ctx)
	if err == nil || !strings.Contains(err.Error(), `plugin "slow-closed"`) || !strings.Contains(err.Error(), "missed its 20ms deadline on frame 0") {
		t.Fatalf("fail-closed: %v", err)
	}

	// Fail-open, with every frame numbered 0: late answers are matched by
	// their order, not their numbers.
	st = openStream(t, s, "audio/segment")
	go func() {
		for i := 0; i < 6; i++ {
			f, err := st.NewFrame(ctx, 8<<10)
			if err != nil {
				return
			}
			copy(f.Data, pattern(uint64(i), 8<<10))
			st.Send(ctx, f)
		}
		st.CloseSend()
	}()
	for i := 0; i < 6; i++ {
		f, err := st.Recv(ctx)
		if err != nil {
			t.Fatalf("fail-open, frame %d: %v", i, err)
		}
		if !bytes.Equal(f.Data, pattern(uint64(i), 8<<10)) {
			t.Fatalf("fail-open, frame %d: not the untouched input", i)
		}
		f.Release()
	}
	if _, err := st.Recv(ctx); !errors.Is(err, io.EOF) {
		t.Fatalf("fail-open end: %v", err)
	}
	for heldRefs(td) != 0 {
		if ctx.Err() != nil {
			t.Fatalf("the daemon still counts %d holds after the late answers", heldRefs(td))
		}
		time.Sleep(20 * time.Millisecond)
	}
	wantStage(t, td, "slow-closed", "s", "1 streams (0 open), 0 frames, 0 dropped, 1 missed, 0 failed")
	wantStage(t, td, "slow-open", "s", "1 streams (0 open), 0 frames, 0 dropped, 6 missed, 0 failed")
	logs, err := td.ctl.Logs(ctx, "slow-open", 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !containsLine(logs, "missed its 20ms deadline on frame 0; passing it through untouched (fail-open)") {
		t.Fatalf("the plugin's log does not say why frames passed it by: %+v", logs)
	}
}

// TestStreamLateAnswerKeepsMemory: a frame passed on after its stage
// missed the deadline (fail-open) goes back to its producer only once that
// stage answered too: the plugin may still be writing into it.
func TestStreamLateAnswerKeepsMemory(t *testing.T) {
	_, conn, ref, kv, _ := stubbornStream(t, "fail-open", "50ms")
	fm, done := nextMsg(t, conn, schema.FrameMsg_Which_frame)
	f, _ := fm.Frame()
	if f.Returned() {
		t.Fatal("a frame the late stage still holds came back marked returned")
	}
	done()
	if got := kv(); got != "started" {
		t.Fatalf("the frame came back before the deadline passed (plugin: %q)", got)
	}
	if err := conn.SendRelease(0, ref.Pool, ref.Offset, ref.Length); err != nil {
		t.Fatal(err)
	}
	awaitRelease(t, conn, ref)
	if got := kv(); got != "done" {
		t.Fatalf("the frame's memory came back while the late plugin was still on it (plugin: %q)", got)
	}
}
