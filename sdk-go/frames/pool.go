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
// mapped read-write by it alone. The memfd is sealed against shrinking and
// growing, so consumers that map it can rely on its size, and with
// F_SEAL_FUTURE_WRITE once the producer's own mapping exists: nobody can
// write it any more except through that mapping — not through this
// descriptor, a duplicate of it, or a reopening of it through /proc (see
// CheckPool and docs/protocol.md, "Frame memory").
type Pool struct {
	id   uint32
	size int64
	f    *os.File

	mu      sync.Mutex // guards data against Close
	data    []byte
	holds   int  // views handed out with Hold and not yet let go
	closing bool // Close was called while held: the last let-go unmaps
}

// NewPool creates a pool of size bytes: memfd_create("dimplugd-frames",
// MFD_CLOEXEC|MFD_ALLOW_SEALING), ftruncate to size, a read-write
// MAP_SHARED mapping, then the seals PoolSeals (shrink, grow, future
// writes, and no more seals). id must not be 0.
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
	data, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fail("mmap", err)
	}
	// The writable mapping exists: from now on it is the only way to
	// write the pool.
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, PoolSeals|unix.F_SEAL_SEAL); err != nil {
		unix.Munmap(data)
		return fail("fcntl(F_ADD_SEALS)", err)
	}
	return &Pool{id: id, size: size, f: os.NewFile(uintptr(fd), "dimplugd-frames"), data: data}, nil
}

// PoolSeals are the seals every pool's memfd carries, and that CheckPool
// requires of a pool a peer announces.
const PoolSeals = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_FUTURE_WRITE

// CheckPool checks a received pool descriptor without opening, mapping or
// reading anything through it: fstat says it is a regular file of exactly
// size bytes, and F_GET_SEALS (which only memfds and hugetlbfs files
// answer, and only a memfd made with MFD_ALLOW_SEALING can have these
// seals) says it is sealed with PoolSeals. Neither call can block, whatever
// the descriptor is (a FIFO, a socket, a device).
func CheckPool(fd int, size int64) error {
	if size <= 0 || int64(int(size)) != size {
		return fmt.Errorf("invalid pool size %d", size)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return os.NewSyscallError("fstat", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("not a memfd (file type %#o)", st.Mode&unix.S_IFMT)
	}
	if st.Size != size {
		return fmt.Errorf("the memfd has %d bytes, announced %d", st.Size, size)
	}
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		return fmt.Errorf("not a sealed memfd: %w", os.NewSyscallError("fcntl(F_GET_SEALS)", err))
	}
	if seals&PoolSeals != PoolSeals {
		return fmt.Errorf("the memfd is not sealed against shrinking, growing and writing (seals %#x, want %#x)", seals, PoolSeals)
	}
	return nil
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
	if p.closing {
		return nil
	}
	return p.data
}

// Hold keeps the pool's mapping while a view of it is in use (a frame
// handed to an application): Close then leaves the unmapping to the last
// let-go. It fails once the pool is closed. Call the returned function,
// once, when the view is no longer used; a view never let go keeps its
// memory mapped until the process exits.
func (p *Pool) Hold() (func(), error) {
	_, release, err := p.hold()
	return release, err
}

// hold is Hold, also returning the mapping it holds.
func (p *Pool) hold() ([]byte, func(), error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.data == nil || p.closing {
		return nil, nil, fmt.Errorf("frames: pool %d: %w", p.id, ErrClosed)
	}
	p.holds++
	var once sync.Once
	return p.data, func() { once.Do(p.unhold) }, nil
}

func (p *Pool) unhold() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.holds--
	if p.holds == 0 && p.closing {
		unix.Munmap(p.data)
		p.data, p.closing = nil, false
	}
}

// Close closes the pool's memfd and unmaps it, or, while views of it are
// held (Hold), leaves the unmapping to the last let-go. Bytes returns nil
// after Close either way. Consumers' mappings stay valid until they drop
// them. Closing twice returns an error wrapping ErrClosed.
func (p *Pool) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.data == nil || p.closing {
		return fmt.Errorf("frames: pool %d: %w", p.id, ErrClosed)
	}
	var err error
	if p.holds > 0 {
		p.closing = true
	} else {
		err = unix.Munmap(p.data)
		p.data = nil
	}
	if cerr := p.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("frames: pool %d: close: %w", p.id, err)
	}
	return nil
}
