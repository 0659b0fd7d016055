package wire

import (
	"errors"
	"fmt"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// The hook-call codec and the phase policy.
//
// A hook call reaches a plugin three ways — over RPC from the daemon, on
// the plugin's hook lane from the daemon, on a direct lane from a host —
// and every caller (the daemon, the host SDK's direct lanes, plugintest)
// builds it with WriteHookCall and reads the answer with ReadHookResult,
// which applies the rules of the phase. The plugin SDK reads the call with
// ReadHookCall and writes its answer with WriteHookResult, under the same
// rules. No other code writes or judges a HookCall or a HookResult.

// HookCall is one call of a plugin hook.
type HookCall struct {
	Hook  string // the hook's name in the plugin's manifest
	Phase Phase
	// Timeout is the hook's deadline, which the plugin enforces too; 0
	// means none.
	Timeout time.Duration
	// Request is the request, with Route and Params of the hook's route
	// (see HookRequest). Required.
	Request *Request
	// Response is the host's response in the response and observe phases;
	// nil otherwise.
	Response *Response
}

// Where is how errors say which call failed: "on GET /route/:id", the
// method and the hook's route template.
func (c *HookCall) Where() string { return "on " + c.Request.Method + " " + c.Request.Route }

// HookRequest returns a copy of req (sharing its header and body) that
// carries the route template and parameters of the hook it is sent to.
func HookRequest(req *Request, route string, params []manifest.Param) *Request {
	r := *req
	r.Route = route
	r.Params = make([]Param, len(params))
	for i, p := range params {
		r.Params[i] = Param{Name: p.Name, Value: p.Value}
	}
	return &r
}

// WriteHookCall fills s with c.
func WriteHookCall(s schema.HookCall, c *HookCall) error {
	if c.Request == nil {
		return errors.New("write hook call: no request")
	}
	if err := s.SetHook(c.Hook); err != nil {
		return fmt.Errorf("write hook call: %w", err)
	}
	s.SetPhase(c.Phase)
	if c.Timeout > 0 {
		s.SetTimeoutMicros(uint64(c.Timeout / time.Microsecond))
	}
	rq, err := s.NewRequest()
	if err != nil {
		return fmt.Errorf("write hook call: %w", err)
	}
	if err := WriteRequest(rq, c.Request); err != nil {
		return err
	}
	if c.Response == nil {
		return nil
	}
	rs, err := s.NewResponse()
	if err != nil {
		return fmt.Errorf("write hook call: %w", err)
	}
	return WriteResponse(rs, c.Response)
}

// ReadHookCall copies a hook call out of its Cap'n Proto form. Response is
// set in the phases that carry one (response and observe) and nil in the
// others, whatever the message holds.
func ReadHookCall(s schema.HookCall) (HookCall, error) {
	c := HookCall{Phase: s.Phase(), Timeout: time.Duration(s.TimeoutMicros()) * time.Microsecond}
	var err error
	if c.Hook, err = s.Hook(); err != nil {
		return HookCall{}, fmt.Errorf("read hook call: %w", err)
	}
	rq, err := s.Request()
	if err != nil {
		return HookCall{}, fmt.Errorf("read hook call: %w", err)
	}
	if c.Request, err = ReadRequest(rq); err != nil {
		return HookCall{}, err
	}
	if carriesResponse(c.Phase) {
		rs, err := s.Response()
		if err != nil {
			return HookCall{}, fmt.Errorf("read hook call: %w", err)
		}
		if c.Response, err = ReadResponse(rs); err != nil {
			return HookCall{}, err
		}
	}
	return c, nil
}

// carriesResponse reports whether a hook of phase is given the host's
// response.
func carriesResponse(phase Phase) bool {
	return phase == PhaseResponse || phase == PhaseObserve
}

// HookAnswer is a hook's answer, allowed for its phase.
type HookAnswer struct {
	Kind             schema.HookResult_Which
	RequestMutation  RequestMutation  // when Kind is mutateRequest
	Response         *Response        // when Kind is respond
	ResponseMutation ResponseMutation // when Kind is mutateResponse
}

// PhaseError says that a hook answered with something its phase does not
// allow (the phase policy, CheckAnswer). Message follows the plugin and
// hook's names: "owns the route but answered without a response".
type PhaseError struct {
	Phase   Phase
	Kind    schema.HookResult_Which
	Message string
}

func (e *PhaseError) Error() string { return e.Message }

// CheckAnswer is the phase policy: what a hook of each phase may answer.
//
//   - request: continue, a request mutation, or a response (which answers
//     the request in the host's place);
//   - response: continue or a response mutation;
//   - route: a response (the owner of a route is the only one who can
//     answer it);
//   - observe: anything, and it is ignored.
//
// The error is a *PhaseError.
func CheckAnswer(phase Phase, kind schema.HookResult_Which) error {
	reject := func(msg string) error { return &PhaseError{Phase: phase, Kind: kind, Message: msg} }
	switch phase {
	case PhaseRequest:
		if kind == schema.HookResult_Which_mutateResponse {
			return reject("answered a request hook with a response mutation")
		}
	case PhaseResponse:
		if kind != schema.HookResult_Which_continue && kind != schema.HookResult_Which_mutateResponse {
			return reject("answered a response hook with something other than a response mutation")
		}
	case PhaseRoute:
		if kind != schema.HookResult_Which_respond {
			return reject("owns the route but answered without a response")
		}
	case PhaseObserve:
	default:
		return reject(fmt.Sprintf("was called in an unknown phase %d", phase))
	}
	return nil
}

// ReadHookResult copies a hook's answer out of its Cap'n Proto form and
// applies the phase policy (CheckAnswer). A mutation that changes nothing
// reads as continue. The error is a *PhaseError when the answer is not
// allowed in phase, and any other error when it is unreadable; see
// AnswerError.
func ReadHookResult(phase Phase, s schema.HookResult) (HookAnswer, error) {
	a := HookAnswer{Kind: s.Which()}
	if a.Kind > schema.HookResult_Which_mutateResponse {
		return HookAnswer{}, fmt.Errorf("unknown answer %d (is the plugin newer than this side?)", a.Kind)
	}
	if err := CheckAnswer(phase, a.Kind); err != nil {
		return HookAnswer{}, err
	}
	var err error
	switch a.Kind {
	case schema.HookResult_Which_mutateRequest:
		var ms schema.RequestMutation
		if ms, err = s.MutateRequest(); err == nil {
			a.RequestMutation, err = ReadRequestMutation(ms)
		}
	case schema.HookResult_Which_respond:
		var rs schema.HttpResponse
		if rs, err = s.Respond(); err == nil {
			a.Response, err = ReadResponse(rs)
		}
	case schema.HookResult_Which_mutateResponse:
		var ms schema.ResponseMutation
		if ms, err = s.MutateResponse(); err == nil {
			a.ResponseMutation, err = ReadResponseMutation(ms)
		}
	}
	if err != nil {
		return HookAnswer{}, err
	}
	if a.changesNothing() {
		return HookAnswer{Kind: schema.HookResult_Which_continue}, nil
	}
	return a, nil
}

// changesNothing reports whether a is continue or a mutation that changes
// nothing.
func (a *HookAnswer) changesNothing() bool {
	switch a.Kind {
	case schema.HookResult_Which_continue:
		return true
	case schema.HookResult_Which_mutateRequest:
		return a.RequestMutation.IsZero()
	case schema.HookResult_Which_mutateResponse:
		return a.ResponseMutation.IsZero()
	}
	return false
}

// WriteHookResult applies the phase policy (CheckAnswer) to a and fills s
// with it. A mutation that changes nothing is written as continue.
func WriteHookResult(phase Phase, s schema.HookResult, a *HookAnswer) error {
	if err := CheckAnswer(phase, a.Kind); err != nil {
		return err
	}
	if a.changesNothing() {
		s.SetContinue()
		return nil
	}
	switch a.Kind {
	case schema.HookResult_Which_mutateRequest:
		ms, err := s.NewMutateRequest()
		if err != nil {
			return err
		}
		return WriteRequestMutation(ms, &a.RequestMutation)
	case schema.HookResult_Which_respond:
		if a.Response == nil {
			return errors.New("write hook result: a response answer without a response")
		}
		rs, err := s.NewRespond()
		if err != nil {
			return err
		}
		return WriteResponse(rs, a.Response)
	case schema.HookResult_Which_mutateResponse:
		ms, err := s.NewMutateResponse()
		if err != nil {
			return err
		}
		return WriteResponseMutation(ms, &a.ResponseMutation)
	}
	return fmt.Errorf("write hook result: unknown answer %d", a.Kind)
}

// AnswerError is the failure a caller reports when ReadHookResult fails
// for the hook of plugin: rejected with the policy's message for a
// *PhaseError, failed as unreadable otherwise. where says which request,
// as in "on GET /api/v1/media/:id".
func AnswerError(plugin, hook, where string, err error) *HookError {
	var pe *PhaseError
	if errors.As(err, &pe) {
		return &HookError{Plugin: plugin, Hook: hook, Kind: schema.HookErrorKind_rejected, Message: pe.Message}
	}
	return &HookError{Plugin: plugin, Hook: hook, Kind: schema.HookErrorKind_failed,
		Message: "sent an unreadable result " + where + ": " + err.Error()}
}

// LaneHookResult is the hook result a lane reply carries; any other frame
// is an error.
func LaneHookResult(rf schema.LaneFrame) (schema.HookResult, error) {
	if rf.Which() != schema.LaneFrame_Which_hookResult {
		return schema.HookResult{}, fmt.Errorf("unexpected %s reply on the hook lane", rf.Which())
	}
	return rf.HookResult()
}
