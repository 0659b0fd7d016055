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

func mappedPool(t testing.TB, m *Mappings, owner uint64, id uint32, size int64, writable bool) *Pool {
	t.Helper()
	p, err := NewPool(id, size)
	must(t, err)
	t.Cleanup(func() { p.Close() })
	must(t, m.Add(owner, id, dup(t, p.File()), size, writable))
	return p
}

func TestMappingsBounds(t *testing.T) {
	m := NewMappings()
	defer m.Close()
	mappedPool(t, m, 7, 3, 65536, false)
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
	mappedPool(t, m, 1, 1, 4096, false)
	mappedPool(t, m, 2, 1, 4096, false) // same id, another owner
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
	if err := m.Add(1, 9, dup(t, p.File()), 4096, false); !errors.Is(err, ErrClosed) {
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
	ro := mappedPool(t, m, 1, 1, 8192, false)
	rw := mappedPool(t, m, 1, 2, 8192, true)
	vro, err := m.Bytes(1, 1, 0, 8192)
	must(t, err)
	vrw, err := m.Bytes(1, 2, 0, 8192)
	must(t, err)
	if got := perms(t, vro); got != "r--s" {
		t.Errorf("read-only mapping is %q, want r--s", got)
	}
	if got := perms(t, vrw); got != "rw-s" {
		t.Errorf("writable mapping is %q, want rw-s", got)
	}
	if got := perms(t, ro.Bytes()); got != "rw-s" {
		t.Errorf("producer's pool is %q, want rw-s", got)
	}
	copy(vrw[100:], "written by a consumer")
	if string(rw.Bytes()[100:121]) != "written by a consumer" {
		t.Error("a writable mapping's write is not in the pool")
	}

	// A read-only reopened memfd cannot be mapped writable at all.
	rofile, err := ReadOnly(ro.File())
	must(t, err)
	if err := m.Add(2, 1, rofile, 8192, true); err == nil || !errors.Is(err, unix.EACCES) {
		t.Fatalf("writable mapping of a read-only fd: %v", err)
	}
	if rofile.Fd() != ^uintptr(0) {
		t.Error("Add did not close the file it failed on")
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
	tests := []struct {
		name string
		f    *os.File
		size int64
		want string
	}{
		{"unsealed", memfd(4096, 0), 4096, "not sealed against shrinking"},
		{"grow seal only", memfd(4096, unix.F_SEAL_GROW), 4096, "not sealed against shrinking"},
		{"smaller than announced", memfd(4096, unix.F_SEAL_SHRINK), 8192, "the memfd has 4096 bytes, announced 8192"},
		{"larger than announced", memfd(8192, unix.F_SEAL_SHRINK), 4096, "the memfd has 8192 bytes, announced 4096"},
		{"regular file", tmp, 4096, "not a sealable memfd"},
		{"pipe", rd, 4096, "not a memfd"},
		{"zero size", memfd(4096, unix.F_SEAL_SHRINK), 0, "invalid size 0"},
	}
	for i, tt := range tests {
		err := m.Add(5, uint32(i+1), tt.f, tt.size, false)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("pool %d of owner 5: ", i+1)) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want %q", tt.name, err, tt.want)
		}
		if tt.f.Fd() != ^uintptr(0) {
			t.Errorf("%s: file left open", tt.name)
		}
	}
	// Sealed against shrinking only is enough (growing is harmless).
	must(t, m.Add(5, 100, memfd(4096, unix.F_SEAL_SHRINK), 4096, false))
	if err := m.Add(5, 100, memfd(4096, unix.F_SEAL_SHRINK), 4096, false); err == nil || !strings.Contains(err.Error(), "already mapped") {
		t.Errorf("duplicate: %v", err)
	}
}

func TestPoolSealsAndErrors(t *testing.T) {
	p, err := NewPool(5, 12345)
	must(t, err)
	seals, err := unix.FcntlInt(p.File().Fd(), unix.F_GET_SEALS, 0)
	must(t, err)
	if want := unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL; seals != want {
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
		ro, err := ReadOnly(p.File())
		must(t, err)
		must(t, m.Add(1, p.ID(), ro, p.Size(), false))
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
			return maps.Add(1, p.ID(), dup(t, p.File()), p.Size(), false)
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
