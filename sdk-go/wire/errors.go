package wire

import "regexp"

// rpcPrefix matches the decoration go-capnp adds to an error returned by a
// remote method ("plugin.capnp:Fetcher.fetch: ", "capnp: ", "rpc: ").
var rpcPrefix = regexp.MustCompile(`^((\w+\.capnp:\w+\.\w+|capnp|rpc|remote error|call): )+`)

// RemoteError wraps an error returned over RPC for the person reading it:
// what the caller was doing, then the remote side's own message without
// transport decoration. errors.Is and errors.As still see the original.
func RemoteError(doing string, err error) error {
	if err == nil {
		return nil
	}
	return &remoteError{msg: doing + ": " + rpcPrefix.ReplaceAllString(err.Error(), ""), err: err}
}

// RemoteMessage is the remote side's message of err without transport
// decoration.
func RemoteMessage(err error) string {
	return rpcPrefix.ReplaceAllString(err.Error(), "")
}

type remoteError struct {
	msg string
	err error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.err }
