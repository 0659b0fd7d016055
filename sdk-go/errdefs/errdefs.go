// Package errdefs holds the classes of error that dimplugd's faces carry
// over the socket: the daemon marks an error with its class when it
// answers, and the Go SDK (sdk-go/host, and so dimplugctl) turns the mark
// back into a class, so that errors.Is(err, errdefs.ErrNotFound) works on
// the far side. It owns only the classes and their mark; it imports nothing
// from dimplugd, so hosts, plugins and the daemon may all import it.
//
// On the wire a classed error is a Cap'n Proto exception whose reason
// starts with the class's code in brackets and a space:
//
//	[not-found] plugin "x" is not installed (see dimplugctl ls)
//
// Hosts in other languages may read the code the same way; a reason
// without a mark has no class. The codes are listed with Code.
package errdefs

import (
	"errors"
	"strings"
)

// The classes. Errors of a class wrap (or match) its sentinel: test with
// errors.Is, never by comparing messages.
var (
	// ErrNotFound: the named object (a plugin, a hook) does not exist.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: the object exists and the call did not ask to
	// replace it.
	ErrAlreadyExists = errors.New("already exists")
	// ErrInvalid: the input was rejected (a manifest, an archive, an
	// argument); calling again with the same input fails again.
	ErrInvalid = errors.New("invalid")
	// ErrConflict: the call is valid but clashes with the current state
	// (two plugins claiming one route, a disabled plugin asked to restart,
	// an upgrade needing new approval).
	ErrConflict = errors.New("conflict")
	// ErrUnavailable: the daemon or a plugin cannot answer now (not
	// running, connection lost); the same call may work later.
	ErrUnavailable = errors.New("unavailable")
	// ErrPermissionDenied: the caller may not do this.
	ErrPermissionDenied = errors.New("permission denied")
)

// classes lists every class with its code on the wire.
var classes = []struct {
	class error
	code  string
}{
	{ErrNotFound, "not-found"},
	{ErrAlreadyExists, "already-exists"},
	{ErrInvalid, "invalid"},
	{ErrConflict, "conflict"},
	{ErrUnavailable, "unavailable"},
	{ErrPermissionDenied, "permission-denied"},
}

// Class returns the class err belongs to (one of the Err* sentinels), or nil.
func Class(err error) error {
	if err == nil {
		return nil
	}
	for _, c := range classes {
		if errors.Is(err, c.class) {
			return c.class
		}
	}
	return nil
}

// Code is the wire code of a class ("not-found", "already-exists",
// "invalid", "conflict", "unavailable", "permission-denied"), or "" for
// an error that is not one of the classes.
func Code(class error) string {
	for _, c := range classes {
		if c.class == class {
			return c.code
		}
	}
	return ""
}

// New returns an error with its own message that belongs to class: a
// package's sentinel (e.g. "not installed") that is also errors.Is class.
func New(class error, msg string) error {
	return &classed{msg: msg, class: class}
}

// WithClass returns err marked as belonging to class, keeping its message
// and what it wraps.
func WithClass(err, class error) error {
	if err == nil {
		return nil
	}
	return &classedWrap{err: err, class: class}
}

type classed struct {
	msg   string
	class error
}

func (e *classed) Error() string { return e.msg }
func (e *classed) Unwrap() error { return e.class }

type classedWrap struct {
	err   error
	class error
}

func (e *classedWrap) Error() string   { return e.err.Error() }
func (e *classedWrap) Unwrap() []error { return []error{e.err, e.class} }

// ToWire returns err as a server answers it over Cap'n Proto: the same
// error with its class's mark before its message (errors.Is still sees
// everything err wraps). An error of no class, or nil, is returned as is.
// Servers call it at the boundary of each method, and only there.
func ToWire(err error) error {
	class := Class(err)
	if class == nil || hasMark(err.Error()) {
		return err
	}
	return &marked{err: err, mark: "[" + Code(class) + "] "}
}

type marked struct {
	err  error
	mark string
}

func (e *marked) Error() string { return e.mark + e.err.Error() }
func (e *marked) Unwrap() error { return e.err }

// FromWire reads the class mark at the start of a remote message (the
// exception's reason without transport decoration): it returns the class
// (nil when unmarked) and the message without the mark.
func FromWire(msg string) (class error, rest string) {
	if !strings.HasPrefix(msg, "[") {
		return nil, msg
	}
	for _, c := range classes {
		if m := "[" + c.code + "] "; strings.HasPrefix(msg, m) {
			return c.class, msg[len(m):]
		}
	}
	return nil, msg
}

func hasMark(msg string) bool {
	class, _ := FromWire(msg)
	return class != nil
}

// exitCodes maps the classes to the exit codes of dimplugctl and dimplugd;
// the README's CLI reference lists them.
var exitCodes = []struct {
	class error
	code  int
}{
	{ErrNotFound, 3},
	{ErrAlreadyExists, 4},
	{ErrInvalid, 5},
	{ErrConflict, 6},
	{ErrUnavailable, 7},
	{ErrPermissionDenied, 8},
}

// ExitCode is the exit code of a command that failed with err: 3 to 8 by
// its class (not found, already exists, invalid, conflict, unavailable,
// permission denied), 1 for an error of no class, 0 for nil. (2, bad
// usage, is the command line's own.)
func ExitCode(err error) int {
	if err == nil {
		return 0
	}
	class := Class(err)
	for _, c := range exitCodes {
		if c.class == class {
			return c.code
		}
	}
	return 1
}
