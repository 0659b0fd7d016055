package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dimplugd/dimplugd/daemon"
)

// Upgrades in place (SIGUSR2; with the shipped unit `systemctl kill -s USR2
// --kill-whom=main dimplugd`, which spares the plugins): the daemon
// executes the binary now installed at the path it was started from, in its
// own process, handing its running plugins and listening sockets to it (see
// daemon.Upgrade).

// selfPath is the binary to execute for an upgrade: the path this one was
// started from, which a package upgrade replaces, not /proc/self/exe,
// which keeps naming the old file.
var selfPath = func() string {
	p, err := exec.LookPath(os.Args[0])
	if err != nil {
		p = os.Args[0]
	}
	if abs, err := filepath.Abs(p); err == nil {
		p = abs
	}
	return p
}()

// upgradeInPlace hands d over and executes the new binary. It returns only
// if the new binary could not be executed after the hand-over (the caller
// then adopts h itself), or with an error when the daemon could not even
// be handed over (it is closed then, and its plugins stopped).
//
// Sockets systemd passed (act) are passed on to the new image the same way
// (LISTEN_FDS), besides the hand-over: a new binary that takes socket
// activation serves systemd's sockets, one that does not serves the
// handed-over duplicates of them.
func upgradeInPlace(ctx context.Context, d *daemon.Daemon, log *slog.Logger, act *activated) (*daemon.Handover, error) {
	bin := selfPath
	takes, why := takesHandover(ctx, bin)
	if !takes {
		// Restart without a hand-over: the new binary starts the
		// plugins again.
		log.Warn("upgrading by restart: the new binary does not take running plugins", "binary", bin, "why", why)
		if err := d.Close(); err != nil {
			log.Warn("close", "err", err)
		}
		env, _ := act.passOn(os.Environ())
		execErr := syscall.Exec(bin, os.Args, env)
		return nil, fmt.Errorf("upgrade: execute %s: %w", bin, execErr)
	}
	log.Info("upgrading in place", "binary", bin)
	h, err := d.Upgrade(ctx)
	if err != nil {
		return nil, err
	}
	env := make([]string, 0, len(os.Environ())+1)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, daemon.HandoverEnv+"=") {
			env = append(env, kv)
		}
	}
	env = append(env, daemon.HandoverEnv+"="+strconv.Itoa(h.FD()))
	env, restore := act.passOn(env)
	err = syscall.Exec(bin, os.Args, env)
	restore()
	log.Error("could not execute the new binary; serving on with this one", "binary", bin, "err", err)
	return h, nil
}

// takesHandover asks the binary at bin which hand-over record it reads.
func takesHandover(ctx context.Context, bin string) (bool, string) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "version", "--handover")
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return false, fmt.Sprintf("%s version --handover: %v: %s", bin, err, strings.TrimSpace(errb.String()))
	}
	v, err := strconv.Atoi(strings.TrimSpace(out.String()))
	if err != nil || v != daemon.HandoverVersion {
		return false, fmt.Sprintf("it reads hand-over version %q, this daemon writes %d", strings.TrimSpace(out.String()), daemon.HandoverVersion)
	}
	return true, ""
}
