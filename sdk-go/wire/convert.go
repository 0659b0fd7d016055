package wire

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// Phase is where in a request's life a hook runs; see schema.Phase.
type Phase = schema.Phase

// The four hook phases.
const (
	PhaseRequest  = schema.Phase_request
	PhaseResponse = schema.Phase_response
	PhaseRoute    = schema.Phase_route
	PhaseObserve  = schema.Phase_observe
)

// errs collects the first error of a sequence of capnp accessors, so that
// conversions read as a list of fields rather than a ladder of ifs.
type errs struct{ err error }

func (e *errs) text(s string, err error) string {
	if err != nil && e.err == nil {
		e.err = err
	}
	return s
}

func (e *errs) data(b []byte, err error) []byte {
	if err != nil && e.err == nil {
		e.err = err
	}
	return b
}

func (e *errs) set(err error) {
	if err != nil && e.err == nil {
		e.err = err
	}
}

// MaxHeaders and MaxParams bound the header and route parameter lists a
// request, response or mutation may carry. A list of empty structs costs
// its sender one word per entry at most (none at all under a Cap'n Proto
// list of zero-sized elements, beyond the traversal limit), so without a cap
// an 80-byte message could make the reader allocate hundreds of megabytes.
const (
	MaxHeaders = 8192
	MaxParams  = 1024
)

func readHeaders(l schema.Header_List, e *errs) http.Header {
	if l.Len() > MaxHeaders {
		e.set(fmt.Errorf("%d headers: more than the %d allowed", l.Len(), MaxHeaders))
		return nil
	}
	n := l.Len()
	h := make(http.Header, min(n, 32))
	if n == 0 {
		return h
	}
	// Every name and value is copied out of the message into one string,
	// and each header's value list is a piece of one slice: two
	// allocations for all the texts instead of two or three per header.
	// Each text is read from the message once (a read is bounds and
	// traversal checks): the pieces wait in texts.
	var textBuf [32][2][]byte // most requests: no allocation
	texts := textBuf[:0]
	if n > len(textBuf) {
		texts = make([][2][]byte, 0, n)
	}
	total := 0
	for i := 0; i < n; i++ {
		hd := l.At(i)
		name, err := hd.NameBytes()
		e.set(err)
		value, err := hd.ValueBytes()
		e.set(err)
		texts = append(texts, [2][]byte{name, value})
		total += len(name) + len(value)
	}
	var sb strings.Builder
	sb.Grow(total)
	for _, t := range texts {
		sb.Write(t[0])
		sb.Write(t[1])
	}
	all := sb.String()
	values := make([]string, n)
	at := 0
	for i, t := range texts {
		name := all[at : at+len(t[0])]
		at += len(t[0])
		value := all[at : at+len(t[1])]
		at += len(t[1])
		if name == "" {
			continue
		}
		k := canonicalKey(name)
		values[i] = value
		if vs, ok := h[k]; ok {
			h[k] = append(vs, values[i])
		} else {
			h[k] = values[i : i+1 : i+1] // capped: an append copies, never overwrites
		}
	}
	return h
}

// canonicalKey is http.CanonicalHeaderKey, with a quick way out for a name
// that is canonical already (what hosts and plugins send, from
// http.Header.Set): letters upper case at the start and after each '-',
// lower case elsewhere, and nothing but letters, digits and '-'.
func canonicalKey(name string) string {
	upper := true
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c == '-':
			upper = true
			continue
		case 'A' <= c && c <= 'Z':
			if !upper {
				return http.CanonicalHeaderKey(name)
			}
		case 'a' <= c && c <= 'z':
			if upper {
				return http.CanonicalHeaderKey(name)
			}
		case '0' <= c && c <= '9':
		default:
			return http.CanonicalHeaderKey(name)
		}
		upper = false
	}
	return name
}

func headerCount(h http.Header) int {
	n := 0
	for _, vs := range h {
		n += len(vs)
	}
	return n
}

func writeHeaders(newList func(int32) (schema.Header_List, error), h http.Header, e *errs) {
	n := headerCount(h)
	if n == 0 {
		return
	}
	l, err := newList(int32(n))
	if err != nil {
		e.set(err)
		return
	}
	i := 0
	for k, vs := range h {
		for _, v := range vs {
			hd := l.At(i)
			e.set(hd.SetName(k))
			e.set(hd.SetValue(v))
			i++
		}
	}
}

// ReadRequest copies a request out of its Cap'n Proto form. The result does
// not reference the message, which may be released afterwards.
func ReadRequest(s schema.HttpRequest) (*Request, error) {
	var e errs
	r := &Request{
		Method:        e.text(s.Method()),
		Route:         e.text(s.Route()),
		Path:          e.text(s.Path()),
		RawQuery:      e.text(s.RawQuery()),
		UserID:        s.UserId(),
		Authenticated: s.Authenticated(),
		RemoteAddr:    e.text(s.RemoteAddr()),
		RequestID:     e.text(s.RequestId()),
	}
	if ns := s.ReceivedAtUnixNano(); ns != 0 {
		r.ReceivedAt = time.Unix(0, ns)
	}
	hl, err := s.Headers()
	e.set(err)
	r.Header = readHeaders(hl, &e)
	if b := e.data(s.Body()); len(b) > 0 {
		r.Body = append([]byte(nil), b...)
	}
	pl, err := s.Params()
	e.set(err)
	if pl.Len() > MaxParams {
		e.set(fmt.Errorf("%d route parameters: more than the %d allowed", pl.Len(), MaxParams))
	} else if pl.Len() > 0 {
		r.Params = make([]Param, pl.Len())
		for i := range r.Params {
			p := pl.At(i)
			r.Params[i] = Param{Name: e.text(p.Name()), Value: e.text(p.Value())}
		}
	}
	if e.err != nil {
		return nil, fmt.Errorf("read request: %w", e.err)
	}
	return r, nil
}

// WriteRequest fills s with r.
func WriteRequest(s schema.HttpRequest, r *Request) error {
	var e errs
	e.set(s.SetMethod(r.Method))
	e.set(s.SetRoute(r.Route))
	e.set(s.SetPath(r.Path))
	e.set(s.SetRawQuery(r.RawQuery))
	writeHeaders(s.NewHeaders, r.Header, &e)
	if len(r.Body) > 0 {
		e.set(s.SetBody(r.Body))
	}
	if len(r.Params) > 0 {
		pl, err := s.NewParams(int32(len(r.Params)))
		e.set(err)
		if err == nil {
			for i, p := range r.Params {
				e.set(pl.At(i).SetName(p.Name))
				e.set(pl.At(i).SetValue(p.Value))
			}
		}
	}
	s.SetUserId(r.UserID)
	s.SetAuthenticated(r.Authenticated)
	e.set(s.SetRemoteAddr(r.RemoteAddr))
	e.set(s.SetRequestId(r.RequestID))
	if !r.ReceivedAt.IsZero() {
		s.SetReceivedAtUnixNano(r.ReceivedAt.UnixNano())
	}
	if e.err != nil {
		return fmt.Errorf("write request: %w", e.err)
	}
	return nil
}

// ReadResponse copies a response out of its Cap'n Proto form.
func ReadResponse(s schema.HttpResponse) (*Response, error) {
	var e errs
	r := &Response{Status: int(s.Status())}
	hl, err := s.Headers()
	e.set(err)
	r.Header = readHeaders(hl, &e)
	if b := e.data(s.Body()); len(b) > 0 {
		r.Body = append([]byte(nil), b...)
	}
	if e.err != nil {
		return nil, fmt.Errorf("read response: %w", e.err)
	}
	return r, nil
}

// WriteResponse fills s with r.
func WriteResponse(s schema.HttpResponse, r *Response) error {
	var e errs
	s.SetStatus(uint16(r.Status))
	writeHeaders(s.NewHeaders, r.Header, &e)
	if len(r.Body) > 0 {
		e.set(s.SetBody(r.Body))
	}
	if e.err != nil {
		return fmt.Errorf("write response: %w", e.err)
	}
	return nil
}

// ReadRequestMutation copies a request mutation out of its Cap'n Proto form.
func ReadRequestMutation(s schema.RequestMutation) (RequestMutation, error) {
	var e errs
	m := RequestMutation{
		ReplaceHeader: s.ReplaceHeaders(),
		ReplaceQuery:  s.ReplaceQuery(),
		ReplaceBody:   s.ReplaceBody(),
	}
	if m.ReplaceHeader {
		hl, err := s.Headers()
		e.set(err)
		m.Header = readHeaders(hl, &e)
	}
	if m.ReplaceQuery {
		m.RawQuery = e.text(s.RawQuery())
	}
	if m.ReplaceBody {
		m.Body = append([]byte(nil), e.data(s.Body())...)
	}
	if e.err != nil {
		return RequestMutation{}, fmt.Errorf("read request mutation: %w", e.err)
	}
	return m, nil
}

// WriteRequestMutation fills s with m.
func WriteRequestMutation(s schema.RequestMutation, m *RequestMutation) error {
	var e errs
	s.SetReplaceHeaders(m.ReplaceHeader)
	if m.ReplaceHeader {
		writeHeaders(s.NewHeaders, m.Header, &e)
	}
	s.SetReplaceQuery(m.ReplaceQuery)
	if m.ReplaceQuery {
		e.set(s.SetRawQuery(m.RawQuery))
	}
	s.SetReplaceBody(m.ReplaceBody)
	if m.ReplaceBody && len(m.Body) > 0 {
		e.set(s.SetBody(m.Body))
	}
	if e.err != nil {
		return fmt.Errorf("write request mutation: %w", e.err)
	}
	return nil
}

// ReadResponseMutation copies a response mutation out of its Cap'n Proto
// form.
func ReadResponseMutation(s schema.ResponseMutation) (ResponseMutation, error) {
	var e errs
	m := ResponseMutation{
		Status:        int(s.Status()),
		ReplaceHeader: s.ReplaceHeaders(),
		ReplaceBody:   s.ReplaceBody(),
	}
	if m.ReplaceHeader {
		hl, err := s.Headers()
		e.set(err)
		m.Header = readHeaders(hl, &e)
	}
	if m.ReplaceBody {
		m.Body = append([]byte(nil), e.data(s.Body())...)
	}
	if e.err != nil {
		return ResponseMutation{}, fmt.Errorf("read response mutation: %w", e.err)
	}
	return m, nil
}

// WriteResponseMutation fills s with m.
func WriteResponseMutation(s schema.ResponseMutation, m *ResponseMutation) error {
	var e errs
	s.SetStatus(uint16(m.Status))
	s.SetReplaceHeaders(m.ReplaceHeader)
	if m.ReplaceHeader {
		writeHeaders(s.NewHeaders, m.Header, &e)
	}
	s.SetReplaceBody(m.ReplaceBody)
	if m.ReplaceBody && len(m.Body) > 0 {
		e.set(s.SetBody(m.Body))
	}
	if e.err != nil {
		return fmt.Errorf("write response mutation: %w", e.err)
	}
	return nil
}

// HookError says why one plugin's hook had no effect.
type HookError struct {
	Plugin  string
	Hook    string
	Kind    schema.HookErrorKind
	Message string
}

func (e *HookError) Error() string {
	return fmt.Sprintf("plugin %q hook %q: %s", e.Plugin, e.Hook, e.Message)
}

// Is reports a hook whose plugin was not running as errdefs.ErrUnavailable.
func (e *HookError) Is(target error) bool {
	return target == errdefs.ErrUnavailable && e.Kind == schema.HookErrorKind_unavailable
}

// Status is the HTTP status a host answers with when this error fails a
// request closed: 503 when the plugin was unavailable or too slow, 502
// otherwise.
func (e *HookError) Status() int {
	switch e.Kind {
	case schema.HookErrorKind_timeout, schema.HookErrorKind_unavailable:
		return http.StatusServiceUnavailable
	}
	return http.StatusBadGateway
}

// ReadHookError copies a hook error out of its Cap'n Proto form.
func ReadHookError(s schema.HookError) HookError {
	var e errs
	return HookError{
		Plugin:  e.text(s.Plugin()),
		Hook:    e.text(s.Hook()),
		Kind:    s.Kind(),
		Message: e.text(s.Reason()),
	}
}

// WriteHookError fills s with h.
func WriteHookError(s schema.HookError, h *HookError) error {
	var e errs
	e.set(s.SetPlugin(h.Plugin))
	e.set(s.SetHook(h.Hook))
	s.SetKind(h.Kind)
	e.set(s.SetReason(h.Message))
	return e.err
}

// ReadVersions copies a version list.
func ReadVersions(l capnpUInt16List, err error) ([]uint16, error) {
	if err != nil {
		return nil, err
	}
	vs := make([]uint16, l.Len())
	for i := range vs {
		vs[i] = l.At(i)
	}
	return vs, nil
}

// capnpUInt16List is the part of capnp.UInt16List ReadVersions needs.
type capnpUInt16List interface {
	Len() int
	At(int) uint16
}

// WriteVersions stores vs in a list made by newList.
func WriteVersions[L interface{ Set(int, uint16) }](newList func(int32) (L, error), vs []uint16) error {
	l, err := newList(int32(len(vs)))
	if err != nil {
		return err
	}
	for i, v := range vs {
		l.Set(i, v)
	}
	return nil
}
