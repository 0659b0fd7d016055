package wire

import (
	"errors"
	"regexp"
	"strings"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
)

// rpcPrefix matches the decoration go-capnp adds to an error returned by a
// remote method ("plugin.capnp:Fetcher.fetch: ", "capnp: ", "rpc: ").
var rpcPrefix = regexp.MustCompile(`^((\w+\.capnp:\w+\.\w+|capnp|rpc|remote error|call): )+`)

// RemoteError wraps an error returned over RPC for the person reading it:
// what the caller was doing, then the remote side's own message without
// transport decoration or class mark (see errdefs). errors.Is and errors.As
// still see the original, and errors.Is sees the class the remote side
// marked.
func RemoteError(doing string, err error) error {
	if err == nil {
		return nil
	}
	class, msg := RemoteClass(err)
	return &remoteError{msg: doing + ": " + msg, err: err, class: class}
}

// RemoteMessage is the remote side's message of err without transport
// decoration or class mark.
func RemoteMessage(err error) string {
	_, msg := RemoteClass(err)
	return msg
}

// RemoteClass reads an error returned over RPC: the class the remote side
// marked it with (one of the errdefs sentinels, or nil) and its message
// without transport decoration or mark.
func RemoteClass(err error) (class error, msg string) {
	return errdefs.FromWire(rpcPrefix.ReplaceAllString(err.Error(), ""))
}

type remoteError struct {
	msg   string
	err   error
	class error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() []error {
	if e.class == nil {
		return []error{e.err}
	}
	return []error{e.err, e.class}
}

// StoppingMessage is the whole text of the error a daemon answers a
// dispatch with when it arrives while the daemon drains for a stop or an
// upgrade in place: no hook was called, so the host may send the call
// again on its next connection. It is part of the protocol (a lane error
// frame, or an RPC exception, whose text ends with it).
const StoppingMessage = "dimplugd is stopping: the call was not started"

// ErrStopping is the error of StoppingMessage (errdefs.ErrUnavailable).
var ErrStopping = errdefs.New(errdefs.ErrUnavailable, StoppingMessage)

// IsStopping reports whether err, returned by a dispatch to the daemon, is
// its StoppingMessage answer.
func IsStopping(err error) bool {
	return err != nil && (errors.Is(err, ErrStopping) || strings.HasSuffix(err.Error(), StoppingMessage))
}
