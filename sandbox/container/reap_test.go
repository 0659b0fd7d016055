//go:build linux && cgo

package container

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// childProc is one child of the test process, as /proc shows it.
type childProc struct {
	pid   int
	comm  string
	state string
	start uint64 // clock ticks after boot
}

// children lists the test process's children.
func children() []childProc {
	procs, _ := os.ReadDir("/proc")
	me := strconv.Itoa(os.Getpid())
	var out []childProc
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + p.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(data)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < open {
			continue
		}
		f := strings.Fields(s[end+1:])
		if len(f) < 20 || f[1] != me {
			continue
		}
		st, _ := strconv.ParseUint(f[19], 10, 64)
		out = append(out, childProc{pid: pid, comm: s[open+1 : end], state: f[0], start: st})
	}
	return out
}

// TestKillDuringStartLeavesNoZombies starts instances while SIGKILLing the
// sandbox set-up processes (runc init's stages, which are all children of
// the daemon) at each stage of start, and checks that every one of them is
// reaped: no zombie children are left.
func TestKillDuringStartLeavesNoZombies(t *testing.T) {
	h := newHarness(t)
	stages := []string{"runc:[0:PARENT]", "runc:[1:CHILD]", "runc:[2:INIT]"}
	delays := []time.Duration{0, 200 * time.Microsecond, time.Millisecond, 3 * time.Millisecond}
	before := countZombieChildren()
	kills := map[string]int{}
	var started, failed int
	// Stages 0 and 1 live for a millisecond or so: go round until each
	// stage was hit at every delay, or give up after maxRounds.
	const maxRounds = 400
	hit := map[string]map[time.Duration]bool{}
	missing := func() bool {
		for _, s := range stages {
			if len(hit[s]) < len(delays) {
				return true
			}
		}
		return false
	}
	for i := 0; i < maxRounds && missing(); i++ {
		stage := stages[i%len(stages)]
		delay := delays[(i/len(stages))%len(delays)]
		if hit[stage][delay] {
			continue
		}
		spec, host := h.spec(t)
		spec.Stderr = &syncBuffer{}

		ctx, cancel := context.WithCancel(context.Background())
		killed := make(chan string, 1)
		go func() {
			defer close(killed)
			// Wait for the newest child in the wanted stage, let it run
			// for delay, and kill it.
			for ctx.Err() == nil {
				var newest *childProc
				for _, c := range children() {
					if c.comm == stage && c.state != "Z" && (newest == nil || c.start >= newest.start) {
						c := c
						newest = &c
					}
				}
				if newest != nil {
					time.Sleep(delay)
					if syscall.Kill(newest.pid, syscall.SIGKILL) == nil {
						killed <- stage
					}
					return
				}
				time.Sleep(50 * time.Microsecond)
			}
		}()
		p, err := h.rt.Start(context.Background(), spec)
		spec.Control.Close()
		if err == nil {
			started++
			// Whatever was killed, the instance may or may not live.
			in := &instance{Process: p, conn: host, rd: bufio.NewReader(host), stderr: &syncBuffer{}}
			_, _ = in.ask("ping")
		} else {
			failed++
		}
		cancel()
		if s, ok := <-killed; ok {
			kills[s]++
			if hit[s] == nil {
				hit[s] = map[time.Duration]bool{}
			}
			hit[s][delay] = true
		}
		if err == nil {
			if derr := p.Destroy(); derr != nil {
				t.Errorf("destroy %s: %v", spec.ID, derr)
			}
		}
		host.Close()
	}
	total := 0
	for _, n := range kills {
		total += n
	}
	var after int
	for deadline := time.Now().Add(3 * time.Second); ; {
		after = countZombieChildren()
		if after <= before || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("kills by stage %v (%d in all); starts that succeeded %d, failed %d; zombie children before %d, after %d", kills, total, started, failed, before, after)
	if after > before {
		var zs []string
		for _, c := range children() {
			if c.state == "Z" {
				zs = append(zs, fmt.Sprintf("%d %s", c.pid, c.comm))
			}
		}
		t.Errorf("%d zombie children left after %d kills during start: %v", after-before, total, zs)
	}
	for _, s := range stages {
		if kills[s] == 0 {
			t.Errorf("no process was killed in stage %s", s)
		}
	}
	if missing() {
		t.Logf("not every stage was hit at every delay: %v", hit)
	}
	// The runtime still works.
	in := h.start(t, nil)
	if got := in.mustAsk(t, "ping"); got != "ok pong" {
		t.Fatalf("ping after the kills: %q", got)
	}
}

// TestCgroupParentLock: two Runtimes never share a cgroup parent, whatever
// their state roots (the second's Sweep would kill the first's instances).
func TestCgroupParentLock(t *testing.T) {
	h := newHarness(t)
	in := h.start(t, nil)
	other, err := os.MkdirTemp("/run", "dimplugd-test-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(other)
	if rt, err := New(Config{StateRoot: other, CgroupParent: h.parent}); err == nil || !strings.Contains(err.Error(), "in use by another running daemon") || !strings.Contains(err.Error(), h.stateRoot) {
		if rt != nil {
			rt.Close()
		}
		t.Fatalf("second runtime on a cgroup parent in use: %v", err)
	}
	if got := in.mustAsk(t, "ping"); got != "ok pong" {
		t.Fatalf("ping: %q", got)
	}
	// The state root was not taken either: once the first is closed, it
	// can be used.
	rt2, err := New(Config{StateRoot: other, CgroupParent: h.parent + "-2"})
	if err != nil {
		t.Fatal(err)
	}
	rt2.Close()
}

func TestDefaultsFor(t *testing.T) {
	root1, parent1, err := DefaultsFor("/var/lib/dimplugd")
	if err != nil {
		t.Fatal(err)
	}
	root2, parent2, _ := DefaultsFor("/var/lib/dimplugd/")
	root3, parent3, _ := DefaultsFor("/var/lib/dimplugd-2")
	if root1 != root2 || parent1 != parent2 {
		t.Errorf("the same state dir gives %s %s and %s %s", root1, parent1, root2, parent2)
	}
	if root1 == root3 || parent1 == parent3 {
		t.Errorf("different state dirs share %s %s", root1, parent1)
	}
	if !strings.HasPrefix(root1, DefaultRunDir+"/") || !strings.HasPrefix(parent1, "dimplugd-") || !instanceName.MatchString(parent1) {
		t.Errorf("defaults %s %s", root1, parent1)
	}
	wd, _ := os.Getwd()
	rel, _, _ := DefaultsFor(".")
	abs, _, _ := DefaultsFor(wd)
	if rel != abs {
		t.Errorf("relative and absolute state dir differ: %s %s", rel, abs)
	}
}
