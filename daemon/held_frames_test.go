package daemon

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/host"
)

// TestSessionCloseKeepsHeldFrames closes a session while the host holds
// frames of every kind of shared memory a host sees — its own pool's
// (returned by a pass-through stage, shared pool and a dedicated one), a
// plugin's pool (a stage that makes new frames), and a NewFrame not sent
// yet — then reads (and writes) every byte of them: Close must not unmap
// memory under a held frame (the host died of SIGSEGV). Release after
// Close then gives the memory back. Run it under -race too.
func TestSessionCloseKeepsHeldFrames(t *testing.T) {
	td := startWithPlugins(t, fastSupervision,
		testPlugin{name: "passer", frames: "pass", extra: streamStage("pass", "video/segment", "transform", "fail-closed", "10s", 0)},
		testPlugin{name: "tagger", frames: "tag", extra: streamStage("tag", "audio/segment", "transform", "fail-closed", "10s", 0)},
	)
	s := dial(t, td.socket)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	type held struct {
		what string
		f    *host.Frame
		want []byte
	}
	var frames []held
	recvOne := func(st *host.Stream, seq uint64, n int, want func([]byte) []byte, what string) {
		t.Helper()
		f, err := st.NewFrame(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		copy(f.Data, pattern(seq, n))
		f.Seq = seq
		if err := st.Send(ctx, f); err != nil {
			t.Fatal(err)
		}
		got, err := st.Recv(ctx)
		if err != nil {
			t.Fatalf("%s: recv: %v", what, err)
		}
		if !bytes.Equal(got.Data, want(pattern(seq, n))) {
			t.Fatalf("%s: wrong bytes before Close", what)
		}
		frames = append(frames, held{what, got, want(pattern(seq, n))})
	}
	same := func(b []byte) []byte { return b }
	video := openStream(t, s, "video/segment")
	recvOne(video, 0, 64<<10, same, "own shared pool (returned)")
	recvOne(video, 1, host.DefaultPoolSize+4096, same, "own dedicated pool (returned)")
	audio := openStream(t, s, "audio/segment")
	recvOne(audio, 2, 256<<10, func(b []byte) []byte { return append([]byte("tagger:"), b...) }, "plugin's pool")
	unsent, err := video.NewFrame(ctx, 128<<10)
	if err != nil {
		t.Fatal(err)
	}

	if err := s.Close(); err != nil {
		t.Logf("close: %v", err)
	}
	for _, h := range frames {
		var sum byte
		for _, c := range h.f.Data { // every byte: an unmapped page would fault
			sum ^= c
		}
		if !bytes.Equal(h.f.Data, h.want) {
			t.Errorf("%s: bytes changed after Close", h.what)
		}
		_ = sum
	}
	for i := range unsent.Data { // the producer may still fill it
		unsent.Data[i] = byte(i)
	}
	for _, h := range frames {
		h.f.Release()
		h.f.Release() // twice is fine
	}
	unsent.Release()
}
