// Package wire holds the Go form of dimplugd's HTTP exchange (Request,
// Response and the mutations hooks make), converts it to and from the Cap'n
// Proto types in package schema, and sets up RPC connections. The plugin SDK,
// the host SDK and the daemon all use it, so that one request means the same
// thing on every side.
//
// It must not import the daemon, the sandbox or cobra.
package wire

import (
	"bytes"
	"net/http"
	"net/url"
	"slices"
	"time"
)

// Param is a parameter captured by a route template.
type Param struct {
	Name, Value string
}

// Request is one HTTP request as hooks see it.
type Request struct {
	Method   string // upper-case
	Route    string // the matched route template, e.g. "/api/v1/media/:id"
	Path     string // the concrete path
	RawQuery string // without "?"
	Header   http.Header
	Body     []byte
	Params   []Param // captured by Route

	UserID        int64 // meaningful when Authenticated
	Authenticated bool
	RemoteAddr    string
	RequestID     string
	// ReceivedAt is when the host received the request (zero if unknown).
	// Observers run concurrently and in no particular order; use it to
	// order what they see.
	ReceivedAt time.Time
}

// Param returns the value of the named route parameter, or "".
func (r *Request) Param(name string) string {
	for _, p := range r.Params {
		if p.Name == name {
			return p.Value
		}
	}
	return ""
}

// Query parses RawQuery. Malformed pairs are dropped.
func (r *Request) Query() url.Values {
	v, _ := url.ParseQuery(r.RawQuery)
	return v
}

// Clone returns a deep copy of r.
func (r *Request) Clone() *Request {
	c := *r
	c.Header = r.Header.Clone()
	c.Body = slices.Clone(r.Body)
	c.Params = slices.Clone(r.Params)
	return &c
}

// Response is one HTTP response as hooks see it.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// Clone returns a deep copy of r.
func (r *Response) Clone() *Response {
	c := *r
	c.Header = r.Header.Clone()
	c.Body = slices.Clone(r.Body)
	return &c
}

// RequestMutation is what a request-phase hook changed. Parts whose
// Replace flag is false are left alone.
type RequestMutation struct {
	ReplaceHeader bool
	Header        http.Header
	ReplaceQuery  bool
	RawQuery      string
	ReplaceBody   bool
	Body          []byte
}

// IsZero reports whether m changes nothing.
func (m *RequestMutation) IsZero() bool {
	return !m.ReplaceHeader && !m.ReplaceQuery && !m.ReplaceBody
}

// Apply makes m's changes to r.
func (m *RequestMutation) Apply(r *Request) {
	if m.ReplaceHeader {
		r.Header = m.Header.Clone()
		if r.Header == nil {
			r.Header = http.Header{}
		}
	}
	if m.ReplaceQuery {
		r.RawQuery = m.RawQuery
	}
	if m.ReplaceBody {
		r.Body = slices.Clone(m.Body)
	}
}

// adopt is Apply taking m's parts instead of copying them: m is not used
// again (RunPhase's answers, which it owns).
func (m *RequestMutation) adopt(r *Request) {
	if m.ReplaceHeader {
		r.Header = m.Header
		if r.Header == nil {
			r.Header = http.Header{}
		}
	}
	if m.ReplaceQuery {
		r.RawQuery = m.RawQuery
	}
	if m.ReplaceBody {
		r.Body = m.Body
	}
}

// DiffRequest returns the mutation that turns before into after.
func DiffRequest(before, after *Request) RequestMutation {
	var m RequestMutation
	if !HeadersEqual(before.Header, after.Header) {
		m.ReplaceHeader, m.Header = true, after.Header
	}
	if before.RawQuery != after.RawQuery {
		m.ReplaceQuery, m.RawQuery = true, after.RawQuery
	}
	if !bytes.Equal(before.Body, after.Body) {
		m.ReplaceBody, m.Body = true, after.Body
	}
	return m
}

// ResponseMutation is what a response-phase hook changed.
type ResponseMutation struct {
	Status        int // 0 keeps the status
	ReplaceHeader bool
	Header        http.Header
	ReplaceBody   bool
	Body          []byte
}

// IsZero reports whether m changes nothing.
func (m *ResponseMutation) IsZero() bool {
	return m.Status == 0 && !m.ReplaceHeader && !m.ReplaceBody
}

// Apply makes m's changes to r.
func (m *ResponseMutation) Apply(r *Response) {
	if m.Status != 0 {
		r.Status = m.Status
	}
	if m.ReplaceHeader {
		r.Header = m.Header.Clone()
		if r.Header == nil {
			r.Header = http.Header{}
		}
	}
	if m.ReplaceBody {
		r.Body = slices.Clone(m.Body)
	}
}

// adopt is Apply taking m's parts instead of copying them (see
// RequestMutation.adopt).
func (m *ResponseMutation) adopt(r *Response) {
	if m.Status != 0 {
		r.Status = m.Status
	}
	if m.ReplaceHeader {
		r.Header = m.Header
		if r.Header == nil {
			r.Header = http.Header{}
		}
	}
	if m.ReplaceBody {
		r.Body = m.Body
	}
}

// DiffResponse returns the mutation that turns before into after.
func DiffResponse(before, after *Response) ResponseMutation {
	var m ResponseMutation
	if before.Status != after.Status {
		m.Status = after.Status
	}
	if !HeadersEqual(before.Header, after.Header) {
		m.ReplaceHeader, m.Header = true, after.Header
	}
	if !bytes.Equal(before.Body, after.Body) {
		m.ReplaceBody, m.Body = true, after.Body
	}
	return m
}

// HeadersEqual reports whether a and b hold the same names and values in
// the same order per name. Empty value lists count as absent.
func HeadersEqual(a, b http.Header) bool {
	n := 0
	for k, va := range a {
		if len(va) == 0 {
			continue
		}
		n++
		if !slices.Equal(va, b[k]) {
			return false
		}
	}
	for _, vb := range b {
		if len(vb) > 0 {
			n--
		}
	}
	return n == 0
}

// ExchangeSize is roughly what a copy of an exchange holds (bodies,
// headers, path and query): what queued observe calls are bounded by.
func ExchangeSize(req *Request, resp *Response) int64 {
	n := int64(len(req.Body) + len(req.Path) + len(req.RawQuery) + 512)
	for k, vs := range req.Header {
		for _, v := range vs {
			n += int64(len(k) + len(v))
		}
	}
	if resp != nil {
		n += int64(len(resp.Body))
		for k, vs := range resp.Header {
			for _, v := range vs {
				n += int64(len(k) + len(v))
			}
		}
	}
	return n
}
