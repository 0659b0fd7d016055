package daemon

import (
	"fmt"
	"strings"
)

// Readiness and a one-line status, for a service manager (systemd's
// READY=1 and STATUS=, see cmd/dimplugd/systemd.go).
//
// A daemon is ready when Start has returned (both sockets accept
// connections; handed-over plugins are adopted) and Settled reports true:
// the first start of every plugin that is enabled has come to an end,
// running or not (a plugin that failed to start is in backoff, failed or
// quarantined, and the daemon serves without it). Each start is bounded by
// Supervision.StartTimeout, so a daemon becomes ready in bounded time.

// Counts is how many plugins are installed and in each state.
type Counts struct {
	Installed int
	Enabled   int
	// States counts the plugins by state (the State* constants).
	States map[string]int
}

// Counts returns how many plugins are installed, enabled and in each
// state, under one lock per unit.
func (d *Daemon) Counts() Counts {
	c := Counts{States: map[string]int{}}
	for _, u := range d.sortedUnits() {
		u.mu.Lock()
		c.Installed++
		if u.rec.Enabled {
			c.Enabled++
		}
		c.States[u.state.name()]++
		u.mu.Unlock()
	}
	return c
}

// Settled reports whether every enabled plugin's first start has come to
// an end: none is wanted and still stopped or starting.
func (d *Daemon) Settled() bool {
	for _, u := range d.sortedUnits() {
		u.mu.Lock()
		pending := false
		if u.wantedLocked() {
			switch u.state.(type) {
			case stoppedState, startingState:
				pending = true
			}
		}
		u.mu.Unlock()
		if pending {
			return false
		}
	}
	return true
}

// Changes returns a channel that receives (coalesced: capacity one) when a
// plugin changes state. It is never closed.
func (d *Daemon) Changes() <-chan struct{} { return d.changes }

// changed notes a plugin state change for Changes, without blocking.
func (d *Daemon) changed() {
	select {
	case d.changes <- struct{}{}:
	default:
	}
}

// String is a line for a human: "7 plugins (6 running, 1 quarantined)",
// or "no plugins installed".
func (c Counts) String() string {
	if c.Installed == 0 {
		return "no plugins installed"
	}
	var parts []string
	for _, s := range []string{StateRunning, StateStarting, StateBackoff, StateQuarantined, StateFailed, StateStopped} {
		if n := c.States[s]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, s))
		}
	}
	noun := "plugins"
	if c.Installed == 1 {
		noun = "plugin"
	}
	return fmt.Sprintf("%d %s (%s)", c.Installed, noun, strings.Join(parts, ", "))
}
