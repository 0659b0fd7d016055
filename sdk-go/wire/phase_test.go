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
			RequestMutation: RequestMutation{ReplaceHeader: true, Header: http.Header{"X-Orig": {"1"}, k: {v}}}}
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
			out := RunPhase(tt.phase, tt.hooks,
				func(h hook) PhaseHook { return PhaseHook{Name: h.name, FailClosed: h.failClosed} },
				func(h hook, r *Request, rs *Response) (HookAnswer, *HookError) {
					called = append(called, h.name)
					if r.Header.Get("X-Orig") != "1" {
						t.Errorf("hook %s got the request without its header", h.name)
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

// Each request hook sees the request as the hooks before it left it; the
// outcome is the difference from the start, not the last answer.
func TestRunPhaseHooksSeeEarlierMutations(t *testing.T) {
	req := &Request{Method: "GET", Path: "/x", RawQuery: "a=1", Header: http.Header{"X-Orig": {"1"}}}
	answers := []HookAnswer{
		{Kind: schema.HookResult_Which_mutateRequest, RequestMutation: RequestMutation{ReplaceQuery: true, RawQuery: "a=2"}},
		{Kind: schema.HookResult_Which_mutateRequest, RequestMutation: RequestMutation{ReplaceHeader: true, Header: http.Header{"X-Orig": {"1"}, "X-B": {"b"}}}},
		{Kind: schema.HookResult_Which_continue},
	}
	var saw []string
	out := RunPhase(schema.Phase_request, []int{0, 1, 2},
		func(i int) PhaseHook { return PhaseHook{Name: string(rune('a' + i))} },
		func(i int, r *Request, _ *Response) (HookAnswer, *HookError) {
			saw = append(saw, r.RawQuery+" "+r.Header.Get("X-B"))
			return answers[i], nil
		}, req, nil)
	if got, want := strings.Join(saw, ","), "a=1 ,a=2 ,a=2 b"; got != want {
		t.Errorf("hooks saw %q, want %q", got, want)
	}
	if out.Kind != schema.DispatchResult_outcome_Which_mutateRequest || !out.RequestMutation.ReplaceQuery ||
		out.RequestMutation.RawQuery != "a=2" || out.RequestMutation.Header.Get("X-B") != "b" || strings.Join(out.Applied, " ") != "a b" {
		t.Errorf("outcome %+v", out)
	}
	if req.RawQuery != "a=1" || req.Header.Get("X-B") != "" {
		t.Errorf("the caller's request changed: %+v", req)
	}
	// A hook that puts back what an earlier one changed: no mutation.
	answers[1] = HookAnswer{Kind: schema.HookResult_Which_mutateRequest, RequestMutation: RequestMutation{ReplaceQuery: true, RawQuery: "a=1"}}
	out = RunPhase(schema.Phase_request, []int{0, 1},
		func(i int) PhaseHook { return PhaseHook{Name: string(rune('a' + i))} },
		func(i int, r *Request, _ *Response) (HookAnswer, *HookError) { return answers[i], nil }, req, nil)
	if out.Kind != schema.DispatchResult_outcome_Which_continue {
		t.Errorf("a change undone: %+v", out)
	}
}
