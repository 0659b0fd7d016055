// Package hookwire is the benchmark's hook workload and the gRPC service
// that the hashicorp/go-plugin baseline serves it over.
//
// The workload is the one in shared/reference/capnp-probe.md: a request with
// a method, a path, 8 headers and a 128 B body, and a response with a status,
// 2 headers and a 64 B body. The hook (a response-phase hook, like the
// media-badge example without its key-value store) adds one header, and the
// answer is the change it made: the status, the replaced header set and the
// body when it changed, which is what dimplugd's SDK sends back too.
//
// The gRPC messages are written in protobuf's wire format by hand with
// protowire, so no .proto file or generated code is needed. The schema, as a
// .proto file would state it:
//
//	message Header   { string name = 1; string value = 2; }  // one per value, like dimplugd's
//	message Param    { string name = 1; string value = 2; }
//	message Request  { string method = 1; string route = 2; string path = 3; string raw_query = 4;
//	                   repeated Header headers = 5; bytes body = 6; repeated Param params = 7; }
//	message Response { int32 status = 1; repeated Header headers = 2; bytes body = 3; }
//	message HookCall { string hook = 1; Request request = 2; Response response = 3; }
//	message ResponseMutation { int32 status = 1; bool replace_header = 2;
//	                   repeated Header headers = 3; bool replace_body = 4; bytes body = 5; }
//	service Hooks { rpc HookResponse(HookCall) returns (ResponseMutation); }
//
// The codec is registered with gRPC under the content subtype "hookwire";
// clients select it per call with grpc.CallContentSubtype. Everything else
// about the connection is go-plugin's default.
package hookwire

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/protobuf/encoding/protowire"
)

// Param is a route parameter.
type Param struct{ Name, Value string }

// Request is the hooked HTTP request.
type Request struct {
	Method, Route, Path, RawQuery string
	Header                        http.Header
	Body                          []byte
	Params                        []Param
}

// Response is the HTTP response a response hook sees.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// Call is one hook invocation.
type Call struct {
	Hook     string
	Request  Request
	Response Response
}

// Mutation is what a response hook changed.
type Mutation struct {
	Status        int // 0 keeps the status
	ReplaceHeader bool
	Header        http.Header
	ReplaceBody   bool
	Body          []byte
}

// Workload returns the benchmark's hook call: GET /api/v1/media/42 with 8
// headers and a 128 B body, and a 200 response with 2 headers and a 64 B
// body.
func Workload() *Call {
	reqBody := []byte(`{"client":"dim-web","profile":"default","quality":"1080p","subtitles":["en","de"],"position_ms":1234567,"device":"living-room"}`)
	respBody := []byte(`{"id":42,"name":"Dune","year":2021,"duration":9360,"hdr":true}`)
	reqBody = fit(reqBody, 128)
	respBody = fit(respBody, 64)
	return &Call{
		Hook: "badge",
		Request: Request{
			Method: "GET",
			Route:  "/api/v1/media/:id",
			Path:   "/api/v1/media/42",
			Header: http.Header{
				"Accept":          {"application/json"},
				"Accept-Encoding": {"gzip, deflate, br"},
				"Accept-Language": {"en-US,en;q=0.9"},
				"Authorization":   {"Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.c2lnbmF0dXJl"},
				"Content-Type":    {"application/json"},
				"User-Agent":      {"Mozilla/5.0 (X11; Linux x86_64) dim-web/0.4"},
				"X-Request-Id":    {"3f1c2b7a-9d4e-4a61-b0c2-5e8f7a6d1c09"},
				"X-Forwarded-For": {"192.0.2.10"},
			},
			Body:   reqBody,
			Params: []Param{{"id", "42"}},
		},
		Response: Response{
			Status: 200,
			Header: http.Header{
				"Content-Type":  {"application/json"},
				"Cache-Control": {"no-store"},
			},
			Body: respBody,
		},
	}
}

// fit pads or cuts b to exactly n bytes.
func fit(b []byte, n int) []byte {
	if len(b) >= n {
		return b[:n]
	}
	return append(b, bytes.Repeat([]byte(" "), n-len(b))...)
}

// BadgeHeader is the header the hook adds, with BadgeValue.
const (
	BadgeHeader = "X-Dim-Badge"
	BadgeValue  = "plugin-approved"
)

// Badge runs the hook the way dimplugd's plugin SDK runs a response hook:
// it lets the handler change a copy of the response and returns the
// difference.
func Badge(c *Call) *Mutation {
	after := Response{Status: c.Response.Status, Header: c.Response.Header.Clone(), Body: slices.Clone(c.Response.Body)}
	if after.Status == 200 {
		after.Header.Set(BadgeHeader, BadgeValue)
	}
	m := &Mutation{}
	if after.Status != c.Response.Status {
		m.Status = after.Status
	}
	if !headersEqual(c.Response.Header, after.Header) {
		m.ReplaceHeader, m.Header = true, after.Header
	}
	if !bytes.Equal(c.Response.Body, after.Body) {
		m.ReplaceBody, m.Body = true, after.Body
	}
	return m
}

func headersEqual(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, va := range a {
		if !slices.Equal(va, b[k]) {
			return false
		}
	}
	return true
}

// CodecName is the gRPC content subtype of Codec.
const CodecName = "hookwire"

func init() { encoding.RegisterCodec(Codec{}) }

// Codec marshals *Call and *Mutation in protobuf's wire format.
type Codec struct{}

// Name implements encoding.Codec.
func (Codec) Name() string { return CodecName }

// Marshal implements encoding.Codec.
func (Codec) Marshal(v any) ([]byte, error) {
	switch m := v.(type) {
	case *Call:
		return AppendCall(nil, m), nil
	case *Mutation:
		return AppendMutation(nil, m), nil
	}
	return nil, fmt.Errorf("hookwire: cannot marshal %T", v)
}

// Unmarshal implements encoding.Codec.
func (Codec) Unmarshal(data []byte, v any) error {
	switch m := v.(type) {
	case *Call:
		return decodeCall(data, m)
	case *Mutation:
		return decodeMutation(data, m)
	}
	return fmt.Errorf("hookwire: cannot unmarshal into %T", v)
}

// --- encoding ---

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendBytes(b []byte, num protowire.Number, v []byte) []byte {
	if len(v) == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

func appendVarint(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

// pairSize is the encoded size of a {name, value} message.
func pairSize(name, value string) int {
	n := 0
	if name != "" {
		n += protowire.SizeTag(1) + protowire.SizeBytes(len(name))
	}
	if value != "" {
		n += protowire.SizeTag(2) + protowire.SizeBytes(len(value))
	}
	return n
}

func appendPair(b []byte, num protowire.Number, name, value string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(pairSize(name, value)))
	b = appendString(b, 1, name)
	return appendString(b, 2, value)
}

func headersSize(num protowire.Number, h http.Header) int {
	n := 0
	for k, vs := range h {
		for _, v := range vs {
			n += protowire.SizeTag(num) + protowire.SizeBytes(pairSize(k, v))
		}
	}
	return n
}

func appendHeaders(b []byte, num protowire.Number, h http.Header) []byte {
	for k, vs := range h {
		for _, v := range vs {
			b = appendPair(b, num, k, v)
		}
	}
	return b
}

func stringSize(num protowire.Number, s string) int {
	if s == "" {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeBytes(len(s))
}

func bytesSize(num protowire.Number, v []byte) int {
	if len(v) == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeBytes(len(v))
}

func varintSize(num protowire.Number, v uint64) int {
	if v == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeVarint(v)
}

func requestSize(r *Request) int {
	n := stringSize(1, r.Method) + stringSize(2, r.Route) + stringSize(3, r.Path) + stringSize(4, r.RawQuery) +
		headersSize(5, r.Header) + bytesSize(6, r.Body)
	for _, p := range r.Params {
		n += protowire.SizeTag(7) + protowire.SizeBytes(pairSize(p.Name, p.Value))
	}
	return n
}

func responseSize(r *Response) int {
	return varintSize(1, uint64(r.Status)) + headersSize(2, r.Header) + bytesSize(3, r.Body)
}

// AppendCall appends c's encoding to b.
func AppendCall(b []byte, c *Call) []byte {
	rq, rs := requestSize(&c.Request), responseSize(&c.Response)
	if b == nil {
		b = make([]byte, 0, stringSize(1, c.Hook)+protowire.SizeTag(2)+protowire.SizeBytes(rq)+protowire.SizeTag(3)+protowire.SizeBytes(rs))
	}
	b = appendString(b, 1, c.Hook)

	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(rq))
	r := &c.Request
	b = appendString(b, 1, r.Method)
	b = appendString(b, 2, r.Route)
	b = appendString(b, 3, r.Path)
	b = appendString(b, 4, r.RawQuery)
	b = appendHeaders(b, 5, r.Header)
	b = appendBytes(b, 6, r.Body)
	for _, p := range r.Params {
		b = appendPair(b, 7, p.Name, p.Value)
	}

	b = protowire.AppendTag(b, 3, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(rs))
	b = appendVarint(b, 1, uint64(c.Response.Status))
	b = appendHeaders(b, 2, c.Response.Header)
	return appendBytes(b, 3, c.Response.Body)
}

// AppendMutation appends m's encoding to b.
func AppendMutation(b []byte, m *Mutation) []byte {
	b = appendVarint(b, 1, uint64(m.Status))
	if m.ReplaceHeader {
		b = appendVarint(b, 2, 1)
	}
	b = appendHeaders(b, 3, m.Header)
	if m.ReplaceBody {
		b = appendVarint(b, 4, 1)
	}
	return appendBytes(b, 5, m.Body)
}

// --- decoding ---

// fields calls f for every field of the message in b.
func fields(b []byte, f func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		var v []byte
		var x uint64
		switch typ {
		case protowire.BytesType:
			v, n = protowire.ConsumeBytes(b)
		case protowire.VarintType:
			x, n = protowire.ConsumeVarint(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if err := f(num, typ, v, x); err != nil {
			return err
		}
	}
	return nil
}

func decodePair(b []byte) (name, value string, err error) {
	err = fields(b, func(num protowire.Number, _ protowire.Type, v []byte, _ uint64) error {
		switch num {
		case 1:
			name = string(v)
		case 2:
			value = string(v)
		}
		return nil
	})
	return name, value, err
}

func addHeader(h *http.Header, b []byte) error {
	k, v, err := decodePair(b)
	if err != nil {
		return err
	}
	if *h == nil {
		*h = make(http.Header, 8)
	}
	k = http.CanonicalHeaderKey(k)
	(*h)[k] = append((*h)[k], v)
	return nil
}

func decodeRequest(b []byte, r *Request) error {
	return fields(b, func(num protowire.Number, _ protowire.Type, v []byte, _ uint64) error {
		switch num {
		case 1:
			r.Method = string(v)
		case 2:
			r.Route = string(v)
		case 3:
			r.Path = string(v)
		case 4:
			r.RawQuery = string(v)
		case 5:
			return addHeader(&r.Header, v)
		case 6:
			r.Body = slices.Clone(v)
		case 7:
			k, val, err := decodePair(v)
			if err != nil {
				return err
			}
			r.Params = append(r.Params, Param{k, val})
		}
		return nil
	})
}

func decodeResponse(b []byte, r *Response) error {
	return fields(b, func(num protowire.Number, _ protowire.Type, v []byte, x uint64) error {
		switch num {
		case 1:
			r.Status = int(x)
		case 2:
			return addHeader(&r.Header, v)
		case 3:
			r.Body = slices.Clone(v)
		}
		return nil
	})
}

func decodeCall(b []byte, c *Call) error {
	return fields(b, func(num protowire.Number, _ protowire.Type, v []byte, _ uint64) error {
		switch num {
		case 1:
			c.Hook = string(v)
		case 2:
			return decodeRequest(v, &c.Request)
		case 3:
			return decodeResponse(v, &c.Response)
		}
		return nil
	})
}

func decodeMutation(b []byte, m *Mutation) error {
	return fields(b, func(num protowire.Number, _ protowire.Type, v []byte, x uint64) error {
		switch num {
		case 1:
			m.Status = int(x)
		case 2:
			m.ReplaceHeader = x != 0
		case 3:
			return addHeader(&m.Header, v)
		case 4:
			m.ReplaceBody = x != 0
		case 5:
			m.Body = slices.Clone(v)
		}
		return nil
	})
}

// --- the gRPC service and the go-plugin plugin ---

// Hooks is the service a go-plugin plugin implements.
type Hooks interface {
	HookResponse(ctx context.Context, c *Call) (*Mutation, error)
}

const methodHookResponse = "/hookwire.Hooks/HookResponse"

// serviceDesc is what protoc-gen-go-grpc would generate for service Hooks.
var serviceDesc = grpc.ServiceDesc{
	ServiceName: "hookwire.Hooks",
	HandlerType: (*Hooks)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "HookResponse",
		Handler: func(srv any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
			in := new(Call)
			if err := dec(in); err != nil {
				return nil, err
			}
			if icpt == nil {
				return srv.(Hooks).HookResponse(ctx, in)
			}
			info := &grpc.UnaryServerInfo{Server: srv, FullMethod: methodHookResponse}
			return icpt(ctx, in, info, func(ctx context.Context, req any) (any, error) {
				return srv.(Hooks).HookResponse(ctx, req.(*Call))
			})
		},
	}},
	Metadata: "hookwire",
}

// Plugin is the go-plugin plugin serving Hooks over gRPC. The plugin
// process sets Impl; the host leaves it nil.
type Plugin struct {
	plugin.NetRPCUnsupportedPlugin
	Impl Hooks
}

// GRPCServer implements plugin.GRPCPlugin.
func (p *Plugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	s.RegisterService(&serviceDesc, p.Impl)
	return nil
}

// GRPCClient implements plugin.GRPCPlugin.
func (p *Plugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return &client{c: c}, nil
}

type client struct{ c *grpc.ClientConn }

func (c *client) HookResponse(ctx context.Context, in *Call) (*Mutation, error) {
	out := new(Mutation)
	if err := c.c.Invoke(ctx, methodHookResponse, in, out, grpc.CallContentSubtype(CodecName)); err != nil {
		return nil, err
	}
	return out, nil
}

// Handshake is the go-plugin handshake of the benchmark's plugin.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "DIMPLUGD_BENCH_PLUGIN",
	MagicCookieValue: "hookwire",
}

// PluginName is the name the plugin is dispensed under.
const PluginName = "hooks"

// Check reports whether m is the answer Badge gives to the workload.
func Check(m *Mutation) error {
	if m == nil || !m.ReplaceHeader || m.Header.Get(BadgeHeader) != BadgeValue || len(m.Header) != 3 || m.ReplaceBody {
		return fmt.Errorf("unexpected hook answer %+v", m)
	}
	if !strings.HasPrefix(m.Header.Get("Content-Type"), "application/json") {
		return fmt.Errorf("hook answer lost the response headers: %v", m.Header)
	}
	return nil
}
