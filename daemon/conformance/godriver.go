package conformance

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/host"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
)

// GoDriver is the Go host SDK as a conformance driver: a host.Session with
// its own reconnects, route watch and direct lanes.
type GoDriver struct {
	s *host.Session
}

// DialGoDriver opens a host session on socket. It does not wait for the
// daemon: the session comes up when the daemon does.
func DialGoDriver(ctx context.Context, socket string) (*GoDriver, error) {
	s, err := host.Dial(ctx, socket, host.WithStartDegraded(), host.WithClientName("conformance-go"))
	if err != nil {
		return nil, err
	}
	return &GoDriver{s: s}, nil
}

func (g *GoDriver) Hello() Hello {
	return Hello{Implementation: "dimplugd sdk-go/host", Features: []string{FeatureDirectLanes, FeatureStreams}}
}

func (g *GoDriver) Routes(ctx context.Context) (*RoutesAnswer, error) {
	t := g.s.RouteTable()
	a := &RoutesAnswer{Entries: []RouteEntry{}}
	if t == nil {
		return a, nil
	}
	a.Version = t.Version
	for _, e := range t.Entries {
		re := RouteEntry{Method: e.Method, Route: e.Route, Owner: e.Owner, Hooks: []RouteHook{}}
		for _, h := range e.Hooks {
			re.Hooks = append(re.Hooks, RouteHook{Plugin: h.Plugin, Hook: h.Hook, Phase: h.Phase.String(),
				Priority: h.Priority, DeadlineMs: h.Deadline.Milliseconds(), FailClosed: h.FailClosed})
		}
		a.Entries = append(a.Entries, re)
	}
	return a, nil
}

func (g *GoDriver) Match(ctx context.Context, template, path string) (*MatchAnswer, error) {
	r, err := manifest.ParseRoute(template)
	if err != nil {
		return &MatchAnswer{Invalid: true}, nil
	}
	ps, ok := r.Match(path)
	if !ok {
		return &MatchAnswer{}, nil
	}
	a := &MatchAnswer{Params: [][2]string{}}
	for _, p := range ps {
		a.Params = append(a.Params, [2]string{p.Name, p.Value})
	}
	return a, nil
}

func (g *GoDriver) Method(ctx context.Context, hook, request string) (bool, error) {
	return manifest.MethodMatches(hook, request), nil
}

// phases maps the protocol's phase names.
var phases = map[string]host.Phase{
	"request": host.PhaseRequest, "response": host.PhaseResponse,
	"route": host.PhaseRoute, "observe": host.PhaseObserve,
}

func (g *GoDriver) Dispatch(ctx context.Context, q *DispatchQuery) (*DispatchAnswer, error) {
	phase, ok := phases[q.Phase]
	if !ok {
		return nil, fmt.Errorf("%w: unknown phase %q", errdefs.ErrInvalid, q.Phase)
	}
	if q.TimeoutMs > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(q.TimeoutMs)*time.Millisecond)
		defer cancel()
	}
	req := &host.Request{Method: q.Method, Path: q.Path, RawQuery: q.Query, Header: cloneHeader(q.Header), Body: q.Body}
	var resp *host.Response
	if q.Response != nil {
		resp = &host.Response{Status: q.Response.Status, Header: cloneHeader(q.Response.Header), Body: q.Response.Body}
	}
	if phase == host.PhaseObserve {
		go func() { // observers never delay the host: off the call's path
			octx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			g.s.Dispatch(octx, phase, req, resp)
		}()
		return &DispatchAnswer{Outcome: OutcomeContinue}, nil
	}
	start := time.Now()
	res, err := g.s.Dispatch(ctx, phase, req, resp)
	elapsed := time.Since(start)
	if err != nil {
		return nil, err
	}
	a := &DispatchAnswer{Outcome: OutcomeContinue, ElapsedMs: elapsed.Milliseconds(), Skipped: []HookFailure{}}
	for _, sk := range res.Skipped {
		a.Skipped = append(a.Skipped, HookFailure{Plugin: sk.Plugin, Hook: sk.Hook, Kind: sk.Kind.String()})
	}
	switch res.Kind {
	case host.MutateRequest:
		res.RequestMutation.Apply(req)
		a.Outcome = OutcomeMutated
		a.Request = &HTTPRequest{Path: req.Path, Query: req.RawQuery, Header: req.Header, Body: req.Body}
	case host.MutateResponse:
		res.ResponseMutation.Apply(resp)
		a.Outcome = OutcomeMutated
		a.Response = &HTTPAnswer{Status: resp.Status, Header: resp.Header, Body: resp.Body}
	case host.Respond:
		a.Outcome = OutcomeRespond
		a.Response = &HTTPAnswer{Status: res.Response.Status, Header: res.Response.Header, Body: res.Response.Body}
	case host.FailClosed:
		a.Outcome = OutcomeFailed
		a.Failure = &HookFailure{Plugin: res.Failure.Plugin, Hook: res.Failure.Hook, Kind: res.Failure.Kind.String()}
		fr := res.FailureResponse()
		a.Response = &HTTPAnswer{Status: fr.Status, Header: fr.Header, Body: fr.Body}
	}
	return a, nil
}

func cloneHeader(h http.Header) http.Header {
	if h == nil {
		return http.Header{}
	}
	return h.Clone()
}

func (g *GoDriver) DirectLane(ctx context.Context, plugin string) (*LaneAnswer, error) {
	granted, reason := g.s.DirectLane(plugin)
	return &LaneAnswer{Granted: granted, Reason: reason}, nil
}

// Stream sends the frames and reads what comes back at the same time (a
// host must read while it writes).
func (g *GoDriver) Stream(ctx context.Context, q *StreamQuery) (*StreamAnswer, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st, err := g.s.OpenStream(ctx, q.Kind, host.StreamMeta{})
	if err != nil {
		return nil, err
	}
	defer st.Cancel()
	sent := make(chan error, 1)
	go func() { // the writer; ends after the last frame or the first error
		for i, data := range q.Frames {
			if err := st.Send(ctx, &host.Frame{Seq: uint64(i), Data: data}); err != nil {
				sent <- err
				return
			}
		}
		sent <- st.CloseSend()
	}()
	a := &StreamAnswer{Frames: [][]byte{}, Chain: st.Stages()}
	for {
		f, err := st.Recv(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		a.Frames = append(a.Frames, bytes.Clone(f.Data))
		f.Release()
	}
	if err := <-sent; err != nil {
		return nil, err
	}
	return a, nil
}

func (g *GoDriver) Close() error { return g.s.Close() }

// ServeDriver speaks the driver protocol for d on in and out: the hello
// line, then one answer per request line, until in ends. Requests run
// concurrently; answers are written whole, one per line.
func ServeDriver(ctx context.Context, d Driver, in io.Reader, out io.Writer) error {
	var wmu sync.Mutex
	write := func(v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		wmu.Lock()
		defer wmu.Unlock()
		_, err = out.Write(append(b, '\n'))
		return err
	}
	if err := write(map[string]any{"hello": d.Hello()}); err != nil {
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	r := bufio.NewReaderSize(in, 1<<20)
	for {
		line, err := readLine(r)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		var m message
		var q DispatchQuery // the same line, read again: both have "path"
		if err := json.Unmarshal(line, &m); err != nil {
			return fmt.Errorf("%w: request %.200q: %v", errdefs.ErrInvalid, line, err)
		}
		var sq StreamQuery
		switch m.Op {
		case "dispatch":
			err = json.Unmarshal(line, &q)
		case "stream":
			err = json.Unmarshal(line, &sq)
		}
		if err != nil {
			return fmt.Errorf("%w: request %.200q: %v", errdefs.ErrInvalid, line, err)
		}
		wg.Add(1)
		go func() { // one per request; ends with its answer
			defer wg.Done()
			answer, err := serveOne(ctx, d, &m, &q, &sq)
			if err != nil {
				write(message{ID: m.ID, Error: err.Error()})
				return
			}
			b, _ := json.Marshal(answer)
			var fields map[string]any
			json.Unmarshal(b, &fields)
			fields["id"] = m.ID
			write(fields)
		}()
	}
}

func serveOne(ctx context.Context, d Driver, m *message, q *DispatchQuery, sq *StreamQuery) (any, error) {
	switch m.Op {
	case "routes":
		return d.Routes(ctx)
	case "match":
		return d.Match(ctx, m.Template, m.Path)
	case "method":
		ok, err := d.Method(ctx, m.Hook, m.Request)
		return map[string]bool{"match": ok}, err
	case "dispatch":
		return d.Dispatch(ctx, q)
	case "directLane":
		return d.DirectLane(ctx, m.Plugin)
	case "stream":
		return d.Stream(ctx, sq)
	}
	return nil, fmt.Errorf("%w: unknown op %q", errdefs.ErrInvalid, m.Op)
}
