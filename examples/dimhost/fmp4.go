package main

// A generator of fragmented MP4 (ISO/IEC 14496-12, CMAF/DASH style) test
// media, and a structural checker for it. No ffmpeg: the boxes are written
// by hand. The output is structurally valid — every box is well formed, the
// init segment declares one track, and each media segment's trun points
// exactly at its mdat's bytes — but the samples are a deterministic byte
// pattern, not decodable video or audio.
//
// Init segment:  ftyp, moov (mvhd, trak (tkhd, mdia (mdhd, hdlr, minf (vmhd
// or smhd, dinf (dref), stbl (stsd, stts, stsc, stsz, stco)))), mvex (trex)).
//
// Media segment n (n from 0):
//
//	styp                 "msdh", compatible "msdh" "msix"
//	free                 optional: Free zero bytes, room for a plugin's tag
//	moof
//	  mfhd               sequence_number n+1
//	  traf
//	    tfhd             track 1, default-base-is-moof, default sample flags (video: "non-sync")
//	    tfdt             version 1, baseMediaDecodeTime n × segment duration
//	    trun             data_offset, first_sample_flags "sync", per sample duration and size
//	mdat                 the samples; a 64-bit largesize header when LargeMdat
//
// trun's data_offset is relative to the first byte of moof (default-base-is-
// moof), so bytes inserted between moof and mdat would break it, while the
// free box before moof and anything after mdat are free to change.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// fmp4Track describes the one track of a generated stream.
type fmp4Track struct {
	Name           string // profile name
	Handler        string // "vide" or "soun"
	Codec          string // RFC 6381, as Dim's virtual manifest has it
	Timescale      uint32
	SampleDuration uint32 // in Timescale units
	Samples        int    // per segment
	Width, Height  int    // video only
	SegmentBytes   int    // mdat payload per media segment
}

// defaultFlags are the flags of a sample after the first: video samples
// depend on others, every audio sample is a sync sample.
func (t fmp4Track) defaultFlags() uint32 {
	if t.Handler == "soun" {
		return flagsSync
	}
	return flagsNonSync
}

// SegmentDuration is a media segment's duration in Timescale units.
func (t fmp4Track) SegmentDuration() int64 { return int64(t.SampleDuration) * int64(t.Samples) }

// Kind is the frame-stream kind of the track's segments.
func (t fmp4Track) Kind() string {
	if t.Handler == "soun" {
		return "audio/segment"
	}
	return "video/segment"
}

// fmp4Profiles are segment sizes like Dim's 5-second segments (see
// reference/dim.md: 75 KB audio, 0.6 MB at 480p, 3.1 MB at 720p, 6.3 MB at
// 1080p).
var fmp4Profiles = map[string]fmp4Track{
	"audio": {Name: "audio", Handler: "soun", Codec: "mp4a.40.2", Timescale: 48000, SampleDuration: 1024, Samples: 235, SegmentBytes: 75_000},
	"480p":  {Name: "480p", Handler: "vide", Codec: "avc1.64001e", Timescale: 90000, SampleDuration: 3750, Samples: 120, Width: 854, Height: 480, SegmentBytes: 600_000},
	"720p":  {Name: "720p", Handler: "vide", Codec: "avc1.64001f", Timescale: 90000, SampleDuration: 3750, Samples: 120, Width: 1280, Height: 720, SegmentBytes: 3_100_000},
	"1080p": {Name: "1080p", Handler: "vide", Codec: "avc1.640028", Timescale: 90000, SampleDuration: 3750, Samples: 120, Width: 1920, Height: 1080, SegmentBytes: 6_300_000},
}

// segmentOptions vary a media segment's layout.
type segmentOptions struct {
	Free      int  // payload bytes of a free box before moof; 0: no free box
	LargeMdat bool // write mdat with a 64-bit largesize header
}

// Sample flags (ISO/IEC 14496-12 §8.8.3.1).
const (
	flagsSync    = 0x02000000 // sample_depends_on = 2: an I-frame
	flagsNonSync = 0x01010000 // sample_depends_on = 1, sample_is_non_sync_sample
)

// boxWriter appends boxes to a buffer.
type boxWriter struct{ b []byte }

func (w *boxWriter) u8(v uint8)   { w.b = append(w.b, v) }
func (w *boxWriter) u16(v uint16) { w.b = binary.BigEndian.AppendUint16(w.b, v) }
func (w *boxWriter) u32(v uint32) { w.b = binary.BigEndian.AppendUint32(w.b, v) }
func (w *boxWriter) u64(v uint64) { w.b = binary.BigEndian.AppendUint64(w.b, v) }
func (w *boxWriter) str(s string) { w.b = append(w.b, s...) }
func (w *boxWriter) zeros(n int)  { w.b = append(w.b, make([]byte, n)...) }

// box writes a box of type typ whose body is what fill writes.
func (w *boxWriter) box(typ string, fill func()) {
	start := len(w.b)
	w.u32(0)
	w.str(typ)
	fill()
	binary.BigEndian.PutUint32(w.b[start:], uint32(len(w.b)-start))
}

// full writes a full box (version and flags first).
func (w *boxWriter) full(typ string, version uint8, flags uint32, fill func()) {
	w.box(typ, func() {
		w.u32(uint32(version)<<24 | flags&0xffffff)
		fill()
	})
}

func (w *boxWriter) matrix() {
	for _, v := range []uint32{0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000} {
		w.u32(v)
	}
}

// initSegment returns the track's init segment (init.mp4).
func initSegment(t fmp4Track) []byte {
	w := &boxWriter{}
	w.box("ftyp", func() { w.str("iso6"); w.u32(0); w.str("iso6cmfcdash") })
	w.box("moov", func() {
		w.full("mvhd", 0, 0, func() {
			w.u32(0)          // creation_time
			w.u32(0)          // modification_time
			w.u32(1000)       // timescale
			w.u32(0)          // duration: unknown, fragmented
			w.u32(0x00010000) // rate 1.0
			w.u16(0x0100)     // volume 1.0
			w.zeros(10)
			w.matrix()
			w.zeros(24) // pre_defined
			w.u32(2)    // next_track_ID
		})
		w.box("trak", func() {
			w.full("tkhd", 0, 3, func() { // enabled, in movie
				w.u32(0)
				w.u32(0)
				w.u32(1) // track_ID
				w.u32(0)
				w.u32(0) // duration
				w.zeros(8)
				w.u16(0) // layer
				w.u16(0) // alternate_group
				if t.Handler == "soun" {
					w.u16(0x0100)
				} else {
					w.u16(0)
				}
				w.u16(0)
				w.matrix()
				w.u32(uint32(t.Width) << 16)
				w.u32(uint32(t.Height) << 16)
			})
			w.box("mdia", func() {
				w.full("mdhd", 0, 0, func() {
					w.u32(0)
					w.u32(0)
					w.u32(t.Timescale)
					w.u32(0)
					w.u16(0x55c4) // "und"
					w.u16(0)
				})
				w.full("hdlr", 0, 0, func() {
					w.u32(0)
					w.str(t.Handler)
					w.zeros(12)
					w.str("dimhost\x00")
				})
				w.box("minf", func() {
					if t.Handler == "soun" {
						w.full("smhd", 0, 0, func() { w.u32(0) })
					} else {
						w.full("vmhd", 0, 1, func() { w.zeros(8) })
					}
					w.box("dinf", func() {
						w.full("dref", 0, 0, func() {
							w.u32(1)
							w.full("url ", 0, 1, func() {}) // media in the same file
						})
					})
					w.box("stbl", func() {
						w.full("stsd", 0, 0, func() {
							w.u32(1)
							sampleEntry(w, t)
						})
						w.full("stts", 0, 0, func() { w.u32(0) })
						w.full("stsc", 0, 0, func() { w.u32(0) })
						w.full("stsz", 0, 0, func() { w.u32(0); w.u32(0) })
						w.full("stco", 0, 0, func() { w.u32(0) })
					})
				})
			})
		})
		w.box("mvex", func() {
			w.full("trex", 0, 0, func() {
				w.u32(1) // track_ID
				w.u32(1) // default_sample_description_index
				w.u32(t.SampleDuration)
				w.u32(0)
				w.u32(t.defaultFlags())
			})
		})
	})
	return w.b
}

// sampleEntry writes an avc1 or mp4a sample entry. The avcC holds no
// parameter sets: the samples are not decodable anyway.
func sampleEntry(w *boxWriter, t fmp4Track) {
	if t.Handler == "soun" {
		w.box("mp4a", func() {
			w.zeros(6)
			w.u16(1) // data_reference_index
			w.zeros(8)
			w.u16(2)  // channelcount
			w.u16(16) // samplesize
			w.u32(0)
			w.u32(t.Timescale << 16)
		})
		return
	}
	w.box("avc1", func() {
		w.zeros(6)
		w.u16(1)
		w.zeros(16)
		w.u16(uint16(t.Width))
		w.u16(uint16(t.Height))
		w.u32(0x00480000) // 72 dpi
		w.u32(0x00480000)
		w.u32(0)
		w.u16(1)    // frame_count
		w.zeros(32) // compressorname
		w.u16(0x0018)
		w.u16(0xffff)
		w.box("avcC", func() {
			w.u8(1)
			w.u8(0x64) // High
			w.u8(0)
			w.u8(0x1f)
			w.u8(0xff) // lengthSizeMinusOne = 3
			w.u8(0xe0) // no SPS
			w.u8(0)    // no PPS
		})
	})
}

// sampleSizes splits the mdat payload into the segment's samples: the first
// (the key frame) takes an eighth, the others share the rest.
func sampleSizes(t fmp4Track) []uint32 {
	sizes := make([]uint32, t.Samples)
	total := t.SegmentBytes
	first := total / 8
	if t.Samples == 1 {
		first = total
	}
	sizes[0] = uint32(first)
	rest := total - first
	for i := 1; i < t.Samples; i++ {
		n := rest / (t.Samples - 1)
		if i <= rest%(t.Samples-1) {
			n++
		}
		sizes[i] = uint32(n)
	}
	return sizes
}

// moofBox returns media segment n's moof, whose trun points dataOffset
// bytes past moof's first byte.
func moofBox(t fmp4Track, n int, dataOffset int32) []byte {
	w := &boxWriter{}
	w.box("moof", func() {
		w.full("mfhd", 0, 0, func() { w.u32(uint32(n + 1)) })
		w.box("traf", func() {
			w.full("tfhd", 0, 0x020000|0x000020, func() { // default-base-is-moof, default-sample-flags-present
				w.u32(1)
				w.u32(t.defaultFlags())
			})
			w.full("tfdt", 1, 0, func() { w.u64(uint64(int64(n) * t.SegmentDuration())) })
			// data-offset, first-sample-flags, sample-duration, sample-size
			w.full("trun", 0, 0x000001|0x000004|0x000100|0x000200, func() {
				w.u32(uint32(t.Samples))
				w.u32(uint32(dataOffset))
				w.u32(flagsSync)
				for _, s := range sampleSizes(t) {
					w.u32(t.SampleDuration)
					w.u32(s)
				}
			})
		})
	})
	return w.b
}

func moofSize(t fmp4Track) int { return 8 + 16 + 8 + 20 + 20 + 24 + 8*t.Samples }

func mdatHeaderSize(o segmentOptions) int {
	if o.LargeMdat {
		return 16
	}
	return 8
}

// mediaSegmentSize is the size of a media segment of t with options o.
func mediaSegmentSize(t fmp4Track, o segmentOptions) int {
	n := 24 + moofSize(t) + mdatHeaderSize(o) + t.SegmentBytes
	if o.Free > 0 {
		n += 8 + o.Free
	}
	return n
}

// writeMediaSegment writes media segment n into dst, which must be
// mediaSegmentSize(t, o) bytes long: a producer writes straight into shared
// memory.
func writeMediaSegment(dst []byte, t fmp4Track, n int, o segmentOptions) {
	if len(dst) != mediaSegmentSize(t, o) {
		panic(fmt.Sprintf("writeMediaSegment: %d bytes, want %d", len(dst), mediaSegmentSize(t, o)))
	}
	w := &boxWriter{b: dst[:0]}
	w.box("styp", func() { w.str("msdh"); w.u32(0); w.str("msdhmsix") })
	if o.Free > 0 {
		w.box("free", func() { w.zeros(o.Free) })
	}
	w.b = append(w.b, moofBox(t, n, int32(moofSize(t)+mdatHeaderSize(o)))...)
	if o.LargeMdat {
		w.u32(1)
		w.str("mdat")
		w.u64(uint64(16 + t.SegmentBytes))
	} else {
		w.u32(uint32(8 + t.SegmentBytes))
		w.str("mdat")
	}
	fillPattern(dst[len(w.b):], uint64(n))
}

// mediaSegment returns media segment n in a new buffer.
func mediaSegment(t fmp4Track, n int, o segmentOptions) []byte {
	b := make([]byte, mediaSegmentSize(t, o))
	writeMediaSegment(b, t, n, o)
	return b
}

// fillPattern fills b with bytes that differ per segment and repeat every
// 251 bytes (a prime, so the pattern does not line up with sample sizes).
func fillPattern(b []byte, seed uint64) {
	for i := 0; i < len(b) && i < 251; i++ {
		b[i] = byte(uint64(i)*7 + seed*13 + 1)
	}
	for filled := 251; filled < len(b); filled *= 2 {
		copy(b[filled:], b[:filled])
	}
}

// Parsing.

// bmffBox is one box: its type, where it starts, its header and total size.
type bmffBox struct {
	Type      string
	Off       int // of the box's first byte
	HeaderLen int // 8, or 16 with a largesize
	Size      int // header included
}

// Payload returns the box's payload within b.
func (x bmffBox) Payload(b []byte) []byte { return b[x.Off+x.HeaderLen : x.Off+x.Size] }

// parseBoxes splits b into boxes. A size of 1 means a 64-bit largesize
// follows the type; 0 means the box runs to the end of b.
func parseBoxes(b []byte, base int) ([]bmffBox, error) {
	var out []bmffBox
	for off := 0; off < len(b); {
		if len(b)-off < 8 {
			return out, fmt.Errorf("%d trailing bytes at %d: not a box", len(b)-off, base+off)
		}
		size := uint64(binary.BigEndian.Uint32(b[off:]))
		typ := string(b[off+4 : off+8])
		hdr := 8
		switch size {
		case 1:
			if len(b)-off < 16 {
				return out, fmt.Errorf("box %q at %d: truncated largesize", typ, base+off)
			}
			size, hdr = binary.BigEndian.Uint64(b[off+8:]), 16
		case 0:
			size = uint64(len(b) - off)
		}
		if size < uint64(hdr) || size > uint64(len(b)-off) {
			return out, fmt.Errorf("box %q at %d: size %d does not fit in %d bytes", typ, base+off, size, len(b)-off)
		}
		out = append(out, bmffBox{Type: typ, Off: base + off, HeaderLen: hdr, Size: int(size)})
		off += int(size)
	}
	return out, nil
}

func findBox(bs []bmffBox, typ string) (bmffBox, bool) {
	for _, x := range bs {
		if x.Type == typ {
			return x, true
		}
	}
	return bmffBox{}, false
}

// children parses the boxes inside container box x of b.
func children(b []byte, x bmffBox) ([]bmffBox, error) {
	return parseBoxes(x.Payload(b), x.Off+x.HeaderLen)
}

// segmentLayout describes a checked segment.
type segmentLayout struct {
	Init  bool
	Boxes []bmffBox // top level
	Tag   string    // the payload of a free or skip box that starts with "dimplugd:", up to its first NUL
	TagAt int       // offset of the tagged box
}

// Types lists the top-level boxes, "mdat(large)" for a 64-bit largesize.
func (l segmentLayout) Types() string {
	var ts []string
	for _, x := range l.Boxes {
		if x.HeaderLen == 16 {
			ts = append(ts, x.Type+"(large)")
		} else {
			ts = append(ts, x.Type)
		}
	}
	return strings.Join(ts, " ")
}

// checkSegment checks b's box structure: an init segment is ftyp then moov
// with a trak and mvex; a media segment has one moof with an mfhd and a
// traf (tfhd, tfdt, trun) followed by mdat, and trun's samples fill mdat's
// payload exactly. Free and skip boxes may appear anywhere at the top level.
func checkSegment(b []byte) (segmentLayout, error) {
	var l segmentLayout
	bs, err := parseBoxes(b, 0)
	l.Boxes = bs
	if err != nil {
		return l, err
	}
	var core []bmffBox
	for _, x := range bs {
		if x.Type == "free" || x.Type == "skip" {
			if p := x.Payload(b); strings.HasPrefix(string(p), "dimplugd:") && l.Tag == "" {
				s := string(p)
				if i := strings.IndexByte(s, 0); i >= 0 {
					s = s[:i]
				}
				l.Tag, l.TagAt = s, x.Off
			}
			continue
		}
		core = append(core, x)
	}
	types := func(bs []bmffBox) string {
		var ts []string
		for _, x := range bs {
			ts = append(ts, x.Type)
		}
		return strings.Join(ts, " ")
	}
	switch types(core) {
	case "ftyp moov":
		l.Init = true
		kids, err := children(b, core[1])
		if err != nil {
			return l, fmt.Errorf("moov: %w", err)
		}
		for _, want := range []string{"mvhd", "trak", "mvex"} {
			if _, ok := findBox(kids, want); !ok {
				return l, fmt.Errorf("moov has no %s", want)
			}
		}
		return l, nil
	case "styp moof mdat", "moof mdat":
	default:
		return l, fmt.Errorf("boxes %q are neither an init segment (ftyp moov) nor a media segment ([styp] moof mdat)", l.Types())
	}
	moof, mdat := core[len(core)-2], core[len(core)-1]
	kids, err := children(b, moof)
	if err != nil {
		return l, fmt.Errorf("moof: %w", err)
	}
	traf, ok := findBox(kids, "traf")
	if _, hasMfhd := findBox(kids, "mfhd"); !ok || !hasMfhd {
		return l, errors.New("moof lacks mfhd or traf")
	}
	tkids, err := children(b, traf)
	if err != nil {
		return l, fmt.Errorf("traf: %w", err)
	}
	for _, want := range []string{"tfhd", "tfdt", "trun"} {
		if _, ok := findBox(tkids, want); !ok {
			return l, fmt.Errorf("traf has no %s", want)
		}
	}
	trun, _ := findBox(tkids, "trun")
	p := trun.Payload(b)
	if len(p) < 8 {
		return l, errors.New("trun too short")
	}
	flags := binary.BigEndian.Uint32(p) & 0xffffff
	count := int(binary.BigEndian.Uint32(p[4:]))
	if flags&1 == 0 {
		return l, errors.New("trun has no data_offset")
	}
	dataOff := int(int32(binary.BigEndian.Uint32(p[8:])))
	i := 12
	if flags&4 != 0 {
		i += 4
	}
	per := 0
	for _, bit := range []uint32{0x100, 0x200, 0x400, 0x800} {
		if flags&bit != 0 {
			per += 4
		}
	}
	if flags&0x200 == 0 || len(p) < i+per*count {
		return l, errors.New("trun has no sample sizes, or is truncated")
	}
	total := 0
	for s := 0; s < count; s++ {
		off := i + s*per
		if flags&0x100 != 0 {
			off += 4
		}
		total += int(binary.BigEndian.Uint32(p[off:]))
	}
	start := moof.Off + dataOff
	if start != mdat.Off+mdat.HeaderLen || start+total != mdat.Off+mdat.Size {
		return l, fmt.Errorf("trun's samples span [%d, %d), mdat's payload is [%d, %d)", start, start+total, mdat.Off+mdat.HeaderLen, mdat.Off+mdat.Size)
	}
	return l, nil
}

// parseSize reads "600KB", "6.3MB", "75000" (KB and MB are powers of 1000,
// KiB and MiB of 1024).
func parseSize(s string) (int, error) {
	units := []struct {
		suffix string
		mult   float64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"KB", 1e3}, {"MB", 1e6}, {"B", 1}}
	mult := 1.0
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || f < 1 || f*mult > 1<<30 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return int(f * mult), nil
}
