package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Errors returned by the Store; test for them with errors.Is. Each is also
// of the errdefs class its comment names, which the daemon's faces carry
// to their clients.
var (
	// ErrNotFound means the plugin is not installed (errdefs.ErrNotFound).
	ErrNotFound = errdefs.New(errdefs.ErrNotFound, "not installed")
	// ErrExists means a plugin of that name is installed and the install
	// did not ask to replace it (errdefs.ErrAlreadyExists).
	ErrExists = errdefs.New(errdefs.ErrAlreadyExists, "already installed")
	// ErrInvalid means the input was rejected: an invalid manifest or
	// grant, an unsafe archive entry, or a key or value over its limit.
	// Such errors print their own message, not this one
	// (errdefs.ErrInvalid).
	ErrInvalid = errdefs.New(errdefs.ErrInvalid, "invalid input")
	// ErrDamaged means the registry database fails its checks (see
	// DamageError) or is missing while plugins are installed: the daemon
	// must not start on it until the operator restores a backup or
	// accepts an older commit (errdefs.ErrConflict).
	ErrDamaged = errdefs.New(errdefs.ErrConflict, "registry damaged")
	// ErrInUse means another process holds the state directory's lock
	// (errdefs.ErrUnavailable).
	ErrInUse = errdefs.New(errdefs.ErrUnavailable, "state directory in use")
)

// schemaVersion is the layout version this code reads and writes. Version
// 2 added the gc bucket; Open migrates version 1 after a backup.
const schemaVersion = "2"

const (
	dbFileName  = "registry.db"
	pluginsDir  = "plugins"
	stagingDir  = "staging"
	backupDir   = "backup"
	lostDir     = "lost+found"
	lockTimeout = time.Second
)

// Defaults of Options.
const (
	DefaultBackupInterval = time.Hour
	DefaultKeepBackups    = 3
)

// Options tune OpenWith; the zero value is what Open uses.
type Options struct {
	// BackupInterval is how often the open Store backs up its database,
	// when something changed since its last backup. Zero means
	// DefaultBackupInterval; negative turns scheduled backups off (the
	// backups before a replace or a schema migration are still taken).
	BackupInterval time.Duration
	// KeepBackups is how many backups to keep in backup/; older ones are
	// deleted as new ones are taken. Zero means DefaultKeepBackups.
	KeepBackups int
	// Logger gets warnings: what Open reconciled (directories moved to
	// lost+found/, records whose files are missing) and failed scheduled
	// backups. Nil means slog.Default().
	Logger *slog.Logger
	// CheckFiles, when set, is called on every install with the staged
	// plugin directory and its valid manifest, before anything is
	// committed; an error refuses the install (as ErrInvalid). The daemon
	// checks there that the entrypoint can run in its sandbox.
	CheckFiles func(dir string, m *manifest.Manifest) error
}

func (o Options) withDefaults() Options {
	if o.BackupInterval == 0 {
		o.BackupInterval = DefaultBackupInterval
	}
	if o.KeepBackups <= 0 {
		o.KeepBackups = DefaultKeepBackups
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

var (
	bucketMeta    = []byte("meta")
	bucketPlugins = []byte("plugins")
	bucketKV      = []byte("kv")
	bucketKVSize  = []byte("kvsize")
	bucketGC      = []byte("gc")
	keySchema     = []byte("schema")

	// bucketSettings came after schema version 2 without changing it: it
	// is additive, and code that does not know it ignores it.
	bucketSettings = []byte("settings")
)

// Record is one installed plugin.
type Record struct {
	// Name is the plugin's name, the same as Manifest.Name.
	Name string `json:"name"`
	// Manifest is the manifest of the installed version.
	Manifest manifest.Manifest `json:"manifest"`
	// Dir is the absolute directory holding the installed files. Treat it
	// as read-only; it changes when the plugin is replaced.
	Dir string `json:"dir"`
	// Enabled says whether the daemon should run the plugin.
	Enabled bool `json:"enabled"`
	// Grant is what the operator approved; the sandbox enforces it.
	Grant manifest.Permissions `json:"grant"`
	// Deadlines are the operator's overrides of hook deadlines, by hook
	// name; they survive upgrades for hooks that still exist.
	Deadlines map[string]manifest.Duration `json:"deadlines,omitempty"`
	// InstalledAt is when the plugin was first installed; replacing it
	// keeps the time.
	InstalledAt time.Time `json:"installed_at"`
	// UpdatedAt is when the record last changed.
	UpdatedAt time.Time `json:"updated_at"`
	// Publisher is the trusted key that signed the installed package; nil
	// when it was unsigned or installed from a directory.
	Publisher *TrustedKey `json:"publisher,omitempty"`
	// SHA256 is the hash of the installed package as received (hex);
	// empty when installed from a directory.
	SHA256 string `json:"sha256,omitempty"`
	// KeptData is, on the record an install returns, the data of an
	// earlier install of the name (kept by Uninstall) that the install
	// took over. Not stored.
	KeptData DataUsage `json:"-"`
}

// Store is an open state directory. Close it when done.
type Store struct {
	dir  string // absolute state directory
	db   *bolt.DB
	lock *os.File // holds the state directory's lock
	opt  Options
	log  *slog.Logger

	// snap orders backups against commits that unreference a plugin
	// directory or span an install: those hold it for reading; a backup
	// holds it to take its generation and begin its snapshot, so the
	// generation a gc entry records is exact, and no backup ever holds
	// the intent of an install in progress.
	snap sync.RWMutex
	gen  uint64 // generation of the newest backup, 0 if none; guarded by snap

	// maint serializes backups, their rotation and garbage collection.
	maint        sync.Mutex
	lastBackupTx int // txid the last backup of this process saw; guarded by maint

	warnMu    sync.Mutex
	warnings  []string // what Open reconciled; guarded by warnMu
	stop      chan struct{}
	loopDone  sync.WaitGroup
	closeOnce sync.Once
	closeErr  error

	// failpoint, when set by tests, is called at named points of an
	// install and fails it by returning an error.
	failpoint func(point string) error
}

// invalidError is an error that matches ErrInvalid but prints only its
// own message.
type invalidError struct {
	msg string
	err error
}

func (e *invalidError) Error() string { return e.msg }
func (e *invalidError) Unwrap() error { return e.err }
func (e *invalidError) Is(target error) bool {
	return target == ErrInvalid || target == errdefs.ErrInvalid
}

func invalidf(format string, args ...any) error {
	return &invalidError{msg: fmt.Sprintf(format, args...)}
}

// Open opens the state directory stateDir with the default Options; see
// OpenWith.
func Open(stateDir string) (*Store, error) { return OpenWith(stateDir, Options{}) }

// OpenWith opens (creating if needed) the state directory stateDir,
// waiting up to a second for another process's lock. Before it opens the
// database for writing it checks it (see CheckState); a damaged,
// truncated or empty registry.db, or a missing one while plugins are
// installed, is refused with an error (ErrDamaged) that says what is wrong
// and how to restore, and the file is left untouched. A database whose
// free pages outnumber its live ones (and is over 1 MiB) is compacted.
//
// It then reconciles the directory with the registry: staging/ is emptied
// (nothing there was ever committed), the directories the registry slated
// for deletion are deleted once no backup needs them, and any other
// directory in plugins/ that no record refers to is moved to lost+found/
// with a warning; nothing else is deleted. Warnings returns what it found.
func OpenWith(stateDir string, opt Options) (*Store, error) {
	if stateDir == "" {
		return nil, errors.New("open state directory: no directory given")
	}
	dir, err := filepath.Abs(stateDir)
	if err != nil {
		return nil, fmt.Errorf("open state directory %s: %w", stateDir, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	opt = opt.withDefaults()
	inUse := func() error {
		return &classedError{sentinel: ErrInUse, msg: fmt.Sprintf(
			"state directory %s is in use by another dimplugd (stop it or pass a different --state-dir)", dir)}
	}
	lock, err := lockState(dir, lockTimeout)
	if errors.Is(err, errLocked) {
		return nil, inUse()
	}
	if err != nil {
		return nil, fmt.Errorf("lock state directory %s: %w", dir, err)
	}
	s := &Store{dir: dir, lock: lock, opt: opt, log: opt.Logger, stop: make(chan struct{})}
	if err := s.open(); err != nil {
		if s.db != nil {
			s.db.Close()
		}
		lock.Close()
		if errors.Is(err, errLocked) {
			return nil, inUse()
		}
		return nil, err
	}
	if opt.BackupInterval > 0 {
		s.loopDone.Add(1)
		go s.backupLoop(opt.BackupInterval)
	}
	return s, nil
}

func (s *Store) open() error {
	path := s.dbPath()
	_, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := refuseMissing(s.dir); err != nil {
			return err
		}
	case err != nil:
		return fmt.Errorf("open registry database: %w", err)
	default:
		info, err := checkFile(path, lockTimeout)
		if errors.Is(err, errLocked) {
			return err
		}
		if err != nil {
			return refusal(s.dir, err)
		}
		if shouldCompact(info) {
			before, after, err := compactFile(path)
			if err != nil {
				return fmt.Errorf("compact registry database %s: %w", path, err)
			}
			s.log.Info("compacted the registry database", "path", path, "before", before, "after", after)
		}
	}
	for _, d := range []string{pluginsDir, stagingDir, backupDir} {
		if err := os.MkdirAll(filepath.Join(s.dir, d), 0o700); err != nil {
			return fmt.Errorf("initialize registry: %w", err)
		}
	}
	backups, err := listBackups(s.dir)
	if err != nil {
		return fmt.Errorf("initialize registry: %w", err)
	}
	if len(backups) > 0 {
		s.gen = backups[0].gen
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: lockTimeout})
	if errors.Is(err, berrors.ErrTimeout) {
		return errLocked
	}
	if err != nil {
		return fmt.Errorf("open registry database in %s: %w", s.dir, err)
	}
	s.db = db
	if err := s.init(); err != nil {
		return err
	}
	return s.reconcile()
}

func (s *Store) dbPath() string { return filepath.Join(s.dir, dbFileName) }

func (s *Store) init() error {
	var found string
	if err := s.db.View(func(tx *bolt.Tx) error {
		if meta := tx.Bucket(bucketMeta); meta != nil {
			found = string(meta.Get(keySchema))
		}
		return nil
	}); err != nil {
		return fmt.Errorf("initialize registry in %s: %w", s.dir, err)
	}
	switch found {
	case "", schemaVersion:
	case "1":
		if _, err := s.backup(true); err != nil {
			return fmt.Errorf("back up the registry in %s before migrating its schema from 1 to %s: %w", s.dir, schemaVersion, err)
		}
		s.log.Info("migrating the registry schema", "from", found, "to", schemaVersion, "backup", filepath.Join(s.dir, backupDir))
	default:
		return fmt.Errorf("state directory %s has registry schema %q, and this dimplugd reads only %q: use the dimplugd that wrote it",
			s.dir, found, schemaVersion)
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		for _, b := range [][]byte{bucketPlugins, bucketKV, bucketKVSize, bucketGC, bucketSettings} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		if found != schemaVersion {
			return meta.Put(keySchema, []byte(schemaVersion))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("initialize registry in %s: %w", s.dir, err)
	}
	return nil
}

// Warnings returns what Open reconciled: directories moved to lost+found/
// and records whose files are missing. The daemon logs them; they are also
// logged to Options.Logger.
func (s *Store) Warnings() []string {
	s.warnMu.Lock()
	defer s.warnMu.Unlock()
	return slices.Clone(s.warnings)
}

func (s *Store) warn(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	s.warnMu.Lock()
	s.warnings = append(s.warnings, msg)
	s.warnMu.Unlock()
	s.log.Warn(msg, "state", s.dir)
}

// Close stops the backup schedule, closes the database and releases the
// state directory. The Store must not be used afterwards; closing again
// returns the first result.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		s.loopDone.Wait()
		if err := s.db.Close(); err != nil {
			s.closeErr = fmt.Errorf("close registry in %s: %w", s.dir, err)
		}
		s.lock.Close()
	})
	return s.closeErr
}

// Get returns the record of an installed plugin.
func (s *Store) Get(name string) (Record, error) {
	var rec Record
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		rec, err = s.getRecord(tx, name)
		return err
	})
	return rec, err
}

// List returns every installed plugin, sorted by name.
func (s *Store) List() ([]Record, error) {
	var recs []Record
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPlugins).ForEach(func(k, v []byte) error {
			rec, err := s.decodeRecord(string(k), v)
			if err != nil {
				return err
			}
			recs = append(recs, rec)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list plugins: %w", err)
	}
	return recs, nil // bbolt iterates in byte order, which sorts names
}

// SetEnabled records whether the daemon should run the plugin.
func (s *Store) SetEnabled(name string, on bool) (Record, error) {
	rec, err := s.update(name, func(r *Record) error {
		r.Enabled = on
		return nil
	})
	if err != nil {
		verb := "disable"
		if on {
			verb = "enable"
		}
		return Record{}, fmt.Errorf("%s plugin %q: %w", verb, name, err)
	}
	return rec, nil
}

// SetGrant records what the operator approves for the plugin. The grant is
// validated like manifest permissions (Permissions.Validate).
func (s *Store) SetGrant(name string, g manifest.Permissions) (Record, error) {
	if err := g.Validate(); err != nil {
		return Record{}, &invalidError{msg: fmt.Sprintf("grant plugin %q: %v", name, err), err: err}
	}
	rec, err := s.update(name, func(r *Record) error {
		r.Grant = clonePermissions(g)
		return nil
	})
	if err != nil {
		return Record{}, fmt.Errorf("grant plugin %q: %w", name, err)
	}
	return rec, nil
}

// SetHookDeadline overrides the deadline of one of a plugin's hooks; zero
// removes the override, restoring the manifest's deadline.
func (s *Store) SetHookDeadline(name, hook string, d time.Duration) (Record, error) {
	if d < 0 || d > manifest.MaxDeadline {
		return Record{}, &invalidError{msg: fmt.Sprintf("hook deadline %s for plugin %q: must be between 0 (the manifest's) and %s", d, name, manifest.MaxDeadline)}
	}
	rec, err := s.update(name, func(r *Record) error {
		found := false
		for _, h := range r.Manifest.Hooks {
			found = found || h.Name == hook
		}
		if !found {
			return &invalidError{msg: fmt.Sprintf("plugin %q has no hook %q", name, hook)}
		}
		if d == 0 {
			delete(r.Deadlines, hook)
			return nil
		}
		if r.Deadlines == nil {
			r.Deadlines = map[string]manifest.Duration{}
		}
		r.Deadlines[hook] = manifest.Duration{Duration: d}
		return nil
	})
	if err != nil {
		return Record{}, fmt.Errorf("set deadline of plugin %q hook %q: %w", name, hook, err)
	}
	return rec, nil
}

// update changes one record in its own transaction and stamps UpdatedAt.
func (s *Store) update(name string, change func(*Record) error) (Record, error) {
	var rec Record
	err := s.db.Update(func(tx *bolt.Tx) error {
		var err error
		if rec, err = s.getRecord(tx, name); err != nil {
			return err
		}
		if err := change(&rec); err != nil {
			return err
		}
		rec.UpdatedAt = now()
		return s.putRecord(tx, rec)
	})
	return rec, err
}

// Remove uninstalls a plugin: its record, key-value data and settings go
// in one transaction, which also slates its files for deletion; they are
// deleted at once unless a kept backup still refers to them (then when
// the last such backup is rotated out).
func (s *Store) Remove(name string) error {
	s.snap.RLock()
	err := s.db.Update(func(tx *bolt.Tx) error {
		rec, err := s.getRecord(tx, name)
		if err != nil {
			return err
		}
		if err := tx.Bucket(bucketPlugins).Delete([]byte(name)); err != nil {
			return err
		}
		if err := deleteKV(tx, name); err != nil {
			return err
		}
		if err := deleteSettings(tx, name); err != nil {
			return err
		}
		if err := s.dropPreviousTx(tx, name, ""); err != nil {
			return err
		}
		return s.slate(tx, rec.Dir, gcEntry{Why: gcRemoved, Plugin: name, Gen: s.gen})
	})
	s.snap.RUnlock()
	if err != nil {
		return fmt.Errorf("remove plugin %q: %w", name, err)
	}
	s.collect()
	return nil
}

func deleteKV(tx *bolt.Tx, name string) error {
	err := tx.Bucket(bucketKV).DeleteBucket([]byte(name))
	if err != nil && !errors.Is(err, berrors.ErrBucketNotFound) {
		return err
	}
	return tx.Bucket(bucketKVSize).Delete([]byte(name))
}

func (s *Store) getRecord(tx *bolt.Tx, name string) (Record, error) {
	v := tx.Bucket(bucketPlugins).Get([]byte(name))
	if v == nil {
		return Record{}, fmt.Errorf("plugin %q is %w", name, ErrNotFound)
	}
	return s.decodeRecord(name, v)
}

func (s *Store) decodeRecord(name string, data []byte) (Record, error) {
	var rec Record
	if err := json.Unmarshal(data, &rec); err != nil {
		return Record{}, fmt.Errorf("read record of plugin %q: %w", name, err)
	}
	if !filepath.IsAbs(rec.Dir) {
		rec.Dir = filepath.Join(s.dir, filepath.FromSlash(rec.Dir))
	}
	return rec, nil
}

// putRecord stores rec with its directory relative to the state directory.
func (s *Store) putRecord(tx *bolt.Tx, rec Record) error {
	if rel, err := filepath.Rel(s.dir, rec.Dir); err == nil && !strings.HasPrefix(rel, "..") {
		rec.Dir = filepath.ToSlash(rel)
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode record of plugin %q: %w", rec.Name, err)
	}
	return tx.Bucket(bucketPlugins).Put([]byte(rec.Name), data)
}

// now returns the current time in UTC, without a monotonic reading, so
// records compare equal before and after a round trip through JSON.
func now() time.Time { return time.Now().UTC() }

func clonePermissions(p manifest.Permissions) manifest.Permissions {
	p.ReadOnlyPaths = slices.Clone(p.ReadOnlyPaths)
	p.OutboundHosts = slices.Clone(p.OutboundHosts)
	return p
}
