package plugin_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/dimplugd/dimplugd/sdk-go/plugin"
	"github.com/dimplugd/dimplugd/sdk-go/plugin/plugintest"
)

type mixed struct {
	closed bool
	host   *plugin.Host
}

func (m *mixed) Init(ctx context.Context, h *plugin.Host) error { m.host = h; return nil }

func (m *mixed) HookRequest(ctx context.Context, hook string, req *plugin.Request) (*plugin.Response, error) {
	switch hook {
	case "deny":
		return &plugin.Response{Status: 403, Body: []byte("no")}, nil
	case "panic":
		panic("boom")
	case "error":
		return nil, errors.New("backend unreachable")
	case "kv":
		if err := m.host.KV.Set(ctx, "k", []byte("v")); err != nil {
			return nil, err
		}
		keys, err := m.host.KV.List(ctx, "", 0)
		if err != nil {
			return nil, err
		}
		req.Header.Set("X-Keys", strings.Join(keys, ","))
		return nil, m.host.KV.Delete(ctx, "other")
	}
	req.Header.Set("X-Hook", hook)
	return nil, nil
}

func (m *mixed) Close(ctx context.Context) error { m.closed = true; return nil }

func TestRequestHooks(t *testing.T) {
	p := &mixed{}
	h := plugintest.Start(t, p, plugintest.WithKV(map[string][]byte{"other": []byte("x")}))

	req := &plugin.Request{Method: "GET", Path: "/x", Header: http.Header{}}
	if resp, err := h.Request("tag", req); err != nil || resp != nil || req.Header.Get("X-Hook") != "tag" {
		t.Fatalf("tag: resp=%v err=%v header=%v", resp, err, req.Header)
	}
	if resp, err := h.Request("deny", &plugin.Request{Method: "GET", Path: "/x"}); err != nil || resp == nil || resp.Status != 403 {
		t.Fatalf("deny: resp=%+v err=%v", resp, err)
	}
	if _, err := h.Request("panic", &plugin.Request{Method: "GET", Path: "/x"}); err == nil || !strings.Contains(err.Error(), `hook "panic" panicked: boom`) {
		t.Fatalf("panic: err=%v", err)
	}
	if _, err := h.Request("error", &plugin.Request{Method: "GET", Path: "/x"}); err == nil || !strings.Contains(err.Error(), "backend unreachable") {
		t.Fatalf("error: err=%v", err)
	}
	req = &plugin.Request{Method: "GET", Path: "/x", Header: http.Header{}}
	if _, err := h.Request("kv", req); err != nil || req.Header.Get("X-Keys") != "k,other" {
		t.Fatalf("kv: err=%v keys=%q", err, req.Header.Get("X-Keys"))
	}
	if kv := h.KV(); string(kv["k"]) != "v" || kv["other"] != nil {
		t.Fatalf("kv after: %q", kv)
	}
	// A phase the plugin has no handler for is an error, not a crash.
	if _, err := h.Route("tag", &plugin.Request{Method: "GET", Path: "/x"}); err == nil || !strings.Contains(err.Error(), "no route handler") {
		t.Fatalf("route on a request-only plugin: err=%v", err)
	}
	if err := h.Health(); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if !p.closed {
		t.Error("Close was not called on shutdown")
	}
}

func TestServeRejectsNonPlugins(t *testing.T) {
	a, b := pipe(t)
	defer a.Close()
	err := plugin.ServeConn(context.Background(), b, struct{}{})
	if err == nil || !strings.Contains(err.Error(), "implements no hook interface") {
		t.Fatalf("got %v", err)
	}
}

func TestServeOutsideDaemon(t *testing.T) {
	// The test binary has no fd 3 socket.
	if err := plugin.Serve(&mixed{}); !errors.Is(err, plugin.ErrNotUnderDaemon) {
		t.Fatalf("got %v, want ErrNotUnderDaemon", err)
	}
}
