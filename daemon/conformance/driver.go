package conformance

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
)

// Driver is a host implementation under test, as the kit drives it: the
// operations of docs/conformance.md ("Drivers"). ProcessDriver speaks them
// as JSON lines to a program in any language; GoDriver is the Go host SDK.
type Driver interface {
	Hello() Hello
	Routes(ctx context.Context) (*RoutesAnswer, error)
	Match(ctx context.Context, template, path string) (*MatchAnswer, error)
	Method(ctx context.Context, hook, request string) (bool, error)
	Dispatch(ctx context.Context, q *DispatchQuery) (*DispatchAnswer, error)
	DirectLane(ctx context.Context, plugin string) (*LaneAnswer, error)
	Stream(ctx context.Context, q *StreamQuery) (*StreamAnswer, error)
	Close() error
}

// Driver features: parts of the contract a host may leave out.
const (
	// FeatureDirectLanes: the host calls single-hook routes directly.
	FeatureDirectLanes = "direct-lanes"
	// FeatureStreams: the host sends frame streams.
	FeatureStreams = "streams"
)

// Hello is the driver's first line.
type Hello struct {
	Implementation string   `json:"implementation"`
	Features       []string `json:"features"`
}

func (h Hello) has(feature string) bool {
	for _, f := range h.Features {
		if f == feature {
			return true
		}
	}
	return false
}

// RoutesAnswer is the route table a host holds from its watch.
type RoutesAnswer struct {
	Version uint64       `json:"version"`
	Entries []RouteEntry `json:"entries"`
}

// RouteEntry is one method and template of a route table.
type RouteEntry struct {
	Method string      `json:"method"`
	Route  string      `json:"route"`
	Owner  string      `json:"owner"`
	Hooks  []RouteHook `json:"hooks"`
}

// RouteHook is one hook of a route entry.
type RouteHook struct {
	Plugin     string `json:"plugin"`
	Hook       string `json:"hook"`
	Phase      string `json:"phase"`
	Priority   int    `json:"priority"`
	DeadlineMs int64  `json:"deadlineMs"`
	FailClosed bool   `json:"failClosed"`
}

// MatchAnswer is a host's route matcher's verdict: Params nil when the
// path does not match.
type MatchAnswer struct {
	Params  [][2]string `json:"params"`
	Invalid bool        `json:"invalid,omitempty"`
}

// DispatchQuery asks a host to run one phase's hooks for a request.
type DispatchQuery struct {
	Phase     string      `json:"phase"`
	Method    string      `json:"method"`
	Path      string      `json:"path"`
	Query     string      `json:"query"`
	Header    http.Header `json:"header"`
	Body      []byte      `json:"body"`
	Response  *HTTPAnswer `json:"response,omitempty"`
	TimeoutMs int64       `json:"timeoutMs"`
}

// HTTPAnswer is a response.
type HTTPAnswer struct {
	Status int         `json:"status"`
	Header http.Header `json:"header"`
	Body   []byte      `json:"body"`
}

// HTTPRequest is a request after a phase's changes.
type HTTPRequest struct {
	Path   string      `json:"path"`
	Query  string      `json:"query"`
	Header http.Header `json:"header"`
	Body   []byte      `json:"body"`
}

// HookFailure names a hook that failed and how.
type HookFailure struct {
	Plugin string `json:"plugin"`
	Hook   string `json:"hook"`
	Kind   string `json:"kind"`
}

// Dispatch outcomes.
const (
	OutcomeContinue = "continue"
	OutcomeMutated  = "mutated"
	OutcomeRespond  = "respond"
	OutcomeFailed   = "failed"
)

// DispatchAnswer is what a phase did, applied.
type DispatchAnswer struct {
	Outcome   string        `json:"outcome"`
	Request   *HTTPRequest  `json:"request"`
	Response  *HTTPAnswer   `json:"response"`
	Failure   *HookFailure  `json:"failure"`
	Skipped   []HookFailure `json:"skipped"`
	ElapsedMs int64         `json:"elapsedMs"`
}

// StreamQuery asks a host to send frames through a stream of kind and
// return what comes out of the chain.
type StreamQuery struct {
	Kind   string   `json:"kind"`
	Frames [][]byte `json:"frames"`
}

// StreamAnswer is what came out: the frames in order, and the chain.
type StreamAnswer struct {
	Frames [][]byte `json:"frames"`
	Chain  []string `json:"chain"`
}

// LaneAnswer says whether a host holds a direct lane to a plugin.
type LaneAnswer struct {
	Granted bool   `json:"granted"`
	Reason  string `json:"reason"`
}

// envelope is what every answer has.
type envelope struct {
	ID    uint64 `json:"id"`
	Error string `json:"error,omitempty"`
}

// message is a request line of the driver protocol (or an error answer).
type message struct {
	ID    uint64 `json:"id"`
	Op    string `json:"op,omitempty"`
	Error string `json:"error,omitempty"`

	// match, method, directLane
	Template string `json:"template,omitempty"`
	Path     string `json:"path,omitempty"`
	Hook     string `json:"hook,omitempty"`
	Request  string `json:"request,omitempty"`
	Plugin   string `json:"plugin,omitempty"`
}

// ProcessDriver runs a driver program and talks to it over its stdin and
// stdout. Its stderr is kept for the report (the last 64 KiB).
type ProcessDriver struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	hello  Hello
	stderr *tail

	writeMu sync.Mutex
	mu      sync.Mutex
	next    uint64
	waiting map[uint64]chan json.RawMessage
	readErr error
	done    chan struct{}
}

// StartProcessDriver starts command (a program and its arguments, split
// on spaces) with DIMPLUGD_SOCKET=socket and waits up to 10 s for its
// hello.
func StartProcessDriver(ctx context.Context, command []string, socket string) (*ProcessDriver, error) {
	if len(command) == 0 {
		return nil, fmt.Errorf("%w: no driver command", errdefs.ErrInvalid)
	}
	cmd := exec.Command(command[0], command[1:]...)
	cmd.Env = append(os.Environ(), "DIMPLUGD_SOCKET="+socket)
	d := &ProcessDriver{cmd: cmd, stderr: &tail{max: 64 << 10}, waiting: map[uint64]chan json.RawMessage{}, done: make(chan struct{})}
	cmd.Stderr = d.stderr
	var err error
	if d.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start driver %s: %w", command[0], err)
	}
	r := bufio.NewReaderSize(stdout, 1<<20)
	helloc := make(chan error, 1)
	go func() { // owns stdout until the driver exits
		defer close(d.done)
		line, err := readLine(r)
		if err == nil {
			var h struct {
				Hello *Hello `json:"hello"`
			}
			if err = json.Unmarshal(line, &h); err == nil && h.Hello == nil {
				err = fmt.Errorf("first line is not a hello: %.200q", line)
			}
			if err == nil {
				d.hello = *h.Hello
			}
		}
		helloc <- err
		if err != nil {
			d.fail(err)
			return
		}
		for {
			line, err := readLine(r)
			if err != nil {
				d.fail(err)
				return
			}
			var m envelope
			if err := json.Unmarshal(line, &m); err != nil {
				d.fail(fmt.Errorf("driver wrote %.200q: %w", line, err))
				return
			}
			d.mu.Lock()
			ch := d.waiting[m.ID]
			delete(d.waiting, m.ID)
			d.mu.Unlock()
			if ch != nil {
				ch <- json.RawMessage(line)
			}
		}
	}()
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case err = <-helloc:
	case <-t.C:
		err = errors.New("no hello line within 10 s")
	case <-ctx.Done():
		err = ctx.Err()
	}
	if errors.Is(err, io.EOF) {
		err = errors.New("it closed its stdout (exited?) before its hello line")
	}
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("driver %s: %w%s", command[0], err, d.stderrNote())
	}
	return d, nil
}

// readLine reads one line of at most 16 MiB.
func readLine(r *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, isPrefix, err := r.ReadLine()
		if err != nil {
			return nil, err
		}
		line = append(line, chunk...)
		if len(line) > 16<<20 {
			return nil, errors.New("a line longer than 16 MiB")
		}
		if !isPrefix {
			return line, nil
		}
	}
}

func (d *ProcessDriver) fail(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if errors.Is(err, io.EOF) {
		err = errors.New("the driver closed its stdout (exited?)")
	}
	d.readErr = err
	for id, ch := range d.waiting {
		close(ch)
		delete(d.waiting, id)
	}
}

func (d *ProcessDriver) stderrNote() string {
	if s := strings.TrimSpace(d.stderr.String()); s != "" {
		return "\ndriver stderr:\n" + s
	}
	return ""
}

// Stderr is the end of what the driver wrote on stderr.
func (d *ProcessDriver) Stderr() string { return d.stderr.String() }

// call sends one request and decodes its answer into out.
func (d *ProcessDriver) call(ctx context.Context, req map[string]any, out any) error {
	d.mu.Lock()
	if d.readErr != nil {
		err := d.readErr
		d.mu.Unlock()
		return fmt.Errorf("%w: driver: %v", errdefs.ErrUnavailable, err)
	}
	d.next++
	id := d.next
	ch := make(chan json.RawMessage, 1)
	d.waiting[id] = ch
	d.mu.Unlock()
	req["id"] = id
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	d.writeMu.Lock()
	_, err = d.stdin.Write(append(b, '\n'))
	d.writeMu.Unlock()
	if err != nil {
		return fmt.Errorf("%w: write to driver: %v", errdefs.ErrUnavailable, err)
	}
	select {
	case line, ok := <-ch:
		if !ok {
			d.mu.Lock()
			err := d.readErr
			d.mu.Unlock()
			return fmt.Errorf("%w: driver: %v", errdefs.ErrUnavailable, err)
		}
		var m envelope
		if err := json.Unmarshal(line, &m); err != nil {
			return err
		}
		if m.Error != "" {
			return fmt.Errorf("driver: %s", m.Error)
		}
		if err := json.Unmarshal(line, out); err != nil {
			return fmt.Errorf("driver answered %s with %.300q: %w", req["op"], line, err)
		}
		return nil
	case <-ctx.Done():
		d.mu.Lock()
		delete(d.waiting, id)
		d.mu.Unlock()
		return fmt.Errorf("driver did not answer %s: %w", req["op"], ctx.Err())
	}
}

func (d *ProcessDriver) Hello() Hello { return d.hello }

func (d *ProcessDriver) Routes(ctx context.Context) (*RoutesAnswer, error) {
	var a RoutesAnswer
	return &a, d.call(ctx, map[string]any{"op": "routes"}, &a)
}

func (d *ProcessDriver) Match(ctx context.Context, template, path string) (*MatchAnswer, error) {
	var a MatchAnswer
	return &a, d.call(ctx, map[string]any{"op": "match", "template": template, "path": path}, &a)
}

func (d *ProcessDriver) Method(ctx context.Context, hook, request string) (bool, error) {
	var a struct {
		Match bool `json:"match"`
	}
	err := d.call(ctx, map[string]any{"op": "method", "hook": hook, "request": request}, &a)
	return a.Match, err
}

func (d *ProcessDriver) Dispatch(ctx context.Context, q *DispatchQuery) (*DispatchAnswer, error) {
	b, err := json.Marshal(q)
	if err != nil {
		return nil, err
	}
	req := map[string]any{}
	if err := json.Unmarshal(b, &req); err != nil {
		return nil, err
	}
	req["op"] = "dispatch"
	var a DispatchAnswer
	return &a, d.call(ctx, req, &a)
}

func (d *ProcessDriver) Stream(ctx context.Context, q *StreamQuery) (*StreamAnswer, error) {
	var a StreamAnswer
	return &a, d.call(ctx, map[string]any{"op": "stream", "kind": q.Kind, "frames": q.Frames}, &a)
}

func (d *ProcessDriver) DirectLane(ctx context.Context, plugin string) (*LaneAnswer, error) {
	var a LaneAnswer
	return &a, d.call(ctx, map[string]any{"op": "directLane", "plugin": plugin}, &a)
}

// Close ends the driver's stdin and waits up to 5 s for it to exit, then
// kills it.
func (d *ProcessDriver) Close() error {
	d.stdin.Close()
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	var killed bool
	select {
	case <-d.done: // it closed its stdout: exiting
	case <-t.C:
		d.cmd.Process.Kill()
		killed = true
		<-d.done
	}
	err := d.cmd.Wait()
	if killed {
		return errors.New("the driver did not exit within 5 s of its stdin closing; killed")
	}
	return err
}

// tail keeps the last max bytes written to it.
type tail struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
