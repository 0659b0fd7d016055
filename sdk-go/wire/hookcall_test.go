package wire

import (
	"errors"
	"net/http"
	"reflect"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"

	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

func newSeg(t *testing.T) *capnp.Segment {
	t.Helper()
	msg, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(msg.Release)
	return seg
}

func TestHookCallRoundTrip(t *testing.T) {
	req := HookRequest(&Request{Method: "GET", Path: "/api/v1/media/42", RawQuery: "a=1",
		Header: http.Header{"Accept": {"application/json"}}, Body: []byte("q")},
		"/api/v1/media/:id", []manifest.Param{{Name: "id", Value: "42"}})
	resp := &Response{Status: 200, Header: http.Header{"Content-Type": {"text/plain"}}, Body: []byte("hi")}
	tests := []struct {
		name     string
		in       HookCall
		wantResp *Response // what ReadHookCall gives back
	}{
		{"request", HookCall{Hook: "tag", Phase: PhaseRequest, Timeout: 250 * time.Millisecond, Request: req}, nil},
		{"route", HookCall{Hook: "own", Phase: PhaseRoute, Timeout: time.Second, Request: req}, nil},
		{"response", HookCall{Hook: "badge", Phase: PhaseResponse, Timeout: time.Second, Request: req, Response: resp}, resp},
		{"observe", HookCall{Hook: "log", Phase: PhaseObserve, Timeout: time.Second, Request: req, Response: resp}, resp},
		{"no timeout", HookCall{Hook: "tag", Phase: PhaseRequest, Request: req}, nil},
		// A response sent in a phase that carries none is not read.
		{"request phase ignores a response", HookCall{Hook: "tag", Phase: PhaseRequest, Request: req, Response: resp}, nil},
		// Response and observe hooks always get a response, if empty.
		{"response phase without one", HookCall{Hook: "badge", Phase: PhaseResponse, Request: req}, &Response{Header: http.Header{}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := schema.NewRootHookCall(newSeg(t))
			if err != nil {
				t.Fatal(err)
			}
			if err := WriteHookCall(s, &tt.in); err != nil {
				t.Fatal(err)
			}
			got, err := ReadHookCall(s)
			if err != nil {
				t.Fatal(err)
			}
			want := tt.in
			want.Response = tt.wantResp
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("read back:\n%+v\nwant\n%+v", got, want)
			}
		})
	}
}

func TestWriteHookCallWithoutRequest(t *testing.T) {
	s, err := schema.NewRootHookCall(newSeg(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteHookCall(s, &HookCall{Hook: "tag", Phase: PhaseRequest}); err == nil {
		t.Fatal("a hook call without a request was written")
	}
}

func TestHookRequestLeavesTheOriginal(t *testing.T) {
	req := &Request{Method: "GET", Path: "/m/1", Route: "/x", Params: []Param{{"a", "b"}}}
	got := HookRequest(req, "/m/:id", []manifest.Param{{Name: "id", Value: "1"}})
	if got.Route != "/m/:id" || !reflect.DeepEqual(got.Params, []Param{{"id", "1"}}) || got.Path != "/m/1" {
		t.Fatalf("HookRequest = %+v", got)
	}
	if req.Route != "/x" || !reflect.DeepEqual(req.Params, []Param{{"a", "b"}}) {
		t.Fatalf("the original changed: %+v", req)
	}
}

// The phase policy, every phase by every answer, with the messages users
// see after the plugin and hook's names.
func TestPhasePolicy(t *testing.T) {
	const (
		reqMut   = "answered a request hook with a response mutation"
		respOnly = "answered a response hook with something other than a response mutation"
		owner    = "owns the route but answered without a response"
	)
	tests := []struct {
		phase  Phase
		kind   schema.HookResult_Which
		reject string // "" when allowed
	}{
		{PhaseRequest, schema.HookResult_Which_continue, ""},
		{PhaseRequest, schema.HookResult_Which_mutateRequest, ""},
		{PhaseRequest, schema.HookResult_Which_respond, ""},
		{PhaseRequest, schema.HookResult_Which_mutateResponse, reqMut},

		{PhaseResponse, schema.HookResult_Which_continue, ""},
		{PhaseResponse, schema.HookResult_Which_mutateRequest, respOnly},
		{PhaseResponse, schema.HookResult_Which_respond, respOnly},
		{PhaseResponse, schema.HookResult_Which_mutateResponse, ""},

		{PhaseRoute, schema.HookResult_Which_continue, owner},
		{PhaseRoute, schema.HookResult_Which_mutateRequest, owner},
		{PhaseRoute, schema.HookResult_Which_respond, ""},
		{PhaseRoute, schema.HookResult_Which_mutateResponse, owner},

		{PhaseObserve, schema.HookResult_Which_continue, ""},
		{PhaseObserve, schema.HookResult_Which_mutateRequest, ""},
		{PhaseObserve, schema.HookResult_Which_respond, ""},
		{PhaseObserve, schema.HookResult_Which_mutateResponse, ""},

		{Phase(9), schema.HookResult_Which_continue, "was called in an unknown phase 9"},
	}
	for _, tt := range tests {
		t.Run(tt.phase.String()+"/"+tt.kind.String(), func(t *testing.T) {
			check := func(what string, err error) {
				t.Helper()
				if tt.reject == "" {
					if err != nil {
						t.Fatalf("%s: %v, want allowed", what, err)
					}
					return
				}
				var pe *PhaseError
				if !errors.As(err, &pe) || pe.Message != tt.reject || pe.Phase != tt.phase || pe.Kind != tt.kind {
					t.Fatalf("%s: %#v, want a PhaseError %q", what, err, tt.reject)
				}
				he := AnswerError("p", "h", "on GET /x", err)
				if he.Kind != schema.HookErrorKind_rejected || he.Message != tt.reject {
					t.Fatalf("%s: AnswerError = %+v", what, he)
				}
			}
			check("CheckAnswer", CheckAnswer(tt.phase, tt.kind))

			// The same rule on both sides of the wire.
			a := sampleAnswer(tt.kind)
			hr, err := schema.NewRootHookResult(newSeg(t))
			if err != nil {
				t.Fatal(err)
			}
			werr := WriteHookResult(tt.phase, hr, &a)
			check("WriteHookResult", werr)
			if werr != nil {
				// Write it anyway, as a plugin without the SDK could.
				if err := WriteHookResult(PhaseObserve, hr, &a); err != nil {
					t.Fatal(err)
				}
			}
			got, err := ReadHookResult(tt.phase, hr)
			check("ReadHookResult", err)
			if err == nil && !reflect.DeepEqual(got, a) {
				t.Fatalf("read back %+v, want %+v", got, a)
			}
		})
	}
}

func sampleAnswer(kind schema.HookResult_Which) HookAnswer {
	a := HookAnswer{Kind: kind}
	switch kind {
	case schema.HookResult_Which_mutateRequest:
		a.RequestMutation = RequestMutation{ReplaceQuery: true, RawQuery: "x=1", ReplaceHeader: true, Header: http.Header{"X-A": {"1"}}}
	case schema.HookResult_Which_respond:
		a.Response = &Response{Status: 404, Header: http.Header{}, Body: []byte("no")}
	case schema.HookResult_Which_mutateResponse:
		a.ResponseMutation = ResponseMutation{Status: 201, ReplaceBody: true, Body: []byte("b")}
	}
	return a
}

// A mutation that changes nothing is written, and read, as continue.
func TestEmptyMutationsAreContinue(t *testing.T) {
	for _, tt := range []struct {
		phase Phase
		a     HookAnswer
	}{
		{PhaseRequest, HookAnswer{Kind: schema.HookResult_Which_mutateRequest}},
		{PhaseResponse, HookAnswer{Kind: schema.HookResult_Which_mutateResponse}},
	} {
		hr, err := schema.NewRootHookResult(newSeg(t))
		if err != nil {
			t.Fatal(err)
		}
		if err := WriteHookResult(tt.phase, hr, &tt.a); err != nil {
			t.Fatal(err)
		}
		if hr.Which() != schema.HookResult_Which_continue {
			t.Errorf("%s: an empty %s was written as %s", tt.phase, tt.a.Kind, hr.Which())
		}
		// Written by hand, as another SDK might.
		switch tt.a.Kind {
		case schema.HookResult_Which_mutateRequest:
			ms, _ := hr.NewMutateRequest()
			_ = WriteRequestMutation(ms, &RequestMutation{})
		case schema.HookResult_Which_mutateResponse:
			ms, _ := hr.NewMutateResponse()
			_ = WriteResponseMutation(ms, &ResponseMutation{})
		}
		got, err := ReadHookResult(tt.phase, hr)
		if err != nil || got.Kind != schema.HookResult_Which_continue {
			t.Errorf("%s: an empty %s read as %+v, %v", tt.phase, tt.a.Kind, got, err)
		}
	}
}

// An answer that cannot be read fails as unreadable, not as rejected.
func TestUnreadableHookResult(t *testing.T) {
	tests := []struct {
		name  string
		phase Phase
		make  func(schema.HookResult)
		want  string
	}{
		{"unknown answer", PhaseRequest, func(hr schema.HookResult) {
			capnp.Struct(hr).SetUint16(0, 7) // the union's discriminant
		}, "sent an unreadable result on GET /x: unknown answer 7 (is the plugin newer than this side?)"},
		{"too many headers", PhaseRoute, func(hr schema.HookResult) {
			rs, _ := hr.NewRespond()
			_, _ = rs.NewHeaders(MaxHeaders + 1)
		}, "sent an unreadable result on GET /x: read response: 8193 headers: more than the 8192 allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hr, err := schema.NewRootHookResult(newSeg(t))
			if err != nil {
				t.Fatal(err)
			}
			tt.make(hr)
			_, err = ReadHookResult(tt.phase, hr)
			var pe *PhaseError
			if err == nil || errors.As(err, &pe) {
				t.Fatalf("ReadHookResult: %v, want an unreadable-result error", err)
			}
			he := AnswerError("p", "h", "on GET /x", err)
			if he.Kind != schema.HookErrorKind_failed || he.Message != tt.want {
				t.Fatalf("AnswerError = %+v, want failed %q", he, tt.want)
			}
		})
	}
}

func TestWriteHookResultRespondWithoutResponse(t *testing.T) {
	hr, err := schema.NewRootHookResult(newSeg(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteHookResult(PhaseRoute, hr, &HookAnswer{Kind: schema.HookResult_Which_respond}); err == nil {
		t.Fatal("a respond answer without a response was written")
	}
}

func TestLaneHookResult(t *testing.T) {
	msg, f, err := NewFrame()
	if err != nil {
		t.Fatal(err)
	}
	defer msg.Release()
	f.SetCancel()
	if _, err := LaneHookResult(f); err == nil || err.Error() != "unexpected cancel reply on the hook lane" {
		t.Fatalf("a cancel frame: %v", err)
	}
	hr, err := f.NewHookResult()
	if err != nil {
		t.Fatal(err)
	}
	hr.SetContinue()
	if got, err := LaneHookResult(f); err != nil || got.Which() != schema.HookResult_Which_continue {
		t.Fatalf("a hook result frame: %v, %v", got.Which(), err)
	}
}
