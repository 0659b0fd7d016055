package frames

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Mappings are a consumer's views of other producers' pools, by owner (the
// daemon-assigned producer id) and pool id.
//
// A view returned by Bytes aliases the mapping: it must not be used after
// the frame it belongs to was released, nor after Drop or Close (the memory
// is unmapped and touching it faults). A view returned by Hold stays
// mapped until it is let go, whatever Drop or Close did meanwhile.
type Mappings struct {
	mu     sync.RWMutex
	closed bool
	m      map[poolKey]*mapping
}

// mapping is one mapped pool; it is unmapped once it is gone (dropped or
// closed) and no view of it is held.
type mapping struct {
	mu    sync.Mutex
	data  []byte // nil once unmapped
	holds int
	gone  bool
}

// unhold lets go of one held view.
func (e *mapping) unhold() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.holds--
	if e.holds == 0 && e.gone && e.data != nil {
		unix.Munmap(e.data)
		e.data = nil
	}
}

// drop marks the mapping gone, unmapping it unless a view is held.
func (e *mapping) drop() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.gone = true
	if e.holds > 0 || e.data == nil {
		return nil
	}
	err := unix.Munmap(e.data)
	e.data = nil
	return err
}

type poolKey struct {
	owner uint64
	id    uint32
}

func (k poolKey) String() string { return fmt.Sprintf("pool %d of owner %d", k.id, k.owner) }

// NewMappings returns an empty set of mappings.
func NewMappings() *Mappings {
	return &Mappings{m: map[poolKey]*mapping{}}
}

// Add maps a pool announced by PoolAdd: f is its memfd and size the size
// the announcement gave. Add always closes f (the mapping keeps the memory).
//
// Producers are not trusted: before mapping, Add checks f with CheckPool,
// so that a producer cannot shrink the memory under the consumer (which
// would fault, SIGBUS, on the pages cut off). The mapping is MAP_SHARED and
// PROT_READ: only a pool's producer writes it.
func (m *Mappings) Add(owner uint64, id uint32, f *os.File, size int64) error {
	k := poolKey{owner, id}
	if f == nil {
		return fmt.Errorf("frames: %s: no file", k)
	}
	defer f.Close()
	m.mu.RLock()
	_, dup := m.m[k]
	closed := m.closed
	m.mu.RUnlock()
	if closed {
		return fmt.Errorf("frames: %s: mappings %w", k, ErrClosed)
	}
	if dup {
		return fmt.Errorf("frames: %s: already mapped", k)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("frames: %s: %w", k, err)
	}
	var data []byte
	cerr := rc.Control(func(fd uintptr) {
		if err = CheckPool(int(fd), size); err != nil {
			return
		}
		data, err = unix.Mmap(int(fd), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
		err = os.NewSyscallError("mmap", err)
	})
	if cerr != nil {
		return fmt.Errorf("frames: %s: %w", k, cerr)
	}
	if err != nil {
		return fmt.Errorf("frames: %s: %w", k, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.closed:
		err = fmt.Errorf("frames: %s: mappings %w", k, ErrClosed)
	case m.m[k] != nil:
		err = fmt.Errorf("frames: %s: already mapped", k)
	}
	if err != nil {
		unix.Munmap(data)
		return err
	}
	m.m[k] = &mapping{data: data}
	return nil
}

// Drop unmaps a pool (after its owner's poolDrop), or, while views of it
// are held (Hold), leaves the unmapping to the last let-go.
func (m *Mappings) Drop(owner uint64, id uint32) error {
	k := poolKey{owner, id}
	m.mu.Lock()
	e, ok := m.m[k]
	delete(m.m, k)
	closed := m.closed
	m.mu.Unlock()
	switch {
	case closed:
		return fmt.Errorf("frames: %s: mappings %w", k, ErrClosed)
	case !ok:
		return fmt.Errorf("frames: %s: not mapped", k)
	}
	if err := e.drop(); err != nil {
		return fmt.Errorf("frames: %s: %w", k, os.NewSyscallError("munmap", err))
	}
	return nil
}

// Bytes returns the n bytes at off in a mapped pool, as a FrameRef names
// them, after checking that they lie inside it.
func (m *Mappings) Bytes(owner uint64, id uint32, off, n int64) ([]byte, error) {
	k := poolKey{owner, id}
	m.mu.RLock()
	e, ok := m.m[k]
	closed := m.closed
	m.mu.RUnlock()
	var data []byte
	if ok {
		e.mu.Lock()
		data = e.data
		e.mu.Unlock()
	}
	switch {
	case closed:
		return nil, fmt.Errorf("frames: %s: mappings %w", k, ErrClosed)
	case !ok:
		return nil, fmt.Errorf("frames: %s: not mapped", k)
	case off < 0 || n < 0 || off > int64(len(data)) || n > int64(len(data))-off:
		// FrameRef fields are unsigned: callers convert, so values of 2^63
		// and more arrive negative.
		return nil, fmt.Errorf("frames: %s: slot at %d+%d exceeds its %d bytes", k, uint64(off), uint64(n), len(data))
	}
	return data[off : off+n : off+n], nil
}

// Hold is Bytes for a view that stays mapped until the returned function
// is called (once; it may be called after Drop and Close, which leave the
// unmapping to it). A view never let go keeps its pool mapped until the
// process exits.
func (m *Mappings) Hold(owner uint64, id uint32, off, n int64) ([]byte, func(), error) {
	k := poolKey{owner, id}
	m.mu.RLock()
	defer m.mu.RUnlock() // Drop and Close cannot mark e gone meanwhile
	e, ok := m.m[k]
	switch {
	case m.closed:
		return nil, nil, fmt.Errorf("frames: %s: mappings %w", k, ErrClosed)
	case !ok:
		return nil, nil, fmt.Errorf("frames: %s: not mapped", k)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	data := e.data
	if off < 0 || n < 0 || off > int64(len(data)) || n > int64(len(data))-off {
		return nil, nil, fmt.Errorf("frames: %s: slot at %d+%d exceeds its %d bytes", k, uint64(off), uint64(n), len(data))
	}
	e.holds++
	var once sync.Once
	return data[off : off+n : off+n], func() { once.Do(e.unhold) }, nil
}

// Close unmaps every pool, but those with views held (Hold), which the
// last let-go unmaps. Later calls fail with ErrClosed.
func (m *Mappings) Close() error {
	m.mu.Lock()
	all := m.m
	m.m, m.closed = nil, true
	m.mu.Unlock()
	var errs []error
	for k, e := range all {
		if err := e.drop(); err != nil {
			errs = append(errs, fmt.Errorf("frames: %s: %w", k, os.NewSyscallError("munmap", err)))
		}
	}
	return errors.Join(errs...)
}
