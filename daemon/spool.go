package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
)

// spool is what every streamed upload shares (a package for installStream,
// a data document for importDataStream): chunks of at most maxChunk bytes
// appended in order to a file in the state directory (never held in
// memory), bounded by max; the first failure is remembered and repeated to
// later writes; the file is removed when the transfer ends, whichever way.
// Its owner reads the file at finish, under mu.
type spool struct {
	log      *slog.Logger // names the transfer in each line
	what     string       // "package", "data document": for errors
	tooLarge string       // the refusal when max is passed
	onChunk  func([]byte) // sees each chunk after it is written, under mu; may be nil

	mu     sync.Mutex
	f      *os.File
	n, max int64
	failed error
	done   bool // finish began
}

// write appends one chunk.
func (s *spool) write(chunk []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.failed != nil:
		return s.failed
	case s.done || s.f == nil:
		return errdefs.New(errdefs.ErrInvalid, fmt.Sprintf("%s upload: write after finish", s.what))
	case len(chunk) > maxChunk:
		return s.failLocked(errdefs.New(errdefs.ErrInvalid, fmt.Sprintf("%s upload: a chunk of %d bytes; at most %d per write", s.what, len(chunk), maxChunk)))
	case int64(len(chunk)) > s.max-s.n:
		return s.failLocked(errdefs.New(errdefs.ErrInvalid, s.tooLarge))
	}
	if _, err := s.f.Write(chunk); err != nil {
		return s.failLocked(fmt.Errorf("%s upload: store it in the state directory: %w", s.what, err))
	}
	s.n += int64(len(chunk))
	if s.onChunk != nil {
		s.onChunk(chunk)
	}
	return nil
}

// beginFinishLocked marks the transfer finished, or says why it cannot be.
func (s *spool) beginFinishLocked() error {
	switch {
	case s.failed != nil:
		return s.failed
	case s.done || s.f == nil:
		return errdefs.New(errdefs.ErrInvalid, fmt.Sprintf("%s upload: finish called twice", s.what))
	}
	s.done = true
	return nil
}

func (s *spool) failLocked(err error) error {
	if s.failed == nil {
		s.failed = err
		s.log.Warn(s.what+" transfer failed", "bytes", s.n, "err", err)
		s.closeLocked()
	}
	return err
}

// abort ends the transfer at the client's request.
func (s *spool) abort(reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.done && s.failed == nil {
		s.failed = errdefs.New(errdefs.ErrUnavailable, s.what+" upload: aborted by the client: "+reason)
		s.log.Warn(s.what+" transfer aborted by the client", "bytes", s.n, "reason", reason)
	}
	s.closeLocked()
}

// lost ends a transfer whose client let go of it (the capability's
// Shutdown): one that did not finish is logged.
func (s *spool) lost() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.done && s.failed == nil {
		s.failed = errors.New("the connection was lost")
		s.log.Warn(s.what+" transfer ended before finish: the client went away", "bytes", s.n)
	}
	s.closeLocked()
}

// discard removes the file of a transfer that never started (its
// capability could not be returned).
func (s *spool) discard() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closeLocked()
}

func (s *spool) closeLocked() {
	if s.f != nil {
		s.f.Close()
		os.Remove(s.f.Name())
		s.f = nil
	}
}
