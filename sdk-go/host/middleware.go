package host

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// Middleware applies dimplugd hooks to a net/http handler: route-phase
// plugins answer the routes they own, request-phase hooks may change or
// answer a request before the handler runs, response-phase hooks may change
// the handler's response, and observers get a copy afterwards.
//
// It keeps the daemon's route table (pushed on every change), so a request
// that matches no hook goes straight to the handler with no IPC at all.
type Middleware struct {
	s         *Session
	next      http.Handler
	opts      middlewareOptions
	observers sync.WaitGroup // the goroutine sending obsQ, while it runs
	obsQ      wire.CallQueue // observe dispatches, sent in order
}

// MiddlewareOption configures a Middleware.
type MiddlewareOption func(*middlewareOptions)

type middlewareOptions struct {
	maxBody int64
	user    func(*http.Request) (int64, bool)
	route   func(*http.Request) string
	log     *slog.Logger
}

// WithMaxBody sets the largest request or response body passed to hooks
// (default 8 MiB). A larger request body on a hooked route is refused with
// 413. A larger response body skips fail-open response hooks (logged) and
// is sent unchanged, never truncated; when a fail-closed response hook is
// on the route it is answered 502 instead (that hook must see every
// response). Observers get its first n bytes.
func WithMaxBody(n int64) MiddlewareOption { return func(o *middlewareOptions) { o.maxBody = n } }

// WithUser tells hooks who the request is authenticated as.
func WithUser(f func(*http.Request) (id int64, ok bool)) MiddlewareOption {
	return func(o *middlewareOptions) { o.user = f }
}

// WithRouteTemplate reports the host's own route template for a request
// (e.g. from its router), passed to hooks as Request.Route.
func WithRouteTemplate(f func(*http.Request) string) MiddlewareOption {
	return func(o *middlewareOptions) { o.route = f }
}

// WithLogger receives hook failures that were skipped (fail-open).
func WithLogger(l *slog.Logger) MiddlewareOption { return func(o *middlewareOptions) { o.log = l } }

// NewMiddleware wraps next. It fetches the route table and keeps it current
// for as long as the session lives.
func NewMiddleware(ctx context.Context, s *Session, next http.Handler, opts ...MiddlewareOption) (*Middleware, error) {
	m := &Middleware{s: s, next: next, opts: middlewareOptions{maxBody: 8 << 20, log: slog.Default()}}
	for _, o := range opts {
		o(&m.opts)
	}
	return m, nil
}

// Close waits until the observers have been handed every exchange already
// served, or ctx ends. Call it before the host exits so that no observation
// is lost.
func (m *Middleware) Close(ctx context.Context) error {
	done := make(chan struct{})
	go func() { m.observers.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// RouteTable returns the table the middleware currently routes with.
func (m *Middleware) RouteTable() *RouteTable { return m.s.RouteTable() }

func has(ps []Phase, p Phase) bool { return containsPhase(ps, p) }

func (m *Middleware) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == UIPath {
		m.serveUI(w, r)
		return
	}
	if plugin, ok := settingsPlugin(r); ok {
		m.serveSettings(w, r, plugin)
		return
	}
	phases := m.s.RouteTable().Match(r.Method, r.URL.Path)
	if phases == nil {
		m.next.ServeHTTP(w, r)
		return
	}
	ctx := r.Context()
	req, err := m.wireRequest(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
		return
	}

	// A route owner answers first; then request hooks may answer or
	// change the request.
	for _, phase := range []Phase{PhaseRoute, PhaseRequest} {
		if !has(phases, phase) {
			continue
		}
		res, err := m.s.Dispatch(ctx, phase, req, nil)
		if err != nil {
			m.unavailable(w, err)
			return
		}
		m.logSkipped(res)
		switch res.Kind {
		case Respond:
			resp := pluginAnswer(r, res.Response)
			writeResponse(w, resp)
			m.observe(phases, req, resp)
			return
		case FailClosed:
			writeResponse(w, res.FailureResponse())
			return
		case MutateRequest:
			res.RequestMutation.Apply(req)
			req.Header = withoutHeaders(req.Header, requestCredentials...)
			applyToHTTP(r, &res.RequestMutation)
		}
	}
	r.Body = io.NopCloser(bytes.NewReader(req.Body))
	r.ContentLength = int64(len(req.Body))

	if !has(phases, PhaseResponse) && !has(phases, PhaseObserve) {
		m.next.ServeHTTP(w, r)
		return
	}
	rec := &recorder{header: http.Header{}, max: m.opts.maxBody}
	m.next.ServeHTTP(rec, r)
	// Hooks see the response without Dim's cookies, and cannot set any.
	resp := &Response{Status: rec.status(), Header: withoutHeaders(rec.header, responseCredentials...), Body: rec.body.Bytes()}
	if has(phases, PhaseResponse) && !rec.overflow {
		res, err := m.s.Dispatch(ctx, PhaseResponse, req, resp)
		switch {
		case err != nil:
			m.unavailable(w, err)
			return
		case res.Kind == FailClosed:
			writeResponse(w, res.FailureResponse())
			return
		case res.Kind == MutateResponse:
			res.ResponseMutation.Apply(resp)
		}
		m.logSkipped(res)
	} else if rec.overflow {
		// A fail-closed response hook must see every response it is
		// hooked to: one too large for it is not sent unchanged behind
		// its back.
		if h := m.s.RouteTable().failClosedHook(PhaseResponse, r.Method, r.URL.Path); h != nil {
			m.opts.log.Warn("response too large for a fail-closed response hook; answered 502", "plugin", h.Plugin, "hook", h.Hook, "method", r.Method, "path", r.URL.Path, "limit", m.opts.maxBody)
			http.Error(w, fmt.Sprintf("the response is larger than %d bytes, more than fail-closed response hook %s/%s may be given", m.opts.maxBody, h.Plugin, h.Hook), http.StatusBadGateway)
			return
		}
		m.opts.log.Warn("response too large for response hooks; sent unchanged", "method", r.Method, "path", r.URL.Path, "limit", m.opts.maxBody)
	}
	out := *resp
	out.Header = withoutHeaders(resp.Header, responseCredentials...)
	restoreHeaders(out.Header, rec.header, responseCredentials...)
	writeResponse(w, &out)
	if rec.overflow { // observers get the first maxBody bytes
		cut := *resp
		cut.Body = cut.Body[:m.opts.maxBody]
		resp = &cut
	}
	m.observe(phases, req, resp)
}

func (m *Middleware) wireRequest(r *http.Request) (*Request, error) {
	req := &Request{
		ReceivedAt: time.Now(),
		Method:     r.Method,
		Path:       r.URL.Path,
		RawQuery:   r.URL.RawQuery,
		Header:     withoutHeaders(r.Header, requestCredentials...),
		RemoteAddr: r.RemoteAddr,
		RequestID:  r.Header.Get("X-Request-Id"),
	}
	if m.opts.route != nil {
		req.Route = m.opts.route(r)
	}
	if m.opts.user != nil {
		req.UserID, req.Authenticated = m.opts.user(r)
	}
	if r.Body != nil && r.Body != http.NoBody {
		b, err := io.ReadAll(io.LimitReader(r.Body, m.opts.maxBody+1))
		r.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("read request body: %w", err)
		}
		if int64(len(b)) > m.opts.maxBody {
			return nil, fmt.Errorf("request body larger than %d bytes on a hooked route", m.opts.maxBody)
		}
		req.Body = b
	}
	return req, nil
}

// observe hands a copy of the exchange to observers without delaying the
// response. Observations are dispatched one after another, in the order
// the exchanges were served, by one goroutine (each bounded by a timeout):
// with the daemon's per-plugin queues, each plugin observes a middleware's
// exchanges in that order (see docs/protocol.md, "Observe phase"). Past
// wire.MaxQueuedCalls waiting, an observation is dropped (and logged).
func (m *Middleware) observe(phases []Phase, req *Request, resp *Response) {
	if !has(phases, PhaseObserve) {
		return
	}
	ok := m.obsQ.Push(&m.observers, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := m.s.Dispatch(ctx, PhaseObserve, req, resp); err != nil {
			m.opts.log.Warn("observe dispatch failed", "method", req.Method, "path", req.Path, "err", err)
		}
	})
	if !ok {
		m.opts.log.Warn("observation dropped: the observers are behind", "method", req.Method, "path", req.Path,
			"queued", wire.MaxQueuedCalls)
	}
}

func (m *Middleware) unavailable(w http.ResponseWriter, err error) {
	m.opts.log.Error("dimplugd unavailable", "err", err)
	http.Error(w, "plugin daemon unavailable: "+err.Error(), http.StatusServiceUnavailable)
}

func (m *Middleware) logSkipped(res *Result) {
	for _, e := range res.Skipped {
		m.opts.log.Warn("plugin hook skipped (fail-open)", "plugin", e.Plugin, "hook", e.Hook, "reason", e.Message)
	}
}

// applyToHTTP makes a request hook's changes to the request the handler
// sees. The user's credentials stay as the client sent them: a hook never
// saw them and cannot set or remove them.
func applyToHTTP(r *http.Request, mu *RequestMutation) {
	if mu.ReplaceHeader {
		h := withoutHeaders(mu.Header, requestCredentials...)
		restoreHeaders(h, r.Header, requestCredentials...)
		r.Header = h
	}
	if mu.ReplaceQuery {
		r.URL.RawQuery = mu.RawQuery
	}
}

// Credentials: the headers that carry a user's session. Plugins never see
// them on a request or response and cannot set them (docs/protocol.md,
// "Credentials"): a hook acts for the user only through the user id the
// host gives it.
var (
	requestCredentials  = []string{"Authorization", "Cookie", "Proxy-Authorization"}
	responseCredentials = []string{"Set-Cookie"}
)

// withoutHeaders returns a copy of h without the named headers.
func withoutHeaders(h http.Header, names ...string) http.Header {
	c := h.Clone()
	if c == nil {
		c = http.Header{}
	}
	for _, n := range names {
		c.Del(n)
	}
	return c
}

// restoreHeaders sets the named headers of dst to those of src.
func restoreHeaders(dst, src http.Header, names ...string) {
	for _, n := range names {
		dst.Del(n)
		if vs := src.Values(n); len(vs) > 0 {
			dst[http.CanonicalHeaderKey(n)] = append([]string(nil), vs...)
		}
	}
}

// pluginAnswer is a plugin's own answer as the client gets it: without
// cookies, and, under the plugin's own namespace, with wire.PageCSP
// whatever the plugin said, so its pages run sandboxed (an opaque origin:
// no cookies, storage or DOM of the host's) even when opened directly
// rather than in the host's iframe.
func pluginAnswer(r *http.Request, resp *Response) *Response {
	cp := *resp
	cp.Header = withoutHeaders(resp.Header, responseCredentials...)
	if pluginPath(r.URL.Path) {
		cp.Header.Set("Content-Security-Policy", wire.PageCSP)
	}
	return &cp
}

func writeResponse(w http.ResponseWriter, resp *Response) {
	h := w.Header()
	for k, vs := range resp.Header {
		h[k] = append([]string(nil), vs...)
	}
	h.Set("Content-Length", strconv.Itoa(len(resp.Body)))
	status := resp.Status
	if status == 0 {
		status = http.StatusOK
	}
	w.WriteHeader(status)
	w.Write(resp.Body)
}

// recorder captures a handler's response for the response phase.
type recorder struct {
	header   http.Header
	code     int
	body     bytes.Buffer
	max      int64
	overflow bool
}

func (r *recorder) Header() http.Header { return r.header }

func (r *recorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	if int64(r.body.Len()+len(b)) > r.max {
		r.overflow = true
	}
	return r.body.Write(b)
}

func (r *recorder) status() int {
	if r.code == 0 {
		return http.StatusOK
	}
	return r.code
}
