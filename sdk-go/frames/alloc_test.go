package frames

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// done is a cancelled context: Alloc with it never waits.
var done = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

// hookLog records hook calls.
type hookLog struct {
	mu      sync.Mutex
	added   []*Pool
	dropped []uint32
}

func (h *hookLog) hooks() AllocatorHooks {
	return AllocatorHooks{
		Added: func(p *Pool) error {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.added = append(h.added, p)
			return nil
		},
		Dropped: func(id uint32) {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.dropped = append(h.dropped, id)
		},
	}
}

func newAlloc(t testing.TB, poolSize int64, h *hookLog) *Allocator {
	var hooks AllocatorHooks
	if h != nil {
		hooks = h.hooks()
	}
	a := NewAllocator(poolSize, hooks)
	t.Cleanup(func() { a.Close() })
	return a
}

func alloc(t testing.TB, a *Allocator, n int64) Slot {
	t.Helper()
	s, err := a.Alloc(done, n)
	if err != nil {
		t.Fatalf("alloc %d: %v", n, err)
	}
	return s
}

func free(t testing.TB, a *Allocator, s Slot) {
	t.Helper()
	if err := a.Free(s.Pool, s.Off, s.Len); err != nil {
		t.Fatal(err)
	}
}

func TestAllocAlignmentAndAccounting(t *testing.T) {
	a := newAlloc(t, 64<<10, nil)
	tests := []struct {
		n, wantOff, inUse int64
	}{
		{1, 0, 64},
		{63, 64, 128},
		{64, 128, 192},
		{65, 192, 320},
		{1000, 320, 1344},
	}
	var slots []Slot
	for _, tt := range tests {
		s := alloc(t, a, tt.n)
		if s.Off != tt.wantOff || s.Len != tt.n || int64(len(s.Data)) != tt.n || int64(cap(s.Data)) != tt.n || s.Off%SlotAlign != 0 {
			t.Errorf("alloc %d: got off %d len %d (data %d/%d), want off %d", tt.n, s.Off, s.Len, len(s.Data), cap(s.Data), tt.wantOff)
		}
		if got := a.InUse(); got != tt.inUse {
			t.Errorf("after alloc %d: InUse %d, want %d", tt.n, got, tt.inUse)
		}
		slots = append(slots, s)
	}
	z := alloc(t, a, 0)
	if z.Pool != 0 || z.Data == nil || len(z.Data) != 0 || a.InUse() != 1344 {
		t.Errorf("empty slot: %+v, InUse %d", z, a.InUse())
	}
	must(t, a.Free(z.Pool, z.Off, 0))
	for _, s := range slots {
		free(t, a, s)
	}
	if a.InUse() != 0 || !slices.Equal(a.free, []extent{{0, 64 << 10}}) {
		t.Fatalf("InUse %d, free list %v", a.InUse(), a.free)
	}
}

func TestAllocFillFreeMiddleCoalesce(t *testing.T) {
	h := &hookLog{}
	a := newAlloc(t, 64<<10, h)
	const q = 16 << 10
	var s [4]Slot
	for i := range s {
		s[i] = alloc(t, a, q)
		if s[i].Off != int64(i)*q {
			t.Fatalf("slot %d at %d", i, s[i].Off)
		}
	}
	if len(h.added) != 1 || h.added[0].Size() != 64<<10 || s[0].Pool != h.added[0].ID() {
		t.Fatalf("added %v", h.added)
	}
	if a.InUse() != 64<<10 {
		t.Fatalf("InUse %d", a.InUse())
	}
	if _, err := a.Alloc(done, 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("alloc in a full pool: got %v", err)
	}
	// Free the middle, out of order: 2 then 1. They coalesce.
	free(t, a, s[2])
	free(t, a, s[1])
	if !slices.Equal(a.free, []extent{{q, 2 * q}}) {
		t.Fatalf("free list %v", a.free)
	}
	big := alloc(t, a, 2*q)
	if big.Off != q {
		t.Fatalf("32 KiB slot at %d, want %d", big.Off, q)
	}
	// Free everything in a scrambled order: one extent again.
	for _, x := range []Slot{s[3], big, s[0]} {
		free(t, a, x)
	}
	if !slices.Equal(a.free, []extent{{0, 64 << 10}}) || a.InUse() != 0 {
		t.Fatalf("free list %v, InUse %d", a.free, a.InUse())
	}
	whole := alloc(t, a, 64<<10)
	if whole.Off != 0 || whole.Pool != s[0].Pool || len(h.added) != 1 {
		t.Fatalf("whole pool slot %+v, %d pools", whole, len(h.added))
	}
}

func TestAllocFirstFit(t *testing.T) {
	a := newAlloc(t, 64<<10, nil)
	var s []Slot
	for range 8 {
		s = append(s, alloc(t, a, 8<<10))
	}
	free(t, a, s[1]) // hole of 8K at 8K
	free(t, a, s[5]) // hole of 8K at 40K
	free(t, a, s[6]) // coalesced: 16K at 40K
	if got := alloc(t, a, 4<<10); got.Off != 8<<10 {
		t.Errorf("4K went to %d, want the first hole at 8K", got.Off)
	}
	if got := alloc(t, a, 12<<10); got.Off != 40<<10 {
		t.Errorf("12K went to %d, want 40K", got.Off)
	}
}

func TestAllocBlocksUntilFree(t *testing.T) {
	a := newAlloc(t, 64<<10, nil)
	s1 := alloc(t, a, 32<<10)
	alloc(t, a, 32<<10)
	got := make(chan Slot, 1)
	errc := make(chan error, 1)
	go func() { // ends: the Free below unblocks it
		s, err := a.Alloc(context.Background(), 20<<10)
		errc <- err
		got <- s
	}()
	select {
	case err := <-errc:
		t.Fatalf("alloc in a full pool returned %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	free(t, a, s1)
	select {
	case err := <-errc:
		must(t, err)
		if s := <-got; s.Off != 0 || s.Len != 20<<10 {
			t.Fatalf("got %+v", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("alloc still blocked after a free")
	}
}

func TestAllocHonoursContext(t *testing.T) {
	a := newAlloc(t, 64<<10, nil)
	alloc(t, a, 64<<10)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := a.Alloc(ctx, 1)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "pool 1") {
		t.Fatalf("got %v", err)
	}
	if d := time.Since(start); d < 25*time.Millisecond {
		t.Fatalf("returned after %v", d)
	}
	if len(a.waiters) != 0 || a.InUse() != 64<<10 {
		t.Fatalf("%d waiters left, InUse %d", len(a.waiters), a.InUse())
	}
}

// Waiters are served in order: a small request does not overtake a large
// one that waits, and cancelling the head lets the next one through.
func TestAllocFIFO(t *testing.T) {
	a := newAlloc(t, 64<<10, nil)
	const q = 16 << 10
	var s [4]Slot
	for i := range s {
		s[i] = alloc(t, a, q)
	}
	type res struct {
		name string
		s    Slot
		err  error
	}
	results := make(chan res, 3)
	wait := func(name string, ctx context.Context, n int64) {
		go func() { // ends: every waiter is served, cancelled or failed by Close
			s, err := a.Alloc(ctx, n)
			results <- res{name, s, err}
		}()
		for deadline := time.Now().Add(5 * time.Second); ; {
			a.mu.Lock()
			queued := slices.ContainsFunc(a.waiters, func(w *waiter) bool { return w.n == n })
			a.mu.Unlock()
			if queued {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never queued", name)
			}
			time.Sleep(time.Millisecond)
		}
	}
	bigCtx, cancelBig := context.WithCancel(context.Background())
	wait("big", bigCtx, 2*q)
	wait("small", context.Background(), 64)
	free(t, a, s[0]) // 16K free: the head (32K) does not fit; small waits behind it
	if _, err := a.Alloc(done, 64); err == nil {
		t.Fatal("a new request overtook the queue")
	}
	select {
	case r := <-results:
		t.Fatalf("%s served out of order: %+v", r.name, r)
	case <-time.After(30 * time.Millisecond):
	}
	cancelBig()
	got := map[string]res{}
	for range 2 {
		r := <-results
		got[r.name] = r
	}
	if r := got["big"]; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("got %+v, want big cancelled", r)
	}
	if r := got["small"]; r.err != nil || r.s.Off != 0 {
		t.Fatalf("got %+v, want small at 0", r)
	}
	wait("big2", context.Background(), 2*q)
	free(t, a, s[1]) // 64..32K free: not enough (64 bytes at 0 are live)
	free(t, a, s[2]) // now 64..48K: fits
	r := <-results
	if r.name != "big2" || r.err != nil || r.s.Off != 64 {
		t.Fatalf("got %+v, want big2 at 64", r)
	}
}

func TestAllocCloseFailsPending(t *testing.T) {
	a := newAlloc(t, 64<<10, nil)
	alloc(t, a, 64<<10)
	errc := make(chan error, 1)
	go func() { // ends: Close fails it
		_, err := a.Alloc(context.Background(), 1)
		errc <- err
	}()
	for {
		a.mu.Lock()
		n := len(a.waiters)
		a.mu.Unlock()
		if n == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	must(t, a.Close())
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("pending alloc: got %v", err)
	}
	for _, n := range []int64{1, 1 << 20} {
		if _, err := a.Alloc(context.Background(), n); !errors.Is(err, ErrClosed) {
			t.Fatalf("alloc %d after close: got %v", n, err)
		}
	}
	if err := a.Free(1, 0, 64<<10); !errors.Is(err, ErrClosed) {
		t.Fatalf("free after close: got %v", err)
	}
	must(t, a.Close())
}

func TestAllocDedicatedPool(t *testing.T) {
	h := &hookLog{}
	a := newAlloc(t, 64<<10, h)
	shared := alloc(t, a, 100)
	n := int64(64<<10 + 1)
	s := alloc(t, a, n)
	if len(h.added) != 2 {
		t.Fatalf("%d pools added", len(h.added))
	}
	p := h.added[1]
	if s.Pool != p.ID() || s.Pool == shared.Pool || s.Off != 0 || s.Len != n || len(s.Data) != int(n) {
		t.Fatalf("slot %+v in pool %d", s, p.ID())
	}
	if p.Size() != 68<<10 || a.InUse() != 128+68<<10 {
		t.Fatalf("pool of %d bytes, InUse %d", p.Size(), a.InUse())
	}
	s.Data[n-1] = 1
	if err := a.Free(s.Pool, 0, n-1); err == nil {
		t.Fatal("free with a wrong length succeeded")
	}
	free(t, a, s)
	if !slices.Equal(h.dropped, []uint32{s.Pool}) || a.InUse() != 128 {
		t.Fatalf("dropped %v, InUse %d", h.dropped, a.InUse())
	}
	if p.Bytes() != nil {
		t.Fatal("dedicated pool still mapped after its free")
	}
	if err := a.Free(s.Pool, 0, n); err == nil || !strings.Contains(err.Error(), "no such pool") {
		t.Fatalf("double free of a dedicated slot: %v", err)
	}
	// A new dedicated pool gets a fresh id.
	s2 := alloc(t, a, 1<<20)
	if s2.Pool == s.Pool || s2.Pool == shared.Pool {
		t.Fatalf("id %d reused", s2.Pool)
	}
	free(t, a, s2)
}

func TestAllocAddedHookError(t *testing.T) {
	boom := errors.New("socket closed")
	a := NewAllocator(64<<10, AllocatorHooks{Added: func(*Pool) error { return boom }})
	defer a.Close()
	for _, n := range []int64{1, 1 << 20} {
		if _, err := a.Alloc(context.Background(), n); !errors.Is(err, boom) {
			t.Fatalf("alloc %d: got %v", n, err)
		}
	}
	if a.InUse() != 0 || a.shared != nil || len(a.dedicated) != 0 {
		t.Fatal("a pool that was never announced is in use")
	}
}

func TestAllocFreeErrors(t *testing.T) {
	a := newAlloc(t, 64<<10, nil)
	s := alloc(t, a, 1000)
	keep := alloc(t, a, 64)
	tests := []struct {
		name      string
		pool      uint32
		off, n    int64
		wantInErr string
	}{
		{"unknown pool", 99, 0, 1000, "pool 99: free of 0+1000: no such pool"},
		{"wrong offset", s.Pool, 64, 1000, "no slot at 64"},
		{"wrong length", s.Pool, 0, 999, "the slot there is 1000 bytes"},
		{"negative offset", s.Pool, -64, 1000, "no slot at -64"},
	}
	for _, tt := range tests {
		err := a.Free(tt.pool, tt.off, tt.n)
		if err == nil || !strings.Contains(err.Error(), tt.wantInErr) {
			t.Errorf("%s: got %v, want %q", tt.name, err, tt.wantInErr)
		}
	}
	if a.InUse() != 1024+64 {
		t.Fatalf("bad frees changed InUse to %d", a.InUse())
	}
	free(t, a, s)
	if err := a.Free(s.Pool, s.Off, s.Len); err == nil || !strings.Contains(err.Error(), "double free") {
		t.Fatalf("double free: %v", err)
	}
	if !slices.Equal(a.free, []extent{{0, 1024}, {1088, 64<<10 - 1088}}) {
		t.Fatalf("free list %v", a.free)
	}
	free(t, a, keep)
	if _, err := a.Alloc(done, -1); err == nil {
		t.Fatal("negative alloc succeeded")
	}
}

// A 100 MiB frame gets a dedicated pool, and its bytes reach a consumer's
// mapping of the same memfd exactly.
func TestAlloc100MiBThroughMappings(t *testing.T) {
	if testing.Short() {
		t.Skip("100 MiB")
	}
	maps := NewMappings()
	defer maps.Close()
	const owner = 4
	a := NewAllocator(1<<20, AllocatorHooks{
		Added: func(p *Pool) error {
			return maps.Add(owner, p.ID(), dup(t, p.File()), p.Size())
		},
		Dropped: func(id uint32) { must(t, maps.Drop(owner, id)) },
	})
	defer a.Close()
	const n = 100 << 20
	s, err := a.Alloc(context.Background(), n)
	must(t, err)
	chunk := make([]byte, 1<<20+7) // not a divisor of n: exercises the tail
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range chunk {
		chunk[i] = byte(rng.Uint32())
	}
	for off := 0; off < n; off += copy(s.Data[off:], chunk) {
	}
	view, err := maps.Bytes(owner, s.Pool, s.Off, s.Len)
	must(t, err)
	if !bytes.Equal(view, s.Data) {
		t.Fatal("the consumer's view differs from the producer's slot")
	}
	for off := 0; off < n; off += len(chunk) {
		if !bytes.Equal(view[off:min(off+len(chunk), n)], chunk[:min(len(chunk), n-off)]) {
			t.Fatalf("bytes at %d differ", off)
		}
	}
	free(t, a, s)
	if _, err := maps.Bytes(owner, s.Pool, 0, 1); err == nil {
		t.Fatal("dropped pool still mapped")
	}
}

// A randomized workload: slots never overlap (checked by bookkeeping and
// by the bytes written into them), and once everything is freed nothing is
// in use and every dedicated pool is gone.
func TestAllocRandomized(t *testing.T) {
	for seed := range uint64(4) {
		h := &hookLog{}
		const poolSize = 256 << 10
		a := newAlloc(t, poolSize, h)
		rng := rand.New(rand.NewPCG(seed, 99))
		type live struct {
			s   Slot
			tag byte
		}
		var slots []live
		check := func(l live) {
			for i, b := range l.s.Data {
				if b != l.tag {
					t.Fatalf("seed %d: slot %+v byte %d overwritten", seed, l.s, i)
				}
			}
		}
		freeAt := func(i int) {
			l := slots[i]
			check(l)
			free(t, a, l.s)
			slots = slices.Delete(slots, i, i+1)
		}
		var reserved int64
		for op := range 4000 {
			if len(slots) > 0 && rng.IntN(3) == 0 {
				freeAt(rng.IntN(len(slots)))
				continue
			}
			var n int64
			switch r := rng.IntN(100); {
			case r < 2:
				n = poolSize + 1 + rng.Int64N(poolSize)
			case r < 5:
				n = 0
			case r < 15:
				n = 1 + rng.Int64N(poolSize)
			default:
				n = 1 + rng.Int64N(poolSize/16)
			}
			s, err := a.Alloc(done, n)
			if err != nil {
				if !errors.Is(err, context.Canceled) {
					t.Fatal(err)
				}
				if len(slots) > 0 {
					freeAt(rng.IntN(len(slots)))
				}
				continue
			}
			if n == 0 {
				continue
			}
			if s.Len != n || s.Off%SlotAlign != 0 {
				t.Fatalf("seed %d op %d: bad slot %+v for %d", seed, op, s, n)
			}
			end := s.Off + roundUp(n, SlotAlign)
			for _, l := range slots {
				if l.s.Pool == s.Pool && s.Off < l.s.Off+roundUp(l.s.Len, SlotAlign) && l.s.Off < end {
					t.Fatalf("seed %d op %d: %+v overlaps %+v", seed, op, s, l.s)
				}
			}
			l := live{s, byte(op)}
			for i := range s.Data {
				s.Data[i] = l.tag
			}
			slots = append(slots, l)
			reserved = 0
			for _, l := range slots {
				if l.s.Len > poolSize {
					reserved += roundUp(l.s.Len, pageSize)
				} else {
					reserved += roundUp(l.s.Len, SlotAlign)
				}
			}
			checkInvariants(t, a)
			if a.InUse() != reserved {
				t.Fatalf("seed %d op %d: InUse %d, want %d", seed, op, a.InUse(), reserved)
			}
		}
		for len(slots) > 0 {
			freeAt(rng.IntN(len(slots)))
		}
		h.mu.Lock()
		pools, dropped := len(h.added), len(h.dropped)
		h.mu.Unlock()
		if a.InUse() != 0 || pools != dropped+1 || len(a.dedicated) != 0 || !slices.Equal(a.free, []extent{{0, poolSize}}) {
			t.Fatalf("seed %d: InUse %d, %d pools added, %d dropped, %d dedicated left, free list %v",
				seed, a.InUse(), pools, dropped, len(a.dedicated), a.free)
		}
		t.Logf("seed %d: %d pools (%d dedicated)", seed, pools, dropped)
	}
}

// Producers and freers race; memory stays within the pool.
func TestAllocConcurrent(t *testing.T) {
	const poolSize = 128 << 10
	a := newAlloc(t, poolSize, nil)
	ch := make(chan Slot, 64)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for range 500 {
				s, err := a.Alloc(context.Background(), 1+rng.Int64N(poolSize/4))
				if err != nil {
					t.Error(err)
					return
				}
				s.Data[0], s.Data[len(s.Data)-1] = 1, 2
				ch <- s
			}
		})
	}
	var fwg sync.WaitGroup
	fwg.Go(func() {
		for s := range ch {
			if a.InUse() > poolSize {
				t.Errorf("InUse %d above the pool", a.InUse())
			}
			if err := a.Free(s.Pool, s.Off, s.Len); err != nil {
				t.Error(err)
			}
		}
	})
	wg.Wait()
	close(ch)
	fwg.Wait()
	if a.InUse() != 0 {
		t.Fatalf("InUse %d", a.InUse())
	}
}

// checkInvariants verifies that the shared pool's free list is sorted,
// coalesced and, with the live slots, tiles the pool exactly.
func checkInvariants(t *testing.T, a *Allocator) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.shared == nil {
		return
	}
	type span struct{ off, n int64 }
	var all []span
	for i, e := range a.free {
		if e.n <= 0 || (i > 0 && a.free[i-1].off+a.free[i-1].n >= e.off) {
			t.Fatalf("free list %v not sorted and coalesced at %d", a.free, i)
		}
		all = append(all, span{e.off, e.n})
	}
	for off, l := range a.live {
		all = append(all, span{off, l.size})
	}
	slices.SortFunc(all, func(x, y span) int { return int(x.off - y.off) })
	var at int64
	for _, s := range all {
		if s.off != at {
			t.Fatalf("pool not tiled at %d: next span %+v", at, s)
		}
		at += s.n
	}
	if at != a.shared.size {
		t.Fatalf("spans end at %d of %d", at, a.shared.size)
	}
}

// TestDedicatedPoolsAreBounded: frames larger than the shared pool are held
// back like any other once 2× the pool size of them is in flight.
func TestDedicatedPoolsAreBounded(t *testing.T) {
	a := NewAllocator(1<<20, AllocatorHooks{})
	defer a.Close()
	ctx := context.Background()
	s1, err := a.Alloc(ctx, 1<<20+1) // dedicated, ~1 MiB + a page
	if err != nil {
		t.Fatal(err)
	}
	// A huge one alone is always allowed; with s1 in flight it must wait.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := a.Alloc(short, 3<<20); err == nil {
		t.Fatal("a 3 MiB dedicated pool was granted with 1 MiB in flight and a 2 MiB bound")
	}
	got := make(chan error, 1)
	go func() {
		s, err := a.Alloc(ctx, 3<<20)
		if err == nil {
			err = a.Free(s.Pool, s.Off, s.Len)
		}
		got <- err
	}()
	time.Sleep(20 * time.Millisecond)
	if err := a.Free(s1.Pool, s1.Off, s1.Len); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("freeing the dedicated pool did not wake the waiting allocation")
	}
	if a.InUse() != 0 {
		t.Fatalf("InUse = %d after all frees", a.InUse())
	}
}
