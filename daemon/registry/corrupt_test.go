package registry

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// corruptFixture is a closed state directory with acknowledged data: two
// installed plugins (one enabled) and key-value data spread over several
// pages.
type corruptFixture struct {
	dir     string
	db      []byte   // registry.db as the last commit left it
	plugins []string // entries of plugins/
	keys    int
}

func newCorruptFixture(t *testing.T) *corruptFixture {
	t.Helper()
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	install(t, s, writePlugin(t, "alpha", "1.0.0", ""), InstallOptions{Enable: true})
	install(t, s, writePlugin(t, "beta", "2.0.0", ""), InstallOptions{})
	f := &corruptFixture{dir: dir, keys: 300}
	for i := range f.keys {
		if err := s.KV("alpha").Set(fmt.Sprintf("key-%04d", i), fixtureValue(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if f.db, err = os.ReadFile(filepath.Join(dir, dbFileName)); err != nil {
		t.Fatal(err)
	}
	f.plugins = readDir(t, filepath.Join(dir, pluginsDir))
	return f
}

func fixtureValue(i int) []byte {
	return bytes.Repeat([]byte{byte('a' + i%26)}, 40+i%200)
}

// copyTo makes a fresh copy of the fixture's state directory with
// registry.db replaced by db.
func (f *corruptFixture) copyTo(t *testing.T, db []byte) string {
	t.Helper()
	dst := t.TempDir()
	if err := os.CopyFS(dst, os.DirFS(f.dir)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dst, dbFileName), db, 0o600); err != nil {
		t.Fatal(err)
	}
	return dst
}

// checkAcknowledged fails unless s holds every acknowledged change of the
// fixture and every plugin's files.
func (f *corruptFixture) checkAcknowledged(t *testing.T, s *Store) {
	t.Helper()
	recs, err := s.List()
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	var names []string
	for _, r := range recs {
		names = append(names, r.Name)
		if _, err := os.Stat(filepath.Join(r.Dir, "run.sh")); err != nil {
			t.Errorf("files of %s: %v", r.Name, err)
		}
		if r.Name == "alpha" && !r.Enabled {
			t.Error("alpha lost its enabled flag")
		}
	}
	if !reflect.DeepEqual(names, []string{"alpha", "beta"}) {
		t.Fatalf("plugins %v, want [alpha beta]", names)
	}
	for i := range f.keys {
		v, ok, err := s.KV("alpha").Get(fmt.Sprintf("key-%04d", i))
		if err != nil || !ok || !bytes.Equal(v, fixtureValue(i)) {
			t.Fatalf("key-%04d: %d bytes, %v, %v", i, len(v), ok, err)
		}
	}
}

// TestOpenRefusesDamage damages registry.db in every way the issue lists
// (empty, truncated, each page zeroed, meta bytes flipped, random bytes
// over each page) and opens the state directory. Each case must end in
// one of two outcomes: Open refuses with a DamageError that says what is
// wrong and how to restore, leaving registry.db byte for byte and plugins/
// as they were; or Open succeeds (the damage hit only free pages or the
// older meta page) with every acknowledged change intact. A panic or a
// fault fails the whole test binary.
func TestOpenRefusesDamage(t *testing.T) {
	f := newCorruptFixture(t)
	const ps = 4096
	if len(f.db)%ps != 0 {
		t.Fatalf("registry.db is %d bytes, not whole %d-byte pages", len(f.db), ps)
	}
	pages := len(f.db) / ps

	type damage struct {
		name string
		mod  func([]byte) []byte
	}
	var cases []damage
	cases = append(cases, damage{"empty", func([]byte) []byte { return nil }})
	for _, n := range []int{1, ps - 1, ps, 2*ps + 17, len(f.db) / 2, len(f.db) - ps, len(f.db) - 1} {
		cases = append(cases, damage{fmt.Sprintf("truncated to %d bytes", n), func(b []byte) []byte { return b[:n] }})
	}
	for p := range pages {
		cases = append(cases, damage{fmt.Sprintf("page %d zeroed", p), func(b []byte) []byte {
			clear(b[p*ps : (p+1)*ps])
			return b
		}})
	}
	// Offsets in a meta page: page header (16), magic, version, page size,
	// flags, root bucket, freelist, high-water mark, txid, checksum.
	for _, meta := range []int{0, 1} {
		for _, off := range []int{16, 20, 24, 32, 40, 56, 64, 72, 80} {
			cases = append(cases, damage{fmt.Sprintf("meta %d byte %d flipped", meta, off), func(b []byte) []byte {
				b[meta*ps+off] ^= 0x5a
				return b
			}})
		}
	}
	rng := rand.New(rand.NewPCG(11, 31))
	for p := range pages {
		seed := rng.Uint64()
		cases = append(cases, damage{fmt.Sprintf("page %d random bytes", p), func(b []byte) []byte {
			r := rand.New(rand.NewPCG(seed, 7))
			for i := p * ps; i < (p+1)*ps; i++ {
				b[i] = byte(r.Uint32())
			}
			return b
		}})
	}

	outcomes := map[string][]string{}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			db := c.mod(bytes.Clone(f.db))
			dir := f.copyTo(t, db)
			s, err := Open(dir)
			if err == nil {
				defer s.Close()
				f.checkAcknowledged(t, s)
				outcomes["opened, nothing lost"] = append(outcomes["opened, nothing lost"], c.name)
				return
			}
			var d *DamageError
			if !errors.As(err, &d) || !errors.Is(err, ErrDamaged) {
				t.Fatalf("Open = %v, want a DamageError", err)
			}
			msg := err.Error()
			for _, want := range []string{"registry database", "is damaged", "did not start", "the file is unchanged", "dimplugd state restore"} {
				if !strings.Contains(msg, want) {
					t.Errorf("refusal lacks %q:\n%s", want, msg)
				}
			}
			after, rerr := os.ReadFile(filepath.Join(dir, dbFileName))
			if rerr != nil || !bytes.Equal(after, db) {
				t.Errorf("registry.db changed by a refused Open (%v)", rerr)
			}
			if got := readDir(t, filepath.Join(dir, pluginsDir)); !reflect.DeepEqual(got, f.plugins) {
				t.Errorf("plugins/ holds %v after a refused Open, want %v", got, f.plugins)
			}
			if _, err := os.Stat(filepath.Join(dir, lostDir)); err == nil {
				t.Error("a refused Open moved plugin directories to lost+found/")
			}
			outcome := "refused"
			if d.OlderIntact {
				outcome = "refused, older commit intact"
			}
			outcomes[outcome] = append(outcomes[outcome], c.name)
		})
	}
	var summary []string
	for k, v := range outcomes {
		summary = append(summary, fmt.Sprintf("%s: %d", k, len(v)))
	}
	sort.Strings(summary)
	t.Logf("%d damaged databases (%d pages): %s", len(cases), pages, strings.Join(summary, "; "))
	for k, v := range outcomes {
		t.Logf("%s: %s", k, strings.Join(v, ", "))
	}
	if len(outcomes["refused"])+len(outcomes["refused, older commit intact"]) == 0 {
		t.Error("no case was refused: the damage did not reach the database")
	}
}

// TestOpenRefusesMissingDatabase: a state directory whose registry.db is
// gone while plugins/ holds installed plugins is refused, and nothing in
// it is deleted.
func TestOpenRefusesMissingDatabase(t *testing.T) {
	f := newCorruptFixture(t)
	dir := f.copyTo(t, nil)
	if err := os.Remove(filepath.Join(dir, dbFileName)); err != nil {
		t.Fatal(err)
	}
	_, err := Open(dir)
	if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "is missing, but plugins/ holds 2 plugin directories") {
		t.Fatalf("Open = %v, want a refusal naming the missing database", err)
	}
	if got := readDir(t, filepath.Join(dir, pluginsDir)); !reflect.DeepEqual(got, f.plugins) {
		t.Errorf("plugins/ holds %v, want %v", got, f.plugins)
	}
	if _, err := os.Stat(filepath.Join(dir, dbFileName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused Open created registry.db: %v", err)
	}
}
