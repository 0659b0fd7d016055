package frames

import (
	"bufio"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// dup returns a new descriptor of f, for Mappings.Add (which closes it).
func dup(t testing.TB, f *os.File) *os.File {
	t.Helper()
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	must(t, err)
	return os.NewFile(uintptr(fd), f.Name())
}

func mappedPool(t testing.TB, m *Mappings, owner uint64, id uint32, size int64) *Pool {
	t.Helper()
	p, err := NewPool(id, size)
	must(t, err)
	t.Cleanup(func() { p.Close() })
	must(t, m.Add(owner, id, dup(t, p.File()), size))
	return p
}

func TestMappingsBounds(t *testing.T) {
	m := NewMappings()
	defer m.Close()
	mappedPool(t, m, 7, 3, 65536)
	tests := []struct {
		name   string
		off, n int64
		ok     bool
	}{
		{"whole", 0, 65536, true},
		{"empty at start", 0, 0, true},
		{"empty at end", 65536, 0, true},
		{"last byte", 65535, 1, true},
		{"one past the end", 65535, 2, false},
		{"beyond size", 4096, 65536, false},
		{"offset beyond", 65537, 0, false},
		{"off+n overflows", math.MaxInt64 - 10, 20, false},
		{"n overflows", 10, math.MaxInt64, false},
		{"negative offset (≥2^63 as uint64)", -1, 1, false},
		{"negative length", 0, -1, false},
	}
	for _, tt := range tests {
		b, err := m.Bytes(7, 3, tt.off, tt.n)
		if tt.ok {
			if err != nil || int64(len(b)) != tt.n || int64(cap(b)) != tt.n {
				t.Errorf("%s: got %d bytes (cap %d), %v", tt.name, len(b), cap(b), err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), "pool 3 of owner 7: slot at") || !strings.Contains(err.Error(), "exceeds its 65536 bytes") {
			t.Errorf("%s: got %v", tt.name, err)
		}
	}
	if _, err := m.Bytes(7, 4, 0, 1); err == nil || !strings.Contains(err.Error(), "pool 4 of owner 7: not mapped") {
		t.Errorf("unknown pool: %v", err)
	}
	if _, err := m.Bytes(8, 3, 0, 1); err == nil {
		t.Error("pool of another owner found")
	}
}

func TestMappingsDrop(t *testing.T) {
	m := NewMappings()
	defer m.Close()
	mappedPool(t, m, 1, 1, 4096)
	mappedPool(t, m, 2, 1, 4096) // same id, another owner
	must(t, m.Drop(1, 1))
	if _, err := m.Bytes(1, 1, 0, 1); err == nil {
		t.Fatal("Bytes after Drop succeeded")
	}
	if _, err := m.Bytes(2, 1, 0, 1); err != nil {
		t.Fatalf("the other owner's pool: %v", err)
	}
	if err := m.Drop(1, 1); err == nil {
		t.Fatal("second Drop succeeded")
	}
	must(t, m.Close())
	if _, err := m.Bytes(2, 1, 0, 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Bytes after Close: %v", err)
	}
	p, err := NewPool(9, 4096)
	must(t, err)
	defer p.Close()
	if err := m.Add(1, 9, dup(t, p.File()), 4096); !errors.Is(err, ErrClosed) {
		t.Fatalf("Add after Close: %v", err)
	}
}

// perms returns the permissions /proc/self/maps shows for the mapping that
// starts at b.
func perms(t *testing.T, b []byte) string {
	t.Helper()
	start := uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b))))
	f, err := os.Open("/proc/self/maps")
	must(t, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		lo, _, _ := strings.Cut(fields[0], "-")
		if v, err := strconv.ParseUint(lo, 16, 64); err == nil && v == start {
			if len(fields) < 6 || !strings.Contains(fields[5], "dimplugd-frames") {
				t.Errorf("mapping at %#x: %q", start, sc.Text())
			}
			return fields[1]
		}
	}
	t.Fatalf("no mapping at %#x", start)
	return ""
}

func TestMappingsProtection(t *testing.T) {
	m := NewMappings()
	defer m.Close()
	p := mappedPool(t, m, 1, 1, 8192)
	v, err := m.Bytes(1, 1, 0, 8192)
	must(t, err)
	if got := perms(t, v); got != "r--s" {
		t.Errorf("consumer's mapping is %q, want r--s", got)
	}
	if got := perms(t, p.Bytes()); got != "rw-s" {
		t.Errorf("producer's pool is %q, want rw-s", got)
	}
	copy(p.Bytes()[100:], "written by the producer")
	if string(v[100:123]) != "written by the producer" {
		t.Error("the producer's write is not in the consumer's view")
	}
}

// What a consumer holding a pool's descriptor can do to the memory, on
// this kernel: every way to write it that a hostile plugin could try,
// with the descriptor as received (open read-write: the producer's own)
// and reopened through /proc/self/fd as root. Only the producer's mapping,
// made before the seals, writes; F_SEAL_FUTURE_WRITE refuses the rest.
func TestPoolWriteSealHolds(t *testing.T) {
	p, err := NewPool(1, 8192)
	must(t, err)
	defer p.Close()
	copy(p.Bytes(), "original")
	recv := dup(t, p.File())
	defer recv.Close()
	reopened, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", recv.Fd()), os.O_RDWR, 0)
	if err != nil {
		t.Logf("reopening read-write through /proc refused: %v", err)
	} else {
		defer reopened.Close()
	}
	fds := map[string]*os.File{"received": recv}
	if reopened != nil {
		fds["reopened read-write"] = reopened
	}
	for name, f := range fds {
		fd := int(f.Fd())
		if b, err := unix.Mmap(fd, 0, 8192, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err == nil {
			unix.Munmap(b)
			t.Errorf("%s: a writable shared mapping was allowed", name)
		}
		b, err := unix.Mmap(fd, 0, 8192, unix.PROT_READ, unix.MAP_SHARED)
		must(t, err)
		if err := unix.Mprotect(b, unix.PROT_READ|unix.PROT_WRITE); err == nil {
			t.Errorf("%s: mprotect made a read-only shared mapping writable", name)
		}
		unix.Munmap(b)
		if _, err := unix.Pwrite(fd, []byte("overwritten"), 0); err == nil {
			t.Errorf("%s: pwrite was allowed", name)
		}
		if err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 4096); err == nil {
			t.Errorf("%s: punching a hole was allowed", name)
		}
		for _, size := range []int64{0, 4096, 1 << 20} {
			if err := unix.Ftruncate(fd, size); err == nil {
				t.Errorf("%s: ftruncate to %d was allowed", name, size)
			}
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_WRITE); err == nil {
			t.Errorf("%s: more seals could be added", name)
		}
		// A private writable mapping is allowed, but copies on write:
		// the pool does not change.
		if b, err := unix.Mmap(fd, 0, 8192, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE); err == nil {
			copy(b, "private!")
			unix.Munmap(b)
		}
	}
	if got := string(p.Bytes()[:8]); got != "original" {
		t.Fatalf("the pool holds %q after the consumer's attempts", got)
	}
	copy(p.Bytes(), "producer")
	b, err := unix.Mmap(int(recv.Fd()), 0, 8192, unix.PROT_READ, unix.MAP_SHARED)
	must(t, err)
	defer unix.Munmap(b)
	if string(b[:8]) != "producer" {
		t.Fatal("the producer's own mapping no longer writes the pool")
	}
}

func TestMappingsRejectsUntrustedMemfds(t *testing.T) {
	m := NewMappings()
	defer m.Close()
	memfd := func(size int64, seals int) *os.File {
		fd, err := unix.MemfdCreate("test", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
		must(t, err)
		must(t, unix.Ftruncate(fd, size))
		if seals != 0 {
			_, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals)
			must(t, err)
		}
		return os.NewFile(uintptr(fd), "test")
	}
	tmp, err := os.CreateTemp(t.TempDir(), "notmemfd")
	must(t, err)
	must(t, tmp.Truncate(4096))
	rd, wr, err := os.Pipe()
	must(t, err)
	defer wr.Close()
	fifoPath := t.TempDir() + "/fifo"
	must(t, unix.Mkfifo(fifoPath, 0o600))
	fifo, err := os.OpenFile(fifoPath, os.O_RDWR, 0) // O_RDWR: does not block
	must(t, err)
	kallsyms, err := os.Open("/proc/kallsyms")
	must(t, err)
	sock, sock2, err := Socketpair()
	must(t, err)
	defer sock.Close()
	const all = PoolSeals | unix.F_SEAL_SEAL
	tests := []struct {
		name string
		f    *os.File
		size int64
		want string
	}{
		{"unsealed", memfd(4096, 0), 4096, "not sealed against shrinking, growing and writing"},
		{"no write seal", memfd(4096, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW), 4096, "not sealed against shrinking, growing and writing"},
		{"no grow seal", memfd(4096, unix.F_SEAL_SHRINK|unix.F_SEAL_FUTURE_WRITE), 4096, "not sealed"},
		{"smaller than announced", memfd(4096, all), 8192, "the memfd has 4096 bytes, announced 8192"},
		{"larger than announced", memfd(8192, all), 4096, "the memfd has 8192 bytes, announced 4096"},
		{"regular file", tmp, 4096, "not a sealed memfd"},
		{"/proc/kallsyms", kallsyms, 0x1000, "bytes, announced"},
		{"pipe", rd, 4096, "not a memfd"},
		{"fifo", fifo, 4096, "not a memfd"},
		{"socket", sock2, 4096, "not a memfd"},
		{"zero size", memfd(4096, all), 0, "invalid pool size 0"},
	}
	for i, tt := range tests {
		err := m.Add(5, uint32(i+1), tt.f, tt.size)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("pool %d of owner 5: ", i+1)) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want %q", tt.name, err, tt.want)
		}
		if tt.f.Fd() != ^uintptr(0) {
			t.Errorf("%s: file left open", tt.name)
		}
	}
	must(t, m.Add(5, 100, memfd(4096, all), 4096))
	if err := m.Add(5, 100, memfd(4096, all), 4096); err == nil || !strings.Contains(err.Error(), "already mapped") {
		t.Errorf("duplicate: %v", err)
	}
}

func TestPoolSealsAndErrors(t *testing.T) {
	p, err := NewPool(5, 12345)
	must(t, err)
	seals, err := unix.FcntlInt(p.File().Fd(), unix.F_GET_SEALS, 0)
	must(t, err)
	if want := unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_FUTURE_WRITE | unix.F_SEAL_SEAL; seals != want {
		t.Errorf("seals %#x, want %#x", seals, want)
	}
	if err := unix.Ftruncate(int(p.File().Fd()), 0); err == nil {
		t.Error("a pool could be shrunk")
	}
	if p.ID() != 5 || p.Size() != 12345 || len(p.Bytes()) != 12345 {
		t.Errorf("pool %d of %d bytes, %d mapped", p.ID(), p.Size(), len(p.Bytes()))
	}
	must(t, p.Close())
	if err := p.Close(); !errors.Is(err, ErrClosed) {
		t.Errorf("second close: %v", err)
	}
	if p.Bytes() != nil {
		t.Error("Bytes after Close")
	}
	for _, tt := range []struct {
		id   uint32
		size int64
	}{{0, 4096}, {1, 0}, {1, -1}} {
		if p, err := NewPool(tt.id, tt.size); err == nil {
			p.Close()
			t.Errorf("NewPool(%d, %d) succeeded", tt.id, tt.size)
		}
	}
}

func fdCount(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	must(t, err)
	return len(ents)
}

func TestNoFDLeak(t *testing.T) {
	before := fdCount(t)
	m := NewMappings()
	for i := range 100 {
		p, err := NewPool(uint32(i+1), 64<<10)
		must(t, err)
		must(t, m.Add(1, p.ID(), dup(t, p.File()), p.Size()))
		if i%2 == 0 {
			must(t, m.Drop(1, p.ID()))
		}
		must(t, p.Close())
	}
	must(t, m.Close())

	h := &hookLog{}
	maps := NewMappings()
	a := NewAllocator(64<<10, AllocatorHooks{
		Added: func(p *Pool) error {
			h.hooks().Added(p)
			return maps.Add(1, p.ID(), dup(t, p.File()), p.Size())
		},
		Dropped: func(id uint32) { must(t, maps.Drop(1, id)) },
	})
	for range 100 {
		s, err := a.Alloc(done, 100<<10) // dedicated
		must(t, err)
		must(t, a.Free(s.Pool, s.Off, s.Len))
	}
	_, err := a.Alloc(done, 100) // shared, left allocated: Close cleans up
	must(t, err)
	_, err = a.Alloc(done, 1<<20)
	must(t, err)
	must(t, a.Close())
	must(t, maps.Close())
	if len(h.added) != 102 {
		t.Errorf("%d pools", len(h.added))
	}

	c, f, err := Socketpair()
	must(t, err)
	c.Close()
	f.Close()
	if after := fdCount(t); after != before {
		t.Fatalf("%d fds before, %d after", before, after)
	}
}
