package wire

import (
	"cmp"
	"slices"

	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// Running a phase.
//
// Whoever runs the hooks of a phase — the daemon for a host's Dispatch,
// a host over direct lanes — runs them in the order SortHooks gives and
// combines their answers with RunPhase. Both are here so that the two
// paths cannot drift apart: a host that calls plugins itself answers
// exactly what the daemon would have.

// HookKey is what orders the hooks of a phase: priority, then the plugin's
// installed name, then the hook's name in its manifest.
type HookKey struct {
	Priority     int
	Plugin, Hook string
}

func (k HookKey) compare(o HookKey) int {
	if c := cmp.Compare(k.Priority, o.Priority); c != 0 {
		return c
	}
	if c := cmp.Compare(k.Plugin, o.Plugin); c != 0 {
		return c
	}
	return cmp.Compare(k.Hook, o.Hook)
}

// SortHooks puts the hooks of one phase in the order they run: ascending
// priority (ties broken by plugin, then hook name), except response hooks,
// which run in the reverse order (the hook that saw the request first sees
// the response last).
func SortHooks[H any](phase Phase, hooks []H, key func(H) HookKey) {
	slices.SortStableFunc(hooks, func(a, b H) int {
		c := key(a).compare(key(b))
		if phase == schema.Phase_response {
			return -c
		}
		return c
	})
}

// Outcome is the combined effect of one phase's hooks on one request, as
// a DispatchResult carries it.
type Outcome struct {
	Kind             schema.DispatchResult_outcome_Which
	RequestMutation  RequestMutation  // when Kind is mutateRequest
	Response         *Response        // when Kind is respond
	ResponseMutation ResponseMutation // when Kind is mutateResponse
	Failure          *HookError       // when Kind is failClosed
	// Skipped lists the fail-open hooks that failed; the request went on
	// without them.
	Skipped []HookError
	// Applied lists "plugin/hook" for every hook that changed something.
	Applied []string
}

// PhaseHook is what RunPhase needs to know of each hook besides calling
// it: its "plugin/hook" name and whether a failure fails the request.
type PhaseHook struct {
	Name       string
	FailClosed bool
}

// RunPhase runs the request, response or route phase over hooks, in the
// order SortHooks gives. call makes one hook call on the request (and, in
// the response phase, the response) as the hooks before left them; its
// answer has passed CheckAnswer, and RunPhase takes what it holds. It must
// not modify the request or response it is given. describe names a hook
// and gives its policy.
//
// The rules: request hooks run in turn, each on the request as the ones
// before left it; one that responds ends the phase. Response hooks run in
// turn on the response as the ones before left it. The route phase asks
// its first hook, the route's owner, alone. A failing hook ends the phase
// with failClosed if it is fail-closed, or if it owns the route; a
// fail-open one is listed in Skipped and the next hook runs. The outcome's
// mutation is the difference between what the phase started with and what
// its hooks left. The request and response passed in are not modified.
func RunPhase[H any](phase Phase, hooks []H, describe func(H) PhaseHook,
	call func(h H, req *Request, resp *Response) (HookAnswer, *HookError),
	req *Request, resp *Response) Outcome {
	out := Outcome{Kind: schema.DispatchResult_outcome_Which_continue}
	if resp == nil && phase == schema.Phase_response {
		resp = &Response{}
	}
	// What the hooks so far left: shallow copies whose parts a mutation
	// replaces (never changes in place), so the originals stay as they
	// were, and nothing is copied for a phase that changes nothing.
	var workReq Request
	var workResp Response
	curReq, curResp := req, resp
	for _, h := range hooks {
		var a HookAnswer
		var herr *HookError
		switch phase {
		case schema.Phase_request:
			a, herr = call(h, curReq, nil)
		case schema.Phase_response:
			a, herr = call(h, req, curResp)
		case schema.Phase_route:
			a, herr = call(h, req, nil)
		default:
			return out
		}
		if herr != nil {
			if phase == schema.Phase_route || describe(h).FailClosed {
				// The owner of a route is the only one who can answer
				// it: whatever its policy, a failure fails the request.
				out.Kind, out.Failure = schema.DispatchResult_outcome_Which_failClosed, herr
				return out
			}
			out.Skipped = append(out.Skipped, *herr)
			continue
		}
		switch a.Kind {
		case schema.HookResult_Which_mutateRequest:
			if curReq == req {
				workReq, curReq = *req, &workReq
			}
			a.RequestMutation.adopt(curReq)
		case schema.HookResult_Which_mutateResponse:
			if curResp == resp {
				workResp, curResp = *resp, &workResp
			}
			a.ResponseMutation.adopt(curResp)
		case schema.HookResult_Which_respond:
			out.Kind, out.Response = schema.DispatchResult_outcome_Which_respond, a.Response
			out.Applied = append(out.Applied, describe(h).Name)
			return out
		default:
			if phase == schema.Phase_route {
				return out
			}
			continue
		}
		out.Applied = append(out.Applied, describe(h).Name)
	}
	if curReq != req {
		if m := DiffRequest(req, curReq); !m.IsZero() {
			out.Kind, out.RequestMutation = schema.DispatchResult_outcome_Which_mutateRequest, m
		}
	}
	if curResp != resp {
		if m := DiffResponse(resp, curResp); !m.IsZero() {
			out.Kind, out.ResponseMutation = schema.DispatchResult_outcome_Which_mutateResponse, m
		}
	}
	return out
}

// WriteOutcome fills a DispatchResult with o.
func WriteOutcome(r schema.DispatchResult, o *Outcome) error {
	oc := r.Outcome()
	var err error
	switch o.Kind {
	case schema.DispatchResult_outcome_Which_continue:
		oc.SetContinue()
	case schema.DispatchResult_outcome_Which_mutateRequest:
		var ms schema.RequestMutation
		if ms, err = oc.NewMutateRequest(); err == nil {
			err = WriteRequestMutation(ms, &o.RequestMutation)
		}
	case schema.DispatchResult_outcome_Which_respond:
		var rs schema.HttpResponse
		if rs, err = oc.NewRespond(); err == nil {
			err = WriteResponse(rs, o.Response)
		}
	case schema.DispatchResult_outcome_Which_mutateResponse:
		var ms schema.ResponseMutation
		if ms, err = oc.NewMutateResponse(); err == nil {
			err = WriteResponseMutation(ms, &o.ResponseMutation)
		}
	case schema.DispatchResult_outcome_Which_failClosed:
		var he schema.HookError
		if he, err = oc.NewFailClosed(); err == nil {
			err = WriteHookError(he, o.Failure)
		}
	}
	if err != nil {
		return err
	}
	if len(o.Skipped) > 0 {
		l, err := r.NewSkipped(int32(len(o.Skipped)))
		if err != nil {
			return err
		}
		for i := range o.Skipped {
			if err := WriteHookError(l.At(i), &o.Skipped[i]); err != nil {
				return err
			}
		}
	}
	if len(o.Applied) > 0 {
		l, err := r.NewApplied(int32(len(o.Applied)))
		if err != nil {
			return err
		}
		for i, a := range o.Applied {
			if err := l.Set(i, a); err != nil {
				return err
			}
		}
	}
	return nil
}
