package errdefs

import (
	"errors"
	"fmt"
	"testing"
)

func TestExitCode(t *testing.T) {
	for _, c := range []struct {
		err  error
		want int
	}{
		{nil, 0},
		{errors.New("plain"), 1},
		{New(ErrNotFound, "no such plugin"), 3},
		{fmt.Errorf("install: %w", New(ErrAlreadyExists, "installed")), 4},
		{WithClass(errors.New("bad manifest"), ErrInvalid), 5},
		{WithClass(errors.New("damaged"), New(ErrConflict, "registry damaged")), 6},
		{func() error {
			c, msg := FromWire(ToWire(New(ErrUnavailable, "in use")).Error())
			return WithClass(errors.New(msg), c)
		}(), 7},
		{New(ErrPermissionDenied, "not an operator"), 8},
	} {
		if got := ExitCode(c.err); got != c.want {
			t.Errorf("ExitCode(%v) = %d, want %d", c.err, got, c.want)
		}
	}
}
