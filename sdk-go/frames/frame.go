package frames

import (
	"fmt"

	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// Header is a frame's metadata: it travels unchanged through a chain.
type Header struct {
	Seq                uint64
	PTS, DTS, Duration int64
	KeyFrame           bool
	ContentType        string
}

// ReadHeader copies a frame message's metadata.
func ReadHeader(f schema.Frame) Header {
	ct, _ := f.ContentType()
	return Header{Seq: f.Seq(), PTS: f.Pts(), DTS: f.Dts(), Duration: f.Duration(), KeyFrame: f.KeyFrame(), ContentType: ct}
}

// Ref names frame bytes in a pool; owner 0 is the sender's own pool.
type Ref struct {
	Owner  uint64
	Pool   uint32
	Offset uint64
	Length uint64
}

// WriteFrame fills a frame message: the bytes inline when ref is nil, else
// the descriptor. part and parts number the answers to one frame (0 and 1
// for a single frame).
func WriteFrame(f schema.Frame, stream uint64, h Header, part, parts uint32, inline []byte, ref *Ref) error {
	f.SetStream(stream)
	f.SetSeq(h.Seq)
	f.SetPts(h.PTS)
	f.SetDts(h.DTS)
	f.SetDuration(h.Duration)
	f.SetKeyFrame(h.KeyFrame)
	f.SetPart(part)
	f.SetParts(parts)
	if err := f.SetContentType(h.ContentType); err != nil {
		return err
	}
	if ref == nil {
		return f.Data().SetInline(inline)
	}
	r, err := f.Data().NewRef()
	if err != nil {
		return err
	}
	r.SetOwner(ref.Owner)
	r.SetPool(ref.Pool)
	r.SetOffset(ref.Offset)
	r.SetLength(ref.Length)
	return nil
}

// FrameMsg returns a fill function for Send or Buffer: one frame message
// (see WriteFrame).
func FrameMsg(stream uint64, h Header, part, parts uint32, inline []byte, ref *Ref) func(schema.FrameMsg) error {
	return func(m schema.FrameMsg) error {
		f, err := m.NewFrame()
		if err != nil {
			return err
		}
		return WriteFrame(f, stream, h, part, parts, inline, ref)
	}
}

// SendFrame sends one frame message (see WriteFrame).
func (c *Conn) SendFrame(stream uint64, h Header, part, parts uint32, inline []byte, ref *Ref) error {
	return c.Send(FrameMsg(stream, h, part, parts, inline, ref))
}

// ReadData returns a frame message's bytes: a copy of inline data, or a
// view of shared memory (one of own's pools, or a mapping) with its
// descriptor.
func ReadData(own *Producer, maps *Mappings, f schema.Frame) ([]byte, *Ref, error) {
	if f.Data().Which() == schema.Frame_data_Which_inline {
		b, err := f.Data().Inline()
		if err != nil {
			return nil, nil, err
		}
		return append([]byte{}, b...), nil, nil
	}
	r, err := f.Data().Ref()
	if err != nil {
		return nil, nil, err
	}
	b, err := Resolve(own, maps, r)
	if err != nil {
		return nil, nil, fmt.Errorf("frame %d: %w", f.Seq(), err)
	}
	return b, &Ref{Owner: r.Owner(), Pool: r.Pool(), Offset: r.Offset(), Length: r.Length()}, nil
}

// HoldData is ReadData for a frame handed to an application: a frame in
// shared memory comes with a function that lets go of its view (see
// Producer.Hold and Mappings.Hold), which must be called once the view is
// no longer used; until then neither a poolDrop nor closing own or maps
// unmaps it. An inline frame is a copy, and comes with no function.
func HoldData(own *Producer, maps *Mappings, f schema.Frame) ([]byte, *Ref, func(), error) {
	if f.Data().Which() == schema.Frame_data_Which_inline {
		b, _, err := ReadData(own, maps, f)
		return b, nil, nil, err
	}
	r, err := f.Data().Ref()
	if err != nil {
		return nil, nil, nil, err
	}
	var b []byte
	var release func()
	if r.Owner() == 0 {
		b, release, err = own.Hold(r.Pool(), r.Offset(), r.Length())
	} else {
		b, release, err = maps.Hold(r.Owner(), r.Pool(), int64(r.Offset()), int64(r.Length()))
	}
	if err != nil {
		return nil, nil, nil, fmt.Errorf("frame %d: %w", f.Seq(), err)
	}
	return b, &Ref{Owner: r.Owner(), Pool: r.Pool(), Offset: r.Offset(), Length: r.Length()}, release, nil
}
