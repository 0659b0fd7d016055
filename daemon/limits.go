package daemon

import (
	"fmt"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// Limits keep the daemon up whatever its clients (hosts and operators) do.
// Zero values take the defaults below; docs/protocol.md ("Sockets, rights
// and limits") lists them with the flags that change them.
type Limits struct {
	// HostConnsPerUID caps the connections one peer uid holds open on the
	// host socket (RPC sessions, hook lanes, frame-socket requests);
	// default 64.
	HostConnsPerUID int
	// ControlConnsPerUID caps one peer uid's connections on the control
	// socket; default 16.
	ControlConnsPerUID int
	// MaxConns caps the connections open on both sockets together;
	// default 1024.
	MaxConns int
	// FirstMessageTimeout is how long a new connection has to send its
	// first complete message (or preamble); default 10s.
	FirstMessageTimeout time.Duration
	// MessageTimeout is how long a message may take from its first byte to
	// its last once started; a peer that stops mid-message is cut off.
	// Default 30s. Connections may stay idle between messages.
	MessageTimeout time.Duration
	// HostMessageSize is the largest message on the host face (RPC or hook
	// lane): a dispatch carries a request and a response body, each at
	// most the host middleware's 8 MiB by default. Default 32 MiB.
	HostMessageSize int64
	// ControlMessageSize is the largest message on the control face: an
	// install carries the plugin's compressed archive. Default 64 MiB.
	ControlMessageSize int64
	// ReceiveBudget bounds the bytes held by half-received messages on all
	// connections together (each connection may also hold 64 KiB); a
	// message that cannot get its bytes within MessageTimeout ends its
	// connection. Default 128 MiB, and never less than the larger message
	// size.
	ReceiveBudget int64
}

func (l Limits) withDefaults() Limits {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def64 := func(v *int64, d int64) {
		if *v <= 0 {
			*v = d
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&l.HostConnsPerUID, 64)
	def(&l.ControlConnsPerUID, 16)
	def(&l.MaxConns, 1024)
	defDur(&l.FirstMessageTimeout, 10*time.Second)
	defDur(&l.MessageTimeout, 30*time.Second)
	def64(&l.HostMessageSize, 32<<20)
	def64(&l.ControlMessageSize, wire.MaxMessageSize)
	def64(&l.ReceiveBudget, 128<<20)
	l.ReceiveBudget = max(l.ReceiveBudget, l.HostMessageSize, l.ControlMessageSize)
	return l
}

// limits are the daemon's limits now (SetLimits may change them).
func (d *Daemon) limits() Limits { return *d.limitsV.Load() }

// SetLimits changes the limits while the daemon runs (SIGHUP reloads
// them): connection caps and timeouts apply to the next connection, or
// the next message, message sizes to connections opened from now on.
// The receive budget is set at start and cannot change: a different one
// is refused (errdefs.ErrInvalid) so that the caller says it needs a
// restart.
func (d *Daemon) SetLimits(l Limits) error {
	l = l.withDefaults()
	if cur := d.limits(); l.ReceiveBudget != cur.ReceiveBudget {
		return errdefs.New(errdefs.ErrInvalid, fmt.Sprintf("the receive budget (%d bytes) changes only with a restart", cur.ReceiveBudget))
	}
	d.limitsV.Store(&l)
	return nil
}

// wireLimits are the read limits of one face's connections.
func (d *Daemon) wireLimits(f face) wire.Limits {
	l := d.limits()
	size := l.HostMessageSize
	if f == faceControl {
		size = l.ControlMessageSize
	}
	return wire.Limits{
		MaxMessage:     size,
		FirstMessage:   l.FirstMessageTimeout,
		MessageTimeout: l.MessageTimeout,
		Budget:         d.budget,
	}
}

// pluginWireLimits are the read limits of a plugin's control connection:
// a plugin's messages (hook results, log lines, KV values, fetches) are at
// most a host message's size, and its half-received bytes come from a
// budget of their own, so plugins cannot starve hosts and operators.
func (d *Daemon) pluginWireLimits() wire.Limits {
	return wire.Limits{
		MaxMessage:     d.limits().HostMessageSize,
		MessageTimeout: d.limits().MessageTimeout,
		Budget:         d.pluginBudget,
	}
}
