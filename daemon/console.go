package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/dimplugd/dimplugd/daemon/console"
	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/host"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// The operator console (package console): the data and actions of
// dimplugctl as a web page, off unless Config.ConsoleSocket or
// Config.ConsoleListen is set.
//
// It is a control client of this daemon: each of its requests opens the
// control face on the daemon's own control socket, so it goes through the
// same checks as dimplugctl. Its Unix socket is made by listenSocket with
// the control socket's owner, group and mode, and its peers are checked as
// the control socket's (allow, faceConsole). On its loopback TCP address
// a browser needs a login URL, which only the control face gives out
// (consoleLogin; `dimplugctl console`).
//
// Shutdown and upgrades: the console stops first (the start of drain),
// ending its requests in flight, and is not handed over: the new image
// listens afresh on the same paths and address, and its sessions start
// empty (an operator logs in again).

// startConsole starts the console's listeners, if any are configured.
func (d *Daemon) startConsole(opGroup group, mode os.FileMode) error {
	cfg := d.cfg
	if cfg.ConsoleSocket == "" && cfg.ConsoleListen == "" {
		return nil
	}
	srv := console.New(console.Config{
		Dial: func(ctx context.Context) (console.Control, error) {
			ctl, err := host.DialControl(ctx, cfg.ControlSocket, host.WithClientName("dimplugd console"))
			if err != nil {
				return nil, err
			}
			return ctl, nil
		},
		Logger: d.log.With("component", "console"),
	})
	d.console.Store(srv)
	if cfg.ConsoleSocket != "" {
		ln, err := listenSocket(d, faceConsole, "--console-socket", cfg.ConsoleSocket, mode, opGroup, nil)
		if err != nil {
			return fmt.Errorf("console socket: %w", err)
		}
		check := func(c net.Conn) error {
			uc, ok := c.(*net.UnixConn)
			if !ok {
				return errors.New("console socket: not a Unix connection")
			}
			p, err := peerOf(uc)
			if err != nil {
				return fmt.Errorf("console socket: cannot read the peer's credentials: %w", err)
			}
			return allow(faceConsole, opGroup, p)
		}
		if err := srv.ServeUnix(ln, check); err != nil {
			return err
		}
	}
	if cfg.ConsoleListen != "" {
		ln, err := console.ListenTCP(cfg.ConsoleListen)
		if err != nil {
			return fmt.Errorf("%w (--console-listen)", err)
		}
		if err := srv.ServeTCP(ln); err != nil {
			return err
		}
	}
	d.log.Info("operator console serving", "socket", cfg.ConsoleSocket, "listen", d.ConsoleAddr())
	return nil
}

// closeConsole stops the console, if it runs; safe to call more than once.
func (d *Daemon) closeConsole() {
	if srv := d.console.Swap(nil); srv != nil {
		srv.Close()
	}
}

// ConsoleAddr returns the address of the console's TCP listener
// ("127.0.0.1:8377"), or "" if it has none.
func (d *Daemon) ConsoleAddr() string {
	if srv := d.console.Load(); srv != nil {
		return srv.TCPAddr()
	}
	return ""
}

// ConsoleLogin returns a one-time login URL for the console's TCP
// listener (see console.Server.LoginURL). Callers must hold the operator
// right: the control face is its only caller.
func (d *Daemon) ConsoleLogin() (string, error) {
	srv := d.console.Load()
	if srv == nil {
		return "", errdefs.New(errdefs.ErrUnavailable,
			"the operator console is off: start dimplugd with --console-listen 127.0.0.1:PORT (browsers, with a login URL) or --console-socket PATH (curl --unix-socket)")
	}
	return srv.LoginURL()
}

func (c *control) ConsoleLogin(ctx context.Context, call schema.Control_consoleLogin) error {
	return errdefs.ToWire(c.consoleLogin(call))
}

func (c *control) consoleLogin(call schema.Control_consoleLogin) error {
	url, err := c.d.ConsoleLogin()
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	c.d.log.Info("console login URL given out", "console", c.d.ConsoleAddr())
	return res.SetUrl(url)
}
