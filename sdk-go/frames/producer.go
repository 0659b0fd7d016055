package frames

import (
	"fmt"
	"sync"

	"github.com/dimplugd/dimplugd/schema"
)

// Producer is one peer's own shared memory: an Allocator whose pools are
// announced to the daemon on conn as they are created (PoolAdd with the
// memfd) and dropped (poolDrop). Hosts and plugins use it to make frames.
type Producer struct {
	*Allocator
	conn *Conn

	mu    sync.Mutex
	pools map[uint32]*Pool
}

// NewProducer returns a producer whose shared pool holds poolSize bytes.
func NewProducer(conn *Conn, poolSize int64) *Producer { return NewProducerAs(conn, poolSize, 0) }

// NewProducerAs is NewProducer for a peer that names itself owner in its
// announcements (the daemon's role; 0 means "the sender").
func NewProducerAs(conn *Conn, poolSize int64, owner uint64) *Producer {
	p := &Producer{conn: conn, pools: map[uint32]*Pool{}}
	p.Allocator = NewAllocator(poolSize, AllocatorHooks{
		Added: func(pl *Pool) error {
			p.mu.Lock()
			p.pools[pl.ID()] = pl
			p.mu.Unlock()
			return conn.Send(func(m schema.FrameMsg) error {
				pa, err := m.NewPoolAdd()
				if err != nil {
					return err
				}
				pa.SetId(pl.ID())
				pa.SetSize(uint64(pl.Size()))
				pa.SetOwner(owner)
				return nil
			}, pl.File())
		},
		Dropped: func(id uint32) {
			p.mu.Lock()
			delete(p.pools, id)
			p.mu.Unlock()
			_ = conn.Send(func(m schema.FrameMsg) error {
				r, err := m.NewPoolDrop()
				if err != nil {
					return err
				}
				r.SetPool(id)
				return nil
			})
		},
	})
	return p
}

// View returns n bytes at off in one of the producer's own pools.
func (p *Producer) View(pool uint32, off, n uint64) ([]byte, error) {
	p.mu.Lock()
	pl := p.pools[pool]
	p.mu.Unlock()
	if pl == nil || off > uint64(pl.Size()) || n > uint64(pl.Size())-off {
		return nil, fmt.Errorf("frames: %d+%d is not in one of our pools (pool %d)", off, n, pool)
	}
	return pl.Bytes()[off : off+n : off+n], nil
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
