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
// is unmapped and touching it faults).
type Mappings struct {
	mu     sync.RWMutex
	closed bool
	m      map[poolKey][]byte
}

type poolKey struct {
	owner uint64
	id    uint32
}

func (k poolKey) String() string { return fmt.Sprintf("pool %d of owner %d", k.id, k.owner) }

// NewMappings returns an empty set of mappings.
func NewMappings() *Mappings {
	return &Mappings{m: map[poolKey][]byte{}}
}

// Add maps a pool announced by PoolAdd: f is its memfd and size the size
// the announcement gave. Add always closes f (the mapping keeps the memory).
//
// Producers are not trusted, so before mapping Add checks that f is a
// regular file whose size (fstat) is exactly size, and that it is sealed
// against shrinking (F_SEAL_SHRINK): a producer that shrank a mapped memfd
// would make the consumer fault (SIGBUS) on the pages it cut off. Growing
// is harmless. The mapping is MAP_SHARED and PROT_READ, plus PROT_WRITE
// when writable (which fails if f was opened read-only or is write-sealed).
func (m *Mappings) Add(owner uint64, id uint32, f *os.File, size int64, writable bool) error {
	k := poolKey{owner, id}
	if f == nil {
		return fmt.Errorf("frames: %s: no file", k)
	}
	defer f.Close()
	if size <= 0 || int64(int(size)) != size {
		return fmt.Errorf("frames: %s: invalid size %d", k, size)
	}
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
	cerr := rc.Control(func(fd uintptr) { data, err = mapChecked(int(fd), size, writable) })
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
	m.m[k] = data
	return nil
}

func mapChecked(fd int, size int64, writable bool) ([]byte, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, os.NewSyscallError("fstat", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("not a memfd (mode %#o)", st.Mode)
	}
	if st.Size != size {
		return nil, fmt.Errorf("the memfd has %d bytes, announced %d", st.Size, size)
	}
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		return nil, fmt.Errorf("not a sealable memfd: %w", os.NewSyscallError("fcntl(F_GET_SEALS)", err))
	}
	if seals&unix.F_SEAL_SHRINK == 0 {
		return nil, errors.New("the memfd is not sealed against shrinking (F_SEAL_SHRINK)")
	}
	prot := unix.PROT_READ
	if writable {
		prot |= unix.PROT_WRITE
	}
	data, err := unix.Mmap(fd, 0, int(size), prot, unix.MAP_SHARED)
	if err != nil {
		return nil, os.NewSyscallError("mmap", err)
	}
	return data, nil
}

// Drop unmaps a pool (after its owner's poolDrop).
func (m *Mappings) Drop(owner uint64, id uint32) error {
	k := poolKey{owner, id}
	m.mu.Lock()
	data, ok := m.m[k]
	delete(m.m, k)
	closed := m.closed
	m.mu.Unlock()
	switch {
	case closed:
		return fmt.Errorf("frames: %s: mappings %w", k, ErrClosed)
	case !ok:
		return fmt.Errorf("frames: %s: not mapped", k)
	}
	if err := unix.Munmap(data); err != nil {
		return fmt.Errorf("frames: %s: %w", k, os.NewSyscallError("munmap", err))
	}
	return nil
}

// Bytes returns the n bytes at off in a mapped pool, as a FrameRef names
// them, after checking that they lie inside it.
func (m *Mappings) Bytes(owner uint64, id uint32, off, n int64) ([]byte, error) {
	k := poolKey{owner, id}
	m.mu.RLock()
	data, ok := m.m[k]
	closed := m.closed
	m.mu.RUnlock()
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

// Close unmaps every pool. Later calls fail with ErrClosed.
func (m *Mappings) Close() error {
	m.mu.Lock()
	all := m.m
	m.m, m.closed = nil, true
	m.mu.Unlock()
	var errs []error
	for k, data := range all {
		if err := unix.Munmap(data); err != nil {
			errs = append(errs, fmt.Errorf("frames: %s: %w", k, os.NewSyscallError("munmap", err)))
		}
	}
	return errors.Join(errs...)
}

// ReadOnly returns a new read-only open file description of the memfd f
// (by reopening /proc/self/fd/N), to hand to consumers that must not be
// able to write into the producer's pool: a consumer can only map it with
// PROT_READ. Seals are kept (they belong to the memfd). The caller keeps f.
func ReadOnly(f *os.File) (*os.File, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("frames: reopen %s read-only: %w", f.Name(), err)
	}
	var ro *os.File
	cerr := rc.Control(func(fd uintptr) {
		ro, err = os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", fd), os.O_RDONLY|unix.O_CLOEXEC, 0)
	})
	if cerr != nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("frames: reopen %s read-only: %w", f.Name(), err)
	}
	return ro, nil
}
