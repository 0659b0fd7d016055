package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dimplugd/dimplugd/sandbox"
	"github.com/dimplugd/dimplugd/sdk-go/frames"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// Upgrades in place.
//
// A daemon asked to upgrade (SIGUSR2; under systemd `systemctl kill -s
// USR2 --kill-whom=main dimplugd`) executes its binary again in its own
// process (execve): the pid stays, so the service
// manager sees no restart and every plugin sandbox stays this process's
// child. Before that, the old image
//
//  1. keeps the listening sockets: connections made meanwhile wait in their
//     backlog instead of being refused;
//  2. drains: no new work, hook calls in flight finish (see drain), host
//     connections close (hosts reconnect by themselves, and go on calling
//     plugins over their direct lanes, which do not cross the daemon);
//  3. stops supervising, and hands each running plugin that can take it
//     (PluginInfo.rebind) a new control socket and hook lane over its frame
//     socket (FrameMsg.rebind), waiting for its answer; other plugins stop;
//  4. writes a Handover record (the descriptors it keeps and the instances
//     they belong to) to a memfd and closes the state store.
//
// The new image reads the record (HandoverEnv), adopts the sandboxes
// through the runtime (sandbox.Adopter: found by their container state and
// cgroup, never by pid alone), shakes hands with each plugin again on its
// new control socket and carries on. A plugin that does not come through is
// swept and started again, as after a crash of the daemon. If the new
// binary cannot be executed, the old one adopts its own handover.

// HandoverEnv names the environment variable that tells a daemon it was
// executed by an upgrading one: its value is the descriptor of the handover
// record.
const HandoverEnv = "DIMPLUGD_HANDOVER"

// HandoverVersion is the version of the handover record this daemon writes
// and reads. `dimplugd version --handover` prints it, so an upgrading
// daemon can tell whether the new binary takes its plugins.
const HandoverVersion = 1

// rebindWait bounds how long a plugin has to answer a rebind.
const rebindWait = 3 * time.Second

// Handover is what an upgrading daemon passes to the image that replaces
// it: the descriptors it kept open across execve and what they are.
type Handover struct {
	Version int `json:"version"`
	// From is the version of the daemon that wrote it.
	From string `json:"from"`
	// Socket and Control are the listening host and control sockets; -1
	// when not handed over.
	Socket  int `json:"socket"`
	Control int `json:"control"`
	// Plugins are the running instances handed over.
	Plugins []HandedPlugin `json:"plugins"`

	fd int // the record's own memfd; -1 once read
}

// HandedPlugin is one running plugin instance and the daemon's ends of its
// channels.
type HandedPlugin struct {
	Name     string    `json:"name"`
	Instance string    `json:"instance"`
	Pid      int       `json:"pid"`
	Seq      int       `json:"seq"` // the unit's instance counter
	Started  time.Time `json:"started"`
	Restarts int       `json:"restarts"`
	Control  int       `json:"control"` // the new control socket
	Lane     int       `json:"lane"`    // the new hook lane, or -1
	Frames   int       `json:"frames"`  // the frame socket
	Stdout   int       `json:"stdout"`  // read ends of the plugin's output pipes
	Stderr   int       `json:"stderr"`
}

// FD is the descriptor of the record, to pass in HandoverEnv.
func (h *Handover) FD() int { return h.fd }

// fds lists every descriptor the record names.
func (h *Handover) fds() []int {
	out := []int{h.Socket, h.Control}
	for _, p := range h.Plugins {
		out = append(out, p.Control, p.Lane, p.Frames, p.Stdout, p.Stderr)
	}
	return out
}

// Discard closes every descriptor the record names that is still open and
// not yet taken. The plugins' sandboxes are left to Sweep.
func (h *Handover) Discard() {
	for _, fd := range h.fds() {
		if fd >= 3 {
			unix.Close(fd)
		}
	}
	h.Socket, h.Control, h.Plugins = -1, -1, nil
	if h.fd >= 3 {
		unix.Close(h.fd)
		h.fd = -1
	}
}

// ReadHandover reads the handover record from descriptor fd (the value of
// HandoverEnv) and closes it. A record of another version is refused; the
// caller should then Discard what it can (nothing: it cannot be parsed) and
// start afresh — Sweep ends the plugins the old image left.
func ReadHandover(value string) (*Handover, error) {
	fd, err := strconv.Atoi(value)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("handover: %s=%q is not a descriptor", HandoverEnv, value)
	}
	f := os.NewFile(uintptr(fd), "handover")
	defer f.Close()
	unix.CloseOnExec(fd)
	b, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("handover: read the record: %w", err)
	}
	h := &Handover{fd: -1}
	if err := json.Unmarshal(b, h); err != nil {
		return nil, fmt.Errorf("handover: unreadable record: %w", err)
	}
	if h.Version != HandoverVersion {
		v := h.Version
		h.Discard()
		return nil, fmt.Errorf("handover: record version %d, this dimplugd reads %d", v, HandoverVersion)
	}
	for _, fd := range h.fds() {
		if fd >= 0 && fd < 3 {
			h.Discard()
			return nil, fmt.Errorf("handover: descriptor %d is not one a daemon hands over", fd)
		}
		if fd >= 3 {
			unix.CloseOnExec(fd) // ours now; not for the next exec
		}
	}
	return h, nil
}

// write puts the record in a memfd that survives execve.
func (h *Handover) write() error {
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	fd, err := unix.MemfdCreate("dimplugd-handover", 0) // no MFD_CLOEXEC: it must cross execve
	if err != nil {
		return fmt.Errorf("handover: memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "handover")
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("handover: write the record: %w", err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return fmt.Errorf("handover: %w", err)
	}
	// Keep the descriptor: f must not close it when collected.
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD, 3)
	f.Close()
	if err != nil {
		return fmt.Errorf("handover: %w", err)
	}
	h.fd = nfd
	return nil
}

// keepAcrossExec duplicates the descriptor behind c without close-on-exec,
// so that it survives execve under the returned number.
func keepAcrossExec(c syscall.Conn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) { nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD, 3) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, fmt.Errorf("duplicate a descriptor to hand over: %w", derr)
	}
	return nfd, nil
}

// takeFile turns a handed-over descriptor into a file, once; -1 gives nil.
func takeFile(fd *int, name string) *os.File {
	if *fd < 3 {
		return nil
	}
	f := os.NewFile(uintptr(*fd), name)
	*fd = -1
	return f
}

// Upgrade prepares this daemon's replacement by a new process image (see
// "Upgrades in place" above) and returns the record to pass it. The daemon
// is closed when Upgrade returns, whether it succeeded or not; its plugins
// that took the rebind keep running, owned by no one until the record is
// adopted: the caller executes the new binary with HandoverEnv set to
// h.FD(), or, if that fails, starts a daemon on the same runtime with
// Config.Handover = h.
func (d *Daemon) Upgrade(ctx context.Context) (*Handover, error) {
	d.closeMu.Lock()
	defer d.closeMu.Unlock()
	if d.closed {
		return nil, errors.New("upgrade: the daemon is closed")
	}
	d.closed = true
	d.upgrading.Store(true)
	began := time.Now()
	h := &Handover{Version: HandoverVersion, From: Version, Socket: -1, Control: -1, fd: -1}
	fail := func(err error) (*Handover, error) {
		h.Discard()
		_ = d.closeRest()
		return nil, fmt.Errorf("upgrade: %w", err)
	}
	var err error
	if h.Socket, err = d.server.keepListener(); err != nil {
		return fail(err)
	}
	if h.Control, err = d.ctlSrv.keepListener(); err != nil {
		return fail(err)
	}
	d.log.Info("upgrading in place: draining, then handing the running plugins to the new binary")
	d.drain()
	d.server.close()
	d.ctlSrv.close()
	d.hub.closeHosts() // every stream ends; stages hear it before a rebind
	d.cancel()         // units park what they can hand over (see unit.run)
	for _, u := range d.sortedUnits() {
		<-u.done
		inst := u.takeParked()
		if inst == nil {
			continue
		}
		hp, err := u.handOver(ctx, inst)
		if err != nil {
			u.logf("could not hand instance %s to the new daemon (%v); stopping it", inst.id, err)
			d.log.Warn("plugin not handed over; it restarts with the new daemon", "plugin", u.name, "err", err)
			u.stop(inst, "the daemon is upgrading and the plugin could not be handed over")
			continue
		}
		h.Plugins = append(h.Plugins, hp)
		u.logf("handed instance %s (pid %d) to the new daemon", inst.id, hp.Pid)
	}
	if err := d.closeRest(); err != nil {
		d.log.Warn("close the state store", "err", err)
	}
	if err := h.write(); err != nil {
		return fail(err)
	}
	d.log.Info("ready to execute the new binary", "plugins_handed_over", len(h.Plugins), "took", time.Since(began).Round(time.Millisecond))
	return h, nil
}

// closeRest is the rest of Close after the drain (and of Upgrade after
// the hand-over): it stops serving, ends the units and stops what they
// still run, and closes the state store, whose error it returns.
func (d *Daemon) closeRest() error {
	d.closeConsole()
	d.closeMetrics()
	if d.server != nil {
		d.server.close()
	}
	if d.ctlSrv != nil {
		d.ctlSrv.close()
	}
	d.cancel()
	for _, u := range d.sortedUnits() {
		<-u.done
		if inst := u.takeParked(); inst != nil {
			u.stop(inst, "the daemon is shutting down")
		}
	}
	d.hub.closeAll()
	d.wg.Wait()
	for _, u := range d.sortedUnits() {
		u.closeLogs() // after the units' last lines
	}
	d.routes.closeWatchers()
	err := d.store.Close()
	d.log.Info("dimplugd stopped")
	return err
}

// takeParked returns the instance the unit's loop left running for an
// upgrade, if any, and forgets it.
func (u *unit) takeParked() *instance {
	u.mu.Lock()
	defer u.mu.Unlock()
	inst := u.parked
	u.parked = nil
	return inst
}

// handOver gives a running instance a new control socket and lane for the
// next daemon image and returns the descriptors to keep. On error the
// instance is untouched (the caller stops it).
func (u *unit) handOver(ctx context.Context, inst *instance) (hp HandedPlugin, err error) {
	hp = HandedPlugin{Name: u.name, Instance: inst.id, Pid: inst.proc.Pid(), Started: inst.started, Lane: -1,
		Control: -1, Frames: -1, Stdout: -1, Stderr: -1}
	var kept []int
	defer func() {
		if err != nil {
			for _, fd := range kept {
				unix.Close(fd)
			}
		}
	}()
	ctl, theirCtl, err := socketpair("control")
	if err != nil {
		return hp, err
	}
	defer ctl.Close() // the kept duplicate is what crosses execve
	files := []*os.File{theirCtl}
	var lane net.Conn
	if inst.lane != nil {
		var theirLane *os.File
		if lane, theirLane, err = socketpair("lane"); err != nil {
			theirCtl.Close()
			return hp, err
		}
		defer lane.Close()
		files = append(files, theirLane)
	}
	ack := u.d.hub.expectRebound(inst.frames)
	if err := inst.frames.send(func(m schema.FrameMsg) error {
		r, err := m.NewRebind()
		if err != nil {
			return err
		}
		return r.SetInstance(inst.id)
	}, files...); err != nil { // the message owns files
		return hp, fmt.Errorf("send the rebind: %w", err)
	}
	t := time.NewTimer(rebindWait)
	defer t.Stop()
	select {
	case <-ack:
	case <-inst.frames.goneCh:
		return hp, errors.New("its frame socket closed")
	case <-inst.proc.Done():
		return hp, fmt.Errorf("the plugin %s", inst.proc.Wait())
	case <-t.C:
		return hp, fmt.Errorf("no answer to the rebind within %s", rebindWait)
	case <-ctx.Done():
		return hp, ctx.Err()
	}
	keep := func(dst *int, c syscall.Conn) error {
		fd, err := keepAcrossExec(c)
		if err != nil {
			return err
		}
		kept = append(kept, fd)
		*dst = fd
		return nil
	}
	if err := keep(&hp.Control, ctl.(syscall.Conn)); err != nil {
		return hp, err
	}
	if lane != nil {
		if err := keep(&hp.Lane, lane.(syscall.Conn)); err != nil {
			return hp, err
		}
	}
	if err := keep(&hp.Frames, inst.frames.conn); err != nil {
		return hp, err
	}
	if err := keep(&hp.Stdout, inst.outR); err != nil {
		return hp, err
	}
	if err := keep(&hp.Stderr, inst.errR); err != nil {
		return hp, err
	}
	u.mu.Lock()
	hp.Seq, hp.Restarts = u.seq, u.restarts
	u.mu.Unlock()
	// The old channels end here; the plugin no longer listens to them.
	inst.plugin.Release()
	if inst.lane != nil {
		inst.lane.Close()
	}
	inst.conn.Close()
	return hp, nil
}

// adoption is a handed-over instance waiting for its unit's loop.
type adoption struct {
	proc sandbox.Process
	hp   HandedPlugin
	l    *launch
	// settled is closed once the instance runs under this daemon or was
	// given up (see settle): Start serves hosts only then, so that none
	// finds an adopted plugin "starting".
	settled    chan struct{}
	settleOnce sync.Once
}

func (a *adoption) settle() { a.settleOnce.Do(func() { close(a.settled) }) }

// discard ends an adopted instance that will not be used.
func (a *adoption) discard() error {
	defer a.settle()
	a.l.close()
	return a.proc.Destroy()
}

// adoptWait bounds how long Start waits for adopted plugins to settle
// before it serves hosts.
const adoptWait = 3 * time.Second

// awaitAdopted waits, at most adoptWait, until each adoption in as has
// settled.
func (d *Daemon) awaitAdopted(as []*adoption) {
	t := time.NewTimer(adoptWait)
	defer t.Stop()
	for _, a := range as {
		select {
		case <-a.settled:
		case <-t.C:
			d.log.Warn("adopted plugins are still connecting; serving hosts anyway", "waited", adoptWait)
			return
		}
	}
}

// adoptHandover takes over the instances of a handover record before Sweep
// runs. Instances that cannot be adopted are left to Sweep and start again.
func (d *Daemon) adoptHandover(ctx context.Context, h *Handover) map[string]*adoption {
	out := map[string]*adoption{}
	for i := range h.Plugins {
		hp := &h.Plugins[i]
		a, err := d.adoptOne(ctx, hp)
		if err != nil {
			d.log.Warn("could not adopt a plugin from the daemon before the upgrade; it starts again",
				"plugin", hp.Name, "instance", hp.Instance, "err", err)
			continue
		}
		out[hp.Name] = a
	}
	return out
}

// adoptOne takes one handed-over instance: its descriptors, then its
// sandbox.
func (d *Daemon) adoptOne(ctx context.Context, hp *HandedPlugin) (a *adoption, err error) {
	l := &launch{id: hp.Instance}
	ctl, lane, fr := takeFile(&hp.Control, "control"), takeFile(&hp.Lane, "lane"), takeFile(&hp.Frames, "frames")
	l.outR, l.errR = takeFile(&hp.Stdout, "stdout"), takeFile(&hp.Stderr, "stderr")
	defer func() {
		for _, f := range []*os.File{ctl, lane, fr} { // the conns hold duplicates
			if f != nil {
				f.Close()
			}
		}
		if err != nil {
			l.close()
		}
	}()
	ad, ok := d.cfg.Runtime.(sandbox.Adopter)
	if !ok {
		return nil, fmt.Errorf("the %s runtime cannot adopt instances", d.cfg.Runtime.Name())
	}
	if ctl == nil || fr == nil || l.outR == nil || l.errR == nil {
		return nil, errors.New("incomplete handover record")
	}
	if l.nc, err = net.FileConn(ctl); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if lane != nil {
		if l.lane, err = net.FileConn(lane); err != nil {
			return nil, fmt.Errorf("lane: %w", err)
		}
	}
	if l.frames, err = frames.FileConn(fr); err != nil {
		return nil, err
	}
	proc, err := ad.Adopt(ctx, hp.Instance, hp.Name, hp.Pid)
	if err != nil {
		return nil, err
	}
	return &adoption{proc: proc, hp: *hp, l: l, settled: make(chan struct{})}, nil
}
