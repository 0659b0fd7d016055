package registry

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	bolt "go.etcd.io/bbolt"
)

// Maintenance of a state directory while no daemon has it open:
// CheckState, RestoreState and CompactState, behind `dimplugd state check`,
// `restore` and `compact`. Each takes the state directory's lock first and
// fails with ErrInUse while a daemon holds it.

// Auto-compaction at Open: a database over compactMinSize whose free pages
// are more than half of its pages is rewritten (see shouldCompact).
const compactMinSize = 1 << 20

// compactTxSize bounds each transaction of a compaction.
const compactTxSize = 16 << 20

// shouldCompact says whether Open compacts a database: when it is larger
// than 1 MiB and more than half of its pages below the high-water mark
// are free (say a plugin that filled its key-value store was removed).
// Only free pages count, not the room bbolt preallocates at the end of the
// file, so a compacted file is never compacted again at the next start.
func shouldCompact(f *dbFile) bool {
	return f.size > compactMinSize && uint64(f.freePages)*2 > f.hwm
}

// compactFile rewrites the checked database at path with bbolt.Compact
// into a temporary file next to it, checks the copy, fsyncs it and renames
// it over path. It returns the sizes before and after.
func compactFile(path string) (before, after int64, err error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, 0, err
	}
	tmp, err := compactTo(path, filepath.Dir(path))
	if err != nil {
		return 0, 0, err
	}
	if err := replaceFile(tmp, path); err != nil {
		os.Remove(tmp)
		return 0, 0, err
	}
	nfi, err := os.Stat(path)
	if err != nil {
		return 0, 0, err
	}
	return fi.Size(), nfi.Size(), nil
}

// compactTo writes a compacted copy of the database src into a new
// temporary file in dir, checks it and returns its name.
func compactTo(src, dir string) (name string, err error) {
	in, err := bolt.Open(src, 0o600, &bolt.Options{ReadOnly: true, Timeout: lockTimeout})
	if err != nil {
		return "", err
	}
	defer in.Close()
	f, err := os.CreateTemp(dir, ".registry.db.compact-*")
	if err != nil {
		return "", err
	}
	name = f.Name()
	f.Close()
	defer func() {
		if err != nil {
			os.Remove(name)
		}
	}()
	out, err := bolt.Open(name, 0o600, &bolt.Options{Timeout: lockTimeout})
	if err != nil {
		return "", err
	}
	if err := bolt.Compact(out, in, compactTxSize); err != nil {
		out.Close()
		return "", err
	}
	if err := out.Close(); err != nil {
		return "", err
	}
	if _, err := checkFile(name, lockTimeout); err != nil {
		return "", fmt.Errorf("the compacted copy fails its check: %w", err)
	}
	return name, nil
}

// replaceFile renames the fsynced file tmp over path and makes the
// rename durable.
func replaceFile(tmp, path string) error {
	if err := syncFile(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

func syncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// refusal turns the damage Open found into an error for the operator: what
// is wrong, that nothing was changed, and how to get back.
func refusal(stateDir string, err error) error {
	var d *DamageError
	if !errors.As(err, &d) {
		return fmt.Errorf("check registry database in %s: %w", stateDir, err)
	}
	var b strings.Builder
	b.WriteString(d.Error())
	b.WriteString("\n  dimplugd did not start, so that nothing more is lost; the file is unchanged.")
	fmt.Fprintf(&b, "\n  Run `dimplugd state check --state-dir %s` for details, then", stateDir)
	b.WriteString(restoreAdvice(stateDir, d.OlderIntact))
	return &classedError{msg: b.String(), sentinel: ErrDamaged, err: err}
}

// restoreAdvice tells how to restore the state directory: from the newest
// good backup, from the older commit, or from a copy the operator kept.
func restoreAdvice(stateDir string, olderIntact bool) string {
	var b strings.Builder
	if good, ok := newestGoodBackup(stateDir); ok {
		fmt.Fprintf(&b, "\n  `dimplugd state restore --state-dir %s` to go back to the last good backup (%s, taken %s)",
			stateDir, good.path, good.mod.UTC().Format(time.DateTime+" MST"))
	} else {
		fmt.Fprintf(&b, "\n  `dimplugd state restore --from FILE --state-dir %s` to restore a copy of registry.db you kept (there is no good backup in %s)",
			stateDir, filepath.Join(stateDir, backupDir))
	}
	if olderIntact {
		fmt.Fprintf(&b, ",\n  or `dimplugd state restore --accept-older --state-dir %s` to rebuild it from the commit before the damaged one (the newest acknowledged change may be lost)",
			stateDir)
	}
	b.WriteString(".")
	return b.String()
}

// newestGoodBackup returns the newest backup that passes checkFile.
func newestGoodBackup(stateDir string) (backupFile, bool) {
	list, _ := listBackups(stateDir)
	for _, b := range list {
		if _, err := checkFile(b.path, lockTimeout); err == nil {
			return b, true
		}
	}
	return backupFile{}, false
}

// refuseMissing refuses to create a new registry.db in a state directory
// that shows a registry existed: plugin directories or backups.
func refuseMissing(stateDir string) error {
	plugins, _ := os.ReadDir(filepath.Join(stateDir, pluginsDir))
	backups, _ := listBackups(stateDir)
	if len(plugins) == 0 && len(backups) == 0 {
		return nil
	}
	var what []string
	if len(plugins) > 0 {
		what = append(what, fmt.Sprintf("plugins/ holds %d plugin directories", len(plugins)))
	}
	if len(backups) > 0 {
		what = append(what, fmt.Sprintf("backup/ holds %d backups", len(backups)))
	}
	path := filepath.Join(stateDir, dbFileName)
	msg := fmt.Sprintf("registry database %s is missing, but %s: it was deleted or moved"+
		"\n  dimplugd did not start, so that nothing is lost. Run%s\n  To start with no plugins instead, move plugins/ and backup/ out of %s.",
		path, strings.Join(what, " and "), restoreAdvice(stateDir, false), stateDir)
	return &classedError{msg: msg, sentinel: ErrDamaged}
}

// lockForMaintenance takes the state directory's lock for a state
// subcommand, refusing at once if a daemon holds it.
func lockForMaintenance(stateDir string) (string, *os.File, error) {
	dir, err := filepath.Abs(stateDir)
	if err != nil {
		return "", nil, err
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return "", nil, &classedError{sentinel: ErrNotFound, msg: fmt.Sprintf("state directory %s does not exist", dir), err: err}
	}
	lock, err := lockState(dir, 0)
	if errors.Is(err, errLocked) {
		return "", nil, inUseByDaemon(dir)
	}
	if err != nil {
		return "", nil, fmt.Errorf("lock state directory %s: %w", dir, err)
	}
	return dir, lock, nil
}

func inUseByDaemon(dir string) error {
	return &classedError{sentinel: ErrInUse, msg: fmt.Sprintf("state directory %s is in use by a running dimplugd: stop dimplugd first", dir)}
}

// FileCheck is the result of checking one database file.
type FileCheck struct {
	// Path is the file.
	Path string
	// Size is its size in bytes.
	Size int64
	// ModTime is when it was last written.
	ModTime time.Time
	// Err is nil if the file passed, else what is wrong (a *DamageError
	// for damage).
	Err error
	// Pages, FreePages and Txid describe a file that passed: its pages
	// below the high-water mark, how many of them are free, and its
	// newest commit.
	Pages, FreePages int
	Txid             uint64
	// Plugins is the number of installed plugins it records.
	Plugins int
}

// Slated is a plugin directory the registry slated for deletion.
type Slated struct {
	// Dir is the directory, relative to the state directory.
	Dir string
	// Why is "install" (an install that never committed), "replaced" or
	// "removed".
	Why string
	// Plugin is the plugin it belonged to.
	Plugin string
	// KeptFor lists the backups that may still refer to it; it is deleted
	// once they are rotated out.
	KeptFor []string
}

// CheckReport is what CheckState found.
type CheckReport struct {
	// StateDir is the absolute state directory.
	StateDir string
	// DB is registry.db. A missing file is not an error in a new state
	// directory (DB.Err nil, DB.Size -1).
	DB FileCheck
	// Backups are the files in backup/, newest first.
	Backups []FileCheck
	// InUse lists the plugin directories records refer to.
	InUse []string
	// Slated lists directories slated for deletion.
	Slated []Slated
	// Unreferenced lists entries of plugins/ that neither a record nor the
	// gc bucket names: the next start moves them to lost+found/.
	Unreferenced []string
	// LostFound lists what is in lost+found/.
	LostFound []string
	// Missing lists records whose directory is missing: "plugin: dir".
	Missing []string
	// Kept lists the data kept of plugins uninstalled without purge: not
	// damage, kept on purpose until a reinstall or a purge.
	Kept []KeptData
	// Staging lists leftovers in staging/, which the next start deletes.
	Staging []string
	// Restore says how to restore registry.db when it is damaged or
	// missing: the `dimplugd state restore` commands that apply (the
	// newest good backup, --accept-older, --from FILE), one per line.
	// It is empty when registry.db passed or is new.
	Restore string
}

// Damaged says whether the check found damage: registry.db or a backup
// fails its checks, or a plugin's files are missing.
func (r *CheckReport) Damaged() bool {
	if r.DB.Err != nil || len(r.Missing) > 0 {
		return true
	}
	return slices.ContainsFunc(r.Backups, func(b FileCheck) bool { return b.Err != nil })
}

// CheckState checks the state directory of a stopped daemon without
// changing anything: registry.db gets the checks Open makes (verifyFile's
// page walk, bbolt's Tx.Check and a read of every record), so do the
// backups; then it compares plugins/ with the records and the gc bucket.
// It fails with ErrInUse if a daemon holds the directory; damage is in the
// report, not the error.
func CheckState(stateDir string) (*CheckReport, error) {
	dir, lock, err := lockForMaintenance(stateDir)
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	path := filepath.Join(dir, dbFileName)
	r := &CheckReport{StateDir: dir}
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		r.DB = FileCheck{Path: path, Size: -1, Err: refuseMissing(dir)}
	} else if r.DB, err = checkOne(path, dir); err != nil {
		return nil, err
	}
	backups, err := listBackups(dir)
	if err != nil {
		return nil, err
	}
	for _, b := range backups {
		fc, err := checkOne(b.path, dir)
		if err != nil {
			return nil, err
		}
		r.Backups = append(r.Backups, fc)
	}
	if errors.Is(r.DB.Err, ErrDamaged) {
		var d *DamageError
		olderIntact := errors.As(r.DB.Err, &d) && d.OlderIntact
		r.Restore = strings.TrimLeft(restoreAdvice(dir, olderIntact), "\n ")
	}
	r.LostFound = dirNames(filepath.Join(dir, lostDir))
	r.Staging = dirNames(filepath.Join(dir, stagingDir))
	if r.DB.Err != nil || r.DB.Size < 0 {
		r.Unreferenced = prefixed(pluginsDir+"/", dirNames(filepath.Join(dir, pluginsDir)))
		return r, nil
	}
	return r, compareDirs(r, dir, backups)
}

// checkOne checks one database file for CheckState.
func checkOne(path, stateDir string) (FileCheck, error) {
	fc := FileCheck{Path: path}
	if fi, err := os.Stat(path); err == nil {
		fc.Size, fc.ModTime = fi.Size(), fi.ModTime()
	}
	info, err := checkFile(path, 0)
	if errors.Is(err, errLocked) {
		return fc, inUseByDaemon(stateDir)
	}
	if fc.Err = err; err != nil {
		return fc, nil
	}
	fc.Pages, fc.FreePages, fc.Txid = int(info.hwm), info.freePages, info.txid
	fc.Plugins, fc.Err = countPlugins(path)
	return fc, nil
}

func countPlugins(path string) (int, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: lockTimeout})
	if err != nil {
		return 0, err
	}
	defer db.Close()
	n := 0
	err = db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketPlugins); b != nil {
			n = b.Stats().KeyN
		}
		return nil
	})
	return n, err
}

// compareDirs fills the directory part of a report on a healthy registry.
func compareDirs(r *CheckReport, dir string, backups []backupFile) error {
	db, err := bolt.Open(filepath.Join(dir, dbFileName), 0o600, &bolt.Options{ReadOnly: true, Timeout: lockTimeout})
	if err != nil {
		return err
	}
	defer db.Close()
	s := &Store{dir: dir}
	var refs map[string]string
	var gc map[string]gcEntry
	var recs []Record
	err = db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketPlugins) == nil {
			return nil // created, never initialized
		}
		if refs, gc, err = s.referenced(tx); err != nil {
			return err
		}
		r.Kept = keptListTx(tx)
		return tx.Bucket(bucketPlugins).ForEach(func(k, v []byte) error {
			rec, err := s.decodeRecord(string(k), v)
			recs = append(recs, rec)
			return err
		})
	})
	if err != nil {
		return err
	}
	for key := range refs {
		r.InUse = append(r.InUse, key)
	}
	slices.Sort(r.InUse)
	for key, e := range gc {
		sl := Slated{Dir: key, Why: e.Why, Plugin: e.Plugin}
		for _, b := range backups {
			if e.Why != gcInstall && b.gen <= e.Gen {
				sl.KeptFor = append(sl.KeptFor, filepath.Base(b.path))
			}
		}
		r.Slated = append(r.Slated, sl)
	}
	slices.SortFunc(r.Slated, func(a, b Slated) int { return strings.Compare(a.Dir, b.Dir) })
	for _, name := range dirNames(filepath.Join(dir, pluginsDir)) {
		key := pluginsDir + "/" + name
		if _, slated := gc[key]; refs[key] == "" && !slated {
			r.Unreferenced = append(r.Unreferenced, key)
		}
	}
	for _, rec := range recs {
		if _, err := os.Stat(rec.Dir); err != nil {
			rel, _ := filepath.Rel(dir, rec.Dir)
			r.Missing = append(r.Missing, fmt.Sprintf("%s: %s", rec.Name, filepath.ToSlash(rel)))
		}
	}
	return nil
}

func dirNames(dir string) []string {
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func prefixed(prefix string, names []string) []string {
	for i := range names {
		names[i] = prefix + names[i]
	}
	return names
}

// RestoreOptions choose what RestoreState restores.
type RestoreOptions struct {
	// From is a database file to restore (a backup the operator kept);
	// empty means the newest backup in backup/ that passes its checks.
	From string
	// AcceptOlder rebuilds registry.db from the older of its two commits,
	// when the newest is damaged (DamageError.OlderIntact): the newest
	// acknowledged change may be lost.
	AcceptOlder bool
	// Force restores even though registry.db passes its checks, which
	// loses every change made since the restored copy.
	Force bool
}

// Restored says what RestoreState did.
type Restored struct {
	// From is the file restored, or "older commit of <path>".
	From string
	// KeptAs is where the previous registry.db was kept, "" if there was
	// none.
	KeptAs string
	// Problem is what was wrong with the previous registry.db, "" if it
	// was healthy or missing.
	Problem string
}

// RestoreState replaces registry.db of a stopped daemon's state directory
// with a good copy: the newest backup that passes its checks, opt.From,
// or (opt.AcceptOlder) a rebuild from its own older commit. The copy is
// checked, written next to it, fsynced and renamed into place; the
// previous file is kept as registry.db.damaged-<time> (or
// registry.db.replaced-<time> when it was healthy), never deleted. A
// healthy registry.db is replaced only with opt.Force. It fails with
// ErrInUse if a daemon holds the directory, and ErrNotFound if there is no
// good copy.
func RestoreState(stateDir string, opt RestoreOptions) (Restored, error) {
	dir, lock, err := lockForMaintenance(stateDir)
	if err != nil {
		return Restored{}, err
	}
	defer lock.Close()
	path := filepath.Join(dir, dbFileName)
	var res Restored
	_, statErr := os.Stat(path)
	exists := statErr == nil
	var damage *DamageError
	if exists {
		_, err := checkFile(path, 0)
		switch {
		case errors.Is(err, errLocked):
			return res, inUseByDaemon(dir)
		case errors.As(err, &damage):
			res.Problem = damage.Problem
		case err != nil:
			return res, err
		case !opt.Force:
			return res, &classedError{sentinel: errdefs.ErrConflict, msg: fmt.Sprintf(
				"registry database %s passes its checks: restoring would lose every change since the copy; pass --force to restore anyway", path)}
		}
	}
	var tmp string
	switch {
	case opt.AcceptOlder:
		if damage == nil || !damage.OlderIntact {
			return res, &classedError{sentinel: ErrNotFound, msg: fmt.Sprintf(
				"registry database %s has no intact older commit to rebuild from%s", path, problemSuffix(damage))}
		}
		res.From = "older commit of " + path
		tmp, err = rebuildOlder(path, dir)
	case opt.From != "":
		if _, err := checkFile(opt.From, lockTimeout); err != nil {
			return res, fmt.Errorf("cannot restore %s: %w", opt.From, err)
		}
		res.From = opt.From
		tmp, err = copyToTemp(opt.From, dir, ".registry.db.restore-*")
	default:
		good, ok := newestGoodBackup(dir)
		if !ok {
			return res, &classedError{sentinel: ErrNotFound, msg: fmt.Sprintf(
				"there is no good backup in %s: pass --from FILE to restore a copy you kept%s",
				filepath.Join(dir, backupDir), olderHint(damage))}
		}
		res.From = good.path
		tmp, err = copyToTemp(good.path, dir, ".registry.db.restore-*")
	}
	if err != nil {
		return res, fmt.Errorf("restore registry database: %w", err)
	}
	if _, err := checkFile(tmp, lockTimeout); err != nil {
		os.Remove(tmp)
		return res, fmt.Errorf("restore registry database: the copy fails its check: %w", err)
	}
	if exists {
		kind := "replaced"
		if damage != nil {
			kind = "damaged"
		}
		res.KeptAs = fmt.Sprintf("%s.%s-%s", path, kind, now().Format("20060102T150405Z"))
		// A hard link keeps the old file under its new name while the
		// rename below replaces registry.db atomically.
		if err := os.Link(path, res.KeptAs); err != nil {
			os.Remove(tmp)
			return res, fmt.Errorf("keep %s aside: %w", path, err)
		}
	}
	if err := replaceFile(tmp, path); err != nil {
		os.Remove(tmp)
		return res, fmt.Errorf("restore registry database: %w", err)
	}
	return res, nil
}

func problemSuffix(d *DamageError) string {
	if d == nil {
		return ""
	}
	return " (" + d.Problem + ")"
}

func olderHint(d *DamageError) string {
	if d == nil || !d.OlderIntact {
		return ""
	}
	return ", or --accept-older to rebuild registry.db from its older commit"
}

// rebuildOlder writes a compacted database from the older commit of the
// damaged file at path: a copy of the file with the newest meta page
// zeroed, so bbolt falls back to the other one, compacted into a new
// temporary file. The damaged file is only read.
func rebuildOlder(path, dir string) (string, error) {
	ps, metas, err := readMetas(path)
	if err != nil {
		return "", err
	}
	// The commit to keep: the intact meta page, or the older of two.
	keep := 0
	switch {
	case !metas[0].checksumOK || !metas[0].inSize:
		keep = 1
	case !metas[1].checksumOK || !metas[1].inSize:
		keep = 0
	case metas[1].txid < metas[0].txid:
		keep = 1
	}
	cp, err := copyToTemp(path, dir, ".registry.db.older-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(cp)
	w, err := os.OpenFile(cp, os.O_RDWR, 0)
	if err != nil {
		return "", err
	}
	_, err = w.WriteAt(make([]byte, ps), int64((1-keep)*ps))
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", err
	}
	// The copy's older commit must pass the walk before bbolt reads it;
	// pages of the lost commit count as neither used nor free there, so
	// the strict check is left to the compacted result.
	if _, err := walkMeta(cp, keep); err != nil {
		return "", err
	}
	return compactTo(cp, dir)
}

// Compacted says what CompactState did.
type Compacted struct {
	// Path is the database compacted.
	Path string
	// Before and After are its sizes in bytes.
	Before, After int64
}

// CompactState rewrites registry.db of a stopped daemon's state directory
// without its free pages, whatever their share (Open compacts only a
// mostly free database). The file is checked first and a damaged one is
// refused unchanged (ErrDamaged, saying how to restore it); the compacted
// copy is checked, fsynced and renamed over it. It fails with ErrInUse if
// a daemon holds the directory, and ErrNotFound if there is no
// registry.db.
func CompactState(stateDir string) (Compacted, error) {
	dir, lock, err := lockForMaintenance(stateDir)
	if err != nil {
		return Compacted{}, err
	}
	defer lock.Close()
	path := filepath.Join(dir, dbFileName)
	res := Compacted{Path: path}
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return res, &classedError{sentinel: ErrNotFound, err: err, msg: fmt.Sprintf(
			"registry database %s does not exist: there is nothing to compact (`dimplugd state check --state-dir %s` tells whether one should be there)",
			path, dir)}
	}
	_, err = checkFile(path, 0)
	var d *DamageError
	switch {
	case errors.Is(err, errLocked):
		return res, inUseByDaemon(dir)
	case errors.As(err, &d):
		return res, &classedError{sentinel: ErrDamaged, err: err, msg: d.Error() +
			"\n  Nothing was compacted; the file is unchanged. Restore it first: run" + restoreAdvice(dir, d.OlderIntact)}
	case err != nil:
		return res, fmt.Errorf("check registry database %s: %w", path, err)
	}
	if res.Before, res.After, err = compactFile(path); err != nil {
		return res, fmt.Errorf("compact registry database %s: %w", path, err)
	}
	return res, nil
}
