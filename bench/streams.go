package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/dimplugd/dimplugd/bench/internal/framewire"
	"github.com/dimplugd/dimplugd/sdk-go/frames"
	"github.com/dimplugd/dimplugd/sdk-go/host"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// streamSizes are the frame sizes of the main streams table: a small
// segment, the sweet spot of the go-capnp probe, a typical segment and a
// large one.
var streamSizes = []int{4 << 10, 256 << 10, 1 << 20, 6 << 20}

// thresholdSizes are the frame sizes around host.InlineMax compared inline
// and by descriptor.
var thresholdSizes = []int{256, 1 << 10, 4 << 10, 16 << 10, 64 << 10} // the daemon takes at most 64 KiB inline

// streamKind is the kind the pass-through plugin takes.
const streamKind = "video/segment"

// streamInFlight bounds the dimplugd runs: frames sent and not yet
// received back. The host SDK's own bound is its stream window; the
// frames.Conn client keeps the same depth.
const streamInFlight = host.Window

// stallAfter fails a dimplugd run when no frame has come back for this
// long: a lost frame, or a stuck pipeline.
const stallAfter = 10 * time.Second

// runFunc moves n frames of size bytes and returns the time from the first
// send to the last frame's arrival (or the receiver's acknowledgement).
type runFunc func(ctx context.Context, size, n int) (time.Duration, error)

// streamer is one way of moving frames.
type streamer struct {
	name string
	run  runFunc
	// sizes limits the streamer to these frame sizes; nil: all.
	sizes []int

	mbps map[int][]float64 // MB/s (10⁶ bytes) per run, by frame size
	cpu  map[int]*cpuUse   // with CPU accounting: what each process used
}

func (s *streamer) takes(size int) bool { return s.sizes == nil || slices.Contains(s.sizes, size) }

// cpuUse sums the CPU time the processes of the dimplugd path used over
// some runs.
type cpuUse struct {
	frames               int
	host, daemon, plugin time.Duration
	ok                   bool
}

// measure runs s once at size and records its throughput (and, with
// procs, the CPU each process used).
func (s *streamer) measure(ctx context.Context, size, n int, procs *pathProcs) error {
	var before cpuSample
	if procs != nil {
		before = procs.sample()
	}
	el, err := s.run(ctx, size, n)
	if err != nil {
		return fmt.Errorf("%s, %s frames: %w", s.name, sizeName(size), err)
	}
	if s.mbps == nil {
		s.mbps = map[int][]float64{}
	}
	s.mbps[size] = append(s.mbps[size], float64(size)*float64(n)/el.Seconds()/1e6)
	if procs != nil {
		after := procs.sample()
		if s.cpu == nil {
			s.cpu = map[int]*cpuUse{}
		}
		c := s.cpu[size]
		if c == nil {
			c = &cpuUse{ok: true}
			s.cpu[size] = c
		}
		c.frames += n
		c.host += after.host - before.host
		c.daemon += after.daemon - before.daemon
		c.plugin += after.plugin - before.plugin
		c.ok = c.ok && before.ok && after.ok
	}
	return nil
}

// median returns the median MB/s at size, NaN when not measured.
func (s *streamer) median(size int) float64 { return median(s.mbps[size]) }

func sizeName(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}

// framesFor is how many frames of size move total bytes: at least 4, at
// most limit.
func framesFor(total, size, limit int) int { return max(4, min(limit, (total+size-1)/size)) }

// patterns holds one buffer per frame size: the frames' content.
type patterns map[int][]byte

func (p patterns) get(n int) []byte {
	if b, ok := p[n]; ok {
		return b
	}
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8 + 1)
	}
	p[n] = b
	return b
}

func runStreams(ctx context.Context, e *env) ([]*Table, error) {
	rounds := e.quick(1, 3)
	// Bytes per run, and a cap on the frames per run that keeps the runs
	// of small frames (slow per frame) within the section's time.
	perRun, maxRun := e.quick(16<<20, 256<<20), e.quick(2048, 65536)  // the main table
	perPoint, maxPoint := e.quick(4<<20, 32<<20), e.quick(1024, 4096) // the threshold table
	pats := patterns{}

	var cleanups []func()
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}()

	// The baselines' receivers.
	e.progress("streams: starting the raw and gRPC sinks")
	rawSock, grpcSock := filepath.Join(e.dir, "sink-raw.sock"), filepath.Join(e.dir, "sink-grpc.sock")
	for _, s := range [][2]string{{"raw", rawSock}, {"grpc", grpcSock}} {
		stop, err := startSink(e.bins["framesink"], s[0], s[1])
		if err != nil {
			return nil, err
		}
		cleanups = append(cleanups, stop)
	}
	raw, closeRaw, err := rawStreamer(rawSock, pats)
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, closeRaw)
	gs, closeGRPC, err := grpcStreamer(grpcSock, pats)
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, closeGRPC)
	mc := memcpyStreamer(pats)

	// dimplugd with the pass-through plugin.
	e.progress("streams: starting dimplugd with the pass-through plugin")
	d, err := startDaemon(ctx, e, "streams")
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, func() { d.close() })
	dir, err := pluginDir(e.dir, "bench-pass", filepath.Join(e.benchRoot, "plugins/passthrough/plugin.toml"), e.bins["passthrough"], "passthrough")
	if err != nil {
		return nil, err
	}
	if _, err := d.install(ctx, dir, true); err != nil {
		return nil, err
	}
	st, err := d.waitState(ctx, "bench-pass", "running", 30*time.Second)
	if err != nil {
		return nil, err
	}
	procs := &pathProcs{daemon: d.cmd.Process.Pid, plugin: st.PID}
	sess, err := host.Dial(ctx, d.socket)
	if err != nil {
		return nil, d.fail(err)
	}
	cleanups = append(cleanups, func() { sess.Close() })
	fcc, err := dialFrameConn(ctx, d.socket)
	if err != nil {
		return nil, d.fail(fmt.Errorf("frame socket: %w", err))
	}
	cleanups = append(cleanups, func() { fcc.close() })
	where := "sandboxed"
	if !d.sandboxed {
		where = "UNSANDBOXED"
	}

	desc := &streamer{name: "dimplugd, shared memory", run: dimplugdRun(sess, pats, false, streamInFlight)}
	inl := &streamer{name: "dimplugd, []byte", run: dimplugdRun(sess, pats, true, streamInFlight), sizes: []int{4 << 10}}

	// Warm-up, untimed: connections, buffers, and every page of the
	// host's shared pool (a fresh memfd page faults on first write).
	e.progress("streams: warm-up")
	for _, s := range []*streamer{raw, gs, desc, inl} {
		for _, size := range streamSizes {
			if !s.takes(size) {
				continue
			}
			n := 4
			if s == desc && size == 1<<20 {
				n = int(host.DefaultPoolSize / size)
			}
			if _, err := s.run(ctx, size, n); err != nil {
				return nil, d.fail(fmt.Errorf("warm-up: %s, %s frames: %w", s.name, sizeName(size), err))
			}
		}
	}

	// The main table. Rounds interleave the transports so that a change
	// in the machine's load hits all of them alike.
	for r := range rounds {
		for _, size := range streamSizes {
			n := framesFor(perRun, size, maxRun)
			e.progress("streams: round %d/%d: %d frames of %s", r+1, rounds, n, sizeName(size))
			for _, s := range []*streamer{mc, raw, gs, desc, inl} {
				if !s.takes(size) {
					continue
				}
				var p *pathProcs
				if s == desc || s == inl {
					p = procs
				}
				if err := s.measure(ctx, size, n, p); err != nil {
					return nil, d.fail(err)
				}
			}
		}
	}
	main := streamsTable(e, rounds, perRun, maxRun, where, mc, raw, gs, desc, inl)
	cpu := cpuTable(desc, inl, procs, where)

	// The threshold table: inline against descriptors around InlineMax.
	tInl := &streamer{name: "inline, host SDK", run: inl.run, sizes: []int{}}
	tConn := &streamer{name: "inline, frames.Conn", run: fcc.run(pats, streamInFlight)}
	tDesc := &streamer{name: "shared memory", run: desc.run}
	for _, size := range thresholdSizes {
		if size <= host.InlineMax {
			tInl.sizes = append(tInl.sizes, size)
		}
	}
	for r := range rounds {
		for _, size := range thresholdSizes {
			n := framesFor(perPoint, size, maxPoint)
			e.progress("streams: threshold round %d/%d: %d frames of %s", r+1, rounds, n, sizeName(size))
			for _, s := range []*streamer{tInl, tConn, tDesc} {
				if !s.takes(size) {
					continue // the host SDK sends these by descriptor
				}
				if err := s.measure(ctx, size, n, nil); err != nil {
					return []*Table{main, cpu}, d.fail(err)
				}
			}
		}
	}
	thr := thresholdTable(rounds, perPoint, maxPoint, tInl, tConn, tDesc)
	return []*Table{main, cpu, thr}, nil
}

func streamsTable(e *env, rounds, perRun, maxRun int, where string, mc, raw, gs, desc, inl *streamer) *Table {
	t := &Table{
		Title: fmt.Sprintf("streams: frames through a pass-through plugin and back, %d MiB per run (at most %d frames: %s of 4 KiB ones), median of %d runs; MB = 10⁶ bytes",
			perRun>>20, maxRun, sizeName(min(perRun, maxRun*4<<10)), rounds),
		Label: "frame size: transport",
		Cols: []Col{{Name: "MB/s", Format: "%.0f", Unit: "MB/s"}, {Name: "frames/s", Format: "%.0f", Unit: "frames/s"},
			{Name: "dimplugd ÷ gRPC", Format: "%.2f×", Optional: true}, {Name: "dimplugd ÷ raw", Format: "%.2f×", Optional: true}},
	}
	nan := math.NaN()
	names := map[*streamer]string{
		desc: fmt.Sprintf("dimplugd, shared memory (NewFrame, Send; Recv, Release), %d in flight, %s", streamInFlight, where),
		inl:  fmt.Sprintf("dimplugd, Send of a []byte (%s), %d in flight, %s", byteSendPath(4<<10), streamInFlight, where),
	}
	for _, size := range streamSizes {
		sz := sizeName(size)
		fps := func(mbps float64) float64 { return mbps * 1e6 / float64(size) }
		g, r, m := gs.median(size), raw.median(size), mc.median(size)
		rawRow, grpcRow := sz+": raw Unix socket, length-prefixed, 2 processes", sz+": gRPC client-streaming, 2 processes"
		t.add(sz+": memcpy in process (ceiling)", m, fps(m), nan, nan)
		t.add(rawRow, r, fps(r), nan, nan)
		t.add(grpcRow, g, fps(g), nan, nan)
		for _, s := range []*streamer{desc, inl} {
			if s.takes(size) {
				v := s.median(size)
				t.Rows = append(t.Rows, Row{Name: sz + ": " + names[s], Vals: []float64{v, fps(v), nan, nan},
					Ratios: []*Ratio{2: {OfCol: 0, Base: grpcRow, BaseCol: 0}, 3: {OfCol: 0, Base: rawRow, BaseCol: 0}}})
			}
		}
	}
	t.note("Target: 1 MiB frames at least 10× gRPC streaming: %s.", atLeast(ratio(desc.median(1<<20), gs.median(1<<20)), 10))
	t.note("Target: 4 KiB frames no slower than gRPC: NewFrame %s, []byte %s.",
		atLeast(ratio(desc.median(4<<10), gs.median(4<<10)), 1), atLeast(ratio(inl.median(4<<10), gs.median(4<<10)), 1))
	t.note("dimplugd rows are a round trip, host → daemon → plugin → daemon → host, timed from the first Send to the last Recv, with a sender and a receiver goroutine. The producer writes each frame into shared memory once (NewFrame); the pass-through plugin returns the descriptor it got; the host Releases each frame. The []byte row sends a plain []byte: inline up to host.InlineMax (%s), else copied into shared memory by Send.", sizeName(host.InlineMax))
	t.note("In flight: at most %d frames per stream (host.Window: Send waits while that many are sent and not received back).", host.Window)
	t.note("Baselines are one way, into a sink in another process, timed from the first write to the sink's count of what arrived. Raw writes a 4-byte length and the frame through a 64 KiB bufio.Writer on a Unix stream socket. gRPC (v1.85.0, protobuf wire format by hand, default windows; only MaxRecvMsgSize raised, as its 4 MiB default is below a 6 MiB frame) sends one message per frame on one client stream over a Unix socket. memcpy copies the frame between two buffers of its size in this process.")
	if e.opts.Quick {
		t.note("QUICK MODE: one short run per row; the numbers are rough.")
	}
	return t
}

func cpuTable(desc, inl *streamer, procs *pathProcs, where string) *Table {
	t := &Table{
		Title: "streams: CPU time per frame on the dimplugd path (µs, over all the main table's runs)",
		Label: "frame size: path",
		Cols: []Col{{Name: "wall", Format: "%.1f", Unit: "µs"}, {Name: "host (this process)", Format: "%.1f", Optional: true, Unit: "µs"},
			{Name: "daemon", Format: "%.1f", Optional: true, Unit: "µs"}, {Name: "plugin", Format: "%.1f", Optional: true, Unit: "µs"},
			{Name: "CPU, all three", Format: "%.1f", Optional: true, Unit: "µs"}},
	}
	for _, s := range []*streamer{desc, inl} {
		for _, size := range streamSizes {
			c := s.cpu[size]
			if c == nil || c.frames == 0 {
				continue
			}
			per := func(d time.Duration) float64 {
				if !c.ok {
					return math.NaN()
				}
				return us(d) / float64(c.frames)
			}
			mode := "shared memory"
			if s == inl {
				mode = "[]byte, " + byteSendPath(size)
			}
			t.add(fmt.Sprintf("%s: %s", sizeName(size), mode), float64(size)/s.median(size),
				per(c.host), per(c.daemon), per(c.plugin), per(c.host+c.daemon+c.plugin))
		}
	}
	t.note("Wall is 1/(median frames/s). Host is all of this process (sender and receiver goroutines, the host SDK's reader, the producer's write into shared memory, the GC): getrusage. The daemon (pid %d) and the plugin (pid %d, %s): their threads' run time in /proc/PID/task/*/schedstat. The machine has 2 CPUs.", procs.daemon, procs.plugin, where)
	t.note("A frame is 4 messages (host → daemon → plugin → daemon → host; a frame back at its owner is freed there, without a Release), batched: a packet on the SOCK_SEQPACKET sockets carries up to %d KiB of messages, about 500 descriptors or 15 inline 4 KiB frames.", frames.BatchMax>>10)
	return t
}

func thresholdTable(rounds, perPoint, maxPoint int, tInl, tConn, tDesc *streamer) *Table {
	t := &Table{
		Title: fmt.Sprintf("streams: inline or shared memory? dimplugd MB/s through the pass-through plugin by frame size, %d MiB per run (at most %d frames), median of %d runs",
			perPoint>>20, maxPoint, rounds),
		Label: "frame size",
		Cols: []Col{{Name: "inline, host SDK", Format: "%.0f", Optional: true, Unit: "MB/s"}, {Name: "inline, frames.Conn client", Format: "%.0f", Unit: "MB/s"},
			{Name: "shared memory", Format: "%.0f", Unit: "MB/s"}, {Name: "shared memory ÷ best inline", Format: "%.2f×"}},
	}
	lastInline, firstDesc := 0, 0
	for _, size := range thresholdSizes {
		a, b, dsc := tInl.median(size), tConn.median(size), tDesc.median(size)
		best, bestCol := b, 1
		if !math.IsNaN(a) && a > b {
			best, bestCol = a, 0
		}
		t.Rows = append(t.Rows, Row{Name: sizeName(size), Vals: []float64{a, b, dsc, ratio(dsc, best)},
			Ratios: []*Ratio{3: {OfCol: 2, BaseCol: bestCol}}})
		if best > dsc {
			lastInline = size
		} else if firstDesc == 0 {
			firstDesc = size
		}
	}
	t.note("Every column keeps %d frames in flight.", streamInFlight)
	t.note("host.InlineMax is %s: the host SDK sends larger frames by descriptor, so its column stops there. The frames.Conn client speaks the frame protocol itself (bench/streams.go) and sends every size inline, which the daemon and the pass-through plugin carry as they are: it shows what a larger InlineMax would give (it also skips the SDK's receive queue and a copy).", sizeName(host.InlineMax))
	switch {
	case firstDesc == 0:
		t.note("Inline was faster at every size measured, up to %s: the threshold belongs at least there.", sizeName(thresholdSizes[len(thresholdSizes)-1]))
	case lastInline == 0:
		t.note("Shared memory was at least as fast as inline at every size measured, from %s up: on this machine inline does not pay above %s, so host.InlineMax (%s) is too high.",
			sizeName(thresholdSizes[0]), sizeName(thresholdSizes[0]), sizeName(host.InlineMax))
	default:
		t.note("Inline was faster up to %s, shared memory from %s: the threshold belongs between the two (one noisy point can move it).", sizeName(lastInline), sizeName(firstDesc))
	}
	return t
}

// byteSendPath says how the host SDK sends a []byte of size bytes.
func byteSendPath(size int) string {
	if size <= host.InlineMax {
		return "inline"
	}
	return "copied into shared memory"
}

// atLeast says whether r meets an "at least target×" goal.
func atLeast(r, target float64) string {
	switch {
	case math.IsNaN(r):
		return "not measured"
	case r >= target:
		return fmt.Sprintf("%.2f× (meets)", r)
	default:
		return fmt.Sprintf("%.2f× (misses)", r)
	}
}

// --- the baselines ---

// startSink starts framesink in mode on sock and waits until it listens.
func startSink(bin, mode, sock string) (func(), error) {
	cmd := exec.Command(bin, mode, sock)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	stop := func() { cmd.Process.Kill(); cmd.Wait() }
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ready\n" {
		stop()
		return nil, fmt.Errorf("framesink %s did not start: %q %v %s", mode, line, err, stderr.Tail(500))
	}
	return stop, nil
}

func memcpyStreamer(pats patterns) *streamer {
	return &streamer{name: "memcpy", run: func(ctx context.Context, size, n int) (time.Duration, error) {
		src, dst := pats.get(size), make([]byte, size)
		t0 := time.Now()
		for range n {
			copy(dst, src)
		}
		el := time.Since(t0)
		if dst[size-1] != src[size-1] {
			return 0, errors.New("copy lost bytes")
		}
		return el, nil
	}}
}

// rawStreamer connects to the raw sink.
func rawStreamer(sock string, pats patterns) (*streamer, func(), error) {
	c, err := net.Dial("unix", sock)
	if err != nil {
		return nil, nil, err
	}
	w := bufio.NewWriterSize(c, 64<<10)
	run := func(ctx context.Context, size, n int) (time.Duration, error) {
		if dl, ok := ctx.Deadline(); ok {
			c.SetDeadline(dl)
		}
		data := pats.get(size)
		var hdr [4]byte
		binary.LittleEndian.PutUint32(hdr[:], uint32(size))
		t0 := time.Now()
		for range n {
			w.Write(hdr[:])
			if _, err := w.Write(data); err != nil {
				return 0, err
			}
		}
		binary.LittleEndian.PutUint32(hdr[:], 0xFFFFFFFF) // end of the run
		w.Write(hdr[:])
		if err := w.Flush(); err != nil {
			return 0, err
		}
		var ack [16]byte
		if _, err := io.ReadFull(c, ack[:]); err != nil {
			return 0, err
		}
		el := time.Since(t0)
		if f, b := binary.LittleEndian.Uint64(ack[0:]), binary.LittleEndian.Uint64(ack[8:]); f != uint64(n) || b != uint64(n*size) {
			return 0, fmt.Errorf("the raw sink got %d frames, %d bytes; sent %d, %d", f, b, n, n*size)
		}
		return el, nil
	}
	return &streamer{name: "raw", run: run}, func() { c.Close() }, nil
}

// grpcStreamer connects to the gRPC sink.
func grpcStreamer(sock string, pats patterns) (*streamer, func(), error) {
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, err
	}
	run := func(ctx context.Context, size, n int) (time.Duration, error) {
		data := pats.get(size)
		t0 := time.Now()
		ack, err := framewire.Send(ctx, cc, data, n)
		if err != nil {
			return 0, err
		}
		el := time.Since(t0)
		if ack.Frames != uint64(n) || ack.Bytes != uint64(n*size) {
			return 0, fmt.Errorf("the gRPC sink got %d frames, %d bytes; sent %d, %d", ack.Frames, ack.Bytes, n, n*size)
		}
		return el, nil
	}
	return &streamer{name: "gRPC", run: run}, func() { cc.Close() }, nil
}

// --- dimplugd ---

// watchdog cancels a run whose frames stop coming back for stallAfter.
type watchdog struct {
	progress atomic.Int64
	stalled  atomic.Bool
	stop     chan struct{}
}

func newWatchdog(cancel context.CancelFunc) *watchdog {
	w := &watchdog{stop: make(chan struct{})}
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		last, since := int64(-1), time.Now()
		for {
			select {
			case <-w.stop:
				return
			case <-tick.C:
			}
			if p := w.progress.Load(); p != last {
				last, since = p, time.Now()
			} else if time.Since(since) >= stallAfter {
				w.stalled.Store(true)
				cancel()
				return
			}
		}
	}()
	return w
}

// explain turns a run's error into a stall report when the watchdog fired.
func (w *watchdog) explain(err error, n int) error {
	close(w.stop)
	if err != nil && w.stalled.Load() {
		return fmt.Errorf("stalled: no frame came back for %s, after %d of %d (a lost frame, or the frame hub's deadlock): %w", stallAfter, w.progress.Load(), n, err)
	}
	return err
}

// dimplugdRun streams frames through the chain with the host SDK: a sender
// goroutine (NewFrame, the producer's one write into shared memory, Send;
// or Send of a plain []byte when inline) and this goroutine receiving
// (Recv, Release), both at once, at most streamInFlight frames apart.
func dimplugdRun(sess *host.Session, pats patterns, inline bool, streamInFlight int) runFunc {
	return func(ctx context.Context, size, n int) (el time.Duration, err error) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		st, err := sess.OpenStream(ctx, streamKind, host.StreamMeta{MediaID: 42, Track: "video-1080p", Codec: "avc1.640028", Timescale: 90000})
		if err != nil {
			return 0, err
		}
		if got := strings.Join(st.Stages(), " "); got != "bench-pass/pass" {
			st.Cancel()
			return 0, fmt.Errorf("the stream's chain is %q, want bench-pass/pass alone", got)
		}
		wd := newWatchdog(cancel)
		defer func() { err = wd.explain(err, n) }()
		data := pats.get(size)
		credit := make(chan struct{}, streamInFlight)
		sent := make(chan error, 1)
		t0 := time.Now()
		go func() {
			sent <- func() error {
				for i := range n {
					select {
					case credit <- struct{}{}:
					case <-ctx.Done():
						return ctx.Err()
					}
					var f *host.Frame
					if inline {
						f = &host.Frame{Data: data}
					} else {
						var err error
						if f, err = st.NewFrame(ctx, size); err != nil {
							return err
						}
						copy(f.Data, data)
					}
					f.Seq, f.ContentType, f.KeyFrame = uint64(i), "video/iso.segment", true
					if err := st.Send(ctx, f); err != nil {
						return err
					}
				}
				return st.CloseSend()
			}()
		}()
		fail := func(err error) (time.Duration, error) {
			st.Cancel()
			cancel() // the sender may be waiting for memory or credit
			if serr := <-sent; serr != nil && !errors.Is(serr, context.Canceled) {
				err = fmt.Errorf("%w (sender: %v)", err, serr)
			}
			return 0, err
		}
		for i := range n {
			f, err := st.Recv(ctx)
			if err != nil {
				return fail(fmt.Errorf("after %d of %d frames came back: %w", i, n, err))
			}
			ok := f.Seq == uint64(i) && len(f.Data) == size && f.Data[size-1] == data[size-1]
			seq, got := f.Seq, len(f.Data)
			f.Release()
			if !ok {
				return fail(fmt.Errorf("frame %d came back as seq %d with %d bytes", i, seq, got))
			}
			<-credit
			wd.progress.Add(1)
		}
		el = time.Since(t0)
		if err := <-sent; err != nil {
			st.Cancel()
			return 0, err
		}
		if _, err := st.Recv(ctx); !errors.Is(err, io.EOF) {
			return 0, fmt.Errorf("after the last frame: %v, want EOF", err)
		}
		return el, nil
	}
}

// frameConn is a host's frame socket spoken directly with frames.Conn,
// bypassing the host SDK: it sends frames of any size inline (up to
// frames.MaxPacket), which the SDK does only up to host.InlineMax. The
// daemon opens a frame socket only for an open host session (by its
// token), so frameConn holds one of its own, over RPC.
type frameConn struct {
	conn    *frames.Conn
	rpc     *rpc.Conn          // the connection of
	session schema.HostSession // the host session the frame socket belongs to
	next    uint64             // stream ids
}

func dialFrameConn(ctx context.Context, socket string) (fc *frameConn, err error) {
	var dl net.Dialer
	nc, err := dl.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, err
	}
	rc := wire.NewConn(nc, capnp.Client{}, nil)
	defer func() {
		if err != nil {
			rc.Close()
		}
	}()
	boot := schema.Daemon(rc.Bootstrap(ctx))
	defer boot.Release()
	fut, release := boot.OpenHost(ctx, func(p schema.Daemon_openHost_Params) error {
		if err := wire.WriteVersions(p.NewVersions, schema.SupportedVersions); err != nil {
			return err
		}
		return p.SetClient("dimplugd bench (frames.Conn)")
	})
	defer release()
	res, err := fut.Struct()
	if err != nil {
		return nil, fmt.Errorf("openHost: %w", err)
	}
	token, err := res.SessionToken()
	if err != nil {
		return nil, fmt.Errorf("openHost: %w", err)
	}
	// The frame socket lives as long as the session: hold it.
	hs := res.Session().AddRef()
	defer func() {
		if err != nil {
			hs.Release()
		}
	}()

	c, err := dl.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	uc := c.(*net.UnixConn)
	uc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := uc.Write(append([]byte(wire.FramesPreamble), token...)); err != nil {
		return nil, err
	}
	answer := make([]byte, 1)
	_, f, err := frames.RecvFD(uc, answer)
	if err != nil {
		return nil, err
	}
	if f == nil || answer[0] != wire.PreambleOK {
		if f != nil {
			f.Close()
		}
		why, _ := io.ReadAll(io.LimitReader(uc, 4<<10))
		return nil, fmt.Errorf("the daemon refused the frame socket: %q", why)
	}
	defer f.Close()
	conn, err := frames.FileConn(f)
	if err != nil {
		return nil, err
	}
	return &frameConn{conn: conn, rpc: rc, session: hs}, nil
}

// close closes the frame socket and its host session.
func (fc *frameConn) close() {
	fc.conn.Close()
	fc.session.Release()
	fc.rpc.Close()
}

// run streams n inline frames of size through the chain: a sender
// goroutine and this one receiving, at most streamInFlight frames apart.
func (fc *frameConn) run(pats patterns, streamInFlight int) runFunc {
	return func(ctx context.Context, size, n int) (el time.Duration, err error) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stop := context.AfterFunc(ctx, func() { fc.conn.Close() }) // unblocks Recv; later runs then fail
		defer stop()
		fc.next++
		sid := fc.next
		err = fc.conn.Send(func(m schema.FrameMsg) error {
			o, err := m.NewOpen()
			if err != nil {
				return err
			}
			o.SetStream(sid)
			if err := o.SetKind(streamKind); err != nil {
				return err
			}
			sm, err := o.NewMeta()
			if err != nil {
				return err
			}
			sm.SetMediaId(42)
			sm.SetTimescale(90000)
			return nil
		})
		if err != nil {
			return 0, err
		}
		if err := fc.await(sid, schema.FrameMsg_Which_opened, nil); err != nil {
			return 0, fmt.Errorf("open: %w", err)
		}
		wd := newWatchdog(cancel)
		defer func() { err = wd.explain(err, n) }()
		data := pats.get(size)
		credit := make(chan struct{}, streamInFlight)
		sent := make(chan error, 1)
		t0 := time.Now()
		go func() {
			for i := range n {
				select {
				case credit <- struct{}{}:
				case <-ctx.Done():
					sent <- ctx.Err()
					return
				}
				err := fc.conn.Send(func(m schema.FrameMsg) error {
					f, err := m.NewFrame()
					if err != nil {
						return err
					}
					f.SetStream(sid)
					f.SetSeq(uint64(i))
					f.SetKeyFrame(true)
					if err := f.SetContentType("video/iso.segment"); err != nil {
						return err
					}
					return f.Data().SetInline(data)
				})
				if err != nil {
					sent <- err
					return
				}
			}
			sent <- fc.conn.Send(func(m schema.FrameMsg) error {
				e, err := m.NewEnd()
				if err != nil {
					return err
				}
				e.SetStream(sid)
				return nil
			})
		}()
		got := 0
		err = fc.await(sid, schema.FrameMsg_Which_end, func(f schema.Frame) error {
			b, err := f.Data().Inline()
			if err != nil || f.Data().Which() != schema.Frame_data_Which_inline || len(b) != size || f.Seq() != uint64(got) {
				return fmt.Errorf("frame %d came back as seq %d with %d inline bytes (%v)", got, f.Seq(), len(b), err)
			}
			got++
			<-credit
			wd.progress.Add(1)
			if got == n {
				el = time.Since(t0)
			}
			return nil
		})
		if err != nil {
			cancel()
			err = fmt.Errorf("after %d of %d frames came back: %w", got, n, err)
		}
		if serr := <-sent; err == nil {
			err = serr
		}
		if err == nil && got != n {
			err = fmt.Errorf("%d of %d frames came back", got, n)
		}
		if err != nil {
			return 0, err
		}
		return el, nil
	}
}

// await reads packets until one of kind for stream sid arrives, handing
// frames of sid to onFrame. An end with an error fails.
func (fc *frameConn) await(sid uint64, kind schema.FrameMsg_Which, onFrame func(schema.Frame) error) error {
	for {
		msg, fm, fds, err := fc.conn.Recv()
		if err != nil {
			return err
		}
		for _, f := range fds {
			f.Close()
		}
		done := false
		switch fm.Which() {
		case schema.FrameMsg_Which_opened:
			o, _ := fm.Opened()
			done = kind == schema.FrameMsg_Which_opened && o.Stream() == sid
		case schema.FrameMsg_Which_frame:
			f, ferr := fm.Frame()
			if ferr == nil && f.Stream() == sid && onFrame != nil {
				err = onFrame(f)
			}
		case schema.FrameMsg_Which_end:
			e, _ := fm.End()
			if e.Stream() == sid {
				if why, _ := e.Error(); why != "" {
					err = fmt.Errorf("the stream failed: %s", why)
				}
				done = true
			}
		}
		msg.Release()
		if err != nil || done {
			return err
		}
	}
}

// --- CPU accounting ---

// pathProcs are the processes of the dimplugd path other than this one.
type pathProcs struct{ daemon, plugin int }

type cpuSample struct {
	host, daemon, plugin time.Duration
	ok                   bool
}

func (p *pathProcs) sample() cpuSample {
	var s cpuSample
	var ru syscall.Rusage
	okHost := syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil
	s.host = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	var okD, okP bool
	s.daemon, okD = procCPU(p.daemon)
	s.plugin, okP = procCPU(p.plugin)
	s.ok = okHost && okD && okP
	return s
}

// procCPU sums the time every thread of pid has run, from
// /proc/pid/task/*/schedstat (nanoseconds). A thread that exits takes its
// time with it; Go runtimes rarely end threads.
func procCPU(pid int) (time.Duration, bool) {
	if pid <= 0 {
		return 0, false
	}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0, false
	}
	var sum time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, t.Name()))
		if err != nil {
			continue // the thread just ended
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			return 0, false
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, false
		}
		sum += time.Duration(ns)
	}
	return sum, true
}
