package registry

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Backups are backup/registry.db.<generation>: consistent copies of the
// database (bbolt's Tx.WriteTo), written to a temporary file, fsynced,
// checked with verifyFile and renamed into place. Generations only grow:
// the next is one more than the newest file's.
const (
	backupPrefix    = dbFileName + "."
	backupTmpPrefix = ".registry.db.tmp-"
)

// backupFile is one backup in backup/.
type backupFile struct {
	gen  uint64
	path string
	mod  time.Time
}

// listBackups returns the backups of the state directory, newest first.
func listBackups(stateDir string) ([]backupFile, error) {
	dir := filepath.Join(stateDir, backupDir)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var list []backupFile
	for _, e := range entries {
		gen, err := strconv.ParseUint(strings.TrimPrefix(e.Name(), backupPrefix), 10, 64)
		if !strings.HasPrefix(e.Name(), backupPrefix) || err != nil || !e.Type().IsRegular() {
			continue
		}
		b := backupFile{gen: gen, path: filepath.Join(dir, e.Name())}
		if fi, err := e.Info(); err == nil {
			b.mod = fi.ModTime()
		}
		list = append(list, b)
	}
	slices.SortFunc(list, func(a, b backupFile) int { return -cmpUint(a.gen, b.gen) })
	return list, nil
}

// Backup writes a consistent copy of the database to
// backup/registry.db.<generation> now, deletes the oldest backups beyond
// Options.KeepBackups, deletes plugin directories only the deleted
// backups referred to, and returns the new backup's path. Backups are also
// taken on a schedule (Options.BackupInterval), before every replace of a
// plugin and before a schema migration.
func (s *Store) Backup() (string, error) {
	path, err := s.backup(true)
	if err != nil {
		return "", fmt.Errorf("back up the registry in %s: %w", s.dir, err)
	}
	return path, nil
}

// backup takes a backup; unless force, only when something was committed
// since this process's last backup ("" then).
func (s *Store) backup(force bool) (string, error) {
	s.maint.Lock()
	defer s.maint.Unlock()
	s.snap.Lock()
	tx, err := s.db.Begin(false)
	if err != nil {
		s.snap.Unlock()
		return "", err
	}
	defer tx.Rollback()
	if !force && tx.ID() == s.lastBackupTx {
		s.snap.Unlock()
		return "", nil
	}
	s.gen++
	gen := s.gen
	s.snap.Unlock()

	path, err := s.writeBackup(tx, gen)
	if err != nil {
		return "", err
	}
	s.lastBackupTx = tx.ID()
	tx.Rollback() // before collecting, which commits
	if err := s.rotateLocked(); err != nil {
		return path, err
	}
	return path, s.collectLocked(false)
}

func (s *Store) writeBackup(tx *bolt.Tx, gen uint64) (path string, err error) {
	dir := filepath.Join(s.dir, backupDir)
	f, err := os.CreateTemp(dir, backupTmpPrefix+"*")
	if err != nil {
		return "", err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err := tx.WriteTo(f); err != nil {
		return "", fmt.Errorf("write %s: %w", f.Name(), err)
	}
	if err := f.Sync(); err != nil {
		return "", fmt.Errorf("sync %s: %w", f.Name(), err)
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	if _, err := verifyFile(f.Name()); err != nil {
		return "", fmt.Errorf("the copy of the database fails its check, so it was not kept as a backup (the older backups were kept): %w", err)
	}
	path = filepath.Join(dir, backupPrefix+strconv.FormatUint(gen, 10))
	if err := os.Rename(f.Name(), path); err != nil {
		return "", err
	}
	return path, syncDir(dir)
}

// rotateLocked deletes the backups beyond the newest KeepBackups.
func (s *Store) rotateLocked() error {
	list, err := listBackups(s.dir)
	if err != nil || len(list) <= s.opt.KeepBackups {
		return err
	}
	for _, b := range list[s.opt.KeepBackups:] {
		if err := os.Remove(b.path); err != nil {
			return err
		}
	}
	return syncDir(filepath.Join(s.dir, backupDir))
}

func (s *Store) backupLoop(every time.Duration) {
	defer s.loopDone.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			if _, err := s.backup(false); err != nil {
				s.log.Error("scheduled backup of the registry failed", "state", s.dir, "err", err)
			}
		}
	}
}

// copyToTemp copies the file src to a new temporary file in dir, fsynced,
// and returns its name.
func copyToTemp(src, dir, pattern string) (name string, err error) {
	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	out, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return "", err
	}
	defer func() {
		if err != nil {
			out.Close()
			os.Remove(out.Name())
		}
	}()
	if _, err := out.ReadFrom(in); err != nil {
		return "", err
	}
	if err := out.Sync(); err != nil {
		return "", err
	}
	return out.Name(), out.Close()
}
