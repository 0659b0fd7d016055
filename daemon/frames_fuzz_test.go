//go:build linux

package daemon

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	"golang.org/x/sys/unix"

	"github.com/dimplugd/dimplugd/sandbox"
	"github.com/dimplugd/dimplugd/sdk-go/frames"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// frameMsgBytes encodes one FrameMsg in standard Cap'n Proto framing, as a
// packet on a frame socket carries them (back to back).
func frameMsgBytes(tb testing.TB, fill func(schema.FrameMsg) error) []byte {
	tb.Helper()
	msg, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	if err != nil {
		tb.Fatal(err)
	}
	fm, err := schema.NewRootFrameMsg(seg)
	if err != nil {
		tb.Fatal(err)
	}
	if err := fill(fm); err != nil {
		tb.Fatal(err)
	}
	b, err := msg.Marshal()
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// frameMsgSeeds are real messages of every kind a host sends, alone and
// batched, plus damaged ones.
func frameMsgSeeds(tb testing.TB) [][]byte {
	open := frameMsgBytes(tb, func(m schema.FrameMsg) error {
		o, err := m.NewOpen()
		if err != nil {
			return err
		}
		o.SetStream(2)
		return o.SetKind("video/segment")
	})
	inline := frameMsgBytes(tb, frames.FrameMsg(1, frames.Header{Seq: 1, ContentType: "video/iso.segment"}, 0, 1, []byte("inline frame"), nil))
	ref := frameMsgBytes(tb, frames.FrameMsg(1, frames.Header{Seq: 2}, 0, 1, nil, &frames.Ref{Pool: 1, Offset: 0, Length: 4096}))
	foreign := frameMsgBytes(tb, frames.FrameMsg(1, frames.Header{Seq: 3}, 0, 1, nil, &frames.Ref{Owner: 1, Pool: 1, Offset: 1 << 62, Length: 1 << 63}))
	release := frameMsgBytes(tb, frames.ReleaseMsg(frames.Ref{Owner: 1, Pool: 1, Offset: 64, Length: 4096}))
	end := frameMsgBytes(tb, frames.EndMsg(1, "", false))
	cancel := frameMsgBytes(tb, frames.EndMsg(1, "gave up", true))
	poolAdd := frameMsgBytes(tb, func(m schema.FrameMsg) error {
		pa, err := m.NewPoolAdd()
		if err != nil {
			return err
		}
		pa.SetId(1)
		pa.SetSize(1 << 20)
		pa.SetScope(1)
		return nil
	})
	poolDrop := frameMsgBytes(tb, func(m schema.FrameMsg) error {
		r, err := m.NewPoolDrop()
		if err != nil {
			return err
		}
		r.SetPool(1)
		return nil
	})
	lane := frameMsgBytes(tb, func(m schema.FrameMsg) error { return m.SetLaneRequest("passer") })
	stats := frameMsgBytes(tb, func(m schema.FrameMsg) error {
		hs, err := m.NewHookStats()
		if err != nil {
			return err
		}
		hs.SetCalls(1 << 40)
		if err := hs.SetHook("request-hook"); err != nil {
			return err
		}
		return hs.SetPlugin("passer")
	})
	parts := frameMsgBytes(tb, frames.FrameMsg(1, frames.Header{Seq: 4}, 7, 5001, []byte("x"), nil))
	cat := func(bs ...[]byte) []byte {
		var out []byte
		for _, b := range bs {
			out = append(out, b...)
		}
		return out
	}
	return [][]byte{
		open, inline, ref, foreign, release, end, cancel, poolAdd, poolDrop, lane, stats, parts,
		cat(inline, inline, end),
		cat(open, ref, release, release, cancel),
		cat(inline, parts, stats, lane, poolDrop),
		inline[:len(inline)-3],               // cut short
		{0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0}, // 2^31 segments
		{0, 0, 0, 0, 0xff, 0xff, 0xff, 0x1f}, // one huge segment
		cat(end[:8], make([]byte, 64)),       // zeroed body
		{},
	}
}

// FuzzFrameMsg feeds arbitrary packets to the daemon's frame hub as a
// host's frame socket would, after a real stream was opened through a
// plugin. Whatever the packet, the daemon must not crash or block, must
// answer a well-formed host afterwards, and must keep nothing of the
// fuzzing host once it is gone: no stream, no hold, no peer.
func FuzzFrameMsg(f *testing.F) {
	for _, s := range frameMsgSeeds(f) {
		f.Add(s)
	}
	// Plugins run as plain processes here: the sandbox is not what this
	// target exercises, and fuzz workers start many daemons.
	td := startDaemonConfig(f, Config{Runtime: sandbox.ProcessRuntime{}, Supervision: fastSupervision})
	td.install(f, pluginDir(f, testplugManifest("passer", []string{"-frames", "pass"},
		streamStage("pass", "*", "transform", "fail-open", "1s", 0))))
	waitState(f, td.ctl, "passer", 30*time.Second, "running", running)

	f.Fuzz(func(t *testing.T, packet []byte) {
		wd := time.AfterFunc(20*time.Second, func() {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			os.Stderr.Write(buf[:n])
			panic(fmt.Sprintf("fuzz iteration stuck on %x", packet))
		})
		defer wd.Stop()
		if p := os.Getenv("DIMPLUGD_FUZZ_COUNT"); p != "" { // how many inputs ran (the engine's own count lags)
			if f, err := os.OpenFile(p, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600); err == nil {
				f.Write([]byte{'.'})
				f.Close()
			}
		}
		sock := dialFrameSocket(t, td.socket)
		defer sock.Close()
		dup, err := unix.Dup(int(sock.Fd()))
		if err != nil {
			t.Fatal(err)
		}
		df := os.NewFile(uintptr(dup), "fuzz")
		conn, err := frames.FileConn(df)
		df.Close() // FileConn has its own
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		openRaw(t, conn, 1, "video/segment")
		if len(packet) > 0 {
			if err := unix.Send(int(sock.Fd()), packet, 0); err != nil && err != unix.EPIPE && err != unix.ECONNRESET && err != unix.EMSGSIZE {
				t.Fatalf("send: %v", err)
			}
		}
		// Synchronise: a stream of our own, opened after the packet, is
		// answered (or we were cut off). Either way the hub has handled
		// the packet by then.
		if err := conn.Send(func(m schema.FrameMsg) error {
			o, err := m.NewOpen()
			if err != nil {
				return err
			}
			o.SetStream(1 << 40)
			return o.SetKind("audio/segment")
		}); err == nil {
			awaitStream(t, conn, 1<<40)
		}
		conn.Close()
		sock.Close()
		waitHubClean(t, td)

		// The daemon still serves a well-behaved host.
		s := dial(t, td.socket)
		st := openStream(t, s, "video/segment")
		out := roundTrip(t, st, []int{4096})
		if string(out[0]) != string(pattern(0, 4096)) {
			t.Fatal("a well-behaved host's frame changed")
		}
		st.CloseSend()
		s.Close()
		waitHubClean(t, td)
	})
}

// dialFrameSocket opens a host frame socket on the daemon's host socket,
// for a host session of its own that lasts as long as the test.
func dialFrameSocket(t *testing.T, socket string) *os.File {
	t.Helper()
	f, why := openFrameSocket(t, socket, rawHostSession(t, socket))
	if f == nil {
		t.Fatalf("frame socket refused: %s", why)
	}
	return f
}

// openFrameSocket opens a frame socket with token; nil and why when the
// daemon refuses.
func openFrameSocket(t *testing.T, socket string, token []byte) (*os.File, string) {
	t.Helper()
	c, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(append([]byte(wire.FramesPreamble), token...)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1024)
	n, f, err := frames.RecvFD(c.(*net.UnixConn), buf)
	if err != nil {
		t.Fatalf("frame socket: %v", err)
	}
	if f == nil {
		if n == 0 || buf[0] != wire.PreambleRefused {
			t.Fatalf("frame socket: no fd and no refusal: %q", buf[:n])
		}
		return nil, string(buf[1:n])
	}
	return f, ""
}

// rawHostSession opens a host session over plain Cap'n Proto RPC and
// returns its token; the session ends with the test.
func rawHostSession(t *testing.T, socket string) []byte {
	t.Helper()
	token, end := rawHostSessionEnd(t, socket)
	t.Cleanup(end)
	return token
}

// rawHostSessionEnd is rawHostSession with the end in the caller's hands.
func rawHostSessionEnd(t *testing.T, socket string) (token []byte, end func()) {
	t.Helper()
	_, token, end = rawHostSessionCap(t, socket)
	return token, end
}

// rawHostSessionCap is rawHostSessionEnd with the session capability,
// which end releases.
func rawHostSessionCap(t *testing.T, socket string) (sess schema.HostSession, token []byte, end func()) {
	t.Helper()
	c, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	conn := wire.NewConn(c, capnp.Client{}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	boot := schema.Daemon(conn.Bootstrap(ctx))
	defer boot.Release()
	fut, release := boot.OpenHost(ctx, func(p schema.Daemon_openHost_Params) error {
		vs, err := p.NewVersions(1)
		if err != nil {
			return err
		}
		vs.Set(0, schema.SupportedVersions[len(schema.SupportedVersions)-1])
		return p.SetClient("raw test host")
	})
	defer release()
	res, err := fut.Struct()
	if err != nil {
		conn.Close()
		t.Fatalf("openHost: %v", err)
	}
	tok, err := res.SessionToken()
	if err != nil || len(tok) != wire.TokenLen {
		conn.Close()
		t.Fatalf("openHost: token %x, %v", tok, err)
	}
	sess = res.Session().AddRef() // the session lasts while it is held
	return sess, bytes.Clone(tok), func() { sess.Release(); conn.Close() }
}

// awaitStream reads until stream sid is opened or ended, or the
// connection ends.
func awaitStream(t *testing.T, c *frames.Conn, sid uint64) {
	t.Helper()
	for {
		msg, fm, fds, err := c.Recv()
		if err != nil {
			return
		}
		closeAll(fds)
		done := false
		switch fm.Which() {
		case schema.FrameMsg_Which_opened:
			o, _ := fm.Opened()
			done = o.Stream() == sid
		case schema.FrameMsg_Which_end:
			e, _ := fm.End()
			done = e.Stream() == sid
		}
		msg.Release()
		if done {
			return
		}
	}
}

// waitHubClean waits until the hub has no host peer, stream or hold left.
func waitHubClean(t *testing.T, td *testDaemon) {
	t.Helper()
	h := td.hub
	var hosts, streams, refs, stages int
	if !poll(10*time.Second, func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		hosts = 0
		for _, p := range h.peers {
			if p.unit == nil {
				hosts++
			}
		}
		streams, refs, stages = len(h.streams), len(h.refs), len(h.stages)
		return hosts == 0 && streams == 0 && refs == 0 && stages == 0
	}) {
		t.Fatalf("the hub kept %d host peers, %d streams, %d stages, %d holds of gone hosts", hosts, streams, stages, refs)
	}
}
