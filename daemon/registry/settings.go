package registry

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"

	"github.com/dimplugd/dimplugd/daemon/settings"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	bolt "go.etcd.io/bbolt"
)

// MaxSettingsSize bounds one stored settings object (one scope of one
// plugin, and one user for user settings), as JSON.
const MaxSettingsSize = 256 << 10

// SettingsStore is one plugin's stored settings values: one JSON object
// for the global scope and one per user for the user scope, in the
// settings bucket under "<plugin>\x00global" and
// "<plugin>\x00user\x00<decimal user id>". It stores what it is given:
// callers validate values against the plugin's schema (package
// daemon/settings) first. Every Put is its own durable transaction;
// operations fail with ErrNotFound once the plugin is not installed, and
// Remove deletes the values with the plugin. A SettingsStore is safe for
// concurrent use.
type SettingsStore struct {
	s      *Store
	plugin string
}

// Settings returns the settings store of plugin. It does not check that
// the plugin is installed; its methods do.
func (s *Store) Settings(plugin string) *SettingsStore {
	return &SettingsStore{s: s, plugin: plugin}
}

// Get returns the values stored for scope (manifest.ScopeGlobal, with user
// 0, or manifest.ScopeUser with the user's id), decoded as
// settings.DecodeValues does (numbers as json.Number), and whether
// anything is stored. Nothing stored is found=false with a nil map.
func (ss *SettingsStore) Get(scope string, user int64) (map[string]any, bool, error) {
	key, err := settingsKey(ss.plugin, scope, user)
	if err != nil {
		return nil, false, ss.errorf("read", scope, user, err)
	}
	var data []byte
	err = ss.s.db.View(func(tx *bolt.Tx) error {
		if _, err := ss.s.getRecord(tx, ss.plugin); err != nil {
			return err
		}
		if b := tx.Bucket(bucketSettings); b != nil {
			if v := b.Get(key); v != nil {
				data = bytes.Clone(v) // v is only valid inside the transaction
			}
		}
		return nil
	})
	if err != nil {
		return nil, false, ss.errorf("read", scope, user, err)
	}
	if data == nil {
		return nil, false, nil
	}
	values, err := settings.DecodeValues(data)
	if err != nil {
		// Put stores only objects it encoded: this is damage, not input.
		return nil, false, ss.errorf("read", scope, user, fmt.Errorf("the stored value does not decode: %v", err))
	}
	return values, true, nil
}

// Put replaces the values stored for scope (and user) with values, which
// the caller has validated; nil stores an empty object. It fails with
// ErrInvalid when the scope or user is wrong, a value is not JSON, or the
// object is over MaxSettingsSize as JSON.
func (ss *SettingsStore) Put(scope string, user int64, values map[string]any) error {
	key, err := settingsKey(ss.plugin, scope, user)
	if err != nil {
		return ss.errorf("store", scope, user, err)
	}
	if values == nil {
		values = map[string]any{}
	}
	data, err := json.Marshal(values)
	if err != nil {
		return ss.errorf("store", scope, user, &invalidError{msg: fmt.Sprintf("values are not JSON: %v", err), err: err})
	}
	if len(data) > MaxSettingsSize {
		return ss.errorf("store", scope, user, invalidf("the values are %d bytes as JSON, over the %s limit per settings object",
			len(data), manifest.Size(MaxSettingsSize)))
	}
	err = ss.s.db.Update(func(tx *bolt.Tx) error {
		if _, err := ss.s.getRecord(tx, ss.plugin); err != nil {
			return err
		}
		b, err := tx.CreateBucketIfNotExists(bucketSettings) // Open created it; be sure
		if err != nil {
			return err
		}
		return b.Put(key, data)
	})
	if err != nil {
		return ss.errorf("store", scope, user, err)
	}
	return nil
}

// Users returns the ids of the users who have user settings stored,
// sorted.
func (ss *SettingsStore) Users() ([]int64, error) {
	var users []int64
	err := ss.s.db.View(func(tx *bolt.Tx) error {
		if _, err := ss.s.getRecord(tx, ss.plugin); err != nil {
			return err
		}
		b := tx.Bucket(bucketSettings)
		if b == nil {
			return nil
		}
		prefix := []byte(ss.plugin + "\x00" + manifest.ScopeUser + "\x00")
		c := b.Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			id, err := strconv.ParseInt(string(k[len(prefix):]), 10, 64)
			if err != nil {
				continue // not a key Put writes; leave it alone
			}
			users = append(users, id)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list users with settings of plugin %q: %w", ss.plugin, err)
	}
	slices.Sort(users) // keys sort as decimal text, not by number
	return users, nil
}

func (ss *SettingsStore) errorf(op, scope string, user int64, err error) error {
	switch scope {
	case manifest.ScopeUser:
		return fmt.Errorf("%s the settings of user %d for plugin %q: %w", op, user, ss.plugin, err)
	case manifest.ScopeGlobal:
		return fmt.Errorf("%s the global settings of plugin %q: %w", op, ss.plugin, err)
	}
	return fmt.Errorf("%s settings of plugin %q: %w", op, ss.plugin, err)
}

// settingsKey returns the settings bucket key of one scope's values.
func settingsKey(plugin, scope string, user int64) ([]byte, error) {
	switch scope {
	case manifest.ScopeGlobal:
		if user != 0 {
			return nil, invalidf("global settings belong to no user: pass user 0, not %d", user)
		}
		return []byte(plugin + "\x00" + manifest.ScopeGlobal), nil
	case manifest.ScopeUser:
		if user <= 0 {
			return nil, invalidf("user settings need the user's id (a positive number), not %d", user)
		}
		return []byte(plugin + "\x00" + manifest.ScopeUser + "\x00" + strconv.FormatInt(user, 10)), nil
	}
	return nil, invalidf("settings scope %s: want %q or %q", strconv.Quote(scope), manifest.ScopeGlobal, manifest.ScopeUser)
}

// deleteSettings deletes every settings object of plugin, in tx.
func deleteSettings(tx *bolt.Tx, plugin string) error {
	b := tx.Bucket(bucketSettings)
	if b == nil {
		return nil
	}
	prefix := []byte(plugin + "\x00")
	var keys [][]byte
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		keys = append(keys, bytes.Clone(k))
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}
