package wire

import (
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

func TestSortHooks(t *testing.T) {
	keys := []HookKey{{20, "b", "x"}, {10, "z", "y"}, {20, "a", "y"}, {20, "a", "x"}, {-5, "q", "q"}}
	names := func(ks []HookKey) string {
		var s []string
		for _, k := range ks {
			s = append(s, k.Plugin+"/"+k.Hook)
		}
		return strings.Join(s, " ")
	}
	req := slices.Clone(keys)
	SortHooks(schema.Phase_request, req, func(k HookKey) HookKey { return k })
	if got, want := names(req), "q/q z/y a/x a/y b/x"; got != want {
		t.Errorf("request order %q, want %q", got, want)
	}
	resp := slices.Clone(keys)
	SortHooks(schema.Phase_response, resp, func(k HookKey) HookKey { return k })
	if got, want := names(resp), "b/x a/y a/x z/y q/q"; got != want {
		t.Errorf("response order %q, want %q", got, want)
	}
}

// TestRunPhase: the phase policy every dispatcher applies, on scripted
// hooks.
func TestRunPhase(t *testing.T) {
	type hook struct {
		name       string
		failClosed bool
		answer     HookAnswer
		err        *HookError
	}
	addHeader := func(k, v string) HookAnswer {
		return HookAnswer{Kind: schema.HookResult_Which_mutateRequest,
			RequestMutation: RequestMutation{ReplaceHeader: true, Header: http.Header{k: {v}}}}
	}
	respond := HookAnswer{Kind: schema.HookResult_Which_respond, Response: &Response{Status: 403}}
	cont := HookAnswer{Kind: schema.HookResult_Which_continue}
	failed := &HookError{Kind: schema.HookErrorKind_failed, Message: "boom"}
	tests := []struct {
		name    string
		phase   Phase
		hooks   []hook
		kind    schema.DispatchResult_outcome_Which
		called  string // hooks called, in order
		applied string
		skipped int
	}{
		{"no hooks", schema.Phase_request, nil, schema.DispatchResult_outcome_Which_continue, "", "", 0},
		{"continue", schema.Phase_request, []hook{{name: "a", answer: cont}, {name: "b", answer: cont}},
			schema.DispatchResult_outcome_Which_continue, "a b", "", 0},
		{"mutations combine", schema.Phase_request, []hook{{name: "a", answer: addHeader("X-A", "1")}, {name: "b", answer: cont}},
			schema.DispatchResult_outcome_Which_mutateRequest, "a b", "a", 0},
		{"respond ends the phase", schema.Phase_request, []hook{{name: "a", answer: addHeader("X-A", "1")}, {name: "b", answer: respond}, {name: "c", answer: cont}},
			schema.DispatchResult_outcome_Which_respond, "a b", "a b", 0},
		{"fail-open is skipped", schema.Phase_request, []hook{{name: "a", err: failed}, {name: "b", answer: addHeader("X-B", "1")}},
			schema.DispatchResult_outcome_Which_mutateRequest, "a b", "b", 1},
		{"fail-closed ends the phase", schema.Phase_request, []hook{{name: "a", err: failed}, {name: "b", failClosed: true, err: failed}, {name: "c", answer: cont}},
			schema.DispatchResult_outcome_Which_failClosed, "a b", "", 1},
		{"a route owner's failure fails the request", schema.Phase_route, []hook{{name: "a", err: failed}, {name: "b", answer: respond}},
			schema.DispatchResult_outcome_Which_failClosed, "a", "", 0},
		{"the route's owner alone answers", schema.Phase_route, []hook{{name: "a", answer: respond}, {name: "b", answer: respond}},
			schema.DispatchResult_outcome_Which_respond, "a", "a", 0},
		{"response mutations combine", schema.Phase_response, []hook{
			{name: "a", answer: HookAnswer{Kind: schema.HookResult_Which_mutateResponse, ResponseMutation: ResponseMutation{Status: 201}}},
			{name: "b", answer: cont}},
			schema.DispatchResult_outcome_Which_mutateResponse, "a b", "a", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := &Request{Method: "GET", Path: "/x", Header: http.Header{"X-Orig": {"1"}}}
			var resp *Response
			if tt.phase == schema.Phase_response {
				resp = &Response{Status: 200, Header: http.Header{}}
			}
			var called []string
			out := RunPhase(tt.phase, slices.Values(tt.hooks),
				func(h hook) PhaseHook { return PhaseHook{Name: h.name, FailClosed: h.failClosed} },
				func(h hook, r *Request, rs *Response) (HookAnswer, *HookError) {
					called = append(called, h.name)
					if tt.phase == schema.Phase_request && r == req {
						t.Error("a request hook got the caller's request, not the phase's copy")
					}
					return h.answer, h.err
				}, req, resp)
			if out.Kind != tt.kind || strings.Join(called, " ") != tt.called ||
				strings.Join(out.Applied, " ") != tt.applied || len(out.Skipped) != tt.skipped {
				t.Errorf("kind %v called %q applied %q skipped %d; want %v %q %q %d",
					out.Kind, called, out.Applied, len(out.Skipped), tt.kind, tt.called, tt.applied, tt.skipped)
			}
			if req.Header.Get("X-A") != "" || (resp != nil && resp.Status != 200) {
				t.Error("RunPhase changed the caller's request or response")
			}
		})
	}
}
