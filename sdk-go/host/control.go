package host

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"capnproto.org/go/capnp/v3/rpc"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// Control is the operator's connection to the daemon: what dimplugctl uses.
type Control struct {
	conn    *rpc.Conn
	c       schema.Control
	version uint16
}

// DialControl opens the control face on the daemon's control socket
// (DefaultControlSocket, `dimplugd serve --control-socket`). Only root, the
// daemon's user and members of its --operator-group may.
func DialControl(ctx context.Context, socket string, opts ...Option) (*Control, error) {
	o := buildOptions(opts)
	if o.client == "dimplugd-sdk-go host" {
		o.client = "dimplugd-sdk-go control"
	}
	conn, boot, ac, err := dial(ctx, "control", socket)
	if err != nil {
		return nil, dialClass(err)
	}
	defer boot.Release()
	fut, release := boot.OpenControl(ctx, func(p schema.Daemon_openControl_Params) error { return offer(p, o) })
	defer release()
	res, err := negotiated("control", "this client", o, conn, ac, fut)
	if err != nil {
		return nil, dialClass(err)
	}
	return &Control{conn: conn, c: res.Control().AddRef(), version: res.Version()}, nil
}

// Close ends the control session.
func (c *Control) Close() error {
	c.c.Release()
	err := c.conn.Close()
	if err != nil && isClosed(err) {
		err = nil
	}
	return err
}

// HookInfo describes one declared hook.
type HookInfo struct {
	Name     string `json:"name"`
	Phase    string `json:"phase"`
	Method   string `json:"method"`
	Route    string `json:"route"`
	Priority int    `json:"priority"`
	Deadline string `json:"deadline"`
	// DeadlineOverridden: the operator set Deadline (dimplugctl deadline).
	DeadlineOverridden bool   `json:"deadline_overridden,omitempty"`
	Failure            string `json:"failure"`
	Calls              uint64 `json:"calls"`
	Failures           uint64 `json:"failures"`
	Circuit            string `json:"circuit"` // closed, open or half-open
	// ByPolicy counts the calls answered by the hook's failure policy
	// instead of the plugin, by cause: "not running", "quarantined",
	// "starting", "breaker open", "deadline", "crashed", "failed",
	// "rejected", "cancelled".
	ByPolicy map[string]uint64 `json:"by_policy,omitempty"`
	// P50 and P99 are the median and 99th percentile latency of the calls
	// that reached the plugin (through the daemon and on direct lanes),
	// estimated from fixed histogram buckets; empty before any call.
	P50 string `json:"p50,omitempty"`
	P99 string `json:"p99,omitempty"`
}

// StreamStageInfo is one of a plugin's stream stages and what it did since
// the daemon started.
type StreamStageInfo struct {
	Name            string `json:"name"`
	Kind            string `json:"kind"`
	Role            string `json:"role"` // transform or observe
	Priority        int    `json:"priority"`
	Deadline        string `json:"deadline"` // per frame
	Failure         string `json:"failure"`
	Streams         uint64 `json:"streams"` // streams it took part in
	Open            int    `json:"open"`    // of which still open
	Frames          uint64 `json:"frames"`  // answered (transform) or given (observe)
	Dropped         uint64 `json:"dropped"` // dropped by it (transform), missed for lack of credit (observe)
	MissedDeadlines uint64 `json:"missed_deadlines"`
	Failures        uint64 `json:"failures"` // streams it failed or was bypassed in
}

// PluginStatus is what the daemon knows about one installed plugin.
type PluginStatus struct {
	Name            string               `json:"name"`
	Version         string               `json:"version"`
	Description     string               `json:"description,omitempty"`
	Enabled         bool                 `json:"enabled"`
	State           string               `json:"state"`
	Detail          string               `json:"detail,omitempty"`
	PID             int                  `json:"pid,omitempty"`
	Restarts        int                  `json:"restarts"`
	LastExit        string               `json:"last_exit,omitempty"`
	Runtime         string               `json:"runtime"`
	Sandboxed       bool                 `json:"sandboxed"`
	ProtocolVersion int                  `json:"protocol_version,omitempty"`
	Hooks           []HookInfo           `json:"hooks"`
	Streams         []StreamStageInfo    `json:"streams"`
	Grant           manifest.Permissions `json:"grant"`
	InstalledAt     time.Time            `json:"installed_at"`
	StartedAt       *time.Time           `json:"started_at,omitempty"`
	Dir             string               `json:"dir"`
	// PreviousVersion is the version kept for rollback; "" when none.
	PreviousVersion string `json:"previous_version,omitempty"`
	// KeptData is set only in an install's answer: the data of an earlier
	// install of the name, kept by an uninstall without purge, that this
	// install took over. Nil when there was none.
	KeptData *KeptData `json:"kept_data,omitempty"`
	// Publisher is who signed the installed package (a trusted key); nil
	// when it was unsigned or installed from a directory.
	Publisher *TrustedKey `json:"publisher,omitempty"`
	// SHA256 is the installed package's hash (hex); empty for a directory.
	SHA256 string `json:"sha256,omitempty"`
}

// failureName is a failure policy as manifests spell it.
func failureName(p schema.FailurePolicy) string {
	if p == schema.FailurePolicy_failClosed {
		return "fail-closed"
	}
	return "fail-open"
}

func readStatus(s schema.PluginStatus) PluginStatus {
	t := func(v string, _ error) string { return v }
	st := PluginStatus{
		Name:            t(s.Name()),
		Version:         t(s.Version()),
		Description:     t(s.Description()),
		Enabled:         s.Enabled(),
		State:           t(s.State()),
		Detail:          t(s.Detail()),
		PID:             int(s.Pid()),
		Restarts:        int(s.Restarts()),
		LastExit:        t(s.LastExit()),
		Runtime:         t(s.Runtime()),
		Sandboxed:       s.Sandboxed(),
		ProtocolVersion: int(s.ProtocolVersion()),
		InstalledAt:     time.UnixMilli(s.InstalledAtUnixMs()),
		Dir:             t(s.Dir()),
		PreviousVersion: t(s.PreviousVersion()),
		KeptData:        readKeptData(s),
		SHA256:          readSHA256(s),
		Publisher:       readPublisher(s),
		Hooks:           []HookInfo{},
		Streams:         []StreamStageInfo{},
	}
	if ms := s.StartedAtUnixMs(); ms != 0 {
		at := time.UnixMilli(ms)
		st.StartedAt = &at
	}
	if hl, err := s.Hooks(); err == nil {
		for i := 0; i < hl.Len(); i++ {
			h := hl.At(i)
			fp := failureName(h.FailurePolicy())
			hi := HookInfo{
				Name: t(h.Name()), Phase: h.Phase().String(), Method: t(h.Method()), Route: t(h.Route()),
				Priority: int(h.Priority()), Deadline: (time.Duration(h.DeadlineMicros()) * time.Microsecond).String(), Failure: fp,
				DeadlineOverridden: h.DeadlineOverridden(), Calls: h.Calls(), Failures: h.Failures(), Circuit: t(h.Circuit()),
				P50: micros(h.P50Micros()), P99: micros(h.P99Micros()),
			}
			if bl, err := h.ByPolicy(); err == nil && bl.Len() > 0 {
				hi.ByPolicy = map[string]uint64{}
				for j := 0; j < bl.Len(); j++ {
					hi.ByPolicy[t(bl.At(j).Cause())] += bl.At(j).Count()
				}
			}
			st.Hooks = append(st.Hooks, hi)
		}
	}
	if sl, err := s.Streams(); err == nil {
		for i := 0; i < sl.Len(); i++ {
			x := sl.At(i)
			fp := failureName(x.FailurePolicy())
			st.Streams = append(st.Streams, StreamStageInfo{
				Name: t(x.Name()), Kind: t(x.Kind()), Role: t(x.Role()), Priority: int(x.Priority()),
				Deadline: (time.Duration(x.DeadlineMicros()) * time.Microsecond).String(), Failure: fp,
				Streams: x.Streams(), Open: int(x.Open()), Frames: x.Frames(), Dropped: x.Dropped(),
				MissedDeadlines: x.MissedDeadlines(), Failures: x.Failures(),
			})
		}
	}
	if g, err := s.Grant(); err == nil {
		st.Grant = wire.ReadPermissions(g)
	}
	return st
}

// InstallOptions says how to install a plugin.
type InstallOptions struct {
	Replace bool                  // upgrade an installed plugin
	Enable  bool                  // start it once installed
	Grant   *manifest.Permissions // what the operator approved; nil: what the manifest asks
	// Wait answers only once the plugin runs and is healthy; an install
	// that fails is undone, an upgrade rolled back, and the error says why.
	Wait bool
}

// Install installs a plugin from a tar archive of its directory (see
// registry.WriteArchive, or Archive in this package).
func (c *Control) Install(ctx context.Context, archive []byte, opts InstallOptions) (*PluginStatus, error) {
	fut, release := c.c.Install(ctx, func(p schema.Control_install_Params) error {
		if err := p.SetArchive(archive); err != nil {
			return err
		}
		o, err := p.NewOptions()
		if err != nil {
			return err
		}
		o.SetReplace(opts.Replace)
		o.SetEnable(opts.Enable)
		o.SetWait(opts.Wait)
		if opts.Grant != nil {
			g, err := o.NewGrant()
			if err != nil {
				return err
			}
			return wire.WritePermissions(g, *opts.Grant)
		}
		return nil
	})
	defer release()
	res, err := fut.Struct()
	if err != nil {
		return nil, cleanErr(err)
	}
	s, err := res.Plugin()
	if err != nil {
		return nil, err
	}
	st := readStatus(s)
	return &st, nil
}

// List returns every installed plugin, sorted by name.
func (c *Control) List(ctx context.Context) ([]PluginStatus, error) {
	fut, release := c.c.List(ctx, nil)
	defer release()
	res, err := fut.Struct()
	if err != nil {
		return nil, cleanErr(err)
	}
	l, err := res.Plugins()
	if err != nil {
		return nil, err
	}
	out := make([]PluginStatus, l.Len())
	for i := range out {
		out[i] = readStatus(l.At(i))
	}
	return out, nil
}

type nameParams interface{ SetName(string) error }

// byName calls one of the control methods that take a plugin name and
// return its status.
func byName[P nameParams, F interface {
	Struct() (R, error)
}, R interface {
	Plugin() (schema.PluginStatus, error)
}](ctx context.Context, call func(context.Context, func(P) error) (F, func()), name string) (*PluginStatus, error) {
	fut, release := call(ctx, func(p P) error { return p.SetName(name) })
	defer release()
	res, err := fut.Struct()
	if err != nil {
		return nil, cleanErr(err)
	}
	s, err := res.Plugin()
	if err != nil {
		return nil, err
	}
	st := readStatus(s)
	return &st, nil
}

// Inspect returns one plugin's status.
func (c *Control) Inspect(ctx context.Context, name string) (*PluginStatus, error) {
	return byName[schema.Control_inspect_Params, schema.Control_inspect_Results_Future](ctx, wrapCall(c.c.Inspect), name)
}

// Enable enables and starts a plugin.
func (c *Control) Enable(ctx context.Context, name string) (*PluginStatus, error) {
	return byName[schema.Control_enable_Params, schema.Control_enable_Results_Future](ctx, wrapCall(c.c.Enable), name)
}

// Disable stops and disables a plugin.
func (c *Control) Disable(ctx context.Context, name string) (*PluginStatus, error) {
	return byName[schema.Control_disable_Params, schema.Control_disable_Results_Future](ctx, wrapCall(c.c.Disable), name)
}

// Rollback returns a plugin to the version it had before its last upgrade,
// with its files, grant and data as they were then, and answers once that
// version runs. The version rolled back from becomes the previous one.
func (c *Control) Rollback(ctx context.Context, name string) (*PluginStatus, error) {
	return byName[schema.Control_rollback_Params, schema.Control_rollback_Results_Future](ctx, wrapCall(c.c.Rollback), name)
}

// Restart restarts a plugin, lifting a quarantine.
func (c *Control) Restart(ctx context.Context, name string) (*PluginStatus, error) {
	return byName[schema.Control_restart_Params, schema.Control_restart_Results_Future](ctx, wrapCall(c.c.Restart), name)
}

// SetHookDeadline overrides the deadline of one of a plugin's hooks; zero
// restores the manifest's.
func (c *Control) SetHookDeadline(ctx context.Context, name, hook string, d time.Duration) (*PluginStatus, error) {
	fut, release := c.c.SetHookDeadline(ctx, func(p schema.Control_setHookDeadline_Params) error {
		p.SetDeadlineMicros(uint64(d / time.Microsecond))
		if err := p.SetHook(hook); err != nil {
			return err
		}
		return p.SetName(name)
	})
	defer release()
	res, err := fut.Struct()
	if err != nil {
		return nil, cleanErr(err)
	}
	s, err := res.Plugin()
	if err != nil {
		return nil, err
	}
	st := readStatus(s)
	return &st, nil
}

// wrapCall adapts a generated method (whose ReleaseFunc is a named type) to
// the plain signature byName takes.
func wrapCall[P, F any, RF ~func()](m func(context.Context, func(P) error) (F, RF)) func(context.Context, func(P) error) (F, func()) {
	return func(ctx context.Context, f func(P) error) (F, func()) {
		fut, rel := m(ctx, f)
		return fut, rel
	}
}

// Remove stops a plugin and deletes it with its data.
func (c *Control) Remove(ctx context.Context, name string) error {
	fut, release := c.c.Remove(ctx, func(p schema.Control_remove_Params) error { return p.SetName(name) })
	defer release()
	_, err := fut.Struct()
	return cleanErr(err)
}

// LogLine is one line of a plugin's log.
type LogLine struct {
	Time   time.Time `json:"time"`
	Stream string    `json:"stream"`
	Text   string    `json:"text"`
}

func readLines(l schema.LogLine_List) []LogLine {
	out := make([]LogLine, l.Len())
	for i := range out {
		ln := l.At(i)
		s, _ := ln.Stream()
		t, _ := ln.Text()
		out[i] = LogLine{Time: time.Unix(0, ln.TimeUnixNano()), Stream: s, Text: t}
	}
	return out
}

// ConsoleLogin returns a one-time login URL of the daemon's operator
// console on its loopback TCP address (dimplugd serve --console-listen):
// it works once, within a minute. It fails as unavailable when the daemon
// serves no console there.
func (c *Control) ConsoleLogin(ctx context.Context) (string, error) {
	fut, release := c.c.ConsoleLogin(ctx, nil)
	defer release()
	res, err := fut.Struct()
	if err != nil {
		return "", cleanErr(err)
	}
	return res.Url()
}

// Logs returns the last tail lines of a plugin's log (0: all kept). With a
// non-nil follow, it then calls follow with every new line until ctx ends
// or the connection does, and only then returns.
func (c *Control) Logs(ctx context.Context, name string, tail int, follow func(LogLine)) ([]LogLine, error) {
	var sink schema.LogSink
	if follow != nil {
		sink = schema.LogSink_ServerToClient(&logSink{f: follow})
	}
	fut, release := c.c.Logs(ctx, func(p schema.Control_logs_Params) error {
		p.SetTail(uint32(tail))
		if follow != nil {
			if err := p.SetSink(sink); err != nil {
				return err
			}
		}
		return p.SetName(name)
	})
	res, err := fut.Struct()
	if err != nil {
		release()
		return nil, cleanErr(err)
	}
	l, err := res.Lines()
	if err != nil {
		release()
		return nil, err
	}
	lines := readLines(l)
	release()
	if follow == nil {
		return lines, nil
	}
	for _, ln := range lines {
		follow(ln)
	}
	select {
	case <-ctx.Done():
	case <-c.conn.Done():
	}
	return lines, nil
}

type logSink struct{ f func(LogLine) }

func (s *logSink) Push(ctx context.Context, call schema.LogSink_push) error {
	l, err := call.Args().Lines()
	if err != nil {
		return err
	}
	for _, ln := range readLines(l) {
		s.f(ln)
	}
	return nil
}

// DaemonStatus describes the daemon.
type DaemonStatus struct {
	Version          string    `json:"version"`
	ProtocolVersions []uint16  `json:"protocol_versions"`
	Runtime          string    `json:"runtime"`
	Sandboxed        bool      `json:"sandboxed"`
	StateDir         string    `json:"state_dir"`
	Socket           string    `json:"socket"`
	StartedAt        time.Time `json:"started_at"`
	Plugins          int       `json:"plugins"`
	// Ready: the daemon's sockets serve and every plugin enabled when it
	// started has started or failed to; false while it stops.
	Ready         bool    `json:"ready"`
	UptimeSeconds float64 `json:"uptime_seconds"`
	// PluginsByState counts the installed plugins by state (only states
	// with a plugin).
	PluginsByState map[string]int `json:"plugins_by_state"`
	// MetricsListen is where the metrics and health endpoint listens
	// ("127.0.0.1:9477", "unix:/path"), or empty when it is off.
	MetricsListen string `json:"metrics_listen,omitempty"`
}

// Status describes the daemon.
func (c *Control) Status(ctx context.Context) (*DaemonStatus, error) {
	fut, release := c.c.Status(ctx, nil)
	defer release()
	res, err := fut.Struct()
	if err != nil {
		return nil, cleanErr(err)
	}
	s, err := res.Daemon()
	if err != nil {
		return nil, err
	}
	t := func(v string, _ error) string { return v }
	vs, _ := wire.ReadVersions(s.ProtocolVersions())
	st := &DaemonStatus{
		Version: t(s.Version()), ProtocolVersions: vs, Runtime: t(s.Runtime()), Sandboxed: s.Sandboxed(),
		StateDir: t(s.StateDir()), Socket: t(s.Socket()), StartedAt: time.UnixMilli(s.StartedAtUnixMs()),
		Plugins: int(s.Plugins()), Ready: s.Ready(), UptimeSeconds: float64(s.UptimeMillis()) / 1000,
		PluginsByState: map[string]int{}, MetricsListen: t(s.MetricsListen()),
	}
	if l, err := s.PluginsByState(); err == nil {
		for i := 0; i < l.Len(); i++ {
			st.PluginsByState[t(l.At(i).State())] += int(l.At(i).Count())
		}
	}
	return st, nil
}

// micros is a duration in microseconds as text ("1.25ms"), or "" for 0.
func micros(us uint64) string {
	if us == 0 {
		return ""
	}
	return (time.Duration(us) * time.Microsecond).String()
}

// RemoteError is an error the daemon answered with; Error returns the
// daemon's message without transport decoration or class mark, and
// errors.Is sees its class (errdefs.ErrNotFound and the others) when the
// daemon gave one.
type RemoteError struct {
	Msg   string
	Class error // one of the errdefs classes, or nil
}

func (e *RemoteError) Error() string { return e.Msg }

// Unwrap returns the error's class (nil when it has none).
func (e *RemoteError) Unwrap() error { return e.Class }

// cleanErr turns an error of a control call into what dimplugctl shows: the
// daemon's message with its class, or a lost connection (unavailable).
func cleanErr(err error) error {
	if err == nil {
		return nil
	}
	if isClosed(err) {
		return errdefs.WithClass(fmt.Errorf("lost the connection to dimplugd: %w", err), errdefs.ErrUnavailable)
	}
	class, msg := wire.RemoteClass(err)
	return &RemoteError{Msg: msg, Class: class}
}

// dialClass gives an error opening the control face its class: a daemon
// that is not there is unavailable, a refusal for lack of rights is
// permission denied.
func dialClass(err error) error {
	switch {
	case errdefs.Class(err) != nil:
		return err
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ENOENT):
		return errdefs.WithClass(err, errdefs.ErrUnavailable)
	}
	return err
}

// KeptData is how much data an install took over from an earlier install of
// the same name.
type KeptData struct {
	Keys     uint64 `json:"keys"`
	Settings uint32 `json:"settings"`
	Bytes    uint64 `json:"bytes"`
}

func readKeptData(s schema.PluginStatus) *KeptData {
	k := KeptData{Keys: s.KeptDataKeys(), Settings: s.KeptDataSettings(), Bytes: s.KeptDataBytes()}
	if k == (KeptData{}) {
		return nil
	}
	return &k
}
