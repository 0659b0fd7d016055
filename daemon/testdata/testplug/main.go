// Command testplug is the daemon tests' plugin. Its behaviour is chosen by
// the arguments in its manifest, so one binary serves every test:
//
//	-versions 99     offer only protocol version 99
//	-crash           exit(3) right after the handshake (crash loop)
//	-fail-start      exit(4) before the handshake, saying why on stderr
//	-name X          the value it writes into headers (default: installed name)
//	-route-only      have only a route handler (Init and ServeRoute)
//	-claim NAME      call itself NAME in the handshake (claim.go)
//
// Hooks, by phase:
//
//	request:  adds "X-Test-Request: <name>", appends "seen=<name>" to the
//	          query; answers 403 for paths containing "forbidden"; sleeps
//	          for ?sleep=<duration>; panics for ?panic=1; fetches
//	          ?fetch=<url> through the daemon and answers with the result;
//	          prints hostile log output for ?print=<mode> (see print);
//	          answers 200 with its settings as JSON for ?settings=global
//	          or ?settings=user&user=<id>, and with the number of change
//	          notifications it got for ?settings=changes; adds 1 to the
//	          KV counter ?incr=<key> (with KV.Increment, or with a
//	          compare-and-swap loop for &by=cas) and answers 200 with
//	          the new count.
//	response: adds "X-Test-Response: <name>" and increments the KV counter
//	          "hits", returned in "X-Test-Hits"; sleeps first for
//	          ?respsleep=<duration>.
//	route:    answers 200 with "owned by <name>: <path> <params>".
//	observe:  stores the last observed path in KV key "observed"; for
//	          /ordered/<n>, counts observations and inversions (n lower
//	          than the last one's) in KV "ordered" ("<count> <inversions>").
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/plugin"
)

type testPlug struct {
	name   string
	frames string
	host   *plugin.Host

	mu                                    sync.Mutex
	frameCount, frameBytes                int
	slowDone                              int // frames the slow mode finished
	orderedCount, inversions, orderedLast int // observations of /ordered/<n>
	settingsChanges                       []string
}

func (p *testPlug) Init(ctx context.Context, h *plugin.Host) error {
	p.host = h
	if p.name == "" {
		p.name = h.Name
	}
	if h.Settings != nil {
		if err := h.Settings.OnChange(ctx, func(scope string, user int64) {
			p.mu.Lock()
			p.settingsChanges = append(p.settingsChanges, fmt.Sprintf("%s/%d", scope, user))
			p.mu.Unlock()
		}); err != nil {
			return err
		}
	}
	h.Log.Info("testplug ready", "instance", h.InstanceID)
	return nil
}

// settings answers ?settings=global|user|changes (see the package doc).
func (p *testPlug) settings(ctx context.Context, q url.Values) (*plugin.Response, error) {
	var v any
	var err error
	switch q.Get("settings") {
	case "changes":
		p.mu.Lock()
		v = append([]string{}, p.settingsChanges...)
		p.mu.Unlock()
	case "user":
		user, _ := strconv.ParseInt(q.Get("user"), 10, 64)
		var m map[string]any
		err, v = p.host.Settings.User(ctx, user, &m), &m
	default:
		var m map[string]any
		err, v = p.host.Settings.Global(ctx, &m), &m
	}
	if err != nil {
		return &plugin.Response{Status: 500, Body: []byte(err.Error())}, nil
	}
	b, _ := json.Marshal(v)
	return &plugin.Response{Status: 200, Body: b}, nil
}

func (p *testPlug) HookRequest(ctx context.Context, hook string, req *plugin.Request) (*plugin.Response, error) {
	q := req.Query()
	if d, err := time.ParseDuration(q.Get("sleep")); err == nil {
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if u := q.Get("fetch"); u != "" {
		if p.host.HTTP == nil {
			return &plugin.Response{Status: 599, Body: []byte("no outbound access granted")}, nil
		}
		resp, err := p.host.HTTP.Get(u)
		if err != nil {
			return &plugin.Response{Status: 598, Body: []byte(err.Error())}, nil
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return &plugin.Response{Status: resp.StatusCode, Body: b}, nil
	}
	if q.Get("panic") == "1" {
		panic("testplug was asked to panic")
	}
	if mode := q.Get("print"); mode != "" {
		return p.print(ctx, mode, q)
	}
	if q.Has("settings") {
		return p.settings(ctx, q)
	}
	if key := q.Get("incr"); key != "" {
		return p.count(ctx, key, q.Get("by") == "cas")
	}
	if q.Has("creds") {
		// What a plugin sees of the user's credentials (nothing), and an
		// answer that tries to set a cookie on the host's origin.
		return &plugin.Response{Status: 200, Header: http.Header{"Set-Cookie": {"planted=1"}},
			Body: []byte("authorization=" + req.Header.Get("Authorization") + " cookie=" + req.Header.Get("Cookie"))}, nil
	}
	if q.Has("forge") {
		req.Header.Set("Authorization", "forged")
		req.Header.Set("Cookie", "forged=1")
	}
	if strings.Contains(req.Path, "forbidden") {
		return &plugin.Response{Status: 403, Body: []byte("forbidden by " + p.name)}, nil
	}
	req.Header.Add("X-Test-Request", p.name)
	if req.RawQuery != "" {
		req.RawQuery += "&"
	}
	req.RawQuery += "seen=" + p.name
	return nil, nil
}

// ForgedDaemonLine is what -print=forge writes to look like the daemon.
const forgedDaemonLine = "12:00:00.000 daemon started instance forged (pid 1, runtime container)"

// print writes hostile log output for the log tests (?print=<mode>):
//
//	huge    n lines (default 12) of size bytes (default 16 MiB) on stdout,
//	        without allocating them whole
//	many    n lines of size bytes on stderr
//	biglog  one Logger call with size bytes of text
//	count   n numbered lines on stdout, "line 000000 " padded with x to
//	        size bytes, starting at the number in query parameter from
//	forge   lines that pass for the daemon's and terminal escape sequences,
//	        on stdout, stderr and the Logger
func (p *testPlug) print(ctx context.Context, mode string, q url.Values) (*plugin.Response, error) {
	n, err := strconv.Atoi(q.Get("n"))
	if err != nil {
		n = 12
	}
	size, err := strconv.Atoi(q.Get("size"))
	if err != nil {
		size = 16 << 20
	}
	chunk := []byte(strings.Repeat("x", 64<<10))
	writeLine := func(w io.Writer) error {
		for left := size; left > 0; left -= len(chunk) {
			if _, err := w.Write(chunk[:min(left, len(chunk))]); err != nil {
				return err
			}
		}
		_, err := w.Write([]byte("\n"))
		return err
	}
	var werr error
	switch mode {
	case "huge":
		for i := 0; i < n && werr == nil; i++ {
			werr = writeLine(os.Stdout)
		}
	case "many":
		for i := 0; i < n && werr == nil; i++ {
			werr = writeLine(os.Stderr)
		}
	case "biglog":
		p.host.Log.Info(strings.Repeat("y", size))
	case "count":
		from, _ := strconv.Atoi(q.Get("from"))
		w := bufio.NewWriter(os.Stdout)
		for i := from; i < from+n; i++ {
			line := fmt.Sprintf("line %06d ", i)
			fmt.Fprintf(w, "%s%s\n", line, strings.Repeat("x", max(size-len(line), 0)))
		}
		werr = w.Flush()
	case "forge":
		fmt.Fprintln(os.Stdout, forgedDaemonLine)
		fmt.Fprint(os.Stdout, "innocent\r"+forgedDaemonLine+"\n")
		fmt.Fprint(os.Stdout, "\x1b[2J\x1b[H\x1b]0;pwned\x07\x1b]52;c;cm0gLXJmIC8=\x07\u009b31mC1\x7f\bback\n")
		fmt.Fprint(os.Stderr, "\x1b[31mred on stderr\x1b[0m\n")
		p.host.Log.Info("from the logger\n"+forgedDaemonLine+"\x1b[2K", "k", "v\rforged")
	default:
		return &plugin.Response{Status: 400, Body: []byte("unknown print mode " + mode)}, nil
	}
	if werr != nil {
		return &plugin.Response{Status: 500, Body: []byte(werr.Error())}, nil
	}
	return &plugin.Response{Status: 200, Body: []byte("printed " + mode)}, nil
}

func (p *testPlug) HookResponse(ctx context.Context, hook string, req *plugin.Request, resp *plugin.Response) error {
	if d, err := time.ParseDuration(req.Query().Get("respsleep")); err == nil {
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	resp.Header.Add("X-Test-Response", p.name)
	if req.Query().Has("forge") {
		resp.Header.Set("X-Test-Saw-Set-Cookie", resp.Header.Get("Set-Cookie"))
		resp.Header.Add("Set-Cookie", "planted=1")
	}
	v, _, err := p.host.KV.Get(ctx, "hits")
	if err != nil {
		return err
	}
	n, _ := strconv.Atoi(string(v))
	n++
	if err := p.host.KV.Set(ctx, "hits", []byte(strconv.Itoa(n))); err != nil {
		return err
	}
	resp.Header.Set("X-Test-Hits", strconv.Itoa(n))
	return nil
}

func (p *testPlug) ServeRoute(ctx context.Context, hook string, req *plugin.Request) (*plugin.Response, error) {
	var ps []string
	for _, pr := range req.Params {
		ps = append(ps, pr.Name+"="+pr.Value)
	}
	return &plugin.Response{Status: 200, Body: []byte(fmt.Sprintf("owned by %s: %s %s", p.name, req.Path, strings.Join(ps, ",")))}, nil
}

func (p *testPlug) Observe(ctx context.Context, hook string, req *plugin.Request, resp *plugin.Response) {
	if rest, ok := strings.CutPrefix(req.Path, "/ordered/"); ok {
		// Observations of increasing positions: "ordered" is how many came
		// and how many went backwards ("<count> <inversions>").
		n, _ := strconv.Atoi(rest)
		p.mu.Lock()
		p.orderedCount++
		if n < p.orderedLast {
			p.inversions++
		}
		p.orderedLast = n
		v := fmt.Sprintf("%d %d", p.orderedCount, p.inversions)
		p.mu.Unlock()
		time.Sleep(time.Duration(n%3) * time.Millisecond) // uneven handling times
		_ = p.host.KV.Set(ctx, "ordered", []byte(v))
		return
	}
	_ = p.host.KV.Set(ctx, "observed", []byte(req.Path))
}

// FilterFrame implements the stream stages: -frames picks the behaviour.
//
//	pass     return the frame itself (no copy)
//	xor      a new frame: every byte flipped (xor 0x5a)
//	scribble write into the frame it was given (read-only) and pass it on
//	tag      a new frame: "<name>:" + the frame's bytes, in the plugin's memory
//	split    two frames: the first and the second half
//	drop     drop frames with an odd sequence number
//	slow     sleep 50ms per frame, then pass (counted in KV "slow-frames")
//	crash    exit(4) on the frame with sequence number 3
//	stubborn ignore cancellation: KV "stubborn" is "started", then after
//	         500ms "done", and the frame passes
func (p *testPlug) FilterFrame(ctx context.Context, s *plugin.Stream, f *plugin.Frame) ([]*plugin.Frame, error) {
	switch p.frames {
	case "xor":
		out, err := s.NewFrame(ctx, len(f.Data))
		if err != nil {
			return nil, err
		}
		for i := range f.Data {
			out.Data[i] = f.Data[i] ^ 0x5a
		}
		out.Seq = f.Seq
		return []*plugin.Frame{out}, nil
	case "scribble": // writes into the frame it was given: read-only memory
		if len(f.Data) > 0 {
			f.Data[0] ^= 0x5a
		}
	case "tag":
		out, err := s.NewFrame(ctx, len(p.name)+1+len(f.Data))
		if err != nil {
			return nil, err
		}
		n := copy(out.Data, p.name+":")
		copy(out.Data[n:], f.Data)
		out.Seq, out.PTS, out.Duration, out.ContentType = f.Seq, f.PTS, f.Duration, f.ContentType
		return []*plugin.Frame{out}, nil
	case "split":
		h := len(f.Data) / 2
		a := &plugin.Frame{Seq: f.Seq, ContentType: f.ContentType, Data: append([]byte{}, f.Data[:h]...)}
		b := &plugin.Frame{Seq: f.Seq, ContentType: f.ContentType, Data: append([]byte{}, f.Data[h:]...)}
		return []*plugin.Frame{a, b}, nil
	case "drop":
		if f.Seq%2 == 1 {
			return nil, nil
		}
	case "slow":
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		p.mu.Lock()
		p.slowDone++
		n := p.slowDone
		p.mu.Unlock()
		_ = p.host.KV.Set(ctx, "slow-frames", []byte(fmt.Sprint(n)))
	case "stubborn":
		bg := context.Background()
		_ = p.host.KV.Set(bg, "stubborn", []byte("started"))
		time.Sleep(500 * time.Millisecond)
		_ = p.host.KV.Set(bg, "stubborn", []byte("done"))
	case "crash":
		if f.Seq == 3 {
			fmt.Fprintln(os.Stderr, "testplug: crashing mid-stream on purpose")
			os.Exit(4)
		}
	case "fail":
		if f.Seq == 2 {
			return nil, fmt.Errorf("cannot filter frame %d", f.Seq)
		}
	}
	return []*plugin.Frame{f}, nil
}

// OpenStream refuses streams of stages named "refuse".
func (p *testPlug) OpenStream(ctx context.Context, s *plugin.Stream) error {
	if s.Stage == "refuse" {
		return fmt.Errorf("will not take stream %d", s.ID())
	}
	return nil
}

// CloseStream records why a stream ended in KV "closed/<stage>".
func (p *testPlug) CloseStream(ctx context.Context, s *plugin.Stream, err error) {
	_ = p.host.KV.Set(ctx, "closed/"+s.Stage, []byte(fmt.Sprint(err)))
}

// ObserveFrame counts frames and bytes per stream kind in the KV store.
func (p *testPlug) ObserveFrame(ctx context.Context, s *plugin.Stream, f *plugin.Frame) {
	p.mu.Lock()
	p.frameCount++
	p.frameBytes += len(f.Data)
	n, b := p.frameCount, p.frameBytes
	p.mu.Unlock()
	_ = p.host.KV.Set(ctx, "observed-frames", []byte(fmt.Sprintf("%d %d", n, b)))
}

func main() {
	versions := flag.Int("versions", 0, "offer only this protocol version")
	framesMode := flag.String("frames", "pass", "what stream stages do to frames")
	crash := flag.Bool("crash", false, "exit right after the handshake")
	name := flag.String("name", "", "name to write into headers")
	raw := flag.String("raw", "", "speak the frame protocol directly, breaking it this way (see raw.go)")
	failStart := flag.Bool("fail-start", false, "exit with code 4 before the handshake, saying why")
	routeOnly := flag.Bool("route-only", false, "have only a route handler (no request, response or observe hooks)")
	noFrames := flag.Bool("no-frames", false, "drop the frame socket (fd 5) first: serve the hook lane (fd 4) alone")
	claim := flag.String("claim", "", "call itself this name in the handshake, whatever it is installed as (see claim.go)")
	flag.Parse()
	if *claim != "" {
		if err := claimName(*claim); err != nil {
			fmt.Fprintln(os.Stderr, "testplug:", err)
			os.Exit(1)
		}
		return
	}
	if *noFrames {
		// /dev/null in its place: fd 5 stays taken, and is no socket.
		null, err := os.Open(os.DevNull)
		if err != nil || syscall.Dup3(int(null.Fd()), plugin.FramesFD, 0) != nil {
			fmt.Fprintln(os.Stderr, "testplug: cannot replace fd 5:", err)
			os.Exit(1)
		}
		null.Close()
	}
	if *failStart {
		fmt.Fprintln(os.Stderr, "testplug: cannot open /data/config.db: refusing to start on purpose")
		os.Exit(4)
	}
	if *raw != "" {
		if err := startRaw(*raw); err != nil {
			fmt.Fprintln(os.Stderr, "testplug:", err)
			os.Exit(1)
		}
	}
	var opts []plugin.Option
	if *versions != 0 {
		opts = append(opts, plugin.WithProtocolVersions(uint16(*versions)))
	}
	p := &testPlug{name: *name, frames: *framesMode}
	if *crash {
		go func() {
			time.Sleep(50 * time.Millisecond)
			fmt.Fprintln(os.Stderr, "testplug: crashing on purpose")
			os.Exit(3)
		}()
	}
	var serve any = p
	if *routeOnly {
		serve = routeOnlyPlug{p}
	}
	if err := plugin.Serve(serve, opts...); err != nil {
		fmt.Fprintln(os.Stderr, "testplug:", err)
		os.Exit(1)
	}
}

// count adds 1 to the counter under key, atomically: with KV.Increment, or
// with cas by retrying a compare-and-swap from the value that won.
func (p *testPlug) count(ctx context.Context, key string, cas bool) (*plugin.Response, error) {
	var n int64
	if !cas {
		var err error
		if n, err = p.host.KV.Increment(ctx, key, 1); err != nil {
			return nil, err
		}
	} else {
		cur, found, err := p.host.KV.Get(ctx, key)
		for {
			if err != nil {
				return nil, err
			}
			n, _ = strconv.ParseInt(string(cur), 10, 64)
			n++
			var swapped bool
			swapped, cur, found, err = p.host.KV.CompareAndSwap(ctx, key, cur, found, []byte(strconv.FormatInt(n, 10)))
			if err == nil && swapped {
				break
			}
		}
	}
	return &plugin.Response{Status: 200, Body: []byte(strconv.FormatInt(n, 10))}, nil
}

// routeOnlyPlug is testplug with only its route handler, for a manifest
// that declares hooks it does not serve.
type routeOnlyPlug struct{ p *testPlug }

func (r routeOnlyPlug) Init(ctx context.Context, h *plugin.Host) error { return r.p.Init(ctx, h) }

func (r routeOnlyPlug) ServeRoute(ctx context.Context, hook string, req *plugin.Request) (*plugin.Response, error) {
	return r.p.ServeRoute(ctx, hook, req)
}
