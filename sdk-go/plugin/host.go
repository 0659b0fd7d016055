package plugin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// Host is what the daemon granted this plugin instance. It is valid from
// Init until the plugin stops and safe for concurrent use.
type Host struct {
	// Name is the plugin's installed name.
	Name string
	// InstanceID is unique per start ("media-badge-3").
	InstanceID string
	// Sandboxed is false when the daemon runs plugins without a sandbox.
	Sandboxed bool
	// Log writes structured lines to the plugin's log, shown by
	// `dimplugctl logs`. Never nil.
	Log *slog.Logger
	// KV is the plugin's private, persistent key-value store; nil when the
	// daemon did not grant one.
	KV *KV
	// HTTP sends requests through the daemon to the outbound hosts the
	// operator granted (the sandbox has no network of its own). Nil when no
	// outbound host was granted. Redirects to hosts outside the grant fail.
	HTTP *http.Client
	// Settings are the plugin's settings (manifest [settings]); nil when
	// it declares none.
	Settings *Settings

	logger capRef[schema.Logger]
	fetch  capRef[schema.Fetcher]
}

// capRef holds a capability the daemon granted. A daemon upgraded in place
// grants its own on the new connection (see the rebind in server.go), and
// the holder swaps them in under the plugin's feet.
type capRef[T interface {
	AddRef() T
	Release()
}] struct {
	mu sync.Mutex
	c  T
}

// get returns a reference to the current capability; release it after use.
func (r *capRef[T]) get() T {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.c.AddRef()
}

// set takes c, releasing the capability it replaces.
func (r *capRef[T]) set(c T) {
	r.mu.Lock()
	old := r.c
	r.c = c
	r.mu.Unlock()
	old.Release()
}

func newHost(inst schema.InstanceInfo, svc schema.HostServices) *Host {
	name, _ := inst.Name()
	id, _ := inst.InstanceId()
	h := &Host{Name: name, InstanceID: id, Sandboxed: inst.Sandboxed()}
	if svc.HasLog() {
		h.logger.set(svc.Log().AddRef())
		h.Log = slog.New(&logHandler{c: &h.logger})
	} else {
		h.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	if svc.HasKv() {
		h.KV = &KV{}
		h.KV.c.set(svc.Kv().AddRef())
	}
	if svc.HasFetch() {
		h.fetch.set(svc.Fetch().AddRef())
		h.HTTP = &http.Client{Transport: &fetchTransport{c: &h.fetch}}
	}
	if svc.HasSettings() {
		h.Settings = &Settings{}
		h.Settings.c.set(svc.Settings().AddRef())
	}
	return h
}

// rebind swaps in the services of a daemon upgraded in place. What was not
// granted at Init stays so (the grants do not change across an upgrade).
func (h *Host) rebind(svc schema.HostServices) {
	if h.Log != nil && svc.HasLog() {
		h.logger.set(svc.Log().AddRef())
	}
	if h.KV != nil && svc.HasKv() {
		h.KV.c.set(svc.Kv().AddRef())
	}
	if h.HTTP != nil && svc.HasFetch() {
		h.fetch.set(svc.Fetch().AddRef())
	}
	if h.Settings != nil && svc.HasSettings() {
		h.Settings.rebind(svc.Settings().AddRef())
	}
}

func (h *Host) release() {
	var nullLog schema.Logger
	var nullFetch schema.Fetcher
	h.logger.set(nullLog)
	h.fetch.set(nullFetch)
	if h.KV != nil {
		var nullKV schema.KeyValue
		h.KV.c.set(nullKV)
	}
	if h.Settings != nil {
		var nullSettings schema.Settings
		h.Settings.c.set(nullSettings)
	}
}

// ErrKVUnavailable is returned by a KV method when the store was not
// granted.
var ErrKVUnavailable = errors.New("key-value store not granted to this plugin")

// KV is the plugin's private key-value store, kept by the daemon across
// plugin and daemon restarts. Keys are 1–1024 bytes, values at most 1 MiB.
type KV struct{ c capRef[schema.KeyValue] }

// Get returns the value stored under key and whether there was one.
func (kv *KV) Get(ctx context.Context, key string) ([]byte, bool, error) {
	if kv == nil {
		return nil, false, ErrKVUnavailable
	}
	c := kv.c.get()
	defer c.Release()
	fut, release := c.Get(ctx, func(p schema.KeyValue_get_Params) error { return p.SetKey(key) })
	defer release()
	res, err := fut.Struct()
	if err != nil {
		return nil, false, fmt.Errorf("kv get %q: %w", key, err)
	}
	if !res.Found() {
		return nil, false, nil
	}
	v, err := res.Value()
	if err != nil {
		return nil, false, fmt.Errorf("kv get %q: %w", key, err)
	}
	return append([]byte{}, v...), true, nil
}

// Set stores value under key.
func (kv *KV) Set(ctx context.Context, key string, value []byte) error {
	if kv == nil {
		return ErrKVUnavailable
	}
	c := kv.c.get()
	defer c.Release()
	fut, release := c.Set(ctx, func(p schema.KeyValue_set_Params) error {
		if err := p.SetKey(key); err != nil {
			return err
		}
		return p.SetValue(value)
	})
	defer release()
	if _, err := fut.Struct(); err != nil {
		return fmt.Errorf("kv set %q: %w", key, err)
	}
	return nil
}

// Delete removes key; deleting a missing key is not an error.
func (kv *KV) Delete(ctx context.Context, key string) error {
	if kv == nil {
		return ErrKVUnavailable
	}
	c := kv.c.get()
	defer c.Release()
	fut, release := c.Delete(ctx, func(p schema.KeyValue_delete_Params) error { return p.SetKey(key) })
	defer release()
	if _, err := fut.Struct(); err != nil {
		return fmt.Errorf("kv delete %q: %w", key, err)
	}
	return nil
}

// List returns up to limit keys starting with prefix, in byte order (limit
// 0: the daemon's maximum).
func (kv *KV) List(ctx context.Context, prefix string, limit int) ([]string, error) {
	if kv == nil {
		return nil, ErrKVUnavailable
	}
	c := kv.c.get()
	defer c.Release()
	fut, release := c.List(ctx, func(p schema.KeyValue_list_Params) error {
		p.SetLimit(uint32(limit))
		return p.SetPrefix(prefix)
	})
	defer release()
	res, err := fut.Struct()
	if err != nil {
		return nil, fmt.Errorf("kv list %q: %w", prefix, err)
	}
	l, err := res.Keys()
	if err != nil {
		return nil, fmt.Errorf("kv list %q: %w", prefix, err)
	}
	keys := make([]string, l.Len())
	for i := range keys {
		if keys[i], err = l.At(i); err != nil {
			return nil, fmt.Errorf("kv list %q: %w", prefix, err)
		}
	}
	return keys, nil
}

// logHandler is a slog.Handler that writes through the daemon's Logger
// capability. Each record is one call, awaited, so lines keep their order
// and a flood of logs slows the plugin rather than the daemon's memory.
type logHandler struct {
	c     *capRef[schema.Logger]
	attrs []slog.Attr
	group string
}

func (h *logHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *logHandler) Handle(_ context.Context, r slog.Record) error {
	fields := append([]slog.Attr{}, h.attrs...)
	r.Attrs(func(a slog.Attr) bool {
		if h.group != "" {
			a.Key = h.group + "." + a.Key
		}
		fields = append(fields, a)
		return true
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c := h.c.get()
	defer c.Release()
	fut, release := c.Log(ctx, func(p schema.Logger_log_Params) error {
		p.SetLevel(level(r.Level))
		if err := p.SetText(r.Message); err != nil {
			return err
		}
		l, err := p.NewFields(int32(len(fields)))
		if err != nil {
			return err
		}
		for i, a := range fields {
			if err := l.At(i).SetKey(a.Key); err != nil {
				return err
			}
			if err := l.At(i).SetValue(a.Value.String()); err != nil {
				return err
			}
		}
		return nil
	})
	defer release()
	_, err := fut.Struct()
	return err
}

func (h *logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(append([]slog.Attr{}, h.attrs...), as...)
	return &c
}

func (h *logHandler) WithGroup(name string) slog.Handler {
	c := *h
	if c.group != "" {
		name = c.group + "." + name
	}
	c.group = name
	return &c
}

func level(l slog.Level) schema.LogLevel {
	switch {
	case l >= slog.LevelError:
		return schema.LogLevel_error
	case l >= slog.LevelWarn:
		return schema.LogLevel_warn
	case l >= slog.LevelInfo:
		return schema.LogLevel_info
	}
	return schema.LogLevel_debug
}
