package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// The previous slot: what an upgrade replaced, kept so that a failed
// upgrade can be undone and `dimplugctl rollback` can return to it. A
// plugin has at most one previous version: the record as it was (files
// directory, manifest, grant, deadlines) and a copy of its key-value data
// taken in the transaction that committed the upgrade (at most
// MaxKVBytes, so a copy is cheap). Its directory stays referenced, so the
// collector keeps it; it is slated for deletion once the slot is
// overwritten or dropped. Settings are not part of the slot: they stay as
// the operator set them.

// bucketPrevious holds each plugin's previous version (a Previous, JSON),
// by plugin name. Like bucketSettings it is additive: it is created when
// first needed, and code that does not know it ignores it.
var bucketPrevious = []byte("previous")

// Previous is the version of a plugin an upgrade replaced.
type Previous struct {
	Record Record `json:"record"`
	// KV is the plugin's key-value data as it was when the upgrade was
	// committed.
	KV map[string][]byte `json:"kv,omitempty"`
}

// Previous returns the plugin's previous version, or ErrNotFound.
func (s *Store) Previous(name string) (Previous, error) {
	var p Previous
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		p, err = s.getPrevious(tx, name)
		return err
	})
	return p, err
}

func (s *Store) getPrevious(tx *bolt.Tx, name string) (Previous, error) {
	b := tx.Bucket(bucketPrevious)
	var v []byte
	if b != nil {
		v = b.Get([]byte(name))
	}
	if v == nil {
		return Previous{}, fmt.Errorf("plugin %q has no previous version: %w", name, ErrNotFound)
	}
	var p Previous
	if err := json.Unmarshal(v, &p); err != nil {
		return Previous{}, fmt.Errorf("read previous version of plugin %q: %w", name, err)
	}
	if rec, err := s.decodeRecord(name, mustJSON(p.Record)); err == nil {
		p.Record = rec // the directory made absolute
	}
	return p, nil
}

func mustJSON(v any) []byte {
	data, _ := json.Marshal(v)
	return data
}

// keepPreviousTx stores rec and a copy of the plugin's key-value data as
// its previous version, slating the directory of the one it replaces (if
// any, and not the same).
func (s *Store) keepPreviousTx(tx *bolt.Tx, rec Record) error {
	kv := map[string][]byte{}
	if b := tx.Bucket(bucketKV).Bucket([]byte(rec.Name)); b != nil {
		if err := b.ForEach(func(k, v []byte) error {
			kv[string(k)] = append([]byte(nil), v...)
			return nil
		}); err != nil {
			return err
		}
	}
	return s.putPreviousTx(tx, Previous{Record: rec, KV: kv})
}

func (s *Store) putPreviousTx(tx *bolt.Tx, p Previous) error {
	if err := s.dropPreviousTx(tx, p.Record.Name, p.Record.Dir); err != nil {
		return err
	}
	b, err := tx.CreateBucketIfNotExists(bucketPrevious)
	if err != nil {
		return err
	}
	rec := p.Record
	if rel, err := filepath.Rel(s.dir, rec.Dir); err == nil && !strings.HasPrefix(rel, "..") {
		rec.Dir = filepath.ToSlash(rel)
	}
	p.Record = rec
	data, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("encode previous version of plugin %q: %w", rec.Name, err)
	}
	return b.Put([]byte(rec.Name), data)
}

// dropPreviousTx forgets the plugin's previous version and slates its
// directory unless it is keep (the directory moving elsewhere).
func (s *Store) dropPreviousTx(tx *bolt.Tx, name, keep string) error {
	old, err := s.getPrevious(tx, name)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := tx.Bucket(bucketPrevious).Delete([]byte(name)); err != nil {
		return err
	}
	if old.Record.Dir != keep && s.ownsDir(old.Record.Dir) {
		if cur, err := s.getRecord(tx, name); err == nil && cur.Dir == old.Record.Dir {
			return nil
		}
		return s.slate(tx, old.Record.Dir, gcEntry{Why: gcReplaced, Plugin: name, Gen: s.gen})
	}
	return nil
}

// previousDirs adds the directories of previous versions to refs (see
// referenced).
func (s *Store) previousDirs(tx *bolt.Tx, refs map[string]string) error {
	b := tx.Bucket(bucketPrevious)
	if b == nil {
		return nil
	}
	return b.ForEach(func(k, v []byte) error {
		p, err := s.getPrevious(tx, string(k))
		if err != nil {
			return err
		}
		if s.ownsDir(p.Record.Dir) {
			refs[pluginsDir+"/"+filepath.Base(p.Record.Dir)] = p.Record.Name
		}
		return nil
	})
}

// Rollback returns a plugin to its previous version in one transaction:
// the previous record (files, manifest, grant, deadlines) becomes current,
// keeping the current enabled flag and install time, and the key-value
// data becomes the copy taken at the upgrade. With keepCurrent, the
// version rolled back from becomes the previous one, with a copy of its
// data (so a second rollback returns to it); without, it is dropped and its
// files are slated for deletion (what undoing a failed upgrade does). It
// returns the new current record, or ErrNotFound when there is no previous
// version.
func (s *Store) Rollback(name string, keepCurrent bool) (Record, error) {
	s.snap.RLock()
	var rec Record
	err := s.db.Update(func(tx *bolt.Tx) error {
		cur, err := s.getRecord(tx, name)
		if err != nil {
			return err
		}
		prev, err := s.getPrevious(tx, name)
		if err != nil {
			return err
		}
		if err := tx.Bucket(bucketPrevious).Delete([]byte(name)); err != nil {
			return err
		}
		if keepCurrent {
			if err := s.keepPreviousTx(tx, cur); err != nil {
				return err
			}
		} else if cur.Dir != prev.Record.Dir && s.ownsDir(cur.Dir) {
			if err := s.slate(tx, cur.Dir, gcEntry{Why: gcReplaced, Plugin: name, Gen: s.gen}); err != nil {
				return err
			}
		}
		rec = prev.Record
		rec.Enabled = cur.Enabled
		rec.InstalledAt = cur.InstalledAt
		rec.UpdatedAt = now()
		if err := s.restoreKVTx(tx, name, prev.KV); err != nil {
			return err
		}
		return s.putRecord(tx, rec)
	})
	s.snap.RUnlock()
	if err != nil {
		return Record{}, fmt.Errorf("roll back plugin %q: %w", name, err)
	}
	s.collect()
	return rec, nil
}

// restoreKVTx replaces the plugin's key-value data with kv.
func (s *Store) restoreKVTx(tx *bolt.Tx, name string, kv map[string][]byte) error {
	if err := deleteKV(tx, name); err != nil {
		return err
	}
	if len(kv) == 0 {
		return nil
	}
	b, err := tx.Bucket(bucketKV).CreateBucket([]byte(name))
	if err != nil {
		return err
	}
	var size int64
	for k, v := range kv {
		if err := b.Put([]byte(k), v); err != nil {
			return err
		}
		size += int64(len(k) + len(v))
	}
	return setKVSize(tx, name, size)
}
