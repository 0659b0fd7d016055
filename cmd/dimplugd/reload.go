package main

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/dimplugd/dimplugd/daemon"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
)

// limitFlags are the flags of daemon.Limits.
var limitFlags = []string{"max-conns", "host-conns-per-uid", "control-conns-per-uid", "first-message-timeout",
	"message-timeout", "host-message-size", "control-message-size", "receive-budget"}

// limitsOf reads daemon.Limits from serve's flags.
func limitsOf(flags *pflag.FlagSet) (daemon.Limits, error) {
	var l daemon.Limits
	var err error
	get := func(name string) string { return flags.Lookup(name).Value.String() }
	atoi := func(name string) int {
		n, e := strconv.Atoi(get(name))
		if e != nil && err == nil {
			err = fmt.Errorf("--%s: %w", name, e)
		}
		return n
	}
	dur := func(name string) time.Duration {
		d, e := time.ParseDuration(get(name))
		if e != nil && err == nil {
			err = fmt.Errorf("--%s: %w", name, e)
		}
		return d
	}
	size := func(name string) int64 {
		v := get(name)
		if v == "" {
			return 0
		}
		n, e := manifest.ParseSize(v)
		if e != nil && err == nil {
			err = fmt.Errorf("--%s: %w", name, e)
		}
		return int64(n)
	}
	l.MaxConns, l.HostConnsPerUID, l.ControlConnsPerUID = atoi("max-conns"), atoi("host-conns-per-uid"), atoi("control-conns-per-uid")
	l.FirstMessageTimeout, l.MessageTimeout = dur("first-message-timeout"), dur("message-timeout")
	l.HostMessageSize, l.ControlMessageSize, l.ReceiveBudget = size("host-message-size"), size("control-message-size"), size("receive-budget")
	return l, err
}

// liveFlags change while the daemon runs (SIGHUP); every other key waits
// for a restart.
var liveFlags = map[string]bool{"debug": true, "metrics-listen": true}

func init() {
	for _, f := range limitFlags {
		liveFlags[f] = f != "receive-budget"
	}
}

// reloader is what a reload changes in the running daemon.
type reloader interface {
	SetLogLevel(slog.Level)
	SetLimits(daemon.Limits) error
	SetMetricsListen(addr string) error
	SetHookDeadline(name, hook string, d time.Duration) (any, error)
}

// daemonReloader adapts *daemon.Daemon.
type daemonReloader struct{ d *daemon.Daemon }

func (r daemonReloader) SetLogLevel(l slog.Level)           { r.d.SetLogLevel(l) }
func (r daemonReloader) SetLimits(l daemon.Limits) error    { return r.d.SetLimits(l) }
func (r daemonReloader) SetMetricsListen(addr string) error { return r.d.SetMetricsListen(addr) }
func (r daemonReloader) SetHookDeadline(name, hook string, d time.Duration) (any, error) {
	return r.d.SetHookDeadline(name, hook, d)
}

// reloadReport says what a reload did.
type reloadReport struct {
	Applied []string // keys applied live
	Restart []string // keys that changed but wait for a restart
	Flagged []string // keys the command line overrides
	Failed  []string // "key: why" for live changes that failed
}

// reload reads the config file again and applies what changed and can
// change live: the log level (debug), the connection and message limits
// but the receive budget, the metrics listener and [deadlines]. prev is
// the config in force (nil: none), cmdline the flags given on the command
// line (they win over the file). It returns the new config in force and
// what it did; on a file that does not load, it changes nothing.
func reload(ctx context.Context, r reloader, path string, prev *config, flags *pflag.FlagSet, cmdline map[string]bool) (*config, reloadReport, error) {
	var rep reloadReport
	next, err := loadConfig(path, flags)
	if err != nil {
		return prev, rep, err
	}
	if prev == nil {
		prev = &config{path: path, keys: map[string]string{}, deadlines: map[string]time.Duration{}}
	}
	// The effective value of a key: the file's, else the flag's default.
	value := func(c *config, name string) string {
		if v, ok := c.keys[name]; ok {
			return v
		}
		return flags.Lookup(name).DefValue
	}
	names := map[string]bool{}
	for k := range prev.keys {
		names[k] = true
	}
	for k := range next.keys {
		names[k] = true
	}
	// A fresh flag set holds the new values, for the parsers.
	nf := serveCmd().Flags()
	flags.VisitAll(func(f *pflag.Flag) {
		v := f.Value.String()
		if !cmdline[f.Name] {
			v = value(next, f.Name)
		}
		if nf.Lookup(f.Name) != nil {
			nf.Set(f.Name, v)
		}
	})
	limitsChanged := false
	for _, name := range sortedKeys(names) {
		if value(prev, name) == value(next, name) {
			continue
		}
		key := strings.ReplaceAll(name, "-", "_")
		switch {
		case cmdline[name]:
			rep.Flagged = append(rep.Flagged, key)
		case !liveFlags[name]:
			rep.Restart = append(rep.Restart, key)
		case name == "debug":
			level := slog.LevelInfo
			if value(next, name) == "true" {
				level = slog.LevelDebug
			}
			r.SetLogLevel(level)
			rep.Applied = append(rep.Applied, key)
		case name == "metrics-listen":
			if err := r.SetMetricsListen(value(next, name)); err != nil {
				rep.Failed = append(rep.Failed, key+": "+err.Error())
			} else {
				rep.Applied = append(rep.Applied, key)
			}
		default: // a limit
			limitsChanged = true
			rep.Applied = append(rep.Applied, key)
		}
	}
	if limitsChanged {
		l, err := limitsOf(nf)
		if err == nil {
			err = r.SetLimits(l)
		}
		if err != nil {
			rep.Failed = append(rep.Failed, "limits: "+err.Error())
		}
	}
	// [deadlines]: set every entry (a plugin installed since the last
	// reload gets its override now), restore the removed ones.
	subs := map[string]bool{}
	for k := range prev.deadlines {
		subs[k] = true
	}
	for k := range next.deadlines {
		subs[k] = true
	}
	for _, sub := range sortedKeys(subs) {
		err := applyDeadline(r, sub, next.deadlines[sub])
		switch {
		case err != nil:
			rep.Failed = append(rep.Failed, fmt.Sprintf("deadlines.%q: %v", sub, err))
		case prev.deadlines[sub] != next.deadlines[sub]:
			rep.Applied = append(rep.Applied, fmt.Sprintf("deadlines.%q", sub))
		}
	}
	sort.Strings(rep.Applied)
	return next, rep, nil
}

// applyDeadline sets one [deadlines] entry (0: back to the manifest's).
func applyDeadline(r reloader, sub string, d time.Duration) error {
	plugin, hook, _ := strings.Cut(sub, "/")
	_, err := r.SetHookDeadline(plugin, hook, d)
	return err
}

// applyDeadlines sets every [deadlines] entry of c, at start; an entry
// for a plugin not installed is logged and skipped.
func applyDeadlines(r reloader, c *config, log *slog.Logger) {
	if c == nil {
		return
	}
	for _, sub := range sortedKeys(c.deadlines) {
		if err := applyDeadline(r, sub, c.deadlines[sub]); err != nil {
			log.Warn("config: deadline override not applied", "hook", sub, "err", err)
		}
	}
}

// logReload logs what a reload did, for the operator who sent SIGHUP.
func logReload(log *slog.Logger, path string, rep reloadReport, err error) {
	switch {
	case err != nil:
		log.Error("config not reloaded: the file does not load; nothing changed", "config", path, "err", err)
		return
	case len(rep.Applied)+len(rep.Restart)+len(rep.Flagged)+len(rep.Failed) == 0:
		log.Info("config reloaded: nothing changed", "config", path)
		return
	}
	log.Info("config reloaded", "config", path, "applied", strings.Join(rep.Applied, ","))
	if len(rep.Restart) > 0 {
		log.Warn("config: these changes need a restart (systemctl restart dimplugd)", "keys", strings.Join(rep.Restart, ","))
	}
	if len(rep.Flagged) > 0 {
		log.Warn("config: these keys changed but a command-line flag overrides them", "keys", strings.Join(rep.Flagged, ","))
	}
	for _, f := range rep.Failed {
		log.Error("config: a change was not applied", "change", f)
	}
}
