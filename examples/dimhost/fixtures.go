package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
)

// writeFixtures fills dir with every track's segments: <track>/init.mp4 and
// <track>/<n>.m4s for n from 0. They are tiny stand-ins for nightfall's
// output, not playable video: an ISO-BMFF header box ("ftyp" for the init
// segment, "styp" for media segments) followed by a "free" box naming the
// track and segment, so that a test can tell which file it got.
func writeFixtures(dir string) error {
	for _, m := range catalog {
		n := (m.Duration + segmentSeconds - 1) / segmentSeconds
		for _, t := range tracksOf(m) {
			td := filepath.Join(dir, t.ID)
			if err := os.MkdirAll(td, 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(td, "init.mp4"), fixture("ftyp", t.ID+" init"), 0o644); err != nil {
				return err
			}
			for i := 0; i < n; i++ {
				if err := os.WriteFile(filepath.Join(td, fmt.Sprintf("%d.m4s", i)), fixture("styp", fmt.Sprintf("%s segment %d", t.ID, i)), 0o644); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// fixture is a header box of type typ (brand "iso6", compatible "dash")
// followed by a free box holding "dimhost fixture <label>".
func fixture(typ, label string) []byte {
	box := func(typ string, payload []byte) []byte {
		b := binary.BigEndian.AppendUint32(nil, uint32(8+len(payload)))
		return append(append(b, typ...), payload...)
	}
	head := box(typ, []byte("iso6\x00\x00\x00\x00iso6dash"))
	return append(head, box("free", []byte("dimhost fixture "+label))...)
}

// fixtureDir writes the fixtures into a new temporary directory and returns
// it with a function that removes it.
func fixtureDir() (string, func(), error) {
	dir, err := os.MkdirTemp("", "dimhost-segments-")
	if err != nil {
		return "", nil, err
	}
	if err := writeFixtures(dir); err != nil {
		os.RemoveAll(dir)
		return "", nil, err
	}
	return dir, func() { os.RemoveAll(dir) }, nil
}
