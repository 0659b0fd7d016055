package registry

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/dimplugd/dimplugd/daemon/settings"
	"github.com/dimplugd/dimplugd/sdk-go/dimplug"
	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	bolt "go.etcd.io/bbolt"
)

// InstallOptions control InstallDir and InstallArchive.
type InstallOptions struct {
	// Replace upgrades an installed plugin of the same name in place,
	// keeping its key-value data, settings, enabled flag and install time.
	// Without it, installing over an installed plugin fails with
	// ErrExists. With it, a plugin that is not installed is installed
	// fresh.
	Replace bool
	// Enable sets the enabled flag of a fresh install. It is ignored when
	// replacing.
	Enable bool
	// Grant is what the operator approved. Nil grants exactly what the
	// manifest asks for on a fresh install, and keeps the installed
	// plugin's grant on a replacement (see Check to refuse upgrades that
	// ask for more).
	Grant *manifest.Permissions
	// Check, when set, is called with the staged manifest and the record
	// it replaces (nil for a fresh install) inside the commit transaction;
	// an error aborts the install and leaves nothing behind.
	Check func(m *manifest.Manifest, prev *Record) error
	// KeepPrevious keeps the record a replacement replaces, and a copy of
	// its key-value data, as the plugin's previous version (see Rollback)
	// instead of slating its files for deletion.
	KeepPrevious bool
	// Wait is not the store's: it asks Daemon.Install to answer only once
	// the plugin runs and is healthy (or the install was undone).
	Wait bool
	// Package, when set, is called once the archive's kind is known:
	// with the header of a .dimplug package (manifest and signature; see
	// sdk-go/dimplug), or nil for a plain tar archive, before any file is
	// extracted; an error refuses the install. A package's entries are
	// then checked against its manifest as they are extracted (see
	// extract).
	Package func(h *dimplug.Header) error
	// PackageSize is the size of the archive as received, when known: the
	// files it unpacks to may not exceed MaxExpansion times it (beyond
	// ExpansionFloor), which stops decompression bombs before they are
	// written.
	PackageSize int64
	// Provenance, when set, is called at the commit for the record's
	// Publisher and SHA256 (known once the package has been checked).
	Provenance func() (*TrustedKey, string)
	// Claim, when set, is called with the staged plugin's name after its
	// files and manifest were checked and before anything is committed or
	// compared with the installed version. It may block: the daemon waits
	// there for an earlier install, upgrade or rollback of the same name to
	// settle, so that each commits against the outcome of the one before.
	Claim func(name string)
	// Progress, when set, is told each stage of the install as it begins
	// (Control.installStream's InstallProgress): the store reports
	// "unpacking" (done/total: the package's bytes when known), the daemon
	// the stages after the commit ("starting", "waiting", "switching",
	// "rolling back"). It must not block.
	Progress func(stage string, done, total uint64)
}

// InstallDir installs the plugin in the directory src: it copies the tree
// (directories and regular files only, exec bits kept, symbolic links
// followed only to files inside src; see MaxInstallSize and
// MaxInstallFiles), validates the copy's manifest and entrypoint, compiles
// the settings schemas the manifest declares (a schema that does not
// compile refuses the install, naming its file), and commits. On failure
// nothing is left behind. A replace is preceded by a backup of the
// registry; the old files are slated for deletion in the commit and
// deleted once no kept backup refers to them (see Remove). A replace
// keeps the stored settings values even when the new schemas refuse
// them: the daemon checks them against the new schemas and flags them.
func (s *Store) InstallDir(ctx context.Context, src string, opt InstallOptions) (Record, error) {
	return s.install(ctx, src, opt, func(ctx context.Context, stage string) error {
		return s.copyTree(ctx, src, stage)
	})
}

// InstallArchive installs the plugin in the tar stream r (plain or gzip,
// detected from the first bytes), as written by WriteArchive. Extraction
// accepts only directories and regular files with relative paths that stay
// inside the plugin directory, within MaxInstallSize and MaxInstallFiles;
// errors name the offending entry. Otherwise it behaves like InstallDir.
func (s *Store) InstallArchive(ctx context.Context, r io.Reader, opt InstallOptions) (Record, error) {
	return s.install(ctx, "archive", opt, func(ctx context.Context, stage string) error {
		return s.extract(ctx, r, stage, opt)
	})
}

// Report calls opt.Progress, if set.
func (opt InstallOptions) Report(stage string, done, total uint64) {
	if opt.Progress != nil {
		opt.Progress(stage, done, total)
	}
}

// install stages a plugin with fill, then validates and commits it. from
// describes the source for errors.
func (s *Store) install(ctx context.Context, from string, opt InstallOptions, fill func(context.Context, string) error) (Record, error) {
	rec, err := s.installStaged(ctx, opt, fill)
	switch {
	case err == nil:
		return rec, nil
	case rec.Name != "":
		return Record{}, fmt.Errorf("install plugin %q from %s: %w", rec.Name, from, err)
	default:
		return Record{}, fmt.Errorf("install plugin from %s: %w", from, err)
	}
}

// installStaged does the work of install. On error, the returned record
// holds at most the plugin's name, once known.
func (s *Store) installStaged(ctx context.Context, opt InstallOptions, fill func(context.Context, string) error) (Record, error) {
	if opt.Grant != nil {
		if err := opt.Grant.Validate(); err != nil {
			return Record{}, &invalidError{msg: "invalid grant" + indentLines(err.Error()), err: err}
		}
	}
	stage, err := os.MkdirTemp(filepath.Join(s.dir, stagingDir), "install-")
	if err != nil {
		return Record{}, fmt.Errorf("create staging directory: %w", err)
	}
	defer os.RemoveAll(stage) // a no-op once renamed
	if err := os.Chmod(stage, 0o755); err != nil {
		return Record{}, err
	}
	if err := fill(ctx, stage); err != nil {
		return Record{}, err
	}
	m, err := manifest.Load(stage)
	if err != nil {
		return Record{}, &invalidError{msg: "invalid plugin" + indentLines(err.Error()), err: err}
	}
	if !m.Settings.IsZero() {
		// The daemon compiles them again when it needs them; an install
		// whose schemas do not compile would leave a plugin nobody can
		// configure.
		if _, err := settings.LoadDir(stage, m.Settings); err != nil {
			if errors.Is(err, errdefs.ErrInvalid) {
				return Record{Name: m.Name}, &invalidError{msg: "invalid settings schema" + indentLines(err.Error()), err: err}
			}
			return Record{Name: m.Name}, fmt.Errorf("read settings schemas: %w", err)
		}
	}
	if s.opt.CheckFiles != nil {
		if err := s.opt.CheckFiles(stage, m); err != nil {
			return Record{Name: m.Name}, &invalidError{msg: err.Error(), err: err}
		}
	}
	if err := s.fail("staged"); err != nil {
		return Record{Name: m.Name}, err
	}
	if err := ctx.Err(); err != nil {
		return Record{Name: m.Name}, err
	}
	if opt.Claim != nil {
		opt.Claim(m.Name)
	}
	// Fail early, before moving files, in the common case; back up
	// before replacing.
	if _, err := s.Get(m.Name); err == nil {
		if !opt.Replace {
			return Record{Name: m.Name}, fmt.Errorf("%w (replace it to upgrade)", ErrExists)
		}
		if _, err := s.backup(false); err != nil {
			return Record{Name: m.Name}, fmt.Errorf("back up the registry before replacing the plugin: %w", err)
		}
	}
	rec, old, err := s.commitStaged(stage, m, opt)
	if err != nil {
		return Record{Name: m.Name}, err
	}
	if old != nil {
		s.collect()
	}
	return rec, nil
}

// commitStaged moves the staged plugin into plugins/ and commits its
// record, returning the record it replaced, if any. The directory is
// slated for deletion (an install intent) before it is moved, and the
// commit removes the intent, so a crash in between leaves a directory that
// Open deletes because the registry says so.
func (s *Store) commitStaged(stage string, m *manifest.Manifest, opt InstallOptions) (Record, *Record, error) {
	s.snap.RLock()
	defer s.snap.RUnlock()
	final := filepath.Join(s.dir, pluginsDir, m.Name+"-"+randomSuffix())
	key := []byte(pluginsDir + "/" + filepath.Base(final))
	if err := s.db.Update(func(tx *bolt.Tx) error {
		return s.slate(tx, final, gcEntry{Why: gcInstall, Plugin: m.Name})
	}); err != nil {
		return Record{}, nil, fmt.Errorf("record the install: %w", err)
	}
	undo := func() {
		os.RemoveAll(final)
		_ = s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketGC).Delete(key) }) // else Open collects it
	}
	if err := os.Rename(stage, final); err != nil {
		undo()
		return Record{}, nil, err
	}
	if err := syncDir(filepath.Dir(final)); err != nil {
		undo()
		return Record{}, nil, err
	}
	grant := m.Permissions
	if opt.Grant != nil {
		grant = *opt.Grant
	}
	t := now()
	rec := Record{
		Name:        m.Name,
		Manifest:    *m,
		Dir:         final,
		Enabled:     opt.Enable,
		Grant:       clonePermissions(grant),
		InstalledAt: t,
		UpdatedAt:   t,
	}
	if opt.Provenance != nil {
		rec.Publisher, rec.SHA256 = opt.Provenance()
	}
	var old *Record
	err := s.db.Update(func(tx *bolt.Tx) error {
		if err := s.fail("commit"); err != nil {
			return err
		}
		prev, err := s.getRecord(tx, m.Name)
		switch {
		case errors.Is(err, ErrNotFound):
			// A fresh install takes over the data an Uninstall kept, and
			// otherwise starts with empty key-value data and no settings
			// (an older dimplugd may have removed the plugin without
			// knowing of its settings).
			use := dataUsage(tx, m.Name)
			kept, err := takeKeptTx(tx, m.Name)
			if err != nil {
				return err
			}
			if kept {
				rec.KeptData = use
			}
		case err != nil:
			return err
		case !opt.Replace:
			return fmt.Errorf("%w (replace it to upgrade)", ErrExists)
		default:
			old = &prev
			rec.Enabled = prev.Enabled
			rec.InstalledAt = prev.InstalledAt
			for hook, d := range prev.Deadlines {
				for _, h := range m.Hooks {
					if h.Name == hook {
						if rec.Deadlines == nil {
							rec.Deadlines = map[string]manifest.Duration{}
						}
						rec.Deadlines[hook] = d
					}
				}
			}
			if opt.Grant == nil {
				rec.Grant = clonePermissions(prev.Grant)
			}
		}
		if opt.Check != nil {
			if err := opt.Check(m, old); err != nil {
				return err
			}
		}
		if err := tx.Bucket(bucketGC).Delete(key); err != nil {
			return err
		}
		if old != nil && opt.KeepPrevious {
			if err := s.keepPreviousTx(tx, *old); err != nil {
				return err
			}
		} else if old != nil && old.Dir != final {
			if err := s.slate(tx, old.Dir, gcEntry{Why: gcReplaced, Plugin: m.Name, Gen: s.gen}); err != nil {
				return err
			}
		}
		return s.putRecord(tx, rec)
	})
	if err != nil {
		undo()
		return Record{}, nil, err
	}
	return rec, old, nil
}

// ownsDir reports whether dir is a plugin directory of this store, so that
// a damaged record can never make the store delete anything else.
func (s *Store) ownsDir(dir string) bool {
	base := filepath.Base(dir)
	return filepath.Dir(dir) == filepath.Join(s.dir, pluginsDir) && base != ".." && base != "."
}

func (s *Store) fail(point string) error {
	if s.failpoint == nil {
		return nil
	}
	return s.failpoint(point)
}

func randomSuffix() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return hex.EncodeToString(b[:])
}

// syncDir makes a rename or create in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// indentLines formats msg to follow a noun: after ": " when it is one
// line, on its own indented lines otherwise.
func indentLines(msg string) string {
	if !strings.Contains(msg, "\n") {
		return ": " + msg
	}
	return ":\n  " + strings.ReplaceAll(msg, "\n", "\n  ")
}
