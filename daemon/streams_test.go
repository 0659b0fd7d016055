package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/host"
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
	td := startDaemon(t, testRuntime(t), fastSupervision)
	td.install(t, pluginDir(t, testplugManifest("xorer", []string{"-frames", "xor"}, streamStage("flip", "video/segment", "transform", "fail-closed", "10s", 1))))
	td.install(t, pluginDir(t, testplugManifest("tagger", []string{"-frames", "tag"}, streamStage("tag", "video/*", "transform", "fail-closed", "10s", 2))))
	td.install(t, pluginDir(t, testplugManifest("watcher", nil, streamStage("stats", "video/segment", "observe", "fail-open", "10s", 0))))
	td.install(t, pluginDir(t, testplugManifest("audio-only", []string{"-frames", "xor"}, streamStage("flip", "audio/segment", "transform", "fail-closed", "10s", 0))))
	for _, n := range []string{"xorer", "tagger", "watcher", "audio-only"} {
		waitState(t, td.ctl, n, 30*time.Second, "running", running)
	}
	s := dial(t, td.socket)
	st := openStream(t, s, "video/segment")
	if got := strings.Join(st.Stages(), " "); got != "xorer/flip tagger/tag watcher/stats" {
		t.Fatalf("chain = %q", got)
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
	td := startDaemon(t, testRuntime(t), fastSupervision)
	td.install(t, pluginDir(t, testplugManifest("passer", []string{"-frames", "pass"}, streamStage("pass", "video/segment", "transform", "fail-closed", "30s", 0))))
	waitState(t, td.ctl, "passer", 30*time.Second, "running", running)
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
	td := startDaemon(t, testRuntime(t), fastSupervision)
	td.install(t, pluginDir(t, testplugManifest("dropper", []string{"-frames", "drop"}, streamStage("drop", "audio/segment", "transform", "fail-closed", "10s", 0))))
	td.install(t, pluginDir(t, testplugManifest("splitter", []string{"-frames", "split"}, streamStage("split", "audio/segment", "transform", "fail-closed", "10s", 1))))
	waitState(t, td.ctl, "dropper", 30*time.Second, "running", running)
	waitState(t, td.ctl, "splitter", 30*time.Second, "running", running)
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
}

// TestStreamBackPressure: with a slow plugin, the producer is held back by
// its bounded shared memory instead of queueing without bound.
func TestStreamBackPressure(t *testing.T) {
	td := startDaemon(t, testRuntime(t), fastSupervision)
	td.install(t, pluginDir(t, testplugManifest("slowpoke", []string{"-frames", "slow"}, streamStage("slow", "video/segment", "transform", "fail-closed", "30s", 0))))
	waitState(t, td.ctl, "slowpoke", 30*time.Second, "running", running)
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
	td := startDaemon(t, testRuntime(t), sup)
	td.install(t, pluginDir(t, testplugManifest("closed-crasher", []string{"-frames", "crash"}, streamStage("c", "video/segment", "transform", "fail-closed", "10s", 0))))
	td.install(t, pluginDir(t, testplugManifest("open-crasher", []string{"-frames", "crash"}, streamStage("c", "audio/segment", "transform", "fail-open", "10s", 0))))
	td.install(t, pluginDir(t, testplugManifest("failer", []string{"-frames", "fail"}, streamStage("f", "subtitle/vtt", "transform", "fail-closed", "10s", 0))))
	for _, n := range []string{"closed-crasher", "open-crasher", "failer"} {
		waitState(t, td.ctl, n, 30*time.Second, "running", running)
	}
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
		if got != 3 {
			t.Errorf("%d frames came through before the crash, want 3", got)
		}
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
