package plugintest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/dimplugd/dimplugd/sdk-go/plugin"
	"github.com/dimplugd/dimplugd/sdk-go/plugin/plugintest"
)

// configured answers its route with its settings: ?scope=global, or
// ?scope=user&user=<id>, or the changes it was told of (?scope=changes).
type configured struct {
	host    *plugin.Host
	mu      sync.Mutex
	changes []string
}

func (c *configured) Init(ctx context.Context, h *plugin.Host) error {
	c.host = h
	if h.Settings == nil {
		return nil
	}
	return h.Settings.OnChange(ctx, func(scope string, user int64) {
		c.mu.Lock()
		c.changes = append(c.changes, fmt.Sprintf("%s/%d", scope, user))
		c.mu.Unlock()
	})
}

func (c *configured) ServeRoute(ctx context.Context, hook string, req *plugin.Request) (*plugin.Response, error) {
	q := req.Query()
	var v any
	var err error
	switch q.Get("scope") {
	case "changes":
		c.mu.Lock()
		v = strings.Join(c.changes, " ")
		c.mu.Unlock()
	case "granted":
		v = c.host.Settings != nil
	case "user":
		var user int64
		fmt.Sscan(q.Get("user"), &user)
		var m map[string]any
		err, v = c.host.Settings.User(ctx, user, &m), m
	default:
		var m map[string]any
		err, v = c.host.Settings.Global(ctx, &m), m
	}
	if err != nil {
		return &plugin.Response{Status: 500, Body: []byte(err.Error())}, nil
	}
	b, _ := json.Marshal(v)
	return &plugin.Response{Status: 200, Body: b}, nil
}

func ask(t *testing.T, h *plugintest.Harness, query string) string {
	t.Helper()
	resp, err := h.Route("get", &plugin.Request{Method: "GET", Path: "/api/v1/plugins/test-plugin/s", RawQuery: query})
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%d %s", resp.Status, resp.Body)
}

func TestSettings(t *testing.T) {
	h := plugintest.Start(t, &configured{},
		plugintest.WithSettings("global", 0, map[string]any{"level": "PG"}),
		plugintest.WithSettings("user", 0, map[string]any{"refresh": 5}),
		plugintest.WithSettings("user", 7, map[string]any{"refresh": 9}))
	for _, tc := range []struct{ query, want string }{
		{"scope=granted", "200 true"},
		{"scope=global", `200 {"level":"PG"}`},
		{"scope=user&user=7", `200 {"refresh":9}`},
		{"scope=user&user=8", `200 {"refresh":5}`}, // user 0's values
		{"scope=changes", `200 ""`},
	} {
		if got := ask(t, h, tc.query); got != tc.want {
			t.Errorf("?%s: %s, want %s", tc.query, got, tc.want)
		}
	}
	// A change is seen on the next read, and the plugin hears of it, in
	// order, before SetSettings returns.
	h.SetSettings("user", 8, map[string]any{"refresh": 1})
	h.SetSettings("global", 0, map[string]any{"level": "R"})
	for _, tc := range []struct{ query, want string }{
		{"scope=changes", `200 "user/8 global/0"`},
		{"scope=global", `200 {"level":"R"}`},
		{"scope=user&user=8", `200 {"refresh":1}`},
		{"scope=user&user=7", `200 {"refresh":9}`},
	} {
		if got := ask(t, h, tc.query); got != tc.want {
			t.Errorf("after the changes, ?%s: %s, want %s", tc.query, got, tc.want)
		}
	}
}

func TestSettingsScopes(t *testing.T) {
	// Without WithSettings the capability is not granted.
	if got := ask(t, plugintest.Start(t, &configured{}), "scope=granted"); got != "200 false" {
		t.Errorf("without settings: %s", got)
	}
	// A scope never given answers an error; a user scope without values
	// for the user or user 0 answers {}.
	h := plugintest.Start(t, &configured{}, plugintest.WithSettings("user", 3, map[string]int{"n": 1}))
	if got := ask(t, h, "scope=global"); !strings.HasPrefix(got, "500 ") || !strings.Contains(got, "no global settings") {
		t.Errorf("undeclared global scope: %s", got)
	}
	if got := ask(t, h, "scope=user&user=4"); got != "200 {}" {
		t.Errorf("user without values: %s", got)
	}
	if got := ask(t, h, "scope=user&user=0"); !strings.Contains(got, "need the user's id") {
		t.Errorf("user 0: %s", got)
	}
}
