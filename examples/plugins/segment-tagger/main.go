// Command segment-tagger is an example dimplugd frame-stream plugin: a
// transform that writes a tag into every fMP4 media segment of a video
// stream — the shape of a watermarking or forensic-marking filter.
//
// For each frame it parses the top-level ISO BMFF boxes (32-bit sizes,
// 64-bit largesizes, and a last box of size 0 that runs to the end), then:
//
//   - an init segment (it has a moov box), or anything that is not ISO
//     BMFF or is not a media segment (no moof box), passes on untouched:
//     the very same frame, no byte changed;
//   - a media segment with a top-level free or skip box whose payload holds
//     the tag is copied into a new frame of the same size (Stream.NewFrame,
//     the plugin's shared memory: received frames are read-only, only their
//     producer writes them), where the payload of the first such box
//     becomes "dimplugd:segment-tagger seq=<N>" (N is the frame's sequence
//     number) followed by zero bytes up to the box's end. No box header,
//     and no byte outside that payload, changes;
//   - a media segment without such room is copied into a new frame
//     (Stream.NewFrame, the plugin's shared memory) with an 8-byte header
//     free box holding the tag appended after the last box. The original
//     bytes are the new frame's prefix, unchanged (except a last box of
//     size 0, whose size field is filled in so that it no longer swallows
//     the tag box).
//
// Why append rather than insert after moof: trun's data_offset points from
// the moof (or an explicit base offset) into mdat, so bytes inserted between
// moof and mdat would make every sample point at the wrong bytes. Free boxes
// before moof and anything after the last mdat are safe to change.
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync/atomic"

	"github.com/dimplugd/dimplugd/sdk-go/plugin"
)

// tagPrefix starts every tag.
const tagPrefix = "dimplugd:segment-tagger"

// tagFor is the tag of the frame with sequence number seq.
func tagFor(seq uint64) string { return fmt.Sprintf("%s seq=%d", tagPrefix, seq) }

type tagger struct {
	host atomic.Pointer[plugin.Host] // set by Init, read by frame handlers (another goroutine)
	// newFrame makes a frame of n bytes; nil means s.NewFrame. Tests
	// replace it: a Stream not served by the SDK has no shared memory.
	newFrame func(ctx context.Context, s *plugin.Stream, n int) (*plugin.Frame, error)
}

func (t *tagger) Init(ctx context.Context, h *plugin.Host) error {
	t.host.Store(h)
	return nil
}

// warn logs to the plugin's log, once Init has run.
func (t *tagger) warn(msg string, args ...any) {
	if h := t.host.Load(); h != nil {
		h.Log.Warn(msg, args...)
	}
}

// box is one top-level ISO BMFF box.
type box struct {
	typ   string
	off   int  // of its first byte
	hdr   int  // header length: 8, or 16 with a largesize
	size  int  // header included
	toEnd bool // its size field was 0: it runs to the end
}

// parseBoxes splits b into its top-level boxes.
func parseBoxes(b []byte) ([]box, error) {
	var out []box
	for off := 0; off < len(b); {
		if len(b)-off < 8 {
			return nil, fmt.Errorf("%d trailing bytes at offset %d", len(b)-off, off)
		}
		size := uint64(binary.BigEndian.Uint32(b[off:]))
		x := box{typ: string(b[off+4 : off+8]), off: off, hdr: 8}
		switch size {
		case 1: // a 64-bit largesize follows the type
			if len(b)-off < 16 {
				return nil, fmt.Errorf("box %q at %d: truncated largesize", x.typ, off)
			}
			size, x.hdr = binary.BigEndian.Uint64(b[off+8:]), 16
		case 0:
			size, x.toEnd = uint64(len(b)-off), true
		}
		if size < uint64(x.hdr) || size > uint64(len(b)-off) {
			return nil, fmt.Errorf("box %q at %d: size %d does not fit the %d bytes left", x.typ, off, size, len(b)-off)
		}
		x.size = int(size)
		out = append(out, x)
		off += x.size
	}
	if len(out) == 0 {
		return nil, errors.New("empty frame")
	}
	return out, nil
}

func has(bs []box, typ string) bool {
	for _, x := range bs {
		if x.typ == typ {
			return true
		}
	}
	return false
}

// isMediaSegment: a moof and no moov (an init segment, or a whole
// fragmented file, is left alone).
func isMediaSegment(bs []box) bool { return has(bs, "moof") && !has(bs, "moov") }

// roomFor returns the first free or skip box of bs whose payload can hold
// tag; ok is false when none can.
func roomFor(bs []box, tag string) (box, bool) {
	for _, x := range bs {
		if (x.typ == "free" || x.typ == "skip") && x.size-x.hdr >= len(tag) {
			return x, true
		}
	}
	return box{}, false
}

// tagInto writes tag into the payload of box x of b, zero-filling the rest
// of that payload.
func tagInto(b []byte, x box, tag string) {
	p := b[x.off+x.hdr : x.off+x.size]
	n := copy(p, tag)
	clear(p[n:])
}

// appendedSize is the size of a frame of n bytes with the tag box appended.
func appendedSize(n int, tag string) int { return n + 8 + len(tag) }

// appendable reports whether a box can be appended after bs: a last box of
// size 0 ("to the end") must get its real size, which must fit its 32-bit
// size field.
func appendable(bs []box) error {
	if last := bs[len(bs)-1]; last.toEnd && last.size > 0xffffffff {
		return fmt.Errorf("last box %q runs to the end and is too large to be given a 32-bit size", last.typ)
	}
	return nil
}

// writeAppended writes src with a free box holding tag appended into dst
// (appendedSize bytes); bs must be appendable.
func writeAppended(dst, src []byte, bs []box, tag string) {
	n := copy(dst, src)
	if last := bs[len(bs)-1]; last.toEnd {
		binary.BigEndian.PutUint32(dst[last.off:], uint32(last.size))
	}
	binary.BigEndian.PutUint32(dst[n:], uint32(8+len(tag)))
	copy(dst[n+4:], "free")
	copy(dst[n+8:], tag)
}

// FilterFrame tags media segments; see the package comment.
func (t *tagger) FilterFrame(ctx context.Context, s *plugin.Stream, f *plugin.Frame) ([]*plugin.Frame, error) {
	bs, err := parseBoxes(f.Data)
	if err != nil {
		t.warn("frame is not ISO BMFF: passed on untouched", "seq", f.Seq, "bytes", len(f.Data), "err", err)
		return []*plugin.Frame{f}, nil
	}
	if !isMediaSegment(bs) {
		return []*plugin.Frame{f}, nil
	}
	tag := tagFor(f.Seq)
	alloc := t.newFrame
	if alloc == nil {
		alloc = func(ctx context.Context, s *plugin.Stream, n int) (*plugin.Frame, error) { return s.NewFrame(ctx, n) }
	}
	var out *plugin.Frame
	if x, ok := roomFor(bs, tag); ok {
		// One copy into our own memory, then the tag over the free box.
		if out, err = alloc(ctx, s, len(f.Data)); err != nil {
			return nil, err
		}
		copy(out.Data, f.Data)
		tagInto(out.Data, x, tag)
	} else {
		if err := appendable(bs); err != nil {
			t.warn("cannot tag segment: passed on untouched", "seq", f.Seq, "err", err)
			return []*plugin.Frame{f}, nil
		}
		if out, err = alloc(ctx, s, appendedSize(len(f.Data), tag)); err != nil {
			return nil, err
		}
		writeAppended(out.Data, f.Data, bs, tag)
	}
	out.Seq, out.PTS, out.DTS, out.Duration, out.KeyFrame, out.ContentType = f.Seq, f.PTS, f.DTS, f.Duration, f.KeyFrame, f.ContentType
	return []*plugin.Frame{out}, nil
}

func main() {
	if err := plugin.Serve(&tagger{}, plugin.WithVersion("1.0.0")); err != nil {
		fmt.Fprintln(os.Stderr, "segment-tagger:", err)
		os.Exit(1)
	}
}
