// Package plugintest drives a plugin in-process, for plugin authors' tests.
// It speaks the real protocol to the plugin over socketpairs — handshake,
// host services, hook calls, frame streams in shared memory, shutdown —
// with a fake host in place of the daemon: an in-memory key-value store and
// a log you can read, and settings (WithSettings, SetSettings) when asked.
// OpenStream drives frame filters and observers.
//
//	h := plugintest.Start(t, &badge{})
//	resp := &plugin.Response{Status: 200, Header: http.Header{}, Body: []byte(`{}`)}
//	if err := h.Response("badge", &plugin.Request{Method: "GET", Path: "/api/v1/media/1"}, resp); err != nil {
//		t.Fatal(err)
//	}
//	// resp now holds the plugin's changes.
//
// It must not import the daemon.
package plugintest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc"

	"github.com/dimplugd/dimplugd/sdk-go/frames"
	"github.com/dimplugd/dimplugd/sdk-go/plugin"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// Harness is a plugin served in-process with a fake host.
type Harness struct {
	t        testing.TB
	conn     *rpc.Conn
	plugin   schema.Plugin
	served   chan error // ServeConn's result
	host     *fakeHost
	settings *fakeSettings // nil without WithSettings
	frames   *framePeer    // the frame socket, played as the daemon would
	closed   bool

	// Deadline bounds every hook call; default 5s.
	Deadline time.Duration
}

// Option configures Start.
type Option func(*config)

type config struct {
	name     string
	kv       map[string][]byte
	settings *fakeSettings
	err      error // of an option
}

// WithName sets the plugin's installed name (default "test-plugin").
func WithName(n string) Option { return func(c *config) { c.name = n } }

// WithKV preloads the fake key-value store.
func WithKV(kv map[string][]byte) Option { return func(c *config) { c.kv = kv } }

// Start serves p and completes the handshake. The harness is closed when the
// test ends, if not before.
func Start(t testing.TB, p any, opts ...Option) *Harness {
	t.Helper()
	cfg := config{name: "test-plugin"}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.err != nil {
		t.Fatalf("plugintest: %v", cfg.err)
	}
	ours, theirs, err := socketpair()
	if err != nil {
		t.Fatalf("plugintest: %v", err)
	}
	h := &Harness{t: t, served: make(chan error, 1), host: newFakeHost(cfg.kv), settings: cfg.settings, Deadline: 5 * time.Second}
	framesOurs, theirFrames, err := frames.Socketpair()
	if err != nil {
		t.Fatalf("plugintest: %v", err)
	}
	pluginFrames, err := frames.FileConn(theirFrames)
	theirFrames.Close()
	if err != nil {
		t.Fatalf("plugintest: %v", err)
	}
	h.frames = newFramePeer(framesOurs)
	go func() { h.served <- plugin.ServeConn(context.Background(), theirs, p, plugin.WithFrames(pluginFrames)) }()
	h.conn = wire.NewConn(ours, capnp.Client{}, nil)
	t.Cleanup(func() { h.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	boot := schema.PluginBootstrap(h.conn.Bootstrap(ctx))
	defer boot.Release()
	fut, release := boot.Handshake(ctx, func(a schema.PluginBootstrap_handshake_Params) error {
		if err := wire.WriteVersions(a.NewDaemonVersions, schema.SupportedVersions); err != nil {
			return err
		}
		svc, err := a.NewServices()
		if err != nil {
			return err
		}
		if err := svc.SetLog(schema.Logger_ServerToClient(h.host)); err != nil {
			return err
		}
		if err := svc.SetKv(schema.KeyValue_ServerToClient(h.host)); err != nil {
			return err
		}
		if h.settings != nil {
			if err := svc.SetSettings(schema.Settings_ServerToClient(h.settings)); err != nil {
				return err
			}
		}
		info, err := a.NewInstance()
		if err != nil {
			return err
		}
		if err := info.SetInstanceId(cfg.name + "-test"); err != nil {
			return err
		}
		return info.SetName(cfg.name)
	})
	defer release()
	res, err := fut.Struct()
	if err != nil {
		t.Fatalf("plugintest: handshake: %v", err)
	}
	if res.Version() == 0 {
		t.Fatalf("plugintest: the plugin accepted none of the protocol versions %v", schema.SupportedVersions)
	}
	h.plugin = res.Plugin().AddRef()
	return h
}

func socketpair() (net.Conn, net.Conn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	var cs [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "plugintest")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			return nil, nil, err
		}
		cs[i] = c
	}
	return cs[0], cs[1], nil
}

// Close asks the plugin to stop, waits for Serve to return and returns its
// error.
func (h *Harness) Close() error {
	if h.closed {
		return nil
	}
	h.closed = true
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	fut, release := h.plugin.Stop(ctx, nil)
	_, _ = fut.Struct()
	release()
	h.plugin.Release()
	var err error
	select {
	case err = <-h.served:
	case <-time.After(10 * time.Second):
		err = fmt.Errorf("plugintest: the plugin did not stop within 10s of the shutdown call")
	}
	if h.settings != nil {
		h.settings.release()
	}
	h.conn.Close()
	h.frames.close()
	return err
}

// call runs one hook and returns the plugin's answer, copied out and
// checked against the rules of its phase as the daemon would.
func (h *Harness) call(hook string, phase schema.Phase, req *plugin.Request, resp *plugin.Response) (wire.HookAnswer, error) {
	ctx, cancel := context.WithTimeout(context.Background(), h.Deadline)
	defer cancel()
	fut, release := h.plugin.Hook(ctx, func(p schema.Plugin_hook_Params) error {
		hc, err := p.NewCall()
		if err != nil {
			return err
		}
		return wire.WriteHookCall(hc, &wire.HookCall{Hook: hook, Phase: phase, Timeout: h.Deadline, Request: req, Response: resp})
	})
	defer release()
	res, err := fut.Struct()
	if err != nil {
		return wire.HookAnswer{}, err
	}
	r, err := res.Result()
	if err != nil {
		return wire.HookAnswer{}, err
	}
	a, err := wire.ReadHookResult(phase, r)
	if err != nil {
		he := wire.AnswerError("", hook, fmt.Sprintf("on %s %s", req.Method, req.Path), err)
		return wire.HookAnswer{}, fmt.Errorf("plugintest: hook %q %s", hook, he.Message)
	}
	return a, nil
}

// Request runs a request-phase hook. The plugin's changes are applied to
// req; a non-nil Response means the plugin answered the request itself.
func (h *Harness) Request(hook string, req *plugin.Request) (*plugin.Response, error) {
	a, err := h.call(hook, schema.Phase_request, req, nil)
	if err != nil {
		return nil, err
	}
	if req.Header == nil {
		req.Header = map[string][]string{}
	}
	a.RequestMutation.Apply(req)
	return a.Response, nil
}

// Response runs a response-phase hook; the plugin's changes are applied to
// resp.
func (h *Harness) Response(hook string, req *plugin.Request, resp *plugin.Response) error {
	a, err := h.call(hook, schema.Phase_response, req, resp)
	if err != nil {
		return err
	}
	a.ResponseMutation.Apply(resp)
	return nil
}

// Route runs a route-phase hook and returns the plugin's response.
func (h *Harness) Route(hook string, req *plugin.Request) (*plugin.Response, error) {
	a, err := h.call(hook, schema.Phase_route, req, nil)
	return a.Response, err
}

// Observe runs an observe-phase hook and waits for it to finish.
func (h *Harness) Observe(hook string, req *plugin.Request, resp *plugin.Response) error {
	_, err := h.call(hook, schema.Phase_observe, req, resp)
	return err
}

// Health runs the plugin's health check.
func (h *Harness) Health() error {
	fut, release := h.plugin.Health(context.Background(), nil)
	defer release()
	res, err := fut.Struct()
	if err != nil {
		return err
	}
	if !res.Ok() {
		d, _ := res.Detail()
		return fmt.Errorf("unhealthy: %s", d)
	}
	return nil
}

// KV returns a copy of the fake key-value store.
func (h *Harness) KV() map[string][]byte { return h.host.snapshot() }

// Logs returns the lines the plugin logged through its Host.Log, formatted
// as "LEVEL message key=value ...".
func (h *Harness) Logs() []string { return h.host.logs() }

// fakeHost implements the host services in memory.
type fakeHost struct {
	mu    sync.Mutex
	kv    map[string][]byte
	lines []string
}

func newFakeHost(kv map[string][]byte) *fakeHost {
	f := &fakeHost{kv: map[string][]byte{}}
	for k, v := range kv {
		f.kv[k] = append([]byte{}, v...)
	}
	return f
}

func (f *fakeHost) snapshot() map[string][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string][]byte, len(f.kv))
	for k, v := range f.kv {
		out[k] = append([]byte{}, v...)
	}
	return out
}

func (f *fakeHost) logs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string{}, f.lines...)
}

func (f *fakeHost) Log(ctx context.Context, call schema.Logger_log) error {
	text, err := call.Args().Text()
	if err != nil {
		return err
	}
	parts := []string{strings.ToUpper(call.Args().Level().String()), text}
	fl, _ := call.Args().Fields()
	for i := 0; i < fl.Len(); i++ {
		k, _ := fl.At(i).Key()
		v, _ := fl.At(i).Value()
		parts = append(parts, k+"="+v)
	}
	f.mu.Lock()
	f.lines = append(f.lines, strings.Join(parts, " "))
	f.mu.Unlock()
	return nil
}

func (f *fakeHost) Get(ctx context.Context, call schema.KeyValue_get) error {
	key, err := call.Args().Key()
	if err != nil {
		return err
	}
	f.mu.Lock()
	v, ok := f.kv[key]
	f.mu.Unlock()
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetFound(ok)
	if ok {
		return res.SetValue(v)
	}
	return nil
}

func (f *fakeHost) Set(ctx context.Context, call schema.KeyValue_set) error {
	key, err := call.Args().Key()
	if err != nil {
		return err
	}
	v, err := call.Args().Value()
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.kv[key] = append([]byte{}, v...)
	f.mu.Unlock()
	return nil
}

func (f *fakeHost) Delete(ctx context.Context, call schema.KeyValue_delete) error {
	key, err := call.Args().Key()
	if err != nil {
		return err
	}
	f.mu.Lock()
	delete(f.kv, key)
	f.mu.Unlock()
	return nil
}

func (f *fakeHost) List(ctx context.Context, call schema.KeyValue_list) error {
	prefix, err := call.Args().Prefix()
	if err != nil {
		return err
	}
	f.mu.Lock()
	var keys []string
	for k := range f.kv {
		if strings.HasPrefix(k, prefix) {
			keys = append(keys, k)
		}
	}
	f.mu.Unlock()
	sort.Strings(keys)
	if n := int(call.Args().Limit()); n > 0 && len(keys) > n {
		keys = keys[:n]
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	l, err := res.NewKeys(int32(len(keys)))
	if err != nil {
		return err
	}
	for i, k := range keys {
		if err := l.Set(i, k); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeHost) CompareAndSwap(ctx context.Context, call schema.KeyValue_compareAndSwap) error {
	a := call.Args()
	key, err := a.Key()
	if err != nil {
		return err
	}
	old, err := a.Old()
	if err != nil {
		return err
	}
	next, err := a.New()
	if err != nil {
		return err
	}
	f.mu.Lock()
	cur, found := f.kv[key]
	swapped := found == a.OldFound() && (!found || bytes.Equal(cur, old))
	if swapped {
		if a.Delete() {
			delete(f.kv, key)
		} else {
			f.kv[key] = append([]byte{}, next...)
		}
		cur, found = f.kv[key]
	}
	cur = append([]byte(nil), cur...)
	f.mu.Unlock()
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetSwapped(swapped)
	res.SetFound(found)
	return res.SetValue(cur)
}

func (f *fakeHost) Increment(ctx context.Context, call schema.KeyValue_increment) error {
	key, err := call.Args().Key()
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var n int64
	if v, ok := f.kv[key]; ok {
		if n, err = strconv.ParseInt(string(v), 10, 64); err != nil {
			return fmt.Errorf("plugintest: key %q holds %q, not an integer", key, v)
		}
	}
	sum := n + call.Args().Delta()
	if (call.Args().Delta() > 0 && sum < n) || (call.Args().Delta() < 0 && sum > n) {
		return fmt.Errorf("plugintest: key %q: %d + %d overflows", key, n, call.Args().Delta())
	}
	f.kv[key] = []byte(strconv.FormatInt(sum, 10))
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetValue(sum)
	return nil
}
