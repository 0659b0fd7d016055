//go:build linux

package daemon

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dimplugd/dimplugd/sdk-go/frames"
	"github.com/dimplugd/dimplugd/sdk-go/host"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// The frame side of the hostile suite: sandboxed plugins that speak the
// frame protocol themselves (testplug -raw, see its raw.go) and raw host
// clients, each breaking one rule of docs/protocol.md "Frame memory". Each
// case shows the attack fails with an error naming the attacker, the
// attacker alone is cut off or refused, and the daemon, other plugins and
// other hosts keep working with their frames intact.

// hostileFrameCases are the plugin attacks: the testplug -raw mode, what
// the host's stream error must say, and whether the daemon cuts the plugin
// off (and so restarts it) rather than failing only the stream.
var hostileFrameCases = []struct {
	mode, want string
	cut        bool
}{
	{"longer", "passed it on as 8192 bytes of its 4096", false},
	{"shorter", "passed it on as 4095 bytes of its 4096", false},
	{"parts", "split it into 5001 parts (at most 16)", false},
	{"foreign", "names pool 1 of another peer", false},
	{"oob", "names bytes 65528+4096 outside its 65536-byte pool 1", false},
	{"open", "was cut off: it opened a stream: only hosts open streams", true},
	{"lane", "was cut off: it asked for a direct hook lane: only hosts do", true},
	{"hookstats", "was cut off: it reported hook calls: only hosts do", true},
	{"noscope", "which is not a scope of its streams", true},
	{"pipe-pool", "that is not shareable memory: not a memfd", true},
	{"unsealed-pool", "not sealed against shrinking, growing and writing", true},
}

func TestHostileFramePlugins(t *testing.T) {
	plugins := []testPlugin{
		{name: "passer", frames: "pass", extra: streamStage("pass", "video/segment", "transform", "fail-closed", "10s", 0)},
		{name: "scribbler", frames: "scribble", extra: streamStage("scribble", "scribble/segment", "transform", "fail-closed", "10s", 0)},
	}
	// One hostile plugin serves every case: a stream's kind ("evil/MODE")
	// says how it breaks the protocol.
	plugins = append(plugins, testPlugin{name: "evil", extra: streamStage("s", "evil/*", "transform", "fail-closed", "10s", 0),
		args: []string{"-raw", "pass"}})
	// Every cut-off restarts the plugin: more than fastSupervision's
	// three crashes a minute (which would quarantine it, as it should).
	sup := fastSupervision
	sup.QuarantineCrashes = 100
	td := startWithPlugins(t, sup, plugins...)
	s := dial(t, td.socket)
	other := dial(t, td.socket) // another host, streaming all along

	// The control: a stream through a well-behaved plugin, before and
	// after every attack, on both hosts.
	good := func(t *testing.T, s *host.Session, seq uint64) {
		t.Helper()
		st := openStream(t, s, "video/segment")
		out := roundTrip(t, st, []int{4096, 1 << 20})
		for i, n := range []int{4096, 1 << 20} {
			if !bytes.Equal(out[i], pattern(uint64(i), n)) {
				t.Fatalf("host's frame %d changed on its way through passer", i)
			}
		}
		st.CloseSend()
	}
	good(t, s, 0)

	for _, c := range hostileFrameCases {
		t.Run(c.mode, func(t *testing.T) {
			const name = "evil"
			before := waitState(t, td.ctl, name, 30*time.Second, "running", running)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			st, err := s.OpenStream(ctx, "evil/"+c.mode, host.StreamMeta{})
			if err != nil {
				t.Fatal(err)
			}
			f, err := st.NewFrame(ctx, 4096)
			if err != nil {
				t.Fatal(err)
			}
			copy(f.Data, pattern(9, 4096))
			if err := st.Send(ctx, f); err != nil && !strings.Contains(err.Error(), name) {
				t.Fatalf("send: %v", err)
			}
			got, err := st.Recv(ctx)
			if err == nil {
				got.Release()
				t.Fatalf("the stream went on: frame %d came back", got.Seq)
			}
			if !strings.Contains(err.Error(), fmt.Sprintf("plugin %q", name)) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("stream error %q\nwant it to name plugin %q and say %q", err, name, c.want)
			}
			if c.cut {
				// Cut off, its instance restarts: it does not go on
				// showing "running" without its frame socket.
				st := waitState(t, td.ctl, name, 30*time.Second, "restarted", func(st *host.PluginStatus) bool {
					return st.Restarts > before.Restarts && st.State == StateRunning
				})
				if !strings.Contains(st.LastExit, "broke the frame protocol") {
					t.Errorf("last exit %q does not say why it was cut off", st.LastExit)
				}
			} else if st := waitState(t, td.ctl, name, 5*time.Second, "running", running); st.Restarts != before.Restarts {
				t.Errorf("a wrong answer restarted the plugin (%d → %d restarts)", before.Restarts, st.Restarts)
			}
			good(t, s, 1)
			good(t, other, 2)
		})
	}

	// A filter that writes into the frame it was given: the memory is
	// read-only to it, so its stream fails (fail-closed), naming it; the
	// host's bytes are untouched and the plugin keeps running.
	t.Run("scribble", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		// A second stream of the same scope keeps the host's pool
		// mapped after the first one fails, so that the test can look
		// at the frame's bytes afterwards.
		keep := openStream(t, s, "scribble/segment")
		defer keep.Cancel()
		st := openStream(t, s, "scribble/segment")
		f, err := st.NewFrame(ctx, 4096)
		if err != nil {
			t.Fatal(err)
		}
		copy(f.Data, pattern(3, 4096))
		mine := f.Data // the host's own view of its shared memory
		if err := st.Send(ctx, f); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(ctx); err == nil || !strings.Contains(err.Error(), `plugin "scribbler"`) || !strings.Contains(err.Error(), "read-only") {
			t.Fatalf("stream error %v, want the scribbler's fault on read-only memory", err)
		}
		if !bytes.Equal(mine, pattern(3, 4096)) {
			t.Fatal("the plugin changed the host's frame")
		}
		if st := waitState(t, td.ctl, "scribbler", 5*time.Second, "running", running); st.Restarts != 0 {
			t.Errorf("scribbler restarted %d times", st.Restarts)
		}
	})

	good(t, s, 3)
	waitHolds(t, td, 0)
}

// waitHolds waits until the hub holds n frame references.
func waitHolds(t *testing.T, td *testDaemon, n int) {
	t.Helper()
	waitFor(t, 10*time.Second, fmt.Sprintf("the hub to hold %d frame references", n), func() bool { return heldRefs(td) == n })
}

// Host attacks, with raw frame clients: pools that are not sealed memfds
// (a FIFO, /proc/kallsyms, unsealed memory), pools of another host, and
// releases of frames the host does not hold. The daemon never reopens or
// blocks on a descriptor; the attacking host alone is refused or cut off.
func TestHostileFrameHosts(t *testing.T) {
	td := startWithPlugins(t, fastSupervision,
		testPlugin{name: "passer", frames: "pass", extra: streamStage("pass", "video/segment", "transform", "fail-closed", "10s", 0)},
		testPlugin{name: "watcher", frames: "", extra: streamStage("stats", "video/segment", "observe", "fail-open", "10s", 0)},
	)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// The victim: a host with a frame of its own in flight, held by the
	// observer and by the victim once it comes back.
	victim, vprod := rawFrameClient(t, td.socket)
	vscope := openRaw(t, victim, 1, "video/segment")
	vref := sendRaw(t, ctx, victim, vprod, vscope, 1, 1, 4096, "the victim's frame")
	fm, done := nextMsg(t, victim, schema.FrameMsg_Which_frame)
	f, _ := fm.Frame()
	if f.Returned() {
		t.Fatal("the frame came back returned although the observer holds it")
	}
	done()
	victimID := func() uint64 {
		td.hub.mu.Lock()
		defer td.hub.mu.Unlock()
		for _, st := range td.hub.streams {
			return st.host.id
		}
		t.Fatal("no stream")
		return 0
	}()

	// cutOff reads until the daemon closes c, and returns the reason it
	// said goodbye with, last.
	cutOff := func(t *testing.T, c *frames.Conn) (goodbye string) {
		t.Helper()
		for {
			msg, fm, fds, err := c.Recv()
			if err != nil {
				return goodbye // cut off
			}
			if fm.Which() == schema.FrameMsg_Which_goodbye {
				goodbye, _ = fm.Goodbye()
			} else if goodbye != "" {
				t.Errorf("a message after the goodbye: %v", fm.Which())
			}
			closeAll(fds)
			msg.Release()
		}
	}
	memfd := func(seals int) *os.File {
		fd, err := unix.MemfdCreate("evil", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
		if err != nil {
			t.Fatal(err)
		}
		unix.Ftruncate(fd, 1<<16)
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
			t.Fatal(err)
		}
		return os.NewFile(uintptr(fd), "evil")
	}
	badPools := []struct {
		name string
		file func(t *testing.T) *os.File
	}{
		{"fifo", func(t *testing.T) *os.File {
			path := t.TempDir() + "/fifo"
			if err := unix.Mkfifo(path, 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(path, os.O_WRONLY|unix.O_NONBLOCK, 0)
			if err != nil { // no reader: open the read side first
				r, rerr := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK, 0)
				if rerr != nil {
					t.Fatal(rerr)
				}
				t.Cleanup(func() { r.Close() })
				if f, err = os.OpenFile(path, os.O_WRONLY|unix.O_NONBLOCK, 0); err != nil {
					t.Fatal(err)
				}
			}
			return f
		}},
		{"kallsyms", func(t *testing.T) *os.File {
			f, err := os.Open("/proc/kallsyms")
			if err != nil {
				t.Fatal(err)
			}
			return f
		}},
		{"unsealed memfd", func(t *testing.T) *os.File { return memfd(unix.F_SEAL_SHRINK | unix.F_SEAL_GROW) }},
	}
	for _, bp := range badPools {
		t.Run("pool "+bp.name, func(t *testing.T) {
			c, _ := rawFrameClient(t, td.socket)
			scope := openRaw(t, c, 1, "video/segment")
			f := bp.file(t)
			if err := c.Send(func(m schema.FrameMsg) error {
				pa, err := m.NewPoolAdd()
				if err != nil {
					return err
				}
				pa.SetId(1)
				pa.SetSize(1 << 16)
				pa.SetScope(scope)
				return nil
			}, f); err != nil {
				t.Fatal(err)
			}
			f.Close()
			if why := cutOff(t, c); !strings.Contains(why, "announced pool 1 that is not shareable memory") {
				t.Errorf("goodbye %q: want the reason the pool was refused", why)
			}
			checkHostsWork(t, td, ctx)
		})
	}

	// Another host's pool: named in a frame, the stream is refused; the
	// victim's frame is neither released nor touched.
	t.Run("names another host's pool", func(t *testing.T) {
		c, _ := rawFrameClient(t, td.socket)
		openRaw(t, c, 1, "video/segment")
		ref := frames.Ref{Owner: victimID, Pool: vref.Pool, Offset: vref.Offset, Length: vref.Length}
		if err := c.SendFrame(1, frames.Header{Seq: 1}, 0, 1, nil, &ref); err != nil {
			t.Fatal(err)
		}
		fm, done := nextMsg(t, c, schema.FrameMsg_Which_end)
		e, _ := fm.End()
		why, _ := e.Error()
		done()
		if !strings.Contains(why, "the host's frame 1 was refused: it names pool") || !strings.Contains(why, "of another peer") {
			t.Fatalf("end %q", why)
		}
		// Releases of frames it does not hold change nothing.
		for i := 0; i < 10; i++ {
			if err := c.SendRelease(victimID, vref.Pool, vref.Offset, vref.Length); err != nil {
				t.Fatal(err)
			}
		}
		checkHostsWork(t, td, ctx)
	})

	// The victim was not given its frame back behind its back: it still
	// holds it (and so does the observer, or has released it).
	victim.Send(frames.ReleaseMsg(frames.Ref{Pool: vref.Pool, Offset: vref.Offset, Length: vref.Length}))
	awaitRelease(t, victim, vref)
}

// checkHostsWork streams through the chain with a well-behaved host.
func checkHostsWork(t *testing.T, td *testDaemon, ctx context.Context) {
	t.Helper()
	s := dial(t, td.socket)
	st := openStream(t, s, "video/segment")
	out := roundTrip(t, st, []int{4096})
	if !bytes.Equal(out[0], pattern(0, 4096)) {
		t.Fatal("a well-behaved host's frame changed")
	}
	st.CloseSend()
}

// A host reporting direct-lane calls counts only for plugins it was
// granted a lane to.
func TestHostileHookStats(t *testing.T) {
	td := startWithPlugins(t, fastSupervision, testPlugin{name: "counted", extra: hooks("request", "GET", "/x", "1s", "fail-open", 0)})
	c, _ := rawFrameClient(t, td.socket)
	if err := c.Send(func(m schema.FrameMsg) error {
		hs, err := m.NewHookStats()
		if err != nil {
			return err
		}
		hs.SetCalls(83726)
		hs.SetFailures(83726)
		if err := hs.SetPlugin("counted"); err != nil {
			return err
		}
		return hs.SetHook("request-hook")
	}); err != nil {
		t.Fatal(err)
	}
	// A message after it, answered: the report was handled by then.
	openRaw(t, c, 1, "video/segment")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := td.ctl.Inspect(ctx, "counted")
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range st.Hooks {
		if h.Calls != 0 || h.Failures != 0 {
			t.Fatalf("hook %s: %d calls, %d failures reported by a host without a lane", h.Name, h.Calls, h.Failures)
		}
	}
}

// Frame sockets outlive the connection that asked for them: they are
// capped per uid like connections (HostConnsPerUID), and a refused host is
// told why.
func TestHostileFrameSocketFlood(t *testing.T) {
	// A host session holds two connections (RPC and its hook lane) plus
	// its frame socket; frame sockets have a count of their own.
	td := startDaemonConfig(t, Config{Supervision: fastSupervision, Limits: Limits{HostConnsPerUID: 6}})
	var socks []*os.File
	token := rawHostSession(t, td.socket) // one more connection
	for i := 0; i < 6; i++ {
		f, why := openFrameSocket(t, td.socket, token)
		if f == nil {
			t.Fatalf("frame socket %d refused: %s", i+1, why)
		}
		socks = append(socks, f)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := host.Dial(ctx, td.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, err = s.OpenStream(ctx, "video/segment", host.StreamMeta{})
	if err == nil || !strings.Contains(err.Error(), "dimplugd refused a frame socket: too many frame sockets: uid 0 already has 6 open") {
		t.Fatalf("a fifth frame socket: %v", err)
	}
	socks[0].Close()
	waitFor(t, 10*time.Second, "one frame socket fewer", func() bool {
		td.hub.mu.Lock()
		defer td.hub.mu.Unlock()
		return td.hub.hostsByUID[0] == 5
	})
	s2 := dial(t, td.socket)
	st := openStream(t, s2, "video/segment")
	if out := roundTrip(t, st, []int{4096}); !bytes.Equal(out[0], pattern(0, 4096)) {
		t.Fatal("frame changed")
	}
	for _, f := range socks[1:] {
		f.Close()
	}
}

// A plugin that answers a call on a direct hook lane with a frame that is
// not one fails that call only: the host drops the lane, goes through the
// daemon meanwhile and asks for a new lane (before, every later call to
// the plugin failed until the host restarted).
func TestHostileDirectLaneReply(t *testing.T) {
	td := startWithPlugins(t, fastSupervision, testPlugin{name: "garbler", args: []string{"-raw", "pass"},
		extra: hooks("request", "GET", "/g/:id", "2s", "fail-closed", 0)})
	s := dial(t, td.socket)
	ok := func(res *host.Result) bool {
		return res.Kind == host.MutateRequest && res.RequestMutation.Header.Get("X-Test-Request") == "garbler"
	}
	// Through the daemon until the lane is granted; its first call gets
	// the garbled answer.
	var garbled *host.Result
	waitFor(t, 10*time.Second, "a call on the direct lane", func() bool {
		res := dispatch(t, s, host.PhaseRequest, get("/g/1"), nil)
		if !ok(res) {
			garbled = res
		}
		return garbled != nil
	})
	if garbled.Kind != host.FailClosed || !strings.Contains(string(garbled.FailureResponse().Body), "malformed frame") {
		t.Fatalf("the garbled call: %+v", garbled)
	}
	for i := 0; i < 20; i++ {
		if res := dispatch(t, s, host.PhaseRequest, get(fmt.Sprintf("/g/%d", i)), nil); !ok(res) {
			t.Fatalf("call %d after the garbled one: %+v", i, res)
		}
	}
}

// Pools stay in their scope: an observer that watches only video streams
// never receives the pool of an audio stream of the same host, and a host
// cannot move a frame of one scope's pool into a stream of another (before,
// one pool served all of a session's streams, so an observer could read
// and write frames of streams whose chain did not include it).
func TestFramePoolsStayInTheirScope(t *testing.T) {
	td := startWithPlugins(t, fastSupervision,
		testPlugin{name: "passer", frames: "pass", extra: streamStage("pass", "*", "transform", "fail-closed", "10s", 0)},
		testPlugin{name: "watcher", extra: streamStage("stats", "video/segment", "observe", "fail-open", "10s", 0)},
	)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, prod := rawFrameClient(t, td.socket)
	video := openRaw(t, c, 1, "video/segment")
	audio := openRaw(t, c, 2, "audio/segment")
	if video == audio {
		t.Fatalf("streams with different chains share scope %d", video)
	}
	vref := sendRaw(t, ctx, c, prod, video, 1, 1, 4096, "video")
	aref := sendRaw(t, ctx, c, prod, audio, 2, 1, 4096, "audio")
	if vref.Pool == aref.Pool {
		t.Fatalf("the producer put both streams' frames in pool %d", vref.Pool)
	}
	for i := 0; i < 2; i++ {
		fm, done := nextMsg(t, c, schema.FrameMsg_Which_frame)
		f, _ := fm.Frame()
		if r, err := f.Data().Ref(); err != nil || r.Length() != 4096 {
			t.Fatalf("frame back: %v", err)
		}
		done()
	}
	watcherHas := func() []poolKey {
		td.hub.mu.Lock()
		defer td.hub.mu.Unlock()
		var got []poolKey
		for _, p := range td.hub.peers {
			if p.unit != nil && p.unit.name == "watcher" {
				for k := range p.has {
					got = append(got, k)
				}
			}
		}
		return got
	}
	got := watcherHas()
	if len(got) != 1 || got[0].pool != vref.Pool {
		t.Fatalf("the video-only observer was given pools %v; want only the video stream's pool %d", got, vref.Pool)
	}

	// The video pool named in the audio stream: refused, naming the scope.
	bad := frames.Ref{Pool: vref.Pool, Offset: vref.Offset, Length: vref.Length}
	if err := c.SendFrame(2, frames.Header{Seq: 2}, 0, 1, nil, &bad); err != nil {
		t.Fatal(err)
	}
	fm, done := nextMsg(t, c, schema.FrameMsg_Which_end)
	e, _ := fm.End()
	why, _ := e.Error()
	sid := e.Stream()
	done()
	if sid != 2 || !strings.Contains(why, "of another scope") {
		t.Fatalf("stream %d ended with %q; want stream 2 refused for naming another scope's pool", sid, why)
	}
	if got := watcherHas(); len(got) != 1 {
		t.Fatalf("the observer now has pools %v", got)
	}
}

// A host that opens streams without end is refused past maxStreamsPerHost,
// with an error; its open streams and other hosts go on.
func TestHostileStreamFlood(t *testing.T) {
	td := startWithPlugins(t, fastSupervision,
		testPlugin{name: "passer", frames: "pass", extra: streamStage("pass", "*", "transform", "fail-closed", "10s", 0)})
	c, _ := rawFrameClient(t, td.socket)
	for i := 1; i <= maxStreamsPerHost; i++ {
		openRaw(t, c, uint64(i), "video/segment")
	}
	if err := c.Send(func(m schema.FrameMsg) error {
		o, err := m.NewOpen()
		if err != nil {
			return err
		}
		o.SetStream(maxStreamsPerHost + 1)
		return o.SetKind("video/segment")
	}); err != nil {
		t.Fatal(err)
	}
	fm, done := nextMsg(t, c, schema.FrameMsg_Which_end)
	e, _ := fm.End()
	why, _ := e.Error()
	sid := e.Stream()
	done()
	if sid != maxStreamsPerHost+1 || !strings.Contains(why, fmt.Sprintf("too many open streams: a host may have %d at once", maxStreamsPerHost)) {
		t.Fatalf("stream %d ended with %q", sid, why)
	}
	td.hub.mu.Lock()
	n := len(td.hub.streams)
	td.hub.mu.Unlock()
	if n != maxStreamsPerHost {
		t.Fatalf("%d streams open, want %d", n, maxStreamsPerHost)
	}
	checkHostsWork(t, td, context.Background())
}

// TestHostThatDoesNotRead: a host that writes frames and never reads its
// frame socket does not make the daemon hold every answer to it: past
// maxOutQueue of waiting messages it is cut off; other hosts stream on.
func TestHostThatDoesNotRead(t *testing.T) {
	td := startWithPlugins(t, fastSupervision,
		testPlugin{name: "passer", frames: "pass", extra: streamStage("pass", "video/segment", "transform", "fail-open", "10s", 0)})
	c, _ := rawFrameClient(t, td.socket)
	openRaw(t, c, 1, "video/segment")
	frame := bytes.Repeat([]byte{7}, 60<<10) // inline, under maxInlineBytes
	const total = 4 * maxOutQueue / (60 << 10)
	c.SetWriteDeadline(time.Now().Add(60 * time.Second))
	sent := 0
	for ; sent < total; sent++ {
		if err := c.SendFrame(1, frames.Header{Seq: uint64(sent + 1)}, 0, 1, frame, nil); err != nil {
			break // cut off
		}
	}
	// Whatever was still written to the socket before the cut, then the
	// end: it must come, or the daemon is still holding the answers.
	var stuck atomic.Bool
	timer := time.AfterFunc(30*time.Second, func() { stuck.Store(true); c.Close() })
	defer timer.Stop()
	got := 0
	for {
		msg, fm, fds, err := c.Recv()
		if err != nil {
			break
		}
		if fm.Which() == schema.FrameMsg_Which_frame {
			got++
		}
		closeAll(fds)
		msg.Release()
	}
	t.Logf("sent %d of %d frames of 60 KiB, got %d back before the cut", sent, total, got)
	if stuck.Load() || got >= total {
		t.Fatalf("the daemon kept the host (%d answers read, %d MiB) although it did not read", got, got*60>>10)
	}
	checkHostsWork(t, td, context.Background())
}

// A host asking for direct lanes to one plugin in a loop gets at most
// maxLaneGrants of them (each is a socket in the plugin), then refusals
// that say why.
func TestHostileLaneRequestLoop(t *testing.T) {
	td := startWithPlugins(t, fastSupervision, testPlugin{name: "laned", frames: "pass",
		extra: hooks("request", "GET", "/l/:id", "2s", "fail-open", 0)})
	conn, _ := rawFrameClient(t, td.socket)
	const asks = maxLaneGrants + 4
	for range asks {
		if err := conn.Send(func(m schema.FrameMsg) error { return m.SetLaneRequest("laned") }); err != nil {
			t.Fatal(err)
		}
	}
	var granted, refused int
	var why string
	for granted+refused < asks {
		msg, fm, fds, err := conn.Recv()
		if err != nil {
			t.Fatalf("after %d grants and %d refusals: %v", granted, refused, err)
		}
		closeAll(fds)
		if fm.Which() == schema.FrameMsg_Which_lane {
			g, _ := fm.Lane()
			if g.HasError() {
				refused++
				why, _ = g.Error()
			} else {
				granted++
			}
		}
		msg.Release()
	}
	if granted != maxLaneGrants || !strings.Contains(why, "the cap per plugin instance") {
		t.Fatalf("%d lanes granted, %d refused (%q); want %d granted and the rest refused naming the cap", granted, refused, why, maxLaneGrants)
	}
}
