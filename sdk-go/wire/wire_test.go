package wire

import (
	"net/http"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"

	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

func TestDiffAndApplyRequest(t *testing.T) {
	before := &Request{Method: "GET", Path: "/a", RawQuery: "x=1", Header: http.Header{"A": {"1"}}, Body: []byte("b")}
	tests := []struct {
		name   string
		change func(*Request)
		zero   bool
	}{
		{"nothing", func(*Request) {}, true},
		{"header added", func(r *Request) { r.Header.Add("B", "2") }, false},
		{"header value appended", func(r *Request) { r.Header.Add("A", "3") }, false},
		{"header removed", func(r *Request) { r.Header.Del("A") }, false},
		{"empty header value list is absent", func(r *Request) { r.Header["C"] = nil }, true},
		{"query", func(r *Request) { r.RawQuery = "y=2" }, false},
		{"body", func(r *Request) { r.Body = nil }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			after := before.Clone()
			tt.change(after)
			m := DiffRequest(before, after)
			if m.IsZero() != tt.zero {
				t.Fatalf("IsZero = %v, want %v (%+v)", m.IsZero(), tt.zero, m)
			}
			got := before.Clone()
			m.Apply(got)
			if !HeadersEqual(got.Header, after.Header) || got.RawQuery != after.RawQuery || string(got.Body) != string(after.Body) {
				t.Fatalf("apply(diff) = %+v, want %+v", got, after)
			}
		})
	}
}

func TestDiffAndApplyResponse(t *testing.T) {
	before := &Response{Status: 200, Header: http.Header{"A": {"1"}}, Body: []byte("b")}
	after := before.Clone()
	after.Status = 201
	after.Header.Set("A", "2")
	after.Body = []byte("c")
	m := DiffResponse(before, after)
	got := before.Clone()
	m.Apply(got)
	if got.Status != 201 || got.Header.Get("A") != "2" || string(got.Body) != "c" {
		t.Fatalf("apply(diff) = %+v", got)
	}
	if m := DiffResponse(before, before.Clone()); !m.IsZero() {
		t.Fatalf("diff of equal responses = %+v", m)
	}
}

// TestRoundTrip writes every field through Cap'n Proto and reads it back.
func TestRoundTrip(t *testing.T) {
	req := &Request{
		Method: "POST", Route: "/api/v1/media/:id/progress", Path: "/api/v1/media/7/progress", RawQuery: "offset=15",
		Header: http.Header{"Authorization": {"t"}, "X-Multi": {"a", "b"}}, Body: []byte{0, 1, 2},
		Params: []Param{{"id", "7"}}, UserID: 3, Authenticated: true, RemoteAddr: "127.0.0.1:1", RequestID: "r1", ReceivedAt: time.Unix(0, 1234567),
	}
	_, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	if err != nil {
		t.Fatal(err)
	}
	s, err := schema.NewRootHttpRequest(seg)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteRequest(s, req); err != nil {
		t.Fatal(err)
	}
	got, err := ReadRequest(s)
	if err != nil {
		t.Fatal(err)
	}
	if got.Method != req.Method || got.Route != req.Route || got.Path != req.Path || got.RawQuery != req.RawQuery ||
		!HeadersEqual(got.Header, req.Header) || string(got.Body) != string(req.Body) || got.Param("id") != "7" ||
		got.UserID != 3 || !got.Authenticated || got.RemoteAddr != req.RemoteAddr || got.RequestID != "r1" || !got.ReceivedAt.Equal(req.ReceivedAt) {
		t.Fatalf("round trip: got %+v, want %+v", got, req)
	}

	m := RequestMutation{ReplaceHeader: true, Header: http.Header{"X": {"1"}}, ReplaceBody: true}
	ms, err := schema.NewRequestMutation(seg)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteRequestMutation(ms, &m); err != nil {
		t.Fatal(err)
	}
	gm, err := ReadRequestMutation(ms)
	if err != nil {
		t.Fatal(err)
	}
	if !gm.ReplaceHeader || gm.Header.Get("X") != "1" || !gm.ReplaceBody || len(gm.Body) != 0 || gm.ReplaceQuery {
		t.Fatalf("mutation round trip: %+v", gm)
	}
}

func TestHookErrorStatus(t *testing.T) {
	for kind, want := range map[schema.HookErrorKind]int{
		schema.HookErrorKind_timeout:     503,
		schema.HookErrorKind_unavailable: 503,
		schema.HookErrorKind_failed:      502,
		schema.HookErrorKind_rejected:    502,
	} {
		if got := (&HookError{Kind: kind}).Status(); got != want {
			t.Errorf("%s: status %d, want %d", kind, got, want)
		}
	}
}
