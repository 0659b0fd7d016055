package daemon

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/dimplugd/dimplugd/daemon/registry"
)

// Plugin states, as shown by `dimplugctl inspect`. Hosts, the CLI and
// tests compare against these strings: they do not change.
const (
	StateStopped     = "stopped"
	StateStarting    = "starting"
	StateRunning     = "running"
	StateBackoff     = "backoff"
	StateQuarantined = "quarantined"
	StateFailed      = "failed"
)

// pluginState is what a unit's supervisor is doing with its plugin, and
// owns everything that only makes sense in that state: the running
// instance only in running, the restart delay only in backoff, the reason
// only where there is one. Each state is its own type (after runc's
// libcontainer/state_linux.go), so a state cannot carry another's data: no
// "running" without an instance, no instance left behind once it is not
// running.
//
// A unit's state changes only through unit.transitionLocked, which refuses
// any move not in the transitions table. The operator's requests (remove,
// restart) are not states: they are kept on the unit and acted on by its
// run loop, which moves the state.
type pluginState interface {
	// name is one of the State* constants.
	name() string
	// detail says why the plugin is in this state, or "".
	detail() string
	// check reports what is wrong with the state's own data, or nil.
	check() error
}

// stoppedState: no instance, and none wanted until the operator (or the
// run loop) says so.
type stoppedState struct {
	why string // "disabled", "removed", "stopping", "restart requested", …; "" before the first start
}

// startingState: an instance is being spawned and shaken hands with. It is
// not callable yet, so it is not held here.
type startingState struct{}

// runningState: an instance answered the handshake and is served.
type runningState struct {
	inst *instance // never nil
}

// backoffState: the last instance ended unexpectedly (or could not
// start). While the crashed instance is being torn down, delay is 0; then
// the supervisor waits delay, until until, before starting another.
type backoffState struct {
	why   string // how the last instance ended
	delay time.Duration
	until time.Time // zero while delay is 0
}

// quarantinedState: the plugin crashed too often. It stays out until the
// operator restarts or re-enables it.
type quarantinedState struct {
	why string // what happened and what to do
}

// failedState: the plugin cannot start for a reason restarting won't fix
// (a protocol version or a manifest mismatch). It stays out until the
// operator reinstalls, restarts or re-enables it.
type failedState struct {
	why string
}

func (stoppedState) name() string     { return StateStopped }
func (startingState) name() string    { return StateStarting }
func (runningState) name() string     { return StateRunning }
func (backoffState) name() string     { return StateBackoff }
func (quarantinedState) name() string { return StateQuarantined }
func (failedState) name() string      { return StateFailed }

func (s stoppedState) detail() string     { return s.why }
func (startingState) detail() string      { return "" }
func (runningState) detail() string       { return "" }
func (s quarantinedState) detail() string { return s.why }
func (s failedState) detail() string      { return s.why }
func (s backoffState) detail() string {
	if s.delay == 0 {
		return s.why // not "running" while it is torn down
	}
	return fmt.Sprintf("%s; restarting in %s", s.why, s.delay.Round(time.Millisecond))
}

func (stoppedState) check() error  { return nil }
func (startingState) check() error { return nil }
func (s runningState) check() error {
	if s.inst == nil || s.inst.proc == nil {
		return errors.New("running without an instance")
	}
	return nil
}
func (s backoffState) check() error {
	switch {
	case s.why == "":
		return errors.New("backoff without a reason")
	case s.delay < 0 || (s.delay == 0) != s.until.IsZero():
		return fmt.Errorf("backoff with delay %s and deadline %v", s.delay, s.until)
	}
	return nil
}
func (s quarantinedState) check() error {
	if s.why == "" {
		return errors.New("quarantined without a reason")
	}
	return nil
}
func (s failedState) check() error {
	if s.why == "" {
		return errors.New("failed without a reason")
	}
	return nil
}

// transitions is every move a unit's state may make, by the state it
// leaves. Any other move is a supervisor bug and is refused.
var transitions = map[string][]string{
	// The run loop starts the plugin; its detail changes (disabled,
	// removed) without it starting.
	StateStopped: {StateStarting, StateStopped},
	// The handshake succeeds, fails for good, or the start counts as a
	// crash (backoff, or quarantine after too many).
	StateStarting: {StateRunning, StateFailed, StateBackoff, StateQuarantined},
	// The instance is stopped on purpose, or crashed and is torn down;
	// or an upgrade switches to the instance it started beside it.
	StateRunning: {StateStopped, StateBackoff, StateRunning},
	// Torn down, it waits its delay (backoff to backoff) or is
	// quarantined; then it starts again, or stops if no longer wanted.
	StateBackoff: {StateBackoff, StateQuarantined, StateStarting, StateStopped},
	// Only the operator (restart, enable, reinstall) or a removal lifts
	// these; the run loop then starts it from stopped.
	StateQuarantined: {StateStopped},
	StateFailed:      {StateStopped},
}

// errBadTransition is what every refused move wraps.
var errBadTransition = errors.New("illegal plugin state transition")

// transitionError is a move the transitions table (or the target state's
// own data) does not allow.
type transitionError struct {
	plugin, from, to string
	why              string // what is wrong with the target state, or "" if the move itself is not allowed
}

func (e *transitionError) Error() string {
	if e.why != "" {
		return fmt.Sprintf("plugin %q: cannot go from %s to %s: %s", e.plugin, e.from, e.to, e.why)
	}
	return fmt.Sprintf("plugin %q: cannot go from %s to %s: not an allowed move", e.plugin, e.from, e.to)
}

func (e *transitionError) Unwrap() error { return errBadTransition }

// checkTransition reports whether a unit may move from one state to the
// other, and why not.
func checkTransition(plugin string, from, to pluginState) error {
	if err := to.check(); err != nil {
		return &transitionError{plugin: plugin, from: from.name(), to: to.name(), why: err.Error()}
	}
	if !slices.Contains(transitions[from.name()], to.name()) {
		return &transitionError{plugin: plugin, from: from.name(), to: to.name()}
	}
	return nil
}

// transitionLocked moves the unit to state to if the move is allowed; else
// it logs the refusal and returns it, leaving the state as it was. It is
// the only writer of u.state and u.inst. The caller holds u.mu.
func (u *unit) transitionLocked(to pluginState) error {
	if err := checkTransition(u.name, u.state, to); err != nil {
		u.d.log.Error("refused plugin state change", "plugin", u.name, "from", u.state.name(), "to", to.name(), "err", err)
		return err
	}
	u.state = to
	u.inst = nil
	if r, ok := to.(runningState); ok {
		u.inst = r.inst
	}
	u.d.changed() // for Daemon.Changes
	return nil
}

// transition is transitionLocked taking u.mu.
func (u *unit) transition(to pluginState) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.transitionLocked(to)
}

// outLocked reports whether the plugin is held out (quarantined or failed)
// until the operator lets it back.
func (u *unit) outLocked() bool {
	switch u.state.(type) {
	case quarantinedState, failedState:
		return true
	}
	return false
}

// letBackLocked moves a plugin held out in one of the given states
// (StateQuarantined, StateFailed) to stopped, so that its run loop starts
// it again when it is wanted. why becomes the stopped state's detail.
func (u *unit) letBackLocked(why string, from ...string) {
	if u.outLocked() && slices.Contains(from, u.state.name()) {
		_ = u.transitionLocked(stoppedState{why: why})
	}
}

// unitStatus is a consistent snapshot of a unit, for status and inspect.
type unitStatus struct {
	state, detail string
	pid           int // 0 unless running
	started       time.Time
	version       uint16
	restarts      int
	lastExit      string
}

// status returns the unit's record and a snapshot of its state, taken
// under one lock.
func (u *unit) status() (registry.Record, unitStatus) {
	u.mu.Lock()
	defer u.mu.Unlock()
	s := unitStatus{
		state:    u.state.name(),
		detail:   u.state.detail(),
		restarts: u.restarts,
		lastExit: u.lastExit,
	}
	if r, ok := u.state.(runningState); ok {
		s.pid, s.started, s.version = r.inst.proc.Pid(), r.inst.started, r.inst.version
	}
	return u.rec, s
}
