package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Why a directory is in the gc bucket.
const (
	// gcInstall: an install in progress wrote the intent before moving its
	// directory into plugins/, and the commit of its record deletes it.
	// Found at Open, the install never committed.
	gcInstall = "install"
	// gcReplaced and gcRemoved: the commit that unreferenced the directory
	// slated it.
	gcReplaced = "replaced"
	gcRemoved  = "removed"
)

// gcEntry is the value of a gc bucket entry; its key is the directory
// relative to the state directory ("plugins/<name>-<random>").
type gcEntry struct {
	Why    string `json:"why"`
	Plugin string `json:"plugin"`
	// Gen is the generation of the newest backup when the directory was
	// unreferenced: backups up to it may refer to it, so it is kept while
	// any of them is. Unused for gcInstall (no backup ever sees an
	// install in progress).
	Gen uint64    `json:"gen,omitempty"`
	At  time.Time `json:"at"`
}

// slate records in tx that the plugin directory dir is garbage. A
// directory outside plugins/ is never slated, so a damaged record cannot
// make the store delete anything else.
func (s *Store) slate(tx *bolt.Tx, dir string, e gcEntry) error {
	if !s.ownsDir(dir) {
		return nil
	}
	e.At = now()
	data, err := json.Marshal(e)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketGC).Put([]byte(pluginsDir+"/"+filepath.Base(dir)), data)
}

// gcPath returns the directory a gc key names, if it is a directory
// directly in plugins/.
func (s *Store) gcPath(key string) (string, bool) {
	name, ok := strings.CutPrefix(key, pluginsDir+"/")
	if !ok || name == "" || name == "." || name == ".." || strings.ContainsAny(name, `/\`) {
		return "", false
	}
	return filepath.Join(s.dir, pluginsDir, name), true
}

// referenced returns the plugin directories records refer to, relative to
// the state directory, and the gc entries.
func (s *Store) referenced(tx *bolt.Tx) (refs map[string]string, gc map[string]gcEntry, err error) {
	refs, gc = map[string]string{}, map[string]gcEntry{}
	err = tx.Bucket(bucketPlugins).ForEach(func(k, v []byte) error {
		rec, err := s.decodeRecord(string(k), v)
		if err != nil {
			return err
		}
		if s.ownsDir(rec.Dir) {
			refs[pluginsDir+"/"+filepath.Base(rec.Dir)] = rec.Name
		}
		return nil
	})
	if err == nil {
		err = s.previousDirs(tx, refs)
	}
	if err != nil {
		return nil, nil, err
	}
	if b := tx.Bucket(bucketGC); b != nil {
		err = b.ForEach(func(k, v []byte) error {
			var e gcEntry
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("read gc entry %q: %w", k, err)
			}
			gc[string(k)] = e
			return nil
		})
	}
	return refs, gc, err
}

// collect deletes the slated directories nothing needs any more.
func (s *Store) collect() {
	s.maint.Lock()
	defer s.maint.Unlock()
	if err := s.collectLocked(false); err != nil {
		s.log.Warn("deleting the files of replaced or removed plugins failed; the next start retries", "state", s.dir, "err", err)
	}
}

// collectLocked deletes each directory of the gc bucket that no record
// refers to and no kept backup may refer to (every backup is newer than
// the entry's generation), then its entry. Install intents are collected
// only atOpen, when no install can be in progress. It deletes nothing
// else.
func (s *Store) collectLocked(atOpen bool) error {
	backups, err := listBackups(s.dir)
	if err != nil {
		return err
	}
	oldest := uint64(math.MaxUint64)
	if len(backups) > 0 {
		oldest = backups[len(backups)-1].gen
	}
	var refs map[string]string
	var gc map[string]gcEntry
	if err := s.db.View(func(tx *bolt.Tx) (err error) {
		refs, gc, err = s.referenced(tx)
		return err
	}); err != nil {
		return err
	}
	var done []string
	var errs []error
	for key, e := range gc {
		path, ok := s.gcPath(key)
		switch {
		case refs[key] != "":
			s.warn("%s was slated for deletion (%s) but plugin %q uses it: kept", key, e.Why, refs[key])
			done = append(done, key)
			continue
		case !ok:
			s.warn("gc entry %q does not name a directory in plugins/: dropped, nothing deleted", key)
			done = append(done, key)
			continue
		case e.Why == gcInstall && !atOpen, e.Why != gcInstall && e.Gen >= oldest:
			continue
		}
		if err := os.RemoveAll(path); err != nil {
			errs = append(errs, err)
			continue
		}
		done = append(done, key)
	}
	if len(done) == 0 {
		return errors.Join(errs...)
	}
	if err := syncDir(filepath.Join(s.dir, pluginsDir)); err != nil {
		errs = append(errs, err)
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketGC)
		for _, key := range done {
			if err := b.Delete([]byte(key)); err != nil {
				return err
			}
		}
		return nil
	})
	return errors.Join(append(errs, err)...)
}

// reconcile brings the state directory in line with the registry at Open:
// it empties staging/ (nothing there was ever committed) and removes
// leftover temporary backups, collects the gc bucket, moves every other
// directory in plugins/ that no record refers to into lost+found/, and
// warns about records whose directory is missing.
func (s *Store) reconcile() error {
	var errs []error
	for _, d := range []string{stagingDir, backupDir} {
		entries, err := os.ReadDir(filepath.Join(s.dir, d))
		if err != nil {
			return fmt.Errorf("clean up state directory: %w", err)
		}
		for _, e := range entries {
			if d == stagingDir || strings.HasPrefix(e.Name(), backupTmpPrefix) {
				errs = append(errs, os.RemoveAll(filepath.Join(s.dir, d, e.Name())))
			}
		}
	}
	s.maint.Lock()
	errs = append(errs, s.collectLocked(true))
	s.maint.Unlock()

	var refs map[string]string
	var gc map[string]gcEntry
	var recs []Record
	if err := s.db.View(func(tx *bolt.Tx) (err error) {
		refs, gc, err = s.referenced(tx)
		return err
	}); err != nil {
		return fmt.Errorf("clean up state directory: %w", err)
	}
	entries, err := os.ReadDir(filepath.Join(s.dir, pluginsDir))
	if err != nil {
		return fmt.Errorf("clean up state directory: %w", err)
	}
	for _, e := range entries {
		key := pluginsDir + "/" + e.Name()
		if _, slated := gc[key]; refs[key] != "" || slated {
			continue
		}
		to, err := s.moveToLostFound(e.Name())
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s.warn("%s is not in the registry (left by a restore, an older dimplugd or by hand): moved to %s; delete it once you are sure it is not needed",
			key, to)
	}
	if recs, err = s.List(); err != nil {
		return err
	}
	for _, r := range recs {
		if _, err := os.Stat(r.Dir); err != nil {
			s.warn("the files of plugin %q are missing (%v): reinstall it, or restore the backup that matches them", r.Name, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("clean up state directory: %w", err)
	}
	return nil
}

// moveToLostFound moves plugins/<name> to lost+found/ and returns where,
// relative to the state directory.
func (s *Store) moveToLostFound(name string) (string, error) {
	lf := filepath.Join(s.dir, lostDir)
	if err := os.MkdirAll(lf, 0o700); err != nil {
		return "", err
	}
	to := name
	if _, err := os.Lstat(filepath.Join(lf, to)); err == nil {
		to = name + "." + now().Format("20060102T150405.000000000Z")
	}
	if err := os.Rename(filepath.Join(s.dir, pluginsDir, name), filepath.Join(lf, to)); err != nil {
		return "", err
	}
	if err := syncDir(lf); err != nil {
		return "", err
	}
	return lostDir + "/" + to, syncDir(filepath.Join(s.dir, pluginsDir))
}
