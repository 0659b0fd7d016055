package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
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
)

// schemaVersion is the layout version this code reads and writes.
const schemaVersion = "1"

const (
	dbFileName  = "registry.db"
	pluginsDir  = "plugins"
	stagingDir  = "staging"
	lockTimeout = time.Second
)

var (
	bucketMeta    = []byte("meta")
	bucketPlugins = []byte("plugins")
	bucketKV      = []byte("kv")
	bucketKVSize  = []byte("kvsize")
	keySchema     = []byte("schema")
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
}

// Store is an open state directory. Close it when done.
type Store struct {
	dir string // absolute state directory
	db  *bolt.DB

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

// Open opens (creating if needed) the state directory stateDir and its
// database, waiting up to a second for another process's lock. It then
// removes what an interrupted install, replace or remove left behind:
// everything in staging/ and every directory in plugins/ no record refers
// to.
func Open(stateDir string) (*Store, error) {
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
	db, err := bolt.Open(filepath.Join(dir, dbFileName), 0o600, &bolt.Options{Timeout: lockTimeout})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("state directory %s is in use by another dimplugd (stop it or pass a different --state-dir)", dir)
	}
	if err != nil {
		return nil, fmt.Errorf("open registry database in %s: %w", dir, err)
	}
	s := &Store{dir: dir, db: db}
	if err := s.init(); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

func (s *Store) init() error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		switch v := meta.Get(keySchema); {
		case v == nil:
			if err := meta.Put(keySchema, []byte(schemaVersion)); err != nil {
				return err
			}
		case string(v) != schemaVersion:
			return fmt.Errorf("state directory %s has registry schema %q, and this dimplugd reads only %q: use the dimplugd that wrote it",
				s.dir, v, schemaVersion)
		}
		for _, b := range [][]byte{bucketPlugins, bucketKV, bucketKVSize} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("initialize registry in %s: %w", s.dir, err)
	}
	for _, d := range []string{pluginsDir, stagingDir} {
		if err := os.MkdirAll(filepath.Join(s.dir, d), 0o700); err != nil {
			return fmt.Errorf("initialize registry: %w", err)
		}
	}
	return s.collectGarbage()
}

// collectGarbage removes staging leftovers and unreferenced plugin
// directories. It runs under the database lock, before any install.
func (s *Store) collectGarbage() error {
	keep := make(map[string]bool)
	recs, err := s.List()
	if err != nil {
		return err
	}
	for _, r := range recs {
		keep[filepath.Base(r.Dir)] = true
	}
	var errs []error
	for _, d := range []string{stagingDir, pluginsDir} {
		entries, err := os.ReadDir(filepath.Join(s.dir, d))
		if err != nil {
			return fmt.Errorf("clean up state directory: %w", err)
		}
		for _, e := range entries {
			if d == pluginsDir && keep[e.Name()] {
				continue
			}
			if err := os.RemoveAll(filepath.Join(s.dir, d, e.Name())); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("clean up state directory: %w", err)
	}
	return nil
}

// Close closes the database. The Store must not be used afterwards.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close registry in %s: %w", s.dir, err)
	}
	return nil
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

// Remove uninstalls a plugin: its record and key-value data go in one
// transaction, then its files are deleted (or collected by the next Open if
// that fails).
func (s *Store) Remove(name string) error {
	var rec Record
	err := s.db.Update(func(tx *bolt.Tx) error {
		var err error
		if rec, err = s.getRecord(tx, name); err != nil {
			return err
		}
		if err := tx.Bucket(bucketPlugins).Delete([]byte(name)); err != nil {
			return err
		}
		return deleteKV(tx, name)
	})
	if err != nil {
		return fmt.Errorf("remove plugin %q: %w", name, err)
	}
	if s.ownsDir(rec.Dir) {
		_ = os.RemoveAll(rec.Dir) // Open collects it if this fails
	}
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
