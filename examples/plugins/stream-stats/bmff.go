package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// A reader of the parts of fragmented MP4 (ISO/IEC 14496-12) the
// statistics need: which kind of segment a frame is, its samples (trun),
// their durations and sync flags (with the defaults of tfhd and of the init
// segment's trex), the track timescale (mdhd), and tags other plugins wrote
// into free or skip boxes.

type box struct {
	typ      string
	hdr, end int // payload is b[off+hdr : end] of the parent slice
	off      int
}

// boxes splits b into boxes: 32-bit sizes, 64-bit largesizes (size 1) and a
// last box running to the end (size 0).
func boxes(b []byte) ([]box, error) {
	var out []box
	for off := 0; off < len(b); {
		if len(b)-off < 8 {
			return nil, fmt.Errorf("%d trailing bytes at offset %d", len(b)-off, off)
		}
		size := uint64(binary.BigEndian.Uint32(b[off:]))
		x := box{typ: string(b[off+4 : off+8]), off: off, hdr: 8}
		switch size {
		case 1:
			if len(b)-off < 16 {
				return nil, fmt.Errorf("box %q at %d: truncated largesize", x.typ, off)
			}
			size, x.hdr = binary.BigEndian.Uint64(b[off+8:]), 16
		case 0:
			size = uint64(len(b) - off)
		}
		if size < uint64(x.hdr) || size > uint64(len(b)-off) {
			return nil, fmt.Errorf("box %q at %d: size %d does not fit the %d bytes left", x.typ, off, size, len(b)-off)
		}
		x.end = off + int(size)
		out = append(out, x)
		off = x.end
	}
	return out, nil
}

func (x box) payload(b []byte) []byte { return b[x.off+x.hdr : x.end] }

// child returns the payload of the first box of type typ inside b.
func child(b []byte, typ string) ([]byte, bool) {
	bs, err := boxes(b)
	if err != nil {
		return nil, false
	}
	for _, x := range bs {
		if x.typ == typ {
			return x.payload(b), true
		}
	}
	return nil, false
}

// trackDefaults are a track's sample defaults from the init segment's trex.
type trackDefaults struct {
	duration, size, flags uint32
}

// segment is what inspect learns from one frame.
type segment struct {
	init, media bool
	timescale   uint32                   // init: the first track's mdhd
	trex        map[uint32]trackDefaults // init: by track id
	samples     int
	sync        int   // samples whose flags do not say "non-sync"
	duration    int64 // media: the longest track fragment, in its timescale
	tag         string
}

const nonSync = 0x00010000 // sample_is_non_sync_sample

// inspect reads b, an init segment or a media segment; trex are the
// defaults the stream's init segment declared (nil if none was seen).
func inspect(b []byte, trex map[uint32]trackDefaults) (segment, error) {
	var sg segment
	top, err := boxes(b)
	if err != nil {
		return sg, err
	}
	for _, x := range top {
		p := x.payload(b)
		switch x.typ {
		case "free", "skip":
			if sg.tag == "" && strings.HasPrefix(string(p), "dimplugd:") {
				s := string(p)
				if i := strings.IndexByte(s, 0); i >= 0 {
					s = s[:i]
				}
				sg.tag = s
			}
		case "moov":
			sg.init = true
			if err := readMoov(p, &sg); err != nil {
				return sg, fmt.Errorf("moov: %w", err)
			}
		case "moof":
			sg.media = true
			if err := readMoof(p, trex, &sg); err != nil {
				return sg, fmt.Errorf("moof: %w", err)
			}
		}
	}
	if sg.init {
		sg.media = false
	}
	return sg, nil
}

func readMoov(b []byte, sg *segment) error {
	bs, err := boxes(b)
	if err != nil {
		return err
	}
	sg.trex = map[uint32]trackDefaults{}
	for _, x := range bs {
		switch x.typ {
		case "trak":
			mdia, _ := child(x.payload(b), "mdia")
			mdhd, ok := child(mdia, "mdhd")
			if !ok || sg.timescale != 0 {
				continue
			}
			// version 0: 4-byte times, version 1: 8-byte times
			at := 4 + 8
			if len(mdhd) > 0 && mdhd[0] == 1 {
				at = 4 + 16
			}
			if len(mdhd) >= at+4 {
				sg.timescale = binary.BigEndian.Uint32(mdhd[at:])
			}
		case "mvex":
			ms, err := boxes(x.payload(b))
			if err != nil {
				return err
			}
			for _, m := range ms {
				p := m.payload(x.payload(b))
				if m.typ == "trex" && len(p) >= 24 {
					sg.trex[binary.BigEndian.Uint32(p[4:])] = trackDefaults{
						duration: binary.BigEndian.Uint32(p[12:]),
						size:     binary.BigEndian.Uint32(p[16:]),
						flags:    binary.BigEndian.Uint32(p[20:]),
					}
				}
			}
		}
	}
	return nil
}

var errShort = errors.New("truncated box")

func readMoof(b []byte, trex map[uint32]trackDefaults, sg *segment) error {
	bs, err := boxes(b)
	if err != nil {
		return err
	}
	for _, x := range bs {
		if x.typ != "traf" {
			continue
		}
		traf := x.payload(b)
		tfhd, ok := child(traf, "tfhd")
		if !ok || len(tfhd) < 8 {
			return errors.New("traf without tfhd")
		}
		flags := binary.BigEndian.Uint32(tfhd) & 0xffffff
		def := trex[binary.BigEndian.Uint32(tfhd[4:])]
		at := 8
		read := func(present uint32, n int, into *uint32) error {
			if flags&present == 0 {
				return nil
			}
			if len(tfhd) < at+n {
				return errShort
			}
			if into != nil {
				*into = binary.BigEndian.Uint32(tfhd[at+n-4:])
			}
			at += n
			return nil
		}
		for _, f := range []struct {
			bit  uint32
			n    int
			into *uint32
		}{{0x1, 8, nil}, {0x2, 4, nil}, {0x8, 4, &def.duration}, {0x10, 4, &def.size}, {0x20, 4, &def.flags}} {
			if err := read(f.bit, f.n, f.into); err != nil {
				return fmt.Errorf("tfhd: %w", err)
			}
		}
		tbs, err := boxes(traf)
		if err != nil {
			return err
		}
		var dur int64
		for _, t := range tbs {
			if t.typ != "trun" {
				continue
			}
			d, n, sync, err := readTrun(t.payload(traf), def)
			if err != nil {
				return fmt.Errorf("trun: %w", err)
			}
			dur += d
			sg.samples += n
			sg.sync += sync
		}
		sg.duration = max(sg.duration, dur)
	}
	return nil
}

// readTrun returns a track run's duration, sample count and sync samples.
func readTrun(p []byte, def trackDefaults) (dur int64, count, sync int, err error) {
	if len(p) < 8 {
		return 0, 0, 0, errShort
	}
	flags := binary.BigEndian.Uint32(p) & 0xffffff
	count = int(binary.BigEndian.Uint32(p[4:]))
	at := 8
	if flags&0x1 != 0 { // data_offset
		at += 4
	}
	first, hasFirst := uint32(0), flags&0x4 != 0
	if hasFirst {
		if len(p) < at+4 {
			return 0, 0, 0, errShort
		}
		first = binary.BigEndian.Uint32(p[at:])
		at += 4
	}
	per := 0
	for _, bit := range []uint32{0x100, 0x200, 0x400, 0x800} {
		if flags&bit != 0 {
			per += 4
		}
	}
	if count < 0 || len(p) < at+per*count {
		return 0, 0, 0, errShort
	}
	for i := 0; i < count; i++ {
		o := at + i*per
		d, fl := def.duration, def.flags
		if flags&0x100 != 0 {
			d = binary.BigEndian.Uint32(p[o:])
			o += 4
		}
		if flags&0x200 != 0 {
			o += 4
		}
		if flags&0x400 != 0 {
			fl = binary.BigEndian.Uint32(p[o:])
		} else if i == 0 && hasFirst {
			fl = first
		}
		dur += int64(d)
		if fl&nonSync == 0 {
			sync++
		}
	}
	return dur, count, sync, nil
}
