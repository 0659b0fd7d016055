package frames

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
)

// SlotAlign is the alignment of every slot's offset in the shared pool.
const SlotAlign = 64

// Slot is a piece of one of a producer's pools. Data aliases the pool's
// mapping (len(Data) == Len) and is valid until the slot is freed.
type Slot struct {
	Pool     uint32
	Off, Len int64
	Data     []byte
}

// AllocatorHooks tell the producer's connection about its pools. Hooks are
// called without the allocator's lock held, so they may block (send on a
// frame socket) while other goroutines free slots, and they may be called
// from several allocating or freeing goroutines at once.
type AllocatorHooks struct {
	// Added is called when a new pool exists, before any slot of it is
	// handed out: announce it (PoolAdd with its fd). An error fails the
	// allocation and closes the pool.
	Added func(*Pool) error
	// Dropped is called when a dedicated pool was freed and closed:
	// announce poolDrop.
	Dropped func(id uint32)
	// NewID, when set, numbers new pools instead of the allocator's own
	// counter (for producers whose allocators share one id space). It is
	// called with the allocator's lock held and must not call back.
	NewID func() uint32
}

// Allocator hands out slots from a producer's pools, blocking when they are
// full: this is the back-pressure of a frame stream.
//
// Requests of at most the pool size come from one shared pool, created on
// first use, with a first-fit policy over a free list sorted by offset;
// freed extents coalesce with their neighbours, in whatever order they come
// back. With k free extents (at most the number of live slots plus one),
// Alloc and Free cost O(k) (a scan, and a binary search plus a slice
// insert or delete). Waiting requests are served in FIFO order, so a large
// request is not starved by small ones (and small ones wait behind it).
//
// Larger requests get a dedicated pool of their own, which is closed and
// dropped when its slot is freed. Dedicated pools are not bounded by the
// allocator.
type Allocator struct {
	poolSize int64 // of the shared pool, a multiple of the page size
	hooks    AllocatorHooks

	createMu sync.Mutex // serializes creating the shared pool (hooks run unlocked)

	mu        sync.Mutex
	closed    bool
	nextID    uint32
	shared    *Pool
	sharedMem []byte             // shared.Bytes(), valid until Close
	free      []extent           // of the shared pool, sorted by off, coalesced
	live      map[int64]liveSlot // of the shared pool, by offset
	dedicated map[uint32]dedicatedSlot
	inUse     int64
	waiters   []*waiter // FIFO

	// Dedicated pools are bounded too: at most 2×poolSize of them at once
	// (one is always allowed, whatever its size), so that a producer of
	// huge frames is held back like any other.
	dedicatedBytes int64
	dedicatedFreed chan struct{} // closed and replaced when one is freed
}

type extent struct{ off, n int64 }

type liveSlot struct{ n, size int64 } // as requested, as reserved

type dedicatedSlot struct {
	p *Pool
	n int64 // as requested
}

type waiter struct {
	n, size int64
	ready   chan struct{} // closed once slot or err is set
	done    bool
	slot    Slot
	err     error
}

// NewAllocator returns an allocator whose shared pool holds poolSize bytes,
// rounded up to the page size.
func NewAllocator(poolSize int64, hooks AllocatorHooks) *Allocator {
	if poolSize < pageSize {
		poolSize = pageSize
	}
	return &Allocator{
		poolSize:  roundUp(poolSize, pageSize),
		hooks:     hooks,
		live:      map[int64]liveSlot{},
		dedicated: map[uint32]dedicatedSlot{},
	}
}

// PoolSize returns the size of the shared pool: the largest request it
// serves.
func (a *Allocator) PoolSize() int64 { return a.poolSize }

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

// Alloc returns a slot of n bytes. For n <= PoolSize it comes from the
// shared pool, waiting until enough is freed or ctx is done (a done ctx
// still gets a slot that is free at once, so a cancelled context makes a
// non-blocking attempt). For n > PoolSize a dedicated pool of n bytes
// rounded up to the page size is created for it. n == 0 returns an empty
// slot (Pool 0) that needs no Free.
func (a *Allocator) Alloc(ctx context.Context, n int64) (Slot, error) {
	switch {
	case n < 0:
		return Slot{}, fmt.Errorf("frames: alloc of %d bytes", n)
	case n == 0:
		return Slot{Data: []byte{}}, nil
	case n > a.poolSize:
		return a.allocDedicated(ctx, n)
	}
	if err := a.ensureShared(); err != nil {
		return Slot{}, err
	}
	size := roundUp(n, SlotAlign)
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return Slot{}, fmt.Errorf("frames: alloc: allocator %w", ErrClosed)
	}
	if len(a.waiters) == 0 {
		if s, ok := a.take(n, size); ok {
			a.mu.Unlock()
			return s, nil
		}
	}
	if err := ctx.Err(); err != nil {
		a.mu.Unlock()
		return Slot{}, fmt.Errorf("frames: alloc of %d bytes in pool %d: %w", n, a.shared.id, err)
	}
	w := &waiter{n: n, size: size, ready: make(chan struct{})}
	a.waiters = append(a.waiters, w)
	a.mu.Unlock()

	select {
	case <-w.ready:
	case <-ctx.Done():
		a.mu.Lock()
		if !w.done {
			a.waiters = slices.DeleteFunc(a.waiters, func(x *waiter) bool { return x == w })
			a.grant() // w may have been blocking the head of the queue
			w.err = fmt.Errorf("frames: alloc of %d bytes in pool %d: %w", n, a.shared.id, ctx.Err())
			w.done = true
		}
		a.mu.Unlock()
	}
	return w.slot, w.err
}

// ensureShared creates the shared pool and announces it, once.
func (a *Allocator) ensureShared() error {
	a.mu.Lock()
	ok, closed := a.shared != nil, a.closed
	a.mu.Unlock()
	if ok {
		return nil
	}
	if closed {
		return fmt.Errorf("frames: alloc: allocator %w", ErrClosed)
	}
	a.createMu.Lock()
	defer a.createMu.Unlock()
	a.mu.Lock()
	ok = a.shared != nil
	a.mu.Unlock()
	if ok {
		return nil
	}
	p, err := a.newPool(a.poolSize)
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		p.Close()
		return fmt.Errorf("frames: alloc: allocator %w", ErrClosed)
	}
	a.shared, a.sharedMem = p, p.Bytes()
	a.free = []extent{{0, p.size}}
	return nil
}

// newPool creates a pool with a fresh id and announces it.
func (a *Allocator) newPool(size int64) (*Pool, error) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil, fmt.Errorf("frames: alloc: allocator %w", ErrClosed)
	}
	id := a.nextPoolID()
	a.mu.Unlock()
	p, err := NewPool(id, size)
	if err != nil {
		return nil, err
	}
	if a.hooks.Added != nil {
		if err := a.hooks.Added(p); err != nil {
			p.Close()
			return nil, fmt.Errorf("frames: pool %d: announcing: %w", id, err)
		}
	}
	return p, nil
}

// nextPoolID returns an id that is neither 0 nor in use. a.mu is held.
func (a *Allocator) nextPoolID() uint32 {
	if a.hooks.NewID != nil {
		return a.hooks.NewID()
	}
	for {
		a.nextID++
		id := a.nextID
		if id == 0 || (a.shared != nil && a.shared.id == id) {
			continue
		}
		if _, ok := a.dedicated[id]; ok {
			continue
		}
		return id
	}
}

func (a *Allocator) allocDedicated(ctx context.Context, n int64) (Slot, error) {
	size := roundUp(n, pageSize)
	for {
		a.mu.Lock()
		if a.closed {
			a.mu.Unlock()
			return Slot{}, fmt.Errorf("frames: alloc: allocator %w", ErrClosed)
		}
		if a.dedicatedBytes == 0 || a.dedicatedBytes+size <= 2*a.poolSize {
			a.dedicatedBytes += size
			a.mu.Unlock()
			break
		}
		if a.dedicatedFreed == nil {
			a.dedicatedFreed = make(chan struct{})
		}
		freed := a.dedicatedFreed
		a.mu.Unlock()
		select {
		case <-freed:
		case <-ctx.Done():
			return Slot{}, fmt.Errorf("frames: alloc of a dedicated %d byte pool: %w", n, ctx.Err())
		}
	}
	p, err := a.newPool(size)
	if err != nil {
		a.mu.Lock()
		a.dedicatedBytes -= size
		a.signalDedicatedLocked()
		a.mu.Unlock()
		return Slot{}, err
	}
	a.mu.Lock()
	if a.closed {
		a.dedicatedBytes -= size
		a.mu.Unlock()
		p.Close()
		return Slot{}, fmt.Errorf("frames: alloc: allocator %w", ErrClosed)
	}
	a.dedicated[p.id] = dedicatedSlot{p, n}
	a.inUse += p.size
	a.mu.Unlock()
	return Slot{Pool: p.id, Off: 0, Len: n, Data: p.Bytes()[:n:n]}, nil
}

// signalDedicatedLocked wakes allocations waiting for dedicated room.
func (a *Allocator) signalDedicatedLocked() {
	if a.dedicatedFreed != nil {
		close(a.dedicatedFreed)
		a.dedicatedFreed = nil
	}
}

// take carves a slot out of the first free extent that fits. a.mu is held.
func (a *Allocator) take(n, size int64) (Slot, bool) {
	for i := range a.free {
		e := &a.free[i]
		if e.n < size {
			continue
		}
		off := e.off
		e.off += size
		e.n -= size
		if e.n == 0 {
			a.free = slices.Delete(a.free, i, i+1)
		}
		a.live[off] = liveSlot{n: n, size: size}
		a.inUse += size
		return Slot{Pool: a.shared.id, Off: off, Len: n, Data: a.sharedMem[off : off+n : off+n]}, true
	}
	return Slot{}, false
}

// grant serves waiters in order for as long as the head fits. a.mu is held.
func (a *Allocator) grant() {
	for len(a.waiters) > 0 {
		w := a.waiters[0]
		s, ok := a.take(w.n, w.size)
		if !ok {
			return
		}
		a.waiters = a.waiters[1:]
		w.slot, w.done = s, true
		close(w.ready)
	}
}

// Free returns the slot of n bytes at off in pool, as a Release names it.
// The slot must be exactly one that Alloc handed out and not yet freed;
// anything else is an error and changes nothing. A dedicated pool is
// closed and Dropped. Free with n == 0 is a no-op.
func (a *Allocator) Free(pool uint32, off, n int64) error {
	if n == 0 {
		return nil
	}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return fmt.Errorf("frames: pool %d: free of %d+%d: allocator %w", pool, off, n, ErrClosed)
	}
	if a.shared != nil && pool == a.shared.id {
		defer a.mu.Unlock()
		ls, ok := a.live[off]
		if !ok {
			return fmt.Errorf("frames: pool %d: free of %d+%d: no slot at %d (double free?)", pool, off, n, off)
		}
		if ls.n != n {
			return fmt.Errorf("frames: pool %d: free of %d+%d: the slot there is %d bytes", pool, off, n, ls.n)
		}
		delete(a.live, off)
		a.inUse -= ls.size
		if err := a.insertFree(off, ls.size); err != nil {
			return err
		}
		a.grant()
		return nil
	}
	d, ok := a.dedicated[pool]
	if !ok {
		a.mu.Unlock()
		return fmt.Errorf("frames: pool %d: free of %d+%d: no such pool (double free?)", pool, off, n)
	}
	p := d.p
	if off != 0 || n != d.n {
		a.mu.Unlock()
		return fmt.Errorf("frames: pool %d: free of %d+%d: the pool holds one slot of %d bytes at 0", pool, off, n, d.n)
	}
	delete(a.dedicated, pool)
	a.inUse -= p.size
	a.dedicatedBytes -= p.size
	a.signalDedicatedLocked()
	a.mu.Unlock()
	err := p.Close()
	if a.hooks.Dropped != nil {
		a.hooks.Dropped(pool)
	}
	return err
}

// insertFree adds [off, off+n) to the sorted free list, coalescing with its
// neighbours. a.mu is held.
func (a *Allocator) insertFree(off, n int64) error {
	i := sort.Search(len(a.free), func(i int) bool { return a.free[i].off > off })
	prevJoins := i > 0 && a.free[i-1].off+a.free[i-1].n == off
	nextJoins := i < len(a.free) && off+n == a.free[i].off
	if (i > 0 && a.free[i-1].off+a.free[i-1].n > off) || (i < len(a.free) && off+n > a.free[i].off) {
		// Cannot happen while live and free partition the pool.
		return fmt.Errorf("frames: pool %d: freed %d+%d overlaps free space", a.shared.id, off, n)
	}
	switch {
	case prevJoins && nextJoins:
		a.free[i-1].n += n + a.free[i].n
		a.free = slices.Delete(a.free, i, i+1)
	case prevJoins:
		a.free[i-1].n += n
	case nextJoins:
		a.free[i].off = off
		a.free[i].n += n
	default:
		a.free = slices.Insert(a.free, i, extent{off, n})
	}
	return nil
}

// InUse returns the bytes reserved by live slots: their lengths rounded up
// to SlotAlign in the shared pool, and whole dedicated pools.
func (a *Allocator) InUse() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.inUse
}

// Close closes every pool, without Dropped; slots' Data must no longer be
// used. Pending and later Alloc calls fail with ErrClosed.
func (a *Allocator) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	pools := make([]*Pool, 0, 1+len(a.dedicated))
	if a.shared != nil {
		pools = append(pools, a.shared)
	}
	for _, d := range a.dedicated {
		pools = append(pools, d.p)
	}
	a.dedicated = map[uint32]dedicatedSlot{}
	for _, w := range a.waiters {
		w.err, w.done = fmt.Errorf("frames: alloc of %d bytes: allocator %w", w.n, ErrClosed), true
		close(w.ready)
	}
	a.waiters = nil
	a.free, a.live, a.inUse, a.sharedMem = nil, map[int64]liveSlot{}, 0, nil
	a.signalDedicatedLocked() // waiters for dedicated room see closed
	a.mu.Unlock()
	var errs []error
	for _, p := range pools {
		if err := p.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
