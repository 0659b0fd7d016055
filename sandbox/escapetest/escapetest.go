//go:build linux

package escapetest

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Result is the outcome of one attempt.
type Result struct {
	// Blocked is true when the sandbox stopped or contained the attempt.
	Blocked bool
	// Errno names the errno the decisive call returned ("EPERM"), or the
	// distinct errnos of a multi-step attempt joined by commas; empty when
	// no call failed with an errno.
	Errno string
	// Detail says what was tried and what happened.
	Detail string
}

// String is "blocked: <detail>" or "ESCAPED: <detail>".
func (r Result) String() string {
	if r.Blocked {
		return "blocked: " + r.Detail
	}
	return "ESCAPED: " + r.Detail
}

// Attempt is one named escape or abuse attempt.
type Attempt struct {
	// Name identifies the attempt ("mount", "fork-bomb").
	Name string
	// Description says what the attempt tries, in one sentence.
	Description string
	// Arg describes the argument Run needs; empty when it takes none (an
	// argument is then ignored).
	Arg string
	// Run makes the attempt inside the sandbox and reports the outcome.
	Run func(arg string) Result
}

// All returns every attempt, in a stable order: file system, network,
// kernel interfaces, processes, then the resource bombs, with the memory
// bomb (which ends the process) last.
func All() []Attempt { return slices.Clone(attempts) }

// Lookup returns the attempt called name.
func Lookup(name string) (Attempt, bool) {
	for _, a := range attempts {
		if a.Name == name {
			return a, true
		}
	}
	return Attempt{}, false
}

// ErrnoName names err's errno ("EPERM"), or returns err's message when it
// carries none.
func ErrnoName(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		if name := unix.ErrnoName(errno); name != "" {
			return name
		}
		return fmt.Sprintf("errno %d", int(errno))
	}
	return strings.ReplaceAll(err.Error(), "\n", " ")
}

// errnoOf names err's errno, or "" when it carries none.
func errnoOf(err error) string {
	var errno syscall.Errno
	if err != nil && errors.As(err, &errno) {
		return ErrnoName(errno)
	}
	return ""
}

// steps collects the outcome of several tries that all must fail for the
// attempt to count as blocked.
type steps struct {
	parts   []string
	errnos  []string
	escaped bool
}

// fail records a try that failed with err.
func (s *steps) fail(what string, err error) {
	s.parts = append(s.parts, what+": "+ErrnoName(err))
	if e := errnoOf(err); e != "" && !slices.Contains(s.errnos, e) {
		s.errnos = append(s.errnos, e)
	}
}

// succeed records a try that worked: the attempt escaped.
func (s *steps) succeed(what string) {
	s.escaped = true
	s.parts = append(s.parts, what)
}

// try records err as a failed try, or the try as a success.
func (s *steps) try(what string, err error, success string) {
	if err != nil {
		s.fail(what, err)
	} else {
		s.succeed(what + ": " + success)
	}
}

func (s *steps) result() Result {
	return Result{Blocked: !s.escaped, Errno: strings.Join(s.errnos, ","), Detail: strings.Join(s.parts, "; ")}
}

// blockedIf reports a single call that must fail with one of want.
func blockedIf(what string, err error, want ...string) Result {
	if err == nil {
		return Result{Detail: what + ": succeeded"}
	}
	e := errnoOf(err)
	r := Result{Errno: e, Detail: what + ": " + ErrnoName(err)}
	r.Blocked = slices.Contains(want, e)
	if !r.Blocked {
		r.Detail += " (the call was permitted; the sandbox should refuse it with " + strings.Join(want, " or ") + ")"
	}
	return r
}

// needArg is the result of an attempt run without its argument: nothing was
// tried, so nothing was blocked.
func needArg(a string) Result {
	return Result{Detail: "not tried: this attempt needs an argument (" + a + ")"}
}
