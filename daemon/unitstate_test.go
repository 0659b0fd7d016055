package daemon

import (
	"errors"
	"io"
	"log/slog"
	"syscall"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sandbox"
)

// fakeProc is a sandbox.Process that is never started.
type fakeProc struct{ pid int }

func (p fakeProc) Pid() int                  { return p.pid }
func (fakeProc) Done() <-chan struct{}       { return nil }
func (fakeProc) Wait() sandbox.Exit          { return sandbox.Exit{} }
func (fakeProc) Signal(syscall.Signal) error { return nil }
func (fakeProc) Destroy() error              { return nil }

var _ sandbox.Process = fakeProc{}

// oneOfEach is a well-formed state of every kind, by name.
func oneOfEach() map[string]pluginState {
	return map[string]pluginState{
		StateStopped:     stoppedState{why: "disabled"},
		StateStarting:    startingState{},
		StateRunning:     runningState{inst: &instance{id: "p-1", proc: fakeProc{pid: 42}}},
		StateBackoff:     backoffState{why: "the plugin exited with code 2", delay: time.Second, until: time.Now().Add(time.Second)},
		StateQuarantined: quarantinedState{why: "crashed 3 times"},
		StateFailed:      failedState{why: "protocol version mismatch"},
	}
}

// TestStateTransitions checks the transitions table: every listed move is
// allowed, every other move between well-formed states is refused, and so
// is any move to a state whose data does not fit it.
func TestStateTransitions(t *testing.T) {
	allowed := []struct{ from, to string }{
		{StateStopped, StateStarting},
		{StateStopped, StateStopped},
		{StateStarting, StateRunning},
		{StateStarting, StateFailed},
		{StateStarting, StateBackoff},
		{StateStarting, StateQuarantined},
		{StateRunning, StateStopped},
		{StateRunning, StateBackoff},
		{StateRunning, StateRunning}, // an upgrade switches instances
		{StateBackoff, StateBackoff},
		{StateBackoff, StateQuarantined},
		{StateBackoff, StateStarting},
		{StateBackoff, StateStopped},
		{StateQuarantined, StateStopped},
		{StateFailed, StateStopped},
	}
	ok := map[[2]string]bool{}
	for _, m := range allowed {
		ok[[2]string{m.from, m.to}] = true
	}
	states := oneOfEach()
	names := []string{StateStopped, StateStarting, StateRunning, StateBackoff, StateQuarantined, StateFailed}
	for _, from := range names {
		for _, to := range names {
			err := checkTransition("p", states[from], states[to])
			want := ok[[2]string{from, to}]
			if want && err != nil {
				t.Errorf("%s → %s: refused: %v", from, to, err)
			}
			if !want && !errors.Is(err, errBadTransition) {
				t.Errorf("%s → %s: got %v, want it refused", from, to, err)
			}
		}
	}
	if n := len(ok); n != len(allowed) {
		t.Fatalf("the test lists a move twice (%d distinct of %d)", n, len(allowed))
	}
	total := 0
	for _, tos := range transitions {
		total += len(tos)
	}
	if total != len(allowed) {
		t.Errorf("the transitions table has %d moves, the test knows %d", total, len(allowed))
	}

	// States whose own data is wrong are refused even on allowed moves.
	malformed := []struct {
		name     string
		from, to pluginState
	}{
		{"running without an instance", startingState{}, runningState{}},
		{"running with an instance without a process", startingState{}, runningState{inst: &instance{id: "p-1"}}},
		{"backoff without a reason", runningState{inst: &instance{proc: fakeProc{}}}, backoffState{}},
		{"backoff with a delay but no deadline", backoffState{why: "x"}, backoffState{why: "x", delay: time.Second}},
		{"backoff with a deadline but no delay", backoffState{why: "x"}, backoffState{why: "x", until: time.Now()}},
		{"backoff with a negative delay", backoffState{why: "x"}, backoffState{why: "x", delay: -time.Second, until: time.Now()}},
		{"quarantined without a reason", backoffState{why: "x"}, quarantinedState{}},
		{"failed without a reason", startingState{}, failedState{}},
	}
	for _, tc := range malformed {
		if err := checkTransition("p", tc.from, tc.to); !errors.Is(err, errBadTransition) {
			t.Errorf("%s: got %v, want it refused", tc.name, err)
		}
	}
}

// TestTransitionLocked checks that a unit's instance follows its state and
// that a refused move changes nothing.
func TestTransitionLocked(t *testing.T) {
	u := &unit{d: &Daemon{log: slog.New(slog.NewTextHandler(io.Discard, nil))}, name: "p", state: stoppedState{}}
	inst := &instance{id: "p-1", proc: fakeProc{pid: 42}}
	steps := []struct {
		to      pluginState
		wantErr bool
	}{
		{runningState{inst: inst}, true}, // stopped → running skips starting
		{startingState{}, false},
		{runningState{inst: inst}, false},
		{startingState{}, true},            // running → starting
		{quarantinedState{why: "x"}, true}, // running → quarantined
		{backoffState{why: "the plugin exited with code 2"}, false},
		{backoffState{why: "the plugin exited with code 2", delay: time.Second, until: time.Now().Add(time.Second)}, false},
		{runningState{inst: inst}, true}, // backoff → running
		{startingState{}, false},
	}
	for i, st := range steps {
		before, beforeInst := u.state, u.inst
		err := u.transitionLocked(st.to)
		if st.wantErr {
			if !errors.Is(err, errBadTransition) {
				t.Fatalf("step %d (%s → %s): got %v, want it refused", i, before.name(), st.to.name(), err)
			}
			if u.state != before || u.inst != beforeInst {
				t.Fatalf("step %d: a refused move changed the state to %s", i, u.state.name())
			}
			continue
		}
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		_, isRunning := u.state.(runningState)
		if (u.inst != nil) != isRunning {
			t.Fatalf("step %d: state %s with instance %v", i, u.state.name(), u.inst)
		}
		_, s := u.status()
		if s.state != st.to.name() || (s.pid != 0) != isRunning {
			t.Fatalf("step %d: status %+v in state %s", i, s, st.to.name())
		}
	}
}
