package frames

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// Producer is one peer's own shared memory, in scopes. A scope is the
// daemon's number for a host and an exact chain of plugin instances
// (schema StreamOpened.scope): frames of a stream come from pools of its
// scope, so a pool only ever reaches the peers that see every frame in it
// anyway. Each scope has its own Allocator, whose pools are announced to
// the daemon on conn as they are created (PoolAdd with the memfd and the
// scope) and dropped (poolDrop). Pool ids are unique across the
// producer's scopes. Hosts and plugins use it to make frames.
//
// A scope lives while streams use it (Use, Done) or any of its slots is
// live, and then ScopeIdle more: a new stream of the same scope (the same
// chain) finds its pools mapped and their pages warm. Then its pools are
// dropped.
type Producer struct {
	conn     *Conn
	owner    uint64
	poolSize int64

	mu     sync.Mutex
	closed bool
	nextID uint32
	pools  map[uint32]*Pool // every live pool, by id
	byPool map[uint32]*scope
	scopes map[uint64]*scope
}

type scope struct {
	id    uint64
	alloc *Allocator
	users int         // streams using it (Use − Done)
	idle  *time.Timer // armed while it has no user and no live slot
}

// ScopeIdle is how long a scope's pools outlive its last stream and slot.
const ScopeIdle = 10 * time.Second

// NewProducer returns a producer whose scopes each have a shared pool of
// poolSize bytes.
func NewProducer(conn *Conn, poolSize int64) *Producer { return NewProducerAs(conn, poolSize, 0) }

// NewProducerAs is NewProducer for a peer that names itself owner in its
// announcements (the daemon's role; 0 means "the sender").
func NewProducerAs(conn *Conn, poolSize int64, owner uint64) *Producer {
	return &Producer{conn: conn, owner: owner, poolSize: poolSize,
		pools: map[uint32]*Pool{}, byPool: map[uint32]*scope{}, scopes: map[uint64]*scope{}}
}

// PoolSize returns the size of each scope's shared pool.
func (p *Producer) PoolSize() int64 { return roundUp(max(p.poolSize, pageSize), pageSize) }

// scopeLocked returns scope id's state, creating it.
func (p *Producer) scopeLocked(id uint64) (*scope, error) {
	if p.closed {
		return nil, fmt.Errorf("frames: producer %w", ErrClosed)
	}
	if sc := p.scopes[id]; sc != nil {
		return sc, nil
	}
	sc := &scope{id: id}
	sc.alloc = NewAllocator(p.poolSize, AllocatorHooks{
		NewID: p.newID,
		Added: func(pl *Pool) error {
			p.mu.Lock()
			p.pools[pl.ID()] = pl
			p.byPool[pl.ID()] = sc
			p.mu.Unlock()
			return p.conn.Send(func(m schema.FrameMsg) error {
				pa, err := m.NewPoolAdd()
				if err != nil {
					return err
				}
				pa.SetId(pl.ID())
				pa.SetSize(uint64(pl.Size()))
				pa.SetOwner(p.owner)
				pa.SetScope(id)
				return nil
			}, pl.File())
		},
		Dropped: p.dropped,
	})
	p.scopes[id] = sc
	return sc, nil
}

// newID numbers a new pool (called under an allocator's lock).
func (p *Producer) newID() uint32 {
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		p.nextID++
		if _, used := p.pools[p.nextID]; p.nextID != 0 && !used {
			return p.nextID
		}
	}
}

// dropped forgets a pool and tells the daemon.
func (p *Producer) dropped(id uint32) {
	p.mu.Lock()
	delete(p.pools, id)
	delete(p.byPool, id)
	p.mu.Unlock()
	_ = p.conn.Send(func(m schema.FrameMsg) error {
		r, err := m.NewPoolDrop()
		if err != nil {
			return err
		}
		r.SetPool(id)
		return nil
	})
}

// Use says a stream of scope id is open: the scope's pools stay.
func (p *Producer) Use(id uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if sc, err := p.scopeLocked(id); err == nil {
		sc.users++
		if sc.idle != nil {
			sc.idle.Stop()
			sc.idle = nil
		}
	}
}

// Done says a stream of scope id has ended. Once no stream uses the scope
// and none of its slots is live, its pools are dropped.
func (p *Producer) Done(id uint64) {
	p.mu.Lock()
	sc := p.scopes[id]
	if sc != nil && sc.users > 0 {
		sc.users--
	}
	p.mu.Unlock()
	if sc != nil {
		p.maybeRetire(sc)
	}
}

// maybeRetire arms the idle timer of a scope with no user and no live
// slot; retire then drops it if it is still unused.
// (Lock order: an allocator's lock, then p.mu; so InUse is asked first.)
func (p *Producer) maybeRetire(sc *scope) {
	if sc.alloc.InUse() > 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if sc.users > 0 || p.scopes[sc.id] != sc || sc.idle != nil {
		return
	}
	sc.idle = time.AfterFunc(ScopeIdle, func() { p.retire(sc) })
}

// retire closes an unused scope's allocator and drops its pools.
func (p *Producer) retire(sc *scope) {
	if sc.alloc.InUse() > 0 {
		p.mu.Lock()
		sc.idle = nil // a slot is live again: Free arms it anew
		p.mu.Unlock()
		return
	}
	p.mu.Lock()
	if sc.users > 0 || p.scopes[sc.id] != sc {
		sc.idle = nil
		p.mu.Unlock()
		return
	}
	delete(p.scopes, sc.id)
	var ids []uint32
	for id, owner := range p.byPool {
		if owner == sc {
			ids = append(ids, id)
		}
	}
	p.mu.Unlock()
	_ = sc.alloc.Close()
	for _, id := range ids {
		p.dropped(id)
	}
}

// Alloc returns a slot of n bytes from scope's pools (see Allocator.Alloc:
// it waits while the scope's pool is full).
func (p *Producer) Alloc(ctx context.Context, scopeID uint64, n int64) (Slot, error) {
	for {
		p.mu.Lock()
		sc, err := p.scopeLocked(scopeID)
		p.mu.Unlock()
		if err != nil {
			return Slot{}, err
		}
		s, err := sc.alloc.Alloc(ctx, n)
		if errors.Is(err, ErrClosed) {
			p.mu.Lock()
			retired := !p.closed && p.scopes[scopeID] != sc
			p.mu.Unlock()
			if retired { // retired under us while unused: make it anew
				continue
			}
		}
		return s, err
	}
}

// Free gives back a slot of one of the producer's pools, whichever scope
// it is in.
func (p *Producer) Free(pool uint32, off, n int64) error {
	p.mu.Lock()
	sc := p.byPool[pool]
	p.mu.Unlock()
	if sc == nil {
		if n == 0 {
			return nil
		}
		return fmt.Errorf("frames: free of %d+%d: pool %d is not one of ours", off, n, pool)
	}
	err := sc.alloc.Free(pool, off, n)
	p.maybeRetire(sc)
	return err
}

// InUse is the bytes of live slots in all scopes.
func (p *Producer) InUse() int64 {
	p.mu.Lock()
	scopes := make([]*scope, 0, len(p.scopes))
	for _, sc := range p.scopes {
		scopes = append(scopes, sc)
	}
	p.mu.Unlock()
	var n int64
	for _, sc := range scopes {
		n += sc.alloc.InUse()
	}
	return n
}

// Close closes every scope's allocator (unmapping the producer's pools).
func (p *Producer) Close() error {
	p.mu.Lock()
	p.closed = true
	scopes := p.scopes
	p.scopes = map[uint64]*scope{}
	for _, sc := range scopes {
		if sc.idle != nil {
			sc.idle.Stop()
		}
	}
	p.mu.Unlock()
	var errs []error
	for _, sc := range scopes {
		if err := sc.alloc.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	p.mu.Lock()
	p.pools, p.byPool = map[uint32]*Pool{}, map[uint32]*scope{}
	p.mu.Unlock()
	return errors.Join(errs...)
}

// View returns n bytes at off in one of the producer's own pools.
func (p *Producer) View(pool uint32, off, n uint64) ([]byte, error) {
	p.mu.Lock()
	pl := p.pools[pool]
	p.mu.Unlock()
	if pl == nil || off > uint64(pl.Size()) || n > uint64(pl.Size())-off {
		return nil, fmt.Errorf("frames: %d+%d is not in one of our pools (pool %d)", off, n, pool)
	}
	b := pl.Bytes()
	if b == nil {
		return nil, fmt.Errorf("frames: pool %d: %w", pool, ErrClosed)
	}
	return b[off : off+n : off+n], nil
}

// Hold is View for a view that stays mapped until the returned function is
// called (once), even if the pool is freed or the producer closed
// meanwhile (see Pool.Hold).
func (p *Producer) Hold(pool uint32, off, n uint64) ([]byte, func(), error) {
	p.mu.Lock()
	pl := p.pools[pool]
	p.mu.Unlock()
	if pl == nil || off > uint64(pl.Size()) || n > uint64(pl.Size())-off {
		return nil, nil, fmt.Errorf("frames: %d+%d is not in one of our pools (pool %d)", off, n, pool)
	}
	b, release, err := pl.hold()
	if err != nil {
		return nil, nil, err
	}
	return b[off : off+n : off+n], release, nil
}

// Resolve returns the bytes a frame descriptor names: one of the
// producer's own pools when its owner is 0, else a mapping of another
// producer's pool.
func Resolve(own *Producer, maps *Mappings, r schema.FrameRef) ([]byte, error) {
	if r.Owner() == 0 {
		return own.View(r.Pool(), r.Offset(), r.Length())
	}
	return maps.Bytes(r.Owner(), r.Pool(), int64(r.Offset()), int64(r.Length()))
}

// ReleaseMsg returns a fill function for Send or Buffer: "this peer is
// done with a descriptor".
func ReleaseMsg(r Ref) func(schema.FrameMsg) error {
	return func(m schema.FrameMsg) error {
		rel, err := m.NewRelease()
		if err != nil {
			return err
		}
		rel.SetOwner(r.Owner)
		rel.SetPool(r.Pool)
		rel.SetOffset(r.Offset)
		rel.SetLength(r.Length)
		return nil
	}
}

// SendRelease tells the daemon this peer is done with a descriptor.
func (c *Conn) SendRelease(owner uint64, pool uint32, off, n uint64) error {
	return c.Send(ReleaseMsg(Ref{Owner: owner, Pool: pool, Offset: off, Length: n}))
}

// EndMsg returns a fill function for Send or Buffer: the end of a stream;
// why, when not empty, fails it.
func EndMsg(stream uint64, why string, cancel bool) func(schema.FrameMsg) error {
	return func(m schema.FrameMsg) error {
		e, err := m.NewEnd()
		if err != nil {
			return err
		}
		e.SetStream(stream)
		e.SetCancel(cancel)
		return e.SetError(why)
	}
}

// SendEnd ends a stream on this connection; why, when not empty, fails it.
func (c *Conn) SendEnd(stream uint64, why string, cancel bool) error {
	return c.Send(EndMsg(stream, why, cancel))
}
