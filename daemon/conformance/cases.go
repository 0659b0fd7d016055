package conformance

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"time"

	routecases "github.com/dimplugd/dimplugd/schema/conformance"
)

// kitCase is one case of docs/conformance.md ("The cases"): needs names
// the driver feature it requires ("" for none).
type kitCase struct {
	name  string
	needs string
	run   func(ctx context.Context, k *kit) error
}

// cases run in this order; restart/daemon is last, as it leaves the
// daemon restarted.
var cases = []kitCase{
	{"hello", "", caseHello},
	{"routes/initial", "", caseRoutesInitial},
	{"routes/watch", "", caseRoutesWatch},
	{"match/routes.json", "", caseMatch},
	{"request/continue", "", caseContinue},
	{"request/mutate-params", "", caseMutateParams},
	{"request/order", "", caseOrder},
	{"request/respond", "", caseRespond},
	{"request/methods", "", caseMethods},
	{"response/reverse-order", "", caseResponseOrder},
	{"route/owner", "", caseRouteOwner},
	{"observe", "", caseObserve},
	{"deadline/fail-open", "", caseDeadlineOpen},
	{"deadline/fail-closed", "", caseDeadlineClosed},
	{"cancel", "", caseCancel},
	{"error/policies", "", caseErrors},
	{"direct/granted", FeatureDirectLanes, caseDirectGranted},
	{"direct/reported", FeatureDirectLanes, caseDirectReported},
	{"stream/chain", FeatureStreams, caseStreamChain},
	{"restart/plugin", "", caseRestartPlugin},
	{"restart/daemon", "", caseRestartDaemon},
}

// dispatch asks the driver to run one phase for method and target (a path
// with an optional query), with the response resp for the response and
// observe phases.
func (k *kit) dispatch(ctx context.Context, phase, method, target string, resp *HTTPAnswer) (*DispatchAnswer, time.Duration, error) {
	return k.dispatchWithin(ctx, 10*time.Second, phase, method, target, resp)
}

// dispatchWithin is dispatch with the time the host's client waits: the
// host gives up (and cancels the call) after timeout.
func (k *kit) dispatchWithin(ctx context.Context, timeout time.Duration, phase, method, target string, resp *HTTPAnswer) (*DispatchAnswer, time.Duration, error) {
	path, query, _ := strings.Cut(target, "?")
	q := &DispatchQuery{Phase: phase, Method: method, Path: path, Query: query,
		Header: http.Header{"Accept": {"application/json"}}, Body: []byte{}, Response: resp, TimeoutMs: timeout.Milliseconds()}
	start := time.Now()
	a, err := k.drv.Dispatch(ctx, q)
	took := time.Since(start)
	if err != nil {
		k.logf("%s %s %s: error %v", phase, method, target, err)
		return nil, took, fmt.Errorf("%s %s (%s phase): %w", method, target, phase, err)
	}
	b, _ := json.Marshal(a)
	k.logf("%s %s %s -> %s (%s)", phase, method, target, b, took.Round(time.Millisecond))
	return a, took, nil
}

func okResponse() *HTTPAnswer {
	return &HTTPAnswer{Status: 200, Header: http.Header{"Content-Type": {"application/json"}}, Body: []byte("{}")}
}

// describe is an answer as the failure messages show it.
func describe(a *DispatchAnswer) string {
	b, _ := json.Marshal(a)
	return string(b)
}

// values returns a header's values, the name compared without case.
func values(h http.Header, name string) []string {
	var out []string
	for k, vs := range h {
		if strings.EqualFold(k, name) {
			out = append(out, vs...)
		}
	}
	return out
}

// want checks a dispatch's outcome.
func want(a *DispatchAnswer, outcome string) error {
	if a.Outcome != outcome {
		return fmt.Errorf("outcome %q, want %q: %s", a.Outcome, outcome, describe(a))
	}
	return nil
}

// countOf asks a plugin for one of its counters (action cancels or
// observed) on /conf/1.
func (k *kit) countOf(ctx context.Context, plugin, action string) (int, error) {
	a, _, err := k.dispatch(ctx, "request", "GET", "/conf/1?"+plugin+"="+action, nil)
	if err != nil {
		return 0, err
	}
	if a.Outcome != OutcomeRespond || a.Response == nil || a.Response.Status != 200 {
		return 0, fmt.Errorf("asking %s for %s: want a 200 answer, got %s", plugin, action, describe(a))
	}
	n, err := strconv.Atoi(string(a.Response.Body))
	if err != nil {
		return 0, fmt.Errorf("asking %s for %s: body %q is not a count", plugin, action, a.Response.Body)
	}
	return n, nil
}

func caseHello(ctx context.Context, k *kit) error {
	if k.drv.Hello().Implementation == "" {
		return fmt.Errorf("the hello line names no implementation")
	}
	return nil
}

// expectedHook is one hook the kit installed, as a route table shows it.
type expectedHook struct {
	method, route string
	RouteHook
}

func installedHooks() []expectedHook {
	var out []expectedHook
	for _, p := range []struct {
		name string
		prio int
	}{{"conf-a", 10}, {"conf-b", 20}} {
		out = append(out,
			expectedHook{"GET", "/conf/:id", RouteHook{Plugin: p.name, Hook: "req", Phase: "request", Priority: p.prio, DeadlineMs: 1000}},
			expectedHook{"GET", "/conf/:id", RouteHook{Plugin: p.name, Hook: "resp", Phase: "response", Priority: p.prio, DeadlineMs: 1000}},
			expectedHook{"GET", "/conf/:id", RouteHook{Plugin: p.name, Hook: "obs", Phase: "observe", Priority: p.prio, DeadlineMs: 1000}})
	}
	return append(out,
		expectedHook{"*", "/solo/:id", RouteHook{Plugin: "conf-a", Hook: "solo", Phase: "request", DeadlineMs: 300}},
		expectedHook{"GET", "/strict/:id/*rest", RouteHook{Plugin: "conf-b", Hook: "strict", Phase: "request", DeadlineMs: 300, FailClosed: true}},
		expectedHook{"GET", "/conf-a/page/*rest", RouteHook{Plugin: "conf-a", Hook: "page", Phase: "route", DeadlineMs: 1000, FailClosed: true}})
}

// missingHooks lists the expected hooks the table lacks or shows wrong.
func missingHooks(t *RoutesAnswer, expected []expectedHook) []string {
	var missing []string
	for _, e := range expected {
		found := ""
		for _, en := range t.Entries {
			if en.Method != e.method || en.Route != e.route {
				continue
			}
			for _, h := range en.Hooks {
				if h.Plugin != e.Plugin || h.Hook != e.Hook {
					continue
				}
				got := h
				if e.Phase == "route" {
					got.FailClosed = true // a route's owner fails closed whatever it says
					if en.Owner != e.Plugin {
						found = fmt.Sprintf("owner %q", en.Owner)
						continue
					}
				}
				if got == e.RouteHook {
					found = "ok"
				} else {
					found = fmt.Sprintf("%+v", h)
				}
			}
		}
		switch found {
		case "ok":
		case "":
			missing = append(missing, fmt.Sprintf("%s %s %s/%s: absent", e.method, e.route, e.Plugin, e.Hook))
		default:
			missing = append(missing, fmt.Sprintf("%s %s %s/%s: got %s, want %+v", e.method, e.route, e.Plugin, e.Hook, found, e.RouteHook))
		}
	}
	return missing
}

func caseRoutesInitial(ctx context.Context, k *kit) error {
	var missing []string
	err := waitUntil(ctx, 10*time.Second, func() (bool, error) {
		t, err := k.drv.Routes(ctx)
		if err != nil {
			return false, err
		}
		missing = missingHooks(t, installedHooks())
		return len(missing) == 0, nil
	})
	if err != nil {
		return fmt.Errorf("the host's route table: %w; wrong or missing:\n%s", err, strings.Join(missing, "\n"))
	}
	return nil
}

func hasPlugin(t *RoutesAnswer, plugin string) bool {
	for _, e := range t.Entries {
		for _, h := range e.Hooks {
			if h.Plugin == plugin {
				return true
			}
		}
	}
	return false
}

func caseRoutesWatch(ctx context.Context, k *kit) error {
	if err := k.install(ctx, "conf-c", 30); err != nil {
		return err
	}
	installed := time.Now()
	err := waitUntil(ctx, 5*time.Second, func() (bool, error) {
		t, err := k.drv.Routes(ctx)
		return err == nil && hasPlugin(t, "conf-c"), err
	})
	if err != nil {
		return fmt.Errorf("conf-c installed: its hooks are not in the host's table: %w", err)
	}
	k.logf("conf-c in the host's table %s after its install", time.Since(installed).Round(time.Millisecond))
	if err := k.ctl.Remove(ctx, "conf-c"); err != nil {
		return fmt.Errorf("remove conf-c: %w", err)
	}
	err = waitUntil(ctx, 5*time.Second, func() (bool, error) {
		t, err := k.drv.Routes(ctx)
		return err == nil && !hasPlugin(t, "conf-c"), err
	})
	if err != nil {
		return fmt.Errorf("conf-c removed: its hooks are still in the host's table: %w", err)
	}
	return nil
}

func caseMatch(ctx context.Context, k *kit) error {
	var doc struct {
		Match []struct {
			Template, Path string
			Params         [][2]string
		}
		Methods []struct {
			Hook, Request string
			Match         bool
		}
		InvalidTemplates []string `json:"invalid_templates"`
	}
	if err := json.Unmarshal(routecases.RoutesJSON, &doc); err != nil {
		return fmt.Errorf("routes.json: %w", err)
	}
	var wrong []string
	for _, c := range doc.Match {
		a, err := k.drv.Match(ctx, c.Template, c.Path)
		if err != nil {
			return err
		}
		switch {
		case a.Invalid:
			wrong = append(wrong, fmt.Sprintf("template %q refused as invalid", c.Template))
		case (a.Params == nil) != (c.Params == nil):
			wrong = append(wrong, fmt.Sprintf("%q against %q: matched %v, want %v", c.Path, c.Template, a.Params != nil, c.Params != nil))
		case c.Params != nil && !(len(a.Params) == 0 && len(c.Params) == 0) && !reflect.DeepEqual(a.Params, c.Params):
			wrong = append(wrong, fmt.Sprintf("%q against %q: params %v, want %v", c.Path, c.Template, a.Params, c.Params))
		}
	}
	for _, c := range doc.Methods {
		got, err := k.drv.Method(ctx, c.Hook, c.Request)
		if err != nil {
			return err
		}
		if got != c.Match {
			wrong = append(wrong, fmt.Sprintf("hook method %q, request %q: match %v, want %v", c.Hook, c.Request, got, c.Match))
		}
	}
	for _, tmpl := range doc.InvalidTemplates {
		a, err := k.drv.Match(ctx, tmpl, "/")
		if err != nil {
			return err
		}
		if !a.Invalid {
			wrong = append(wrong, fmt.Sprintf("template %q accepted; it is invalid", tmpl))
		}
	}
	k.logf("routes.json: %d match, %d method and %d template cases", len(doc.Match), len(doc.Methods), len(doc.InvalidTemplates))
	if len(wrong) > 0 {
		return fmt.Errorf("%d of %d cases wrong:\n%s", len(wrong), len(doc.Match)+len(doc.Methods)+len(doc.InvalidTemplates), strings.Join(wrong, "\n"))
	}
	return nil
}

func caseContinue(ctx context.Context, k *kit) error {
	for _, target := range []string{"/solo/1", "/conf/1", "/nothing/hooked"} {
		a, _, err := k.dispatch(ctx, "request", "GET", target, nil)
		if err != nil {
			return err
		}
		if err := want(a, OutcomeContinue); err != nil {
			return fmt.Errorf("GET %s: %w", target, err)
		}
		if len(a.Skipped) != 0 {
			return fmt.Errorf("GET %s: hooks skipped: %s", target, describe(a))
		}
	}
	return nil
}

func caseMutateParams(ctx context.Context, k *kit) error {
	a, _, err := k.dispatch(ctx, "request", "GET", "/solo/7?conf-a=mutate", nil)
	if err != nil {
		return err
	}
	if err := want(a, OutcomeMutated); err != nil {
		return err
	}
	if a.Request == nil {
		return fmt.Errorf("mutated, but no request: %s", describe(a))
	}
	checks := []struct{ header, want string }{
		{"X-Conformance", "conf-a/solo"},
		{"X-Conformance-Params-conf-a", "id=7"},
		{"X-Conformance-Route-conf-a", "/solo/:id"},
	}
	for _, c := range checks {
		if got := values(a.Request.Header, c.header); len(got) != 1 || got[0] != c.want {
			return fmt.Errorf("header %s = %q, want %q (the plugin must get the route template and its params): %s", c.header, got, c.want, describe(a))
		}
	}
	if got := values(a.Request.Header, "Accept"); len(got) != 1 || got[0] != "application/json" {
		return fmt.Errorf("the request's own header Accept = %q after the change, want it kept", got)
	}
	return nil
}

func caseOrder(ctx context.Context, k *kit) error {
	a, _, err := k.dispatch(ctx, "request", "GET", "/conf/1?conf-a=mutate&conf-b=mutate", nil)
	if err != nil {
		return err
	}
	if err := want(a, OutcomeMutated); err != nil {
		return err
	}
	if got := values(a.Request.Header, "X-Conformance"); !reflect.DeepEqual(got, []string{"conf-a/req", "conf-b/req"}) {
		return fmt.Errorf("X-Conformance = %q, want [conf-a/req conf-b/req]: request hooks run by priority, lower first", got)
	}
	return nil
}

func caseRespond(ctx context.Context, k *kit) error {
	before, err := k.hookCalls(ctx, "conf-b", "req")
	if err != nil {
		return err
	}
	a, _, err := k.dispatch(ctx, "request", "GET", "/conf/1?conf-a=respond:418&conf-b=mutate", nil)
	if err != nil {
		return err
	}
	if err := want(a, OutcomeRespond); err != nil {
		return err
	}
	if a.Response == nil || a.Response.Status != 418 || string(a.Response.Body) != "conf-a" {
		return fmt.Errorf("want conf-a's 418 with body \"conf-a\": %s", describe(a))
	}
	after, err := k.hookCalls(ctx, "conf-b", "req")
	if err != nil {
		return err
	}
	if after != before {
		return fmt.Errorf("conf-b's request hook ran after conf-a answered (calls %d -> %d)", before, after)
	}
	return nil
}

func caseMethods(ctx context.Context, k *kit) error {
	for _, method := range []string{"POST", "DELETE"} {
		a, _, err := k.dispatch(ctx, "request", method, "/solo/1?conf-a=mutate", nil)
		if err != nil {
			return err
		}
		if err := want(a, OutcomeMutated); err != nil {
			return fmt.Errorf("%s /solo/1 (a \"*\" hook): %w", method, err)
		}
	}
	a, _, err := k.dispatch(ctx, "request", "HEAD", "/conf/1?conf-a=mutate", nil)
	if err != nil {
		return err
	}
	if err := want(a, OutcomeContinue); err != nil {
		return fmt.Errorf("HEAD /conf/1 (hooked for GET only): %w", err)
	}
	return nil
}

func caseResponseOrder(ctx context.Context, k *kit) error {
	a, _, err := k.dispatch(ctx, "response", "GET", "/conf/1?conf-a=mutate&conf-b=mutate", okResponse())
	if err != nil {
		return err
	}
	if err := want(a, OutcomeMutated); err != nil {
		return err
	}
	if a.Response == nil {
		return fmt.Errorf("mutated, but no response: %s", describe(a))
	}
	if got := values(a.Response.Header, "X-Conformance-Response"); !reflect.DeepEqual(got, []string{"conf-b/resp", "conf-a/resp"}) {
		return fmt.Errorf("X-Conformance-Response = %q, want [conf-b/resp conf-a/resp]: response hooks run in reverse priority order", got)
	}
	if a.Response.Status != 200 || string(a.Response.Body) != "{}" {
		return fmt.Errorf("the handler's status and body were not kept: %s", describe(a))
	}
	return nil
}

func caseRouteOwner(ctx context.Context, k *kit) error {
	a, _, err := k.dispatch(ctx, "route", "GET", "/conf-a/page/x/y", nil)
	if err != nil {
		return err
	}
	if err := want(a, OutcomeRespond); err != nil {
		return err
	}
	if a.Response == nil || a.Response.Status != 200 || string(a.Response.Body) != "conf-a page x/y" {
		return fmt.Errorf("want 200 \"conf-a page x/y\": %s", describe(a))
	}
	return nil
}

func caseObserve(ctx context.Context, k *kit) error {
	before, err := k.countOf(ctx, "conf-a", "observed")
	if err != nil {
		return err
	}
	a, took, err := k.dispatch(ctx, "observe", "GET", "/conf/observed-1", okResponse())
	if err != nil {
		return err
	}
	if err := want(a, OutcomeContinue); err != nil {
		return err
	}
	if took > time.Second {
		return fmt.Errorf("the observe dispatch took %s: observers must not delay the host", took)
	}
	var n int
	err = waitUntil(ctx, 5*time.Second, func() (bool, error) {
		n, err = k.countOf(ctx, "conf-a", "observed")
		return n > before, err
	})
	if err != nil {
		return fmt.Errorf("conf-a observed %d exchanges, %d before: %w", n, before, err)
	}
	return nil
}

// slack is how much later than its deadline a cut call may return.
const slack = 1500 * time.Millisecond

func hasFailure(list []HookFailure, plugin, hook, kind string) bool {
	for _, f := range list {
		if f.Plugin == plugin && f.Hook == hook && f.Kind == kind {
			return true
		}
	}
	return false
}

func caseDeadlineOpen(ctx context.Context, k *kit) error {
	a, took, err := k.dispatch(ctx, "request", "GET", "/solo/1?conf-a=sleep:3000", nil)
	if err != nil {
		return err
	}
	if err := want(a, OutcomeContinue); err != nil {
		return err
	}
	if !hasFailure(a.Skipped, "conf-a", "solo", "timeout") {
		return fmt.Errorf("conf-a/solo is not listed as skipped for a timeout: %s", describe(a))
	}
	if took > 300*time.Millisecond+slack {
		return fmt.Errorf("the call took %s; its hook's deadline is 300ms", took)
	}
	return nil
}

func caseDeadlineClosed(ctx context.Context, k *kit) error {
	a, took, err := k.dispatch(ctx, "request", "GET", "/strict/1/x?conf-b=sleep:3000", nil)
	if err != nil {
		return err
	}
	if err := want(a, OutcomeFailed); err != nil {
		return err
	}
	if a.Failure == nil || a.Failure.Plugin != "conf-b" || a.Failure.Hook != "strict" || a.Failure.Kind != "timeout" {
		return fmt.Errorf("want conf-b/strict failed by timeout: %s", describe(a))
	}
	if a.Response == nil || a.Response.Status != 503 {
		return fmt.Errorf("want a 503 answer: %s", describe(a))
	}
	if took > 300*time.Millisecond+slack {
		return fmt.Errorf("the call took %s; its hook's deadline is 300ms", took)
	}
	return nil
}

// caseCancel: the host's client gives up (after 100 ms) on calls whose
// hooks have longer deadlines; each plugin must see the call cancelled,
// not run into its own deadline.
func caseCancel(ctx context.Context, k *kit) error {
	for _, c := range []struct{ plugin, target string }{
		{"conf-a", "/solo/2?conf-a=sleep:3000"},     // one hook: direct lanes
		{"conf-b", "/strict/2/y?conf-b=sleep:3000"}, // one hook, fail-closed
		{"conf-a", "/conf/2?conf-a=sleep:3000"},     // two plugins: through the daemon
	} {
		before, err := k.countOf(ctx, c.plugin, "cancels")
		if err != nil {
			return err
		}
		// The answer is the host's to choose (an error, or the policy's);
		// only that it comes and that the plugin hears of it is checked.
		_, took, _ := k.dispatchWithin(ctx, 100*time.Millisecond, "request", "GET", c.target, nil)
		if took > 100*time.Millisecond+slack {
			return fmt.Errorf("GET %s: the host's client gave up after 100 ms, but the call took %s", c.target, took)
		}
		var n int
		err = waitUntil(ctx, 3*time.Second, func() (bool, error) {
			n, err = k.countOf(ctx, c.plugin, "cancels")
			return n > before, err
		})
		if err != nil {
			return fmt.Errorf("GET %s: the host's client gave up after 100 ms, but %s saw no cancellation (%d before, %d after; the hook's deadline was later): %w", c.target, c.plugin, before, n, err)
		}
	}
	return nil
}

func caseErrors(ctx context.Context, k *kit) error {
	a, _, err := k.dispatch(ctx, "request", "GET", "/strict/1/x?conf-b=fail", nil)
	if err != nil {
		return err
	}
	if err := want(a, OutcomeFailed); err != nil {
		return fmt.Errorf("fail-closed: %w", err)
	}
	if a.Failure == nil || a.Failure.Plugin != "conf-b" || a.Failure.Kind != "failed" || a.Response == nil || a.Response.Status != 502 {
		return fmt.Errorf("fail-closed: want conf-b failed, 502: %s", describe(a))
	}
	a, _, err = k.dispatch(ctx, "request", "GET", "/solo/1?conf-a=fail", nil)
	if err != nil {
		return err
	}
	if err := want(a, OutcomeContinue); err != nil {
		return fmt.Errorf("fail-open: %w", err)
	}
	if !hasFailure(a.Skipped, "conf-a", "solo", "failed") {
		return fmt.Errorf("fail-open: conf-a/solo is not listed as skipped (failed): %s", describe(a))
	}
	a, _, err = k.dispatch(ctx, "response", "GET", "/conf/1?conf-b=fail&conf-a=mutate", okResponse())
	if err != nil {
		return err
	}
	if err := want(a, OutcomeMutated); err != nil {
		return fmt.Errorf("a failing fail-open response hook before another: %w", err)
	}
	if !hasFailure(a.Skipped, "conf-b", "resp", "failed") || len(values(a.Response.Header, "X-Conformance-Response")) != 1 {
		return fmt.Errorf("want conf-b/resp skipped and conf-a's change kept: %s", describe(a))
	}
	return nil
}

// waitLanes dispatches to conf-a's and conf-b's single-hook routes until
// the host holds a direct lane to each.
func (k *kit) waitLanes(ctx context.Context, timeout time.Duration, plugins ...string) error {
	var last *LaneAnswer
	var lastPlugin string
	err := waitUntil(ctx, timeout, func() (bool, error) {
		for _, p := range plugins {
			target := "/solo/1"
			if p == "conf-b" {
				target = "/strict/1/x"
			}
			if _, _, err := k.dispatch(ctx, "request", "GET", target, nil); err != nil {
				return false, err
			}
			a, err := k.drv.DirectLane(ctx, p)
			if err != nil {
				return false, err
			}
			last, lastPlugin = a, p
			if !a.Granted {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil && last != nil {
		return fmt.Errorf("the host holds no direct lane to %s (refused: %q): %w", lastPlugin, last.Reason, err)
	}
	return err
}

func caseDirectGranted(ctx context.Context, k *kit) error {
	return k.waitLanes(ctx, 10*time.Second, "conf-a", "conf-b")
}

func caseDirectReported(ctx context.Context, k *kit) error {
	if err := k.waitLanes(ctx, 10*time.Second, "conf-a"); err != nil {
		return err
	}
	before, err := k.hookCalls(ctx, "conf-a", "solo")
	if err != nil {
		return err
	}
	const n = 20
	for range n {
		if _, _, err := k.dispatch(ctx, "request", "GET", "/solo/3", nil); err != nil {
			return err
		}
	}
	var got uint64
	err = waitUntil(ctx, 5*time.Second, func() (bool, error) {
		got, err = k.hookCalls(ctx, "conf-a", "solo")
		return got >= before+n, err
	})
	if err != nil {
		return fmt.Errorf("the daemon counts %d calls of conf-a/solo after %d direct calls (%d before): the host must report its direct calls (HookStats): %w", got, n, before, err)
	}
	return nil
}

func caseRestartPlugin(ctx context.Context, k *kit) error {
	if _, err := k.ctl.Restart(ctx, "conf-a"); err != nil {
		return fmt.Errorf("restart conf-a: %w", err)
	}
	restarted := time.Now()
	var last *DispatchAnswer
	err := waitUntil(ctx, 10*time.Second, func() (bool, error) {
		a, _, err := k.dispatch(ctx, "request", "GET", "/solo/9?conf-a=mutate", nil)
		last = a
		return err == nil && a.Outcome == OutcomeMutated, err
	})
	if err != nil {
		return fmt.Errorf("conf-a restarted: its hook did not answer again: %w; last answer %s", err, describe(last))
	}
	k.logf("conf-a answered again %s after its restart", time.Since(restarted).Round(time.Millisecond))
	if k.drv.Hello().has(FeatureDirectLanes) {
		if err := k.waitLanes(ctx, 10*time.Second, "conf-a"); err != nil {
			return fmt.Errorf("after conf-a's restart: %w", err)
		}
	}
	return nil
}

func caseRestartDaemon(ctx context.Context, k *kit) error {
	k.stopDaemon()
	a, took, err := k.dispatch(ctx, "request", "GET", "/strict/1/x", nil)
	if err != nil {
		return fmt.Errorf("while the daemon is away: %w", err)
	}
	if a.Outcome != OutcomeFailed || a.Failure == nil || a.Failure.Kind != "unavailable" || a.Response == nil || a.Response.Status != 503 {
		return fmt.Errorf("while the daemon is away, the fail-closed /strict/... must fail unavailable with 503: %s", describe(a))
	}
	if took > 2*time.Second {
		return fmt.Errorf("while the daemon is away, a call took %s: it must be answered by policy at once", took)
	}
	a, _, err = k.dispatch(ctx, "request", "GET", "/solo/1?conf-a=mutate", nil)
	if err != nil {
		return fmt.Errorf("while the daemon is away: %w", err)
	}
	if a.Outcome != OutcomeContinue || !hasFailure(a.Skipped, "conf-a", "solo", "unavailable") {
		return fmt.Errorf("while the daemon is away, the fail-open /solo/... must be skipped as unavailable: %s", describe(a))
	}
	if err := k.startDaemon(ctx); err != nil {
		return err
	}
	started := time.Now()
	var last *DispatchAnswer
	err = waitUntil(ctx, 15*time.Second, func() (bool, error) {
		a, _, err := k.dispatch(ctx, "request", "GET", "/solo/1?conf-a=mutate", nil)
		last = a
		return err == nil && a.Outcome == OutcomeMutated, err
	})
	if err != nil {
		return fmt.Errorf("the daemon started again: the host did not come back: %w; last answer %s", err, describe(last))
	}
	k.logf("the host dispatched again %s after the daemon started", time.Since(started).Round(time.Millisecond))
	return nil
}

// caseStreamChain sends frames of many sizes (inline and in shared memory,
// one past 1 MiB) through conf-a's and conf-b's transforms and checks what
// comes back: every frame, in order, changed by conf-a and then conf-b.
func caseStreamChain(ctx context.Context, k *kit) error {
	sizes := []int{0, 1, 100, 511, 512, 513, 4096, 64 << 10, 300 << 10, 1536 << 10}
	q := &StreamQuery{Kind: StreamKind}
	for i, n := range sizes {
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(i*31 + j*7)
		}
		q.Frames = append(q.Frames, b)
	}
	a, err := k.drv.Stream(ctx, q)
	if err != nil {
		return fmt.Errorf("a stream of %d frames: %w", len(q.Frames), err)
	}
	if want := []string{"conf-a/frames", "conf-b/frames"}; !reflect.DeepEqual(a.Chain, want) {
		return fmt.Errorf("the stream's chain is %q, want %q (transforms by priority)", a.Chain, want)
	}
	if len(a.Frames) != len(q.Frames) {
		return fmt.Errorf("%d frames came back of %d sent", len(a.Frames), len(q.Frames))
	}
	for i, in := range q.Frames {
		want := append([]byte("conf-b:conf-a:"), in...)
		if !bytes.Equal(a.Frames[i], want) {
			return fmt.Errorf("frame %d (%d bytes) came back as %d bytes starting %.40q, want %d bytes starting %.40q",
				i, len(in), len(a.Frames[i]), a.Frames[i], len(want), want)
		}
	}
	return nil
}
