package registry

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"runtime/debug"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// The bbolt file format, as go.etcd.io/bbolt/internal/common lays it out
// in memory (native byte order). verifyFile reads it with ReadAt, never
// through a memory map, so a damaged file cannot crash the process.
const (
	boltMagic        = 0xED0CDAED
	boltVersion      = 2
	pageHeaderSize   = 16 // id u64, flags u16, count u16, overflow u32
	elementSize      = 16 // branch: pos u32, ksize u32, pgid u64; leaf: flags u32, pos u32, ksize u32, vsize u32
	metaSize         = 64 // magic, version, pageSize, flags u32; root, sequence, freelist, pgid, txid, checksum u64
	metaChecksumAt   = 56 // the checksum covers the meta up to here
	inBucketSize     = 16 // root u64, sequence u64
	branchPageFlag   = 0x01
	leafPageFlag     = 0x02
	metaPageFlag     = 0x04
	freelistPageFlag = 0x10
	bucketLeafFlag   = 0x01
	noFreelist       = ^uint64(0)
	minPages         = 4 // two meta pages, a freelist and the root leaf
)

var ne = binary.NativeEndian

// DamageError says what is wrong with a registry database file. Open,
// RestoreState and CheckState report damage with it; test with errors.As,
// or errors.Is(err, ErrDamaged).
type DamageError struct {
	// Path is the file.
	Path string
	// Problem says what is wrong, e.g. "it is empty (0 bytes)" or "page 7
	// is invalid: unknown page type 0x00".
	Problem string
	// Page is the damaged page, or -1.
	Page int64
	// OlderIntact says that the newest commit cannot be read (its meta page
	// or a page of its tree is damaged) but the other meta page's commit
	// checks out: RestoreState with AcceptOlder rebuilds the database from
	// it, losing at most the newest acknowledged change.
	OlderIntact bool
}

func (e *DamageError) Error() string {
	return fmt.Sprintf("registry database %s is damaged: %s", e.Path, e.Problem)
}

// Is makes a DamageError match ErrDamaged and its class.
func (e *DamageError) Is(target error) bool {
	return target == ErrDamaged || errors.Is(ErrDamaged, target)
}

// dbFile describes a database file that verifyFile accepted.
type dbFile struct {
	size      int64
	pageSize  int
	txid      uint64 // commit of the meta page in use
	hwm       uint64 // high-water mark: pages below it are in use or free
	freePages int    // pages in the freelist
	meta      int    // the meta page in use, 0 or 1
}

// liveBytes is what the data would take in a compacted file.
func (f *dbFile) liveBytes() int64 { return int64(f.hwm-uint64(f.freePages)) * int64(f.pageSize) }

// meta is one decoded meta page.
type meta struct {
	page               int
	pageSize           uint32
	root, freelist     uint64
	hwm, txid          uint64
	problem            string // why the page is unusable, "" if it is fine
	checksumOK, inSize bool
}

// verifyFile checks the bbolt file at path without opening it as a
// database: its size, both meta pages (magic, version, page size, FNV-64a
// checksum, pointers inside the file) and every page reachable from the
// newest commit (page type and number, element bounds, key order, free
// pages, no page used twice, none lost). The checks are those bbolt relies
// on not to panic or fault, so a file that passes can be opened. Damage is
// a *DamageError; other errors are I/O errors.
func verifyFile(path string) (*dbFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	damaged := func(page int64, format string, args ...any) (*dbFile, error) {
		return nil, &DamageError{Path: path, Problem: fmt.Sprintf(format, args...), Page: page}
	}
	size := fi.Size()
	if size == 0 {
		return damaged(-1, "it is empty (0 bytes)")
	}
	ps := findPageSize(f, size)
	switch {
	case size%int64(ps) != 0:
		return damaged(-1, "it is truncated at %d bytes, which is not a whole number of %d-byte pages", size, ps)
	case size < minPages*int64(ps):
		return damaged(-1, "it is truncated at %d bytes, less than the %d pages of %d bytes every registry database has", size, minPages, ps)
	}
	var metas [2]meta
	for i := range metas {
		if metas[i], err = readMeta(f, i, ps, size); err != nil {
			return nil, err
		}
	}
	// Candidates: meta pages with a good checksum, newest commit first.
	var cands []meta
	for _, m := range metas {
		if m.checksumOK {
			cands = append(cands, m)
		}
	}
	slices.SortFunc(cands, func(a, b meta) int { return -cmpUint(a.txid, b.txid) })
	if len(cands) == 0 {
		return damaged(-1, "it is not a bbolt database, or both of its meta pages are destroyed (meta page 0 %s; meta page 1 %s)",
			metas[0].problem, metas[1].problem)
	}
	newest := cands[0]
	if !newest.inSize {
		d := &DamageError{Path: path, Page: -1, Problem: fmt.Sprintf("it is truncated at %d bytes: its newest commit (%d) %s",
			size, newest.txid, newest.problem)}
		if len(cands) == 2 {
			_, err := walk(f, path, size, ps, cands[1], false)
			d.OlderIntact = err == nil
		}
		return nil, d
	}
	res, werr := walk(f, path, size, ps, newest, true)
	var d *DamageError
	if werr != nil && !errors.As(werr, &d) {
		return nil, werr
	}
	if len(cands) == 1 {
		// One meta page is damaged. It held either the commit before the
		// intact one (nothing is lost) or the one after it (the newest
		// acknowledged commit is lost); nothing on disk tells which.
		bad := metas[1-newest.page]
		if d != nil {
			d.Problem = fmt.Sprintf("meta page %d %s, and the commit on meta page %d is damaged too: %s",
				bad.page, bad.problem, newest.page, d.Problem)
			return nil, d
		}
		return nil, &DamageError{Path: path, Page: int64(bad.page), OlderIntact: true, Problem: fmt.Sprintf(
			"meta page %d %s: the newest acknowledged commit may be lost (meta page %d, commit %d, is intact and may be the one before it)",
			bad.page, bad.problem, newest.page, newest.txid)}
	}
	if d != nil {
		if older := cands[1]; older.inSize {
			_, err := walk(f, path, size, ps, older, false)
			d.OlderIntact = err == nil
		}
		return nil, d
	}
	return res, nil
}

// readMetas decodes both meta pages of the file at path.
func readMetas(path string) (int, [2]meta, error) {
	var metas [2]meta
	f, err := os.Open(path)
	if err != nil {
		return 0, metas, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, metas, err
	}
	ps := findPageSize(f, fi.Size())
	for i := range metas {
		if metas[i], err = readMeta(f, i, ps, fi.Size()); err != nil {
			return 0, metas, err
		}
	}
	return ps, metas, nil
}

// walkMeta checks the commit of meta page i of the file at path, allowing
// pages that belong to neither it nor its freelist (those of a newer,
// lost commit).
func walkMeta(path string, i int) (*dbFile, error) {
	ps, metas, err := readMetas(path)
	if err != nil {
		return nil, err
	}
	if m := metas[i]; !m.checksumOK || !m.inSize {
		return nil, &DamageError{Path: path, Page: int64(i), Problem: fmt.Sprintf("meta page %d %s", i, m.problem)}
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	return walk(f, path, fi.Size(), ps, metas[i], false)
}

// findPageSize reads the page size from the first meta page with a good
// checksum, trying the second one at each possible page size like bbolt
// does; if neither is readable it assumes the OS page size.
func findPageSize(r io.ReaderAt, size int64) int {
	if m, ok := decodeMetaAt(r, 0); ok && validPageSize(int(m.pageSize)) {
		return int(m.pageSize)
	}
	for ps := 1024; ps <= 64<<10; ps *= 2 {
		if int64(ps)+pageHeaderSize+metaSize > size {
			break
		}
		if m, ok := decodeMetaAt(r, int64(ps)); ok && int(m.pageSize) == ps {
			return ps
		}
	}
	return os.Getpagesize()
}

func validPageSize(ps int) bool { return ps >= 1024 && ps <= 64<<10 && ps&(ps-1) == 0 }

// decodeMetaAt decodes the meta page at off and says whether its magic,
// version and checksum are good.
func decodeMetaAt(r io.ReaderAt, off int64) (meta, bool) {
	var buf [pageHeaderSize + metaSize]byte
	if _, err := r.ReadAt(buf[:], off); err != nil {
		return meta{problem: "cannot be read"}, false
	}
	b := buf[pageHeaderSize:]
	m := meta{
		pageSize: ne.Uint32(b[8:]),
		root:     ne.Uint64(b[16:]),
		freelist: ne.Uint64(b[32:]),
		hwm:      ne.Uint64(b[40:]),
		txid:     ne.Uint64(b[48:]),
	}
	h := fnv.New64a()
	h.Write(b[:metaChecksumAt])
	switch {
	case ne.Uint32(b[0:]) != boltMagic:
		m.problem = "has a bad magic number"
	case ne.Uint32(b[4:]) != boltVersion:
		m.problem = fmt.Sprintf("has unsupported format version %d", ne.Uint32(b[4:]))
	case ne.Uint64(b[metaChecksumAt:]) != h.Sum64():
		m.problem = "fails its checksum"
	default:
		m.checksumOK = true
	}
	return m, m.checksumOK
}

// readMeta decodes meta page i of a file with page size ps and checks
// that it points inside the file.
func readMeta(r io.ReaderAt, i, ps int, size int64) (meta, error) {
	m, ok := decodeMetaAt(r, int64(i*ps))
	m.page = i
	if !ok {
		return m, nil
	}
	var hdr [pageHeaderSize]byte
	if _, err := r.ReadAt(hdr[:], int64(i*ps)); err != nil {
		return m, err
	}
	switch {
	case int(m.pageSize) != ps:
		m.checksumOK, m.problem = false, fmt.Sprintf("says the page size is %d, not %d", m.pageSize, ps)
	case ne.Uint16(hdr[8:]) != metaPageFlag:
		m.checksumOK, m.problem = false, fmt.Sprintf("has page type 0x%02x, not a meta page", ne.Uint16(hdr[8:]))
	case m.hwm < minPages || m.root < 2 || m.root >= m.hwm || (m.freelist != noFreelist && (m.freelist < 2 || m.freelist >= m.hwm)):
		m.checksumOK, m.problem = false, fmt.Sprintf("points outside its commit (root %d, freelist %d, %d pages)", m.root, m.freelist, m.hwm)
	case m.hwm > uint64(size)/uint64(ps):
		m.problem = fmt.Sprintf("uses %d pages (%d bytes)", m.hwm, m.hwm*uint64(ps))
	default:
		m.inSize = true
	}
	return m, nil
}

// walker checks the pages of one commit.
type walker struct {
	r      io.ReaderAt
	path   string
	ps     int
	hwm    uint64
	used   []bool // reachable pages, overflow included
	free   []bool // pages in the freelist
	nfree  int
	strict bool // every page must be in use or free
}

// walk checks the commit of meta page m: its freelist and every page
// reachable from its root bucket. Unless strict, pages that are neither in
// use nor free are not an error (they belong to a newer commit).
func walk(r io.ReaderAt, path string, size int64, ps int, m meta, strict bool) (*dbFile, error) {
	w := &walker{r: r, path: path, ps: ps, hwm: m.hwm, used: make([]bool, m.hwm), free: make([]bool, m.hwm), strict: strict}
	w.used[0], w.used[1] = true, true
	if m.freelist != noFreelist {
		if err := w.freelist(m.freelist); err != nil {
			return nil, err
		}
	}
	if err := w.tree(m.root, nil, nil); err != nil {
		return nil, err
	}
	if strict && m.freelist != noFreelist {
		for id := uint64(2); id < m.hwm; id++ {
			if !w.used[id] && !w.free[id] {
				return nil, w.damaged(id, "it is neither in use nor free (the page that pointed to it is damaged)")
			}
		}
	}
	return &dbFile{size: size, pageSize: ps, txid: m.txid, hwm: m.hwm, freePages: w.nfree, meta: m.page}, nil
}

func (w *walker) damaged(id uint64, format string, args ...any) error {
	return &DamageError{Path: w.path, Page: int64(id), Problem: fmt.Sprintf("page %d is invalid: ", id) + fmt.Sprintf(format, args...)}
}

// page reads page id with its overflow pages and marks them used.
func (w *walker) page(id uint64, from string) ([]byte, error) {
	if id < 2 || id >= w.hwm {
		return nil, &DamageError{Path: w.path, Page: int64(id), Problem: fmt.Sprintf(
			"%s points to page %d, outside the %d pages of the commit", from, id, w.hwm)}
	}
	hdr := make([]byte, w.ps)
	if _, err := w.r.ReadAt(hdr, int64(id)*int64(w.ps)); err != nil {
		return nil, fmt.Errorf("read page %d: %w", id, err)
	}
	if got := ne.Uint64(hdr); got != id {
		return nil, w.damaged(id, "it says it is page %d", got)
	}
	overflow := uint64(ne.Uint32(hdr[12:]))
	if id+overflow >= w.hwm {
		return nil, w.damaged(id, "its %d overflow pages run past the %d pages of the commit", overflow, w.hwm)
	}
	for p := id; p <= id+overflow; p++ {
		switch {
		case w.used[p]:
			return nil, w.damaged(id, "page %d is referenced twice", p)
		case w.free[p]:
			return nil, w.damaged(id, "page %d is in use but listed as free", p)
		}
		w.used[p] = true
	}
	if overflow == 0 {
		return hdr, nil
	}
	buf := make([]byte, (overflow+1)*uint64(w.ps))
	if _, err := w.r.ReadAt(buf, int64(id)*int64(w.ps)); err != nil {
		return nil, fmt.Errorf("read page %d: %w", id, err)
	}
	return buf, nil
}

func (w *walker) freelist(id uint64) error {
	buf, err := w.page(id, "the meta page's freelist")
	if err != nil {
		return err
	}
	if f := ne.Uint16(buf[8:]); f != freelistPageFlag {
		return w.damaged(id, "page type 0x%02x, but the meta page says it is the freelist", f)
	}
	start, count := uint64(pageHeaderSize), uint64(ne.Uint16(buf[10:]))
	if count == 0xFFFF {
		count = ne.Uint64(buf[pageHeaderSize:])
		start += 8
	}
	if count > (uint64(len(buf))-start)/8 {
		return w.damaged(id, "its %d free page numbers do not fit in it", count)
	}
	for i := range count {
		p := ne.Uint64(buf[start+8*i:])
		switch {
		case p < 2 || p >= w.hwm:
			return w.damaged(id, "it lists page %d as free, outside the %d pages of the commit", p, w.hwm)
		case w.free[p]:
			return w.damaged(id, "it lists page %d as free twice", p)
		case w.used[p]:
			return w.damaged(id, "it lists page %d, which is in use, as free", p)
		}
		w.free[p] = true
		w.nfree++
	}
	return nil
}

// tree checks the b+tree under page id, whose keys must lie in [lo, hi)
// (nil: unbounded), and the buckets it holds.
func (w *walker) tree(id uint64, lo, hi []byte) error {
	buf, err := w.page(id, "a bucket or branch")
	if err != nil {
		return err
	}
	switch flags := ne.Uint16(buf[8:]); flags {
	case leafPageFlag:
		return w.leaf(buf, id, lo, hi)
	case branchPageFlag:
	default:
		return w.damaged(id, "unknown page type 0x%02x (want a branch or leaf page)", flags)
	}
	count := int(ne.Uint16(buf[10:]))
	if count == 0 {
		return w.damaged(id, "a branch page with no elements")
	}
	if pageHeaderSize+count*elementSize > len(buf) {
		return w.damaged(id, "its %d elements do not fit in it", count)
	}
	keys := make([][]byte, count)
	children := make([]uint64, count)
	for i := range count {
		off := pageHeaderSize + i*elementSize
		k, err := slice(buf, off, ne.Uint32(buf[off:]), ne.Uint32(buf[off+4:]))
		if err != nil {
			return w.damaged(id, "key %d %v", i, err)
		}
		if err := keyOrder(k, i, keys, lo, hi); err != nil {
			return w.damaged(id, "key %d %v", i, err)
		}
		keys[i], children[i] = k, ne.Uint64(buf[off+8:])
	}
	for i, child := range children {
		next := hi
		if i+1 < count {
			next = keys[i+1]
		}
		if err := w.tree(child, keys[i], next); err != nil {
			return err
		}
	}
	return nil
}

// leaf checks a leaf page (or an inline bucket's page, id being the page
// that holds it) and the buckets it holds.
func (w *walker) leaf(buf []byte, id uint64, lo, hi []byte) error {
	count := int(ne.Uint16(buf[10:]))
	if pageHeaderSize+count*elementSize > len(buf) {
		return w.damaged(id, "its %d elements do not fit in it", count)
	}
	keys := make([][]byte, count)
	for i := range count {
		off := pageHeaderSize + i*elementSize
		flags, pos, ksize, vsize := ne.Uint32(buf[off:]), ne.Uint32(buf[off+4:]), ne.Uint32(buf[off+8:]), ne.Uint32(buf[off+12:])
		if flags&^bucketLeafFlag != 0 {
			return w.damaged(id, "element %d has unknown flags 0x%x", i, flags)
		}
		kv, err := slice(buf, off, pos, ksize+vsize)
		if err != nil || ksize+vsize < ksize {
			return w.damaged(id, "element %d runs past the end of the page", i)
		}
		k, v := kv[:ksize], kv[ksize:]
		if err := keyOrder(k, i, keys, lo, hi); err != nil {
			return w.damaged(id, "key %d %v", i, err)
		}
		keys[i] = k
		if flags&bucketLeafFlag == 0 {
			continue
		}
		if len(v) < inBucketSize {
			return w.damaged(id, "bucket %q has a %d-byte header, want %d", k, len(v), inBucketSize)
		}
		if root := ne.Uint64(v); root != 0 {
			if err := w.tree(root, nil, nil); err != nil {
				return err
			}
			continue
		}
		inline := v[inBucketSize:]
		if len(inline) < pageHeaderSize || ne.Uint16(inline[8:]) != leafPageFlag {
			return w.damaged(id, "inline bucket %q is not a leaf page", k)
		}
		if err := w.leaf(inline, id, nil, nil); err != nil {
			return err
		}
	}
	return nil
}

// slice returns the n bytes at off+pos of buf, where off is an element's
// offset and pos is relative to it, as bbolt stores them.
func slice(buf []byte, off int, pos, n uint32) ([]byte, error) {
	start := uint64(off) + uint64(pos)
	end := start + uint64(n)
	if end > uint64(len(buf)) {
		return nil, errors.New("runs past the end of the page")
	}
	return buf[start:end], nil
}

// keyOrder checks that key i sorts after the keys before it and within
// [lo, hi).
func keyOrder(k []byte, i int, prev [][]byte, lo, hi []byte) error {
	switch {
	case i > 0 && bytes.Compare(prev[i-1], k) >= 0:
		return errors.New("is out of order")
	case i == 0 && lo != nil && bytes.Compare(k, lo) < 0:
		return errors.New("sorts before its parent's key")
	case hi != nil && bytes.Compare(k, hi) >= 0:
		return errors.New("sorts after the next key of its parent")
	}
	return nil
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// checkFile checks the database at path: verifyFile, then bbolt's own
// Tx.Check and a read of every record on a read-only open (which takes a
// shared lock: it fails with errInUse after timeout if a process has the
// file open read-write). It never writes to the file.
func checkFile(path string, timeout time.Duration) (*dbFile, error) {
	info, err := verifyFile(path)
	if err != nil {
		return nil, err
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: timeout})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, errLocked
	}
	if err != nil {
		return nil, &DamageError{Path: path, Page: -1, Problem: "bbolt cannot open it: " + err.Error()}
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		var first error
		for err := range tx.Check() { // drain, so the checking goroutine ends
			if first == nil {
				first = err
			}
		}
		if first != nil {
			return &DamageError{Path: path, Page: -1, Problem: "bbolt's check failed: " + first.Error()}
		}
		return safely(func() error { return checkContent(tx) })
	})
	if err != nil {
		var d *DamageError
		if !errors.As(err, &d) {
			err = &DamageError{Path: path, Page: -1, Problem: err.Error()}
		}
		return nil, err
	}
	return info, nil
}

// errLocked means a read-only open timed out on bbolt's file lock.
var errLocked = errors.New("registry database is locked by a running process")

// safely runs f, turning a panic or a memory fault (a damaged mapping)
// into an error.
func safely(f func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("reading it failed: %v", r)
		}
	}()
	return f()
}

// checkContent reads what the registry stores, in a database that passed
// the page checks: every record decodes and names its key, every size is
// 8 bytes, kv holds only buckets and every gc entry decodes. A database
// with no buckets at all (created, never initialized) passes.
func checkContent(tx *bolt.Tx) error {
	if tx.Bucket(bucketMeta) == nil {
		var names []string
		_ = tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
			names = append(names, string(name))
			return nil
		})
		if len(names) > 0 {
			return fmt.Errorf("bucket %q is missing but %q exist", bucketMeta, names)
		}
		return nil
	}
	for _, name := range [][]byte{bucketPlugins, bucketKV, bucketKVSize} {
		if tx.Bucket(name) == nil {
			return fmt.Errorf("bucket %q is missing", name)
		}
	}
	if err := tx.Bucket(bucketPlugins).ForEach(func(k, v []byte) error {
		var rec Record
		if err := json.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("the record of plugin %q is unreadable: %v", k, err)
		}
		if rec.Name != string(k) {
			return fmt.Errorf("the record of plugin %q names plugin %q", k, rec.Name)
		}
		return nil
	}); err != nil {
		return err
	}
	if err := tx.Bucket(bucketKVSize).ForEach(func(k, v []byte) error {
		if len(v) != 8 {
			return fmt.Errorf("the key-value size of plugin %q is %d bytes, want 8", k, len(v))
		}
		return nil
	}); err != nil {
		return err
	}
	if err := tx.Bucket(bucketKV).ForEach(func(k, v []byte) error {
		if v != nil {
			return fmt.Errorf("bucket kv holds a value under %q, want only buckets", k)
		}
		return nil
	}); err != nil {
		return err
	}
	if err := checkKept(tx); err != nil {
		return err
	}
	if b := tx.Bucket(bucketGC); b != nil {
		return b.ForEach(func(k, v []byte) error {
			var e gcEntry
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("gc entry %q is unreadable: %v", k, err)
			}
			return nil
		})
	}
	return nil
}
