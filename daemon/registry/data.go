package registry

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// bucketKept lists the plugins uninstalled with their data kept: plugin
// name → keptEntry as JSON. Their key-value data and settings stay in the
// kv, kvsize and settings buckets with no record; the next fresh install
// of the name takes them over and deletes the entry. Like settings it was
// added without a schema version bump: it is created when first needed,
// and a dimplugd that does not know it leaves it alone (and deletes the
// kept data when the name is installed fresh, as it always did).
var bucketKept = []byte("kept")

type keptEntry struct {
	Version   string    `json:"version"`    // the version uninstalled
	RemovedAt time.Time `json:"removed_at"` // when
}

// DataUsage is how much data a plugin has: key-value pairs and settings
// objects, and their bytes (keys, values and settings JSON).
type DataUsage struct {
	Keys     int
	Settings int
	Bytes    int64
}

// Empty reports whether there is no data at all.
func (u DataUsage) Empty() bool { return u.Keys == 0 && u.Settings == 0 }

// Uninstall removes a plugin as Remove does, except that without purge
// its key-value data and settings are kept, listed as kept data, and come
// back with the next fresh install of the same name. It returns the data
// kept (without purge) or deleted (with purge). Uninstalling a plugin
// that is not installed fails with ErrNotFound, except with purge when
// data of it is kept: that data is deleted then.
func (s *Store) Uninstall(name string, purge bool) (DataUsage, error) {
	var use DataUsage
	s.snap.RLock()
	err := s.db.Update(func(tx *bolt.Tx) error {
		use = dataUsage(tx, name)
		rec, err := s.getRecord(tx, name)
		if errors.Is(err, ErrNotFound) && purge && keptTx(tx, name) {
			return purgeDataTx(tx, name)
		}
		if err != nil {
			if keptTx(tx, name) {
				return fmt.Errorf("%w; %d bytes of its data are kept (purge deletes them)", err, use.Bytes)
			}
			return err
		}
		if err := tx.Bucket(bucketPlugins).Delete([]byte(name)); err != nil {
			return err
		}
		if purge || use.Empty() {
			if err := purgeDataTx(tx, name); err != nil {
				return err
			}
		} else {
			b, err := tx.CreateBucketIfNotExists(bucketKept)
			if err != nil {
				return err
			}
			v, _ := json.Marshal(keptEntry{Version: rec.Manifest.Version, RemovedAt: now()})
			if err := b.Put([]byte(name), v); err != nil {
				return err
			}
		}
		if err := s.dropPreviousTx(tx, name, ""); err != nil {
			return err
		}
		return s.slate(tx, rec.Dir, gcEntry{Why: gcRemoved, Plugin: name, Gen: s.gen})
	})
	s.snap.RUnlock()
	if err != nil {
		return DataUsage{}, fmt.Errorf("uninstall plugin %q: %w", name, err)
	}
	s.collect()
	return use, nil
}

// KeptData returns the data kept of a plugin that was uninstalled without
// purge, and whether there is any.
func (s *Store) KeptData(name string) (DataUsage, bool, error) {
	var use DataUsage
	var kept bool
	err := s.db.View(func(tx *bolt.Tx) error {
		if kept = keptTx(tx, name); kept {
			use = dataUsage(tx, name)
		}
		return nil
	})
	return use, kept, err
}

// DataUsage returns how much data an installed plugin has.
func (s *Store) DataUsage(name string) (DataUsage, error) {
	var use DataUsage
	err := s.db.View(func(tx *bolt.Tx) error {
		if _, err := s.getRecord(tx, name); err != nil {
			return err
		}
		use = dataUsage(tx, name)
		return nil
	})
	return use, err
}

// takeKeptTx prepares the data of a fresh install of name, in its commit:
// data kept by an Uninstall is taken over (true); anything else left
// under the name (by an older dimplugd) is deleted.
func takeKeptTx(tx *bolt.Tx, name string) (bool, error) {
	if keptTx(tx, name) {
		return true, tx.Bucket(bucketKept).Delete([]byte(name))
	}
	if err := deleteKV(tx, name); err != nil {
		return false, err
	}
	return false, deleteSettings(tx, name)
}

func keptTx(tx *bolt.Tx, name string) bool {
	b := tx.Bucket(bucketKept)
	return b != nil && b.Get([]byte(name)) != nil
}

// purgeDataTx deletes a plugin's key-value data and settings, and its
// kept entry.
func purgeDataTx(tx *bolt.Tx, name string) error {
	if err := deleteKV(tx, name); err != nil {
		return err
	}
	if err := deleteSettings(tx, name); err != nil {
		return err
	}
	if b := tx.Bucket(bucketKept); b != nil {
		return b.Delete([]byte(name))
	}
	return nil
}

func dataUsage(tx *bolt.Tx, name string) DataUsage {
	var u DataUsage
	if b := tx.Bucket(bucketKV).Bucket([]byte(name)); b != nil {
		u.Keys = b.Stats().KeyN
	}
	u.Bytes = kvSize(tx, name)
	if b := tx.Bucket(bucketSettings); b != nil {
		prefix := []byte(name + "\x00")
		c := b.Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			u.Settings++
			u.Bytes += int64(len(v))
		}
	}
	return u
}

// checkKept is part of checkContent: every kept entry decodes. Kept data
// has no record on purpose; it is not damage.
func checkKept(tx *bolt.Tx) error {
	b := tx.Bucket(bucketKept)
	if b == nil {
		return nil
	}
	return b.ForEach(func(k, v []byte) error {
		var e keptEntry
		if err := json.Unmarshal(v, &e); err != nil {
			return fmt.Errorf("the kept-data entry of plugin %q is unreadable: %v", k, err)
		}
		return nil
	})
}

// KeptData is the data kept of a plugin uninstalled without purge.
type KeptData struct {
	Plugin    string
	Version   string // the version uninstalled
	RemovedAt time.Time
	Usage     DataUsage
}

// keptListTx lists the data kept of uninstalled plugins, by name.
func keptListTx(tx *bolt.Tx) []KeptData {
	b := tx.Bucket(bucketKept)
	if b == nil {
		return nil
	}
	var out []KeptData
	_ = b.ForEach(func(k, v []byte) error {
		var e keptEntry
		_ = json.Unmarshal(v, &e) // checkContent reports an entry that does not decode
		out = append(out, KeptData{Plugin: string(k), Version: e.Version, RemovedAt: e.RemovedAt, Usage: dataUsage(tx, string(k))})
		return nil
	})
	return out
}
