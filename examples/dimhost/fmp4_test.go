package main

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

func TestGeneratedSegments(t *testing.T) {
	for name, tr := range fmp4Profiles {
		t.Run(name, func(t *testing.T) {
			init := initSegment(tr)
			l, err := checkSegment(init)
			if err != nil || !l.Init || l.Types() != "ftyp moov" {
				t.Fatalf("init segment: %v %+v", err, l)
			}
			for _, o := range []segmentOptions{{}, {Free: 64}, {LargeMdat: true}, {Free: 200, LargeMdat: true}} {
				seg := mediaSegment(tr, 3, o)
				if len(seg) != mediaSegmentSize(tr, o) {
					t.Fatalf("%+v: %d bytes, want %d", o, len(seg), mediaSegmentSize(tr, o))
				}
				l, err := checkSegment(seg)
				if err != nil || l.Init {
					t.Fatalf("%+v: %v", o, err)
				}
				want := "styp moof mdat"
				if o.Free > 0 {
					want = "styp free moof mdat"
				}
				if o.LargeMdat {
					want += "(large)"
				}
				if l.Types() != want {
					t.Errorf("%+v: boxes %q, want %q", o, l.Types(), want)
				}
				mdat := l.Boxes[len(l.Boxes)-1]
				if mdat.Size-mdat.HeaderLen != tr.SegmentBytes {
					t.Errorf("%+v: mdat payload %d, want %d", o, mdat.Size-mdat.HeaderLen, tr.SegmentBytes)
				}
				// tfdt: segment 3 starts at 3 segment durations.
				moof := l.Boxes[len(l.Boxes)-2]
				kids, _ := children(seg, moof)
				traf, _ := findBox(kids, "traf")
				tkids, _ := children(seg, traf)
				tfdt, _ := findBox(tkids, "tfdt")
				if got := binary.BigEndian.Uint64(tfdt.Payload(seg)[4:]); got != uint64(3*tr.SegmentDuration()) {
					t.Errorf("tfdt %d, want %d", got, 3*tr.SegmentDuration())
				}
			}
			if bytes.Equal(mediaSegment(tr, 1, segmentOptions{}), mediaSegment(tr, 2, segmentOptions{})) {
				t.Errorf("segments 1 and 2 are identical")
			}
			if !bytes.Equal(mediaSegment(tr, 1, segmentOptions{}), mediaSegment(tr, 1, segmentOptions{})) {
				t.Errorf("segments are not deterministic")
			}
		})
	}
	// 64-bit sizes parse.
	if bs, err := parseBoxes(mediaSegment(fmp4Profiles["audio"], 0, segmentOptions{LargeMdat: true}), 0); err != nil || bs[2].HeaderLen != 16 {
		t.Errorf("largesize mdat: %v %+v", err, bs)
	}
}

func TestCheckSegmentCatchesDamage(t *testing.T) {
	tr := fmp4Profiles["audio"]
	seg := mediaSegment(tr, 0, segmentOptions{Free: 64})
	l, _ := checkSegment(seg)
	moof := l.Boxes[2]
	end := moof.Off + moof.Size
	free := []byte{0, 0, 0, 12, 'f', 'r', 'e', 'e', 1, 2, 3, 4}
	for name, bad := range map[string][]byte{
		"box inserted between moof and mdat": append(append(append([]byte{}, seg[:end]...), free...), seg[end:]...),
		"truncated":                          seg[:len(seg)-1],
		"no moof":                            append(append([]byte{}, seg[:24]...), seg[end:]...),
		"init and media boxes mixed":         append(append([]byte{}, initSegment(tr)...), seg[end:]...),
	} {
		if _, err := checkSegment(bad); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	// A box appended after mdat or prepended before moof is fine.
	for name, ok := range map[string][]byte{
		"free appended":  append(append([]byte{}, seg...), free...),
		"free prepended": append(append([]byte{}, free...), seg...),
	} {
		if _, err := checkSegment(ok); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestCompare(t *testing.T) {
	tr := fmp4Profiles["audio"]
	sent := mediaSegment(tr, 0, segmentOptions{Free: 64})
	tag := "dimplugd:segment-tagger seq=1"

	inPlace := append([]byte{}, sent...)
	copy(inPlace[32:], tag)
	if r := compare(1, sent, inPlace); r.Err != nil || r.Changed != len(tag) || r.ChangedAt != [2]int{32, 32 + len(tag)} || r.Tag != tag || r.TagBox != "free@24" || r.Appended != 0 {
		t.Errorf("in place: %+v", r)
	}
	tagBox := append(binary.BigEndian.AppendUint32(nil, uint32(8+len(tag))), "free"+tag...)
	appended := append(append([]byte{}, sent...), tagBox...)
	if r := compare(1, sent, appended); r.Err != nil || r.Changed != 0 || r.Appended != 8+len(tag) || r.Tag != tag {
		t.Errorf("appended: %+v", r)
	}
	if r := compare(0, initSegment(tr), initSegment(tr)); r.Err != nil || r.Changed != 0 || r.Boxes != "ftyp moov" {
		t.Errorf("init: %+v", r)
	}
	outside := append([]byte{}, sent...)
	outside[len(outside)-1] ^= 1 // a sample byte
	if r := compare(1, sent, outside); r.Err == nil || !strings.Contains(r.Err.Error(), "outside a free box") {
		t.Errorf("sample changed: %+v", r)
	}
	init := initSegment(tr)
	changedInit := append(append([]byte{}, init...), tagBox...)
	if r := compare(0, init, changedInit); r.Err == nil {
		t.Errorf("init changed: %+v", r)
	}
	if r := compare(1, sent, sent[:len(sent)-8]); r.Err == nil {
		t.Errorf("shortened: %+v", r)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int{"600KB": 600_000, "6.3MB": 6_300_000, "2MiB": 2 << 20, "75000": 75_000, "512B": 512} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "x", "0", "-5KB", "2GB"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q): no error", bad)
		}
	}
}
