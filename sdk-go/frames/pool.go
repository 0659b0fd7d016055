package frames

import (
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// pageSize is the granularity of dedicated pools and of the shared pool.
var pageSize = int64(os.Getpagesize())

// Pool is one memfd-backed shared memory region owned by a producer,
// mapped read-write. The memfd is sealed against shrinking and growing, so
// consumers that map it can rely on its size.
type Pool struct {
	id   uint32
	size int64
	f    *os.File

	mu   sync.Mutex // guards data against Close
	data []byte
}

// NewPool creates a pool of size bytes: memfd_create("dimplugd-frames",
// MFD_CLOEXEC|MFD_ALLOW_SEALING), ftruncate to size, F_SEAL_SHRINK and
// F_SEAL_GROW, and a read-write MAP_SHARED mapping. id must not be 0.
func NewPool(id uint32, size int64) (*Pool, error) {
	if id == 0 {
		return nil, fmt.Errorf("frames: pool 0: id 0 is reserved")
	}
	if size <= 0 || int64(int(size)) != size {
		return nil, fmt.Errorf("frames: pool %d: invalid size %d", id, size)
	}
	fd, err := unix.MemfdCreate("dimplugd-frames", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("frames: pool %d: %w", id, os.NewSyscallError("memfd_create", err))
	}
	fail := func(call string, err error) (*Pool, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("frames: pool %d of %d bytes: %w", id, size, os.NewSyscallError(call, err))
	}
	if err := unix.Ftruncate(fd, size); err != nil {
		return fail("ftruncate", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		return fail("fcntl(F_ADD_SEALS)", err)
	}
	data, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fail("mmap", err)
	}
	return &Pool{id: id, size: size, f: os.NewFile(uintptr(fd), "dimplugd-frames"), data: data}, nil
}

// ID returns the pool's id, unique per producer.
func (p *Pool) ID() uint32 { return p.id }

// Size returns the pool's length in bytes, which is the memfd's.
func (p *Pool) Size() int64 { return p.size }

// File returns the memfd, to attach to the PoolAdd that announces the pool.
// It stays owned by the pool.
func (p *Pool) File() *os.File { return p.f }

// Bytes returns the whole mapping, or nil once the pool is closed. The
// slice must not be used after Close.
func (p *Pool) Bytes() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.data
}

// Close unmaps the pool and closes its memfd. Consumers' mappings stay
// valid until they drop them. Closing twice returns an error wrapping
// ErrClosed.
func (p *Pool) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.data == nil {
		return fmt.Errorf("frames: pool %d: %w", p.id, ErrClosed)
	}
	err := unix.Munmap(p.data)
	p.data = nil
	if cerr := p.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("frames: pool %d: close: %w", p.id, err)
	}
	return nil
}
