package registry

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

const lockFileName = "lock"

// lockState takes the state directory's lock, an exclusive flock(2) on
// <state>/lock, trying for up to timeout; the lock is held until the
// returned file is closed (or the process dies). It fails with errLocked
// when another process holds it. The lock covers the whole directory, so
// registry.db can be checked before bbolt opens it for writing, and
// replaced by a restore.
func lockState(dir string, timeout time.Duration) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFileName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(timeout)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		switch {
		case err == nil:
			return f, nil
		case !errors.Is(err, syscall.EWOULDBLOCK):
			f.Close()
			return nil, err
		case !time.Now().Before(deadline):
			f.Close()
			return nil, errLocked
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// classedError prints msg and matches sentinel (and so its errdefs class)
// and err.
type classedError struct {
	msg      string
	sentinel error
	err      error
}

func (e *classedError) Error() string { return e.msg }
func (e *classedError) Unwrap() []error {
	if e.err == nil {
		return []error{e.sentinel}
	}
	return []error{e.sentinel, e.err}
}
