package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"strings"
	"testing"
	"unsafe"

	"github.com/dimplugd/dimplugd/sdk-go/plugin"
	"github.com/dimplugd/dimplugd/sdk-go/plugin/plugintest"
)

// mk builds a box with a 32-bit size.
func mk(typ string, payload []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(8+len(payload)))
	return append(append(b, typ...), payload...)
}

// mkLarge builds a box with a 64-bit largesize.
func mkLarge(typ string, payload []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, 1)
	b = append(b, typ...)
	b = binary.BigEndian.AppendUint64(b, uint64(16+len(payload)))
	return append(b, payload...)
}

// mkToEnd builds a box whose size field is 0: it runs to the end.
func mkToEnd(typ string, payload []byte) []byte {
	return append(append([]byte{0, 0, 0, 0}, typ...), payload...)
}

func cat(bs ...[]byte) []byte { return bytes.Join(bs, nil) }

func payload(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i)*7 + seed
	}
	return b
}

var (
	ftyp = mk("ftyp", []byte("iso6\x00\x00\x00\x00iso6dash"))
	moov = mk("moov", mk("mvhd", make([]byte, 100)))
	styp = mk("styp", []byte("msdh\x00\x00\x00\x00msdhmsix"))
	moof = mk("moof", cat(mk("mfhd", []byte{0, 0, 0, 0, 0, 0, 0, 1}), mk("traf", payload(60, 3))))
	mdat = mk("mdat", payload(5000, 9))
)

// heapFrames stands in for Stream.NewFrame: a Stream built outside the SDK
// has no shared memory.
func heapFrames(made *int) func(context.Context, *plugin.Stream, int) (*plugin.Frame, error) {
	return func(ctx context.Context, s *plugin.Stream, n int) (*plugin.Frame, error) {
		*made++
		return &plugin.Frame{Data: make([]byte, n)}, nil
	}
}

func filter(t *testing.T, in []byte, seq uint64) (out []byte, same bool, made int) {
	t.Helper()
	tg := &tagger{newFrame: heapFrames(&made)}
	f := &plugin.Frame{Seq: seq, PTS: 450000, Duration: 450000, KeyFrame: true, ContentType: "video/iso.segment", Data: append([]byte{}, in...)}
	outs, err := tg.FilterFrame(context.Background(), &plugin.Stream{Kind: "video/segment"}, f)
	if err != nil {
		t.Fatal(err)
	}
	if len(outs) != 1 {
		t.Fatalf("%d frames out, want 1", len(outs))
	}
	o := outs[0]
	if o.Seq != seq || o.PTS != 450000 || o.Duration != 450000 || !o.KeyFrame || o.ContentType != "video/iso.segment" {
		t.Errorf("metadata not kept: %+v", o)
	}
	same = o == f && unsafe.SliceData(o.Data) == unsafe.SliceData(f.Data)
	if !same && !bytes.Equal(f.Data, in) {
		t.Errorf("the input frame was changed although a new frame was made")
	}
	return o.Data, same, made
}

// diff returns the offsets where a and b (of equal length) differ.
func diff(a, b []byte) []int {
	var at []int
	for i := range a {
		if a[i] != b[i] {
			at = append(at, i)
		}
	}
	return at
}

func TestParseBoxes(t *testing.T) {
	seg := cat(styp, mkLarge("free", make([]byte, 40)), moof, mkToEnd("mdat", payload(300, 1)))
	bs, err := parseBoxes(seg)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, x := range bs {
		got = append(got, x.typ)
	}
	if strings.Join(got, " ") != "styp free moof mdat" || bs[1].hdr != 16 || bs[1].size != 56 || !bs[3].toEnd || bs[3].size != 308 || bs[2].off != len(styp)+56 {
		t.Fatalf("boxes %+v", bs)
	}
	for name, bad := range map[string][]byte{
		"empty":              {},
		"trailing bytes":     cat(styp, []byte{0, 0, 0}),
		"size past the end":  cat(styp, mk("mdat", make([]byte, 10))[:12]),
		"size below header":  {0, 0, 0, 4, 'f', 'r', 'e', 'e'},
		"largesize below 16": {0, 0, 0, 1, 'f', 'r', 'e', 'e', 0, 0, 0, 0, 0, 0, 0, 8},
		"truncated largesz":  {0, 0, 0, 1, 'f', 'r', 'e', 'e', 0, 0},
	} {
		if _, err := parseBoxes(bad); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// A free box with room: only its payload changes, in a copy (received
// frames are read-only).
func TestTagInPlace(t *testing.T) {
	for _, tc := range []struct {
		name string
		free []byte
	}{
		{"free", mk("free", make([]byte, 64))},
		{"skip", mk("skip", make([]byte, 64))},
		{"exact fit", mk("free", make([]byte, len(tagFor(7))))},
		{"largesize free with old contents", mkLarge("free", payload(80, 5))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := cat(styp, tc.free, moof, mdat)
			out, same, made := filter(t, in, 7)
			if same || made != 1 || len(out) != len(in) {
				t.Fatalf("same frame %v, new frames %d, %d bytes (in %d): want one new frame of the same size", same, made, len(out), len(in))
			}
			hdr := 8
			if binary.BigEndian.Uint32(tc.free) == 1 {
				hdr = 16
			}
			start, end := len(styp)+hdr, len(styp)+len(tc.free)
			for _, at := range diff(in, out) {
				if at < start || at >= end {
					t.Fatalf("byte %d changed, outside the free payload [%d, %d)", at, start, end)
				}
			}
			want := append([]byte(tagFor(7)), make([]byte, end-start-len(tagFor(7)))...)
			if !bytes.Equal(out[start:end], want) {
				t.Fatalf("payload %q, want %q", out[start:end], want)
			}
			if string(out[start:start+len("dimplugd:segment-tagger seq=7")]) != "dimplugd:segment-tagger seq=7" {
				t.Fatalf("tag %q", out[start:end])
			}
		})
	}
	// Zero-filled free box: exactly the tag's bytes differ.
	in := cat(styp, mk("free", make([]byte, 64)), moof, mdat)
	out, _, _ := filter(t, in, 12)
	if d := diff(in, out); len(d) != len("dimplugd:segment-tagger seq=12") || d[0] != len(styp)+8 {
		t.Fatalf("changed bytes at %v", d)
	}
}

// No room: a new frame, the original bytes then a free box with the tag.
func TestTagAppended(t *testing.T) {
	tag := tagFor(3)
	tagBox := mk("free", []byte(tag))
	for _, tc := range []struct {
		name    string
		in, out []byte
	}{
		{"no free box", cat(styp, moof, mdat), cat(styp, moof, mdat, tagBox)},
		{"free box too small", cat(styp, mk("free", make([]byte, 8)), moof, mdat), cat(styp, mk("free", make([]byte, 8)), moof, mdat, tagBox)},
		{"largesize mdat", cat(styp, moof, mkLarge("mdat", payload(5000, 1))), cat(styp, moof, mkLarge("mdat", payload(5000, 1)), tagBox)},
		{"mdat to the end", cat(styp, moof, mkToEnd("mdat", payload(5000, 1))), cat(styp, moof, mk("mdat", payload(5000, 1)), tagBox)},
		{"no styp", cat(moof, mdat), cat(moof, mdat, tagBox)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, same, made := filter(t, tc.in, 3)
			if same || made != 1 {
				t.Fatalf("same frame %v, new frames %d: want one new frame", same, made)
			}
			if !bytes.Equal(out, tc.out) {
				t.Fatalf("got %d bytes, want %d: %q", len(out), len(tc.out), out[max(0, len(out)-60):])
			}
			if _, err := parseBoxes(out); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Init segments and other frames pass untouched.
func TestUntouched(t *testing.T) {
	for name, in := range map[string][]byte{
		"init segment":          cat(ftyp, moov),
		"init with a free box":  cat(ftyp, mk("free", make([]byte, 64)), moov),
		"whole fragmented file": cat(ftyp, moov, moof, mdat),
		"no moof":               cat(styp, mk("free", make([]byte, 64)), mdat),
		"not ISO BMFF":          []byte("WEBVTT\n\n00:00.000 --> 00:01.000\nhello\n"),
		"truncated segment":     cat(styp, moof, mdat)[:200],
	} {
		t.Run(name, func(t *testing.T) {
			out, same, made := filter(t, in, 1)
			if !same || made != 0 || !bytes.Equal(out, in) {
				t.Fatalf("same frame %v, new frames %d, changed %v", same, made, !bytes.Equal(out, in))
			}
		})
	}
}

// The plugin serves over the real protocol (plugintest drives hooks, not
// frames, so this checks the handshake and health only).
func TestServes(t *testing.T) {
	h := plugintest.Start(t, &tagger{}, plugintest.WithName("segment-tagger"))
	if err := h.Health(); err != nil {
		t.Fatal(err)
	}
}
