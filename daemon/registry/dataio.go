package registry

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/dimplugd/dimplugd/daemon/settings"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	bolt "go.etcd.io/bbolt"
)

// PluginData is all of one plugin's data: what ExportData reads and
// ImportData writes.
type PluginData struct {
	// KV is the key-value data in bytewise key order.
	KV []KVPair
	// Settings are the stored settings objects, global first, then by
	// user id.
	Settings []ScopeValues
}

// KVPair is one key and its value.
type KVPair struct {
	Key   string
	Value []byte
}

// ScopeValues is one stored settings object: Scope manifest.ScopeGlobal
// with User 0, or manifest.ScopeUser with the user's id.
type ScopeValues struct {
	Scope  string
	User   int64
	Values map[string]any
}

// ExportData reads all of an installed plugin's data in one consistent
// view.
func (s *Store) ExportData(name string) (PluginData, error) {
	var d PluginData
	err := s.db.View(func(tx *bolt.Tx) error {
		if _, err := s.getRecord(tx, name); err != nil {
			return err
		}
		if b := tx.Bucket(bucketKV).Bucket([]byte(name)); b != nil {
			if err := b.ForEach(func(k, v []byte) error {
				d.KV = append(d.KV, KVPair{Key: string(k), Value: bytes.Clone(v)})
				return nil
			}); err != nil {
				return err
			}
		}
		b := tx.Bucket(bucketSettings)
		if b == nil {
			return nil
		}
		prefix := []byte(name + "\x00")
		c := b.Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			sv := ScopeValues{Scope: manifest.ScopeGlobal}
			if rest, ok := strings.CutPrefix(string(k[len(prefix):]), manifest.ScopeUser+"\x00"); ok {
				id, err := strconv.ParseInt(rest, 10, 64)
				if err != nil {
					continue // not a key Put writes; leave it alone
				}
				sv.Scope, sv.User = manifest.ScopeUser, id
			} else if string(k[len(prefix):]) != manifest.ScopeGlobal {
				continue
			}
			values, err := settings.DecodeValues(v)
			if err != nil {
				return fmt.Errorf("the stored %s settings do not decode: %v", sv.Scope, err)
			}
			sv.Values = values
			d.Settings = append(d.Settings, sv)
		}
		return nil
	})
	if err != nil {
		return PluginData{}, fmt.Errorf("export the data of plugin %q: %w", name, err)
	}
	// Global first, then users by id (keys sort as decimal text).
	slices.SortFunc(d.Settings, func(a, b ScopeValues) int {
		if a.Scope != b.Scope {
			if a.Scope == manifest.ScopeGlobal {
				return -1
			}
			return 1
		}
		return cmp.Compare(a.User, b.User)
	})
	return d, nil
}

// ImportData writes d into an installed plugin's data in one transaction:
// merged (each key and each settings object in d replaces the one
// stored; the rest stays) or, with replace, instead of all that is stored.
// It checks everything first, the key-value limits (MaxKeyLen,
// MaxValueLen, MaxKVTotal for the result) and MaxSettingsSize, and writes
// nothing when anything fails (ErrInvalid, naming the first problems).
// Settings values must have been validated by the caller.
func (s *Store) ImportData(name string, d PluginData, replace bool) error {
	var problems []string
	add := func(format string, args ...any) {
		if len(problems) < 10 {
			problems = append(problems, fmt.Sprintf(format, args...))
		}
	}
	seen := make(map[string]int, len(d.KV))
	var incoming int64
	for i, p := range d.KV {
		if err := checkKey(p.Key); err != nil {
			add("kv[%d]: %v", i, err)
			continue
		}
		if len(p.Value) > MaxValueLen {
			add("kv[%d] (key %s): value is %d bytes, over the %s limit per value", i, shortKey(p.Key), len(p.Value), manifest.Size(MaxValueLen))
		}
		if j, dup := seen[p.Key]; dup {
			add("kv[%d]: key %s is also kv[%d]", i, shortKey(p.Key), j)
		}
		seen[p.Key] = i
		incoming += int64(len(p.Key) + len(p.Value))
	}
	encoded := make([][]byte, len(d.Settings))
	for i, sv := range d.Settings {
		if _, err := settingsKey(name, sv.Scope, sv.User); err != nil {
			add("settings: %v", err)
			continue
		}
		values := sv.Values
		if values == nil {
			values = map[string]any{}
		}
		data, err := json.Marshal(values)
		if err != nil {
			add("%s settings (user %d): not JSON: %v", sv.Scope, sv.User, err)
			continue
		}
		if len(data) > MaxSettingsSize {
			add("%s settings (user %d): %d bytes as JSON, over the %s limit per settings object", sv.Scope, sv.User, len(data), manifest.Size(MaxSettingsSize))
		}
		encoded[i] = data
	}
	if len(problems) == 0 && incoming > MaxKVTotal {
		add("the key-value data is %d bytes, over the %s limit per plugin", incoming, manifest.Size(MaxKVTotal))
	}
	if len(problems) > 0 {
		return fmt.Errorf("import data into plugin %q: %w", name, invalidf("nothing was imported:\n  %s", strings.Join(problems, "\n  ")))
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		if _, err := s.getRecord(tx, name); err != nil {
			return err
		}
		if replace {
			if err := deleteKV(tx, name); err != nil {
				return err
			}
			if err := deleteSettings(tx, name); err != nil {
				return err
			}
		}
		b, err := tx.Bucket(bucketKV).CreateBucketIfNotExists([]byte(name))
		if err != nil {
			return err
		}
		used := kvSize(tx, name)
		for _, p := range d.KV {
			if old, ok := lookup(b, p.Key); ok {
				used -= int64(len(p.Key) + len(old))
			}
			used += int64(len(p.Key) + len(p.Value))
		}
		if used > MaxKVTotal {
			return invalidf("nothing was imported: plugin %q would store %d bytes, over its %s limit (import with replace, or delete keys first)",
				name, used, manifest.Size(MaxKVTotal))
		}
		for _, p := range d.KV {
			v := p.Value
			if v == nil {
				v = []byte{}
			}
			if err := b.Put([]byte(p.Key), v); err != nil {
				return err
			}
		}
		if err := setKVSize(tx, name, used); err != nil {
			return err
		}
		sb, err := tx.CreateBucketIfNotExists(bucketSettings)
		if err != nil {
			return err
		}
		for i, sv := range d.Settings {
			key, _ := settingsKey(name, sv.Scope, sv.User)
			if err := sb.Put(key, encoded[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("import data into plugin %q: %w", name, err)
	}
	return nil
}
