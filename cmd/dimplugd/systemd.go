package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	sd "github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"

	"github.com/dimplugd/dimplugd/daemon"
)

// dimplugd under systemd (cmd/dimplugd/systemd/dimplugd.service and
// docs/operate-systemd.md): readiness and status through the notify socket
// (Type=notify), and the host and control sockets passed by socket
// activation (dimplugd.socket). Both are no-ops when systemd did not ask
// for them ($NOTIFY_SOCKET, $LISTEN_FDS unset).

// Names of the activated sockets (FileDescriptorName= in dimplugd.socket).
const (
	activatedHost    = "host"
	activatedControl = "control"
)

// statusEvery is how often STATUS= may change, at most.
const statusEvery = time.Second

// notifier sends sd_notify messages when $NOTIFY_SOCKET is set. It never
// unsets the variable: the image executed by an upgrade in place (same
// pid, so systemd's main process still) says READY=1 again through it.
type notifier struct {
	log *slog.Logger
	on  bool
}

func newNotifier(log *slog.Logger) *notifier {
	return &notifier{log: log, on: os.Getenv("NOTIFY_SOCKET") != ""}
}

// send sends one message (newline-separated assignments).
func (n *notifier) send(state string) {
	if !n.on {
		return
	}
	if _, err := sd.SdNotify(false, state); err != nil {
		n.log.Warn("cannot notify systemd", "state", state, "err", err)
	}
}

// watch reports d to systemd until the returned stop is called: READY=1
// once d is settled (see daemon.Daemon.Settled; Start has returned, so both
// sockets serve), then STATUS= whenever the plugins' counts change, at most
// once per statusEvery, and WATCHDOG=1 every half WatchdogSec when the unit
// sets one. The pings come from this goroutine, which reads the daemon's
// state: a daemon wedged on its own locks stops pinging.
func (n *notifier) watch(d *daemon.Daemon) (stop func()) {
	if !n.on {
		return func() {}
	}
	quit, done := make(chan struct{}), make(chan struct{})
	wd, err := sd.SdWatchdogEnabled(false)
	if err != nil {
		n.log.Warn("ignoring systemd's watchdog settings", "err", err)
	}
	tick := statusEvery
	if wd > 0 && wd/2 < tick {
		tick = wd / 2
	}
	go func() {
		defer close(done)
		t := time.NewTicker(tick)
		defer t.Stop()
		ready, last, lastPing, lastStatus := false, "", time.Time{}, time.Time{}
		for {
			var msg []string
			if !ready && d.Settled() {
				ready = true
				msg = append(msg, "READY=1")
			}
			status := "serving " + d.Counts().String()
			if !ready {
				status = "starting: " + d.Counts().String()
			}
			// READY=1 goes at once, with its status; other status
			// changes at most once per statusEvery.
			if status != last && (len(msg) > 0 || time.Since(lastStatus) >= statusEvery) {
				msg = append(msg, "STATUS="+status)
				last, lastStatus = status, time.Now()
			}
			if wd > 0 && time.Since(lastPing) >= wd/2 {
				msg = append(msg, "WATCHDOG=1")
				lastPing = time.Now()
			}
			if len(msg) > 0 {
				n.send(strings.Join(msg, "\n"))
			}
			select {
			case <-quit:
				return
			case <-t.C:
			case <-d.Changes():
			}
		}
	}()
	return func() { close(quit); <-done }
}

// upgrading tells systemd that the daemon is about to execute its new
// binary in place (the pid stays): the unit shows "reloading" until the
// new image says READY=1. systemd wants MONOTONIC_USEC= with RELOADING=1.
func (n *notifier) upgrading() {
	n.send("RELOADING=1\n" + sd.SdNotifyMonotonicUsec() + "\nSTATUS=upgrading in place")
}

// reloading and reloaded frame a config reload (SIGHUP): systemctl
// reload waits for the READY=1.
func (n *notifier) reloading() {
	n.send("RELOADING=1\n" + sd.SdNotifyMonotonicUsec() + "\nSTATUS=reloading the config file")
}

func (n *notifier) reloaded() { n.send("READY=1") }

// stopping tells systemd that the daemon is shutting down.
func (n *notifier) stopping() {
	n.send("STOPPING=1\nSTATUS=stopping: draining calls and stopping plugins")
}

// activated are the sockets systemd passed (socket activation), kept open,
// as passed, at descriptors 3 and up (activation.Files' order) for the life
// of the process image: the
// daemon serves duplicates of them (listeners), and an upgrade in place
// passes them on to the new image the same way (passOn).
type activated struct {
	files  []*os.File // in descriptor order, from 3
	names  []string
	byName map[string]*os.File
}

// takeActivation takes the sockets passed by systemd ($LISTEN_FDS for this
// pid; unset afterwards, so no child sees them), or returns nil when there
// are none. Each must be named (FileDescriptorName=) host or control, at
// most once, and be a listening Unix stream socket bound to a path: a
// descriptor is trusted only after that check.
func takeActivation() (*activated, error) {
	files := activation.Files(true)
	if len(files) == 0 {
		return nil, nil
	}
	a := &activated{byName: map[string]*os.File{}}
	fail := func(err error) (*activated, error) {
		for _, f := range files {
			f.Close()
		}
		return nil, fmt.Errorf("socket activation: %w", err)
	}
	for i, f := range files {
		fd := 3 + i
		name := f.Name()
		if name != activatedHost && name != activatedControl {
			return fail(fmt.Errorf("descriptor %d is named %q; dimplugd takes sockets named %q and %q (FileDescriptorName= in dimplugd.socket)", fd, name, activatedHost, activatedControl))
		}
		if a.byName[name] != nil {
			return fail(fmt.Errorf("two descriptors are named %q", name))
		}
		if err := checkListening(fd); err != nil {
			return fail(fmt.Errorf("the %s socket (descriptor %d): %w", name, fd, err))
		}
		a.files = append(a.files, f)
		a.names = append(a.names, name)
		a.byName[name] = f
	}
	return a, nil
}

// checkListening reports what is wrong with descriptor fd as a listening
// Unix stream socket bound to a path.
func checkListening(fd int) error {
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if errors.Is(err, unix.ENOTSOCK) {
		return errors.New("not a socket")
	}
	if err != nil {
		return fmt.Errorf("not a usable socket: %w", err)
	}
	if domain != unix.AF_UNIX {
		return fmt.Errorf("not a Unix socket (address family %d)", domain)
	}
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return fmt.Errorf("socket type: %w", err)
	}
	if typ != unix.SOCK_STREAM {
		kind := fmt.Sprintf("type %d", typ)
		switch typ {
		case unix.SOCK_DGRAM:
			kind = "a datagram socket"
		case unix.SOCK_SEQPACKET:
			kind = "a seqpacket socket"
		}
		return fmt.Errorf("%s, not a stream socket (ListenStream= in dimplugd.socket)", kind)
	}
	if on, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || on == 0 {
		return errors.New("not listening (Accept=no in dimplugd.socket)")
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return fmt.Errorf("socket address: %w", err)
	}
	if ua, ok := sa.(*unix.SockaddrUnix); !ok || ua.Name == "" || ua.Name[0] == '@' || ua.Name[0] == 0 {
		return errors.New("not bound to a file path (abstract or unnamed)")
	}
	return nil
}

// path returns the file path the socket named name is bound to, or "".
func (a *activated) path(name string) string {
	if a == nil || a.byName[name] == nil {
		return ""
	}
	fd := -1
	for i, n := range a.names {
		if n == name {
			fd = 3 + i // not File.Fd, which would make the shared socket blocking
		}
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return ""
	}
	if ua, ok := sa.(*unix.SockaddrUnix); ok {
		return ua.Name
	}
	return ""
}

// listeners returns new listeners on duplicates of the activated sockets,
// for one daemon.Start (nil for a socket not passed).
func (a *activated) listeners() (host, control *net.UnixListener, err error) {
	if a == nil {
		return nil, nil, nil
	}
	get := func(name string) (*net.UnixListener, error) {
		f := a.byName[name]
		if f == nil {
			return nil, nil
		}
		l, err := net.FileListener(f) // a duplicate: f stays open
		if err != nil {
			return nil, fmt.Errorf("socket activation: the %s socket: %w", name, err)
		}
		ul, ok := l.(*net.UnixListener)
		if !ok {
			l.Close()
			return nil, fmt.Errorf("socket activation: the %s socket is not a Unix listener", name)
		}
		return ul, nil
	}
	if host, err = get(activatedHost); err != nil {
		return nil, nil, err
	}
	if control, err = get(activatedControl); err != nil {
		if host != nil {
			host.Close()
		}
		return nil, nil, err
	}
	return host, control, nil
}

// passOn prepares the activated sockets to cross the execve of an upgrade
// in place, as systemd passed them: it clears their close-on-exec flag and
// returns env with LISTEN_PID (this pid, which execve keeps), LISTEN_FDS
// and LISTEN_FDNAMES set. restore undoes the flag if the execve failed.
func (a *activated) passOn(env []string) (_ []string, restore func()) {
	if a == nil {
		return env, func() {}
	}
	out := make([]string, 0, len(env)+3)
	for _, kv := range env {
		if !strings.HasPrefix(kv, "LISTEN_PID=") && !strings.HasPrefix(kv, "LISTEN_FDS=") && !strings.HasPrefix(kv, "LISTEN_FDNAMES=") {
			out = append(out, kv)
		}
	}
	for i := range a.files {
		_, _ = unix.FcntlInt(uintptr(3+i), unix.F_SETFD, 0)
	}
	out = append(out, "LISTEN_PID="+strconv.Itoa(os.Getpid()), "LISTEN_FDS="+strconv.Itoa(len(a.files)), "LISTEN_FDNAMES="+strings.Join(a.names, ":"))
	return out, func() {
		for i := range a.files {
			unix.CloseOnExec(3 + i)
		}
	}
}
