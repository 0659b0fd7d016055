package wire

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// CallHook calls one plugin hook on a hook lane (the daemon's lane to a
// plugin, or a host's direct lane) under c.Timeout, and reads the answer by
// the phase rules (ReadHookResult). A failure is a HookError naming plugin
// and hook, worded for the people who read it (c.Where(): "on GET /route"):
//
//   - unavailable: the lane closed under the call (the plugin went away),
//     or ctx ended (the caller gave up);
//   - timeout: no answer within c.Timeout;
//   - failed: the plugin's error, or a reply that is not a hook result;
//   - rejected: an answer the phase does not allow.
func CallHook(ctx context.Context, lane *LaneClient, c *HookCall, plugin string) (HookAnswer, *HookError) {
	start := time.Now()
	reply, rf, err := lane.CallWithin(ctx, c.Timeout, func(f schema.LaneFrame) error {
		hc, err := f.NewHook()
		if err != nil {
			return err
		}
		return WriteHookCall(hc, c)
	})
	if err != nil {
		if errors.Is(err, ErrLaneClosed) {
			return HookAnswer{}, &HookError{Plugin: plugin, Hook: c.Hook, Kind: schema.HookErrorKind_unavailable,
				Message: "stopped while handling the request " + c.Where()}
		}
		return HookAnswer{}, CallError(ctx, ctx, start, c.Timeout, err, plugin, c.Hook, c.Where())
	}
	defer reply.Release()
	hr, err := LaneHookResult(rf)
	if err != nil {
		return HookAnswer{}, &HookError{Plugin: plugin, Hook: c.Hook, Kind: schema.HookErrorKind_failed, Message: "failed " + c.Where() + ": " + err.Error()}
	}
	a, err := ReadHookResult(c.Phase, hr)
	if err != nil {
		return HookAnswer{}, AnswerError(plugin, c.Hook, c.Where(), err)
	}
	return a, nil
}

// CallError words a hook call that returned err (on any transport): the
// caller gave up (ctx ended: unavailable), the deadline passed (cctx, from
// start: timeout; the plugin enforces the same deadline and may answer with
// its own "context deadline exceeded" a moment before cctx fires), or the
// call failed.
func CallError(ctx, cctx context.Context, start time.Time, timeout time.Duration, err error, plugin, hook, where string) *HookError {
	e := &HookError{Plugin: plugin, Hook: hook}
	timedOut := errors.Is(cctx.Err(), context.DeadlineExceeded) || time.Since(start) >= timeout ||
		strings.HasSuffix(err.Error(), context.DeadlineExceeded.Error())
	switch {
	case ctx.Err() != nil:
		e.Kind, e.Message = schema.HookErrorKind_unavailable, "the host cancelled the request "+where
	case timedOut:
		e.Kind, e.Message = schema.HookErrorKind_timeout, fmt.Sprintf("exceeded its %s deadline %s", timeout, where)
	case remoteClassIs(err, errdefs.ErrUnavailable):
		// The plugin said it cannot take the call (it is stopping): as
		// when it is not running, not a failure of the plugin.
		e.Kind, e.Message = schema.HookErrorKind_unavailable, "is unavailable "+where+": "+RemoteMessage(err)
	default:
		e.Kind, e.Message = schema.HookErrorKind_failed, "failed "+where+": "+RemoteMessage(err)
	}
	return e
}

// remoteClassIs reports whether err, returned by a remote side, carries
// the class mark of class.
func remoteClassIs(err error, class error) bool {
	c, _ := RemoteClass(err)
	return c == class || errors.Is(err, class)
}
