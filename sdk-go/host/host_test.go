package host

import (
	"strings"
	"testing"

	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

func TestRouteTableMatch(t *testing.T) {
	entry := func(method, route string, phases ...Phase) RouteEntry {
		r, err := manifest.ParseRoute(route)
		if err != nil {
			t.Fatal(err)
		}
		return RouteEntry{Method: method, Route: route, Phases: phases, route: r}
	}
	rt := &RouteTable{Entries: []RouteEntry{
		entry("GET", "/api/v1/media/:id", PhaseRequest, PhaseResponse),
		entry("*", "/api/v1/media/:id", PhaseObserve),
		entry("GET", "/api/v1/stream/:gid/data/*path", PhaseRoute),
	}}
	tests := []struct {
		method, path string
		want         []Phase
	}{
		{"GET", "/api/v1/media/1", []Phase{PhaseRequest, PhaseResponse, PhaseObserve}},
		{"POST", "/api/v1/media/1", []Phase{PhaseObserve}},
		{"GET", "/api/v1/media", nil},
		{"GET", "/api/v1/stream/1/data/720p/1.m4s", []Phase{PhaseRoute}},
		{"GET", "/api/v1/dashboard", nil},
	}
	for _, tt := range tests {
		got := rt.Match(tt.method, tt.path)
		if len(got) != len(tt.want) {
			t.Errorf("Match(%s %s) = %v, want %v", tt.method, tt.path, got, tt.want)
			continue
		}
		for i := range got {
			if got[i] != tt.want[i] {
				t.Errorf("Match(%s %s) = %v, want %v", tt.method, tt.path, got, tt.want)
			}
		}
	}
}

func TestFailureResponse(t *testing.T) {
	r := &Result{Kind: FailClosed, Failure: &HookError{Plugin: "subs", Hook: "h", Kind: schema.HookErrorKind_timeout, Message: "exceeded its 50ms deadline on GET /api/v1/media/:id"}}
	resp := r.FailureResponse()
	if resp.Status != 503 || !strings.Contains(string(resp.Body), `plugin "subs"`) || !strings.Contains(string(resp.Body), "50ms deadline") {
		t.Fatalf("got %d %q", resp.Status, resp.Body)
	}
	if (&Result{}).FailureResponse() != nil {
		t.Fatal("a result without failure has a failure response")
	}
}
