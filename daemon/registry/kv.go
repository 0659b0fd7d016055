package registry

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	bolt "go.etcd.io/bbolt"
)

// Key-value limits, per plugin.
const (
	// MaxKeyLen bounds a key; keys must not be empty.
	MaxKeyLen = 1024
	// MaxValueLen bounds one value.
	MaxValueLen = 1 << 20
	// MaxKVTotal bounds the bytes one plugin stores, keys plus values.
	MaxKVTotal = 64 << 20
)

// KV is one plugin's key-value store: the backing of the key-value
// capability the daemon grants to that plugin. Keys are arbitrary bytes,
// sorted bytewise. Every Set and Delete is its own durable transaction.
// Operations fail with ErrNotFound once the plugin is not installed, so
// data cannot outlive its plugin. A KV is safe for concurrent use.
type KV struct {
	s      *Store
	plugin string
}

// KV returns the key-value store of plugin. It does not check that the
// plugin is installed; its methods do.
func (s *Store) KV(plugin string) *KV { return &KV{s: s, plugin: plugin} }

// Get returns a copy of the value of key, and whether key exists.
func (kv *KV) Get(key string) ([]byte, bool, error) {
	if err := checkKey(key); err != nil {
		return nil, false, kv.errorf("get", key, err)
	}
	var value []byte
	var found bool
	err := kv.s.db.View(func(tx *bolt.Tx) error {
		b, err := kv.bucket(tx)
		if err != nil || b == nil {
			return err
		}
		if v, ok := lookup(b, key); ok {
			found = true
			value = append([]byte{}, v...) // v is only valid inside the transaction
		}
		return nil
	})
	if err != nil {
		return nil, false, kv.errorf("get", key, err)
	}
	return value, found, nil
}

// Set stores value under key, replacing any value there. It fails with
// ErrInvalid, saying which limit, when the key or value is too large or
// the plugin would store more than MaxKVTotal.
func (kv *KV) Set(key string, value []byte) error {
	if err := checkKey(key); err != nil {
		return kv.errorf("set", key, err)
	}
	if len(value) > MaxValueLen {
		return kv.errorf("set", key, invalidf("value is %d bytes, over the %s limit per value",
			len(value), manifest.Size(MaxValueLen)))
	}
	if value == nil {
		value = []byte{}
	}
	err := kv.s.db.Update(func(tx *bolt.Tx) error {
		if _, err := kv.s.getRecord(tx, kv.plugin); err != nil {
			return err
		}
		b, err := tx.Bucket(bucketKV).CreateBucketIfNotExists([]byte(kv.plugin))
		if err != nil {
			return err
		}
		used := kvSize(tx, kv.plugin)
		if old, ok := lookup(b, key); ok {
			used -= int64(len(key) + len(old))
		}
		used += int64(len(key) + len(value))
		if used > MaxKVTotal {
			return invalidf("plugin %q would store %d bytes, over its %s limit; delete keys first",
				kv.plugin, used, manifest.Size(MaxKVTotal))
		}
		if err := b.Put([]byte(key), value); err != nil {
			return err
		}
		return setKVSize(tx, kv.plugin, used)
	})
	if err != nil {
		return kv.errorf("set", key, err)
	}
	return nil
}

// Delete removes key. Deleting a missing key is not an error.
func (kv *KV) Delete(key string) error {
	if err := checkKey(key); err != nil {
		return kv.errorf("delete", key, err)
	}
	err := kv.s.db.Update(func(tx *bolt.Tx) error {
		b, err := kv.bucket(tx)
		if err != nil || b == nil {
			return err
		}
		old, ok := lookup(b, key)
		if !ok {
			return nil
		}
		if err := b.Delete([]byte(key)); err != nil {
			return err
		}
		return setKVSize(tx, kv.plugin, kvSize(tx, kv.plugin)-int64(len(key)+len(old)))
	})
	if err != nil {
		return kv.errorf("delete", key, err)
	}
	return nil
}

// List returns up to limit keys that start with prefix, in bytewise order;
// limit <= 0 means no limit.
func (kv *KV) List(prefix string, limit int) ([]string, error) {
	var keys []string
	err := kv.s.db.View(func(tx *bolt.Tx) error {
		b, err := kv.bucket(tx)
		if err != nil || b == nil {
			return err
		}
		c := b.Cursor()
		p := []byte(prefix)
		for k, _ := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, _ = c.Next() {
			if limit > 0 && len(keys) == limit {
				break
			}
			keys = append(keys, string(k))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list keys of plugin %q: %w", kv.plugin, err)
	}
	return keys, nil
}

// bucket returns the plugin's bucket, nil if it has stored nothing yet, or
// ErrNotFound if the plugin is not installed.
func (kv *KV) bucket(tx *bolt.Tx) (*bolt.Bucket, error) {
	if _, err := kv.s.getRecord(tx, kv.plugin); err != nil {
		return nil, err
	}
	return tx.Bucket(bucketKV).Bucket([]byte(kv.plugin)), nil
}

func (kv *KV) errorf(op, key string, err error) error {
	return fmt.Errorf("%s key %s of plugin %q: %w", op, shortKey(key), kv.plugin, err)
}

func checkKey(key string) error {
	switch {
	case key == "":
		return invalidf("key is empty")
	case len(key) > MaxKeyLen:
		return invalidf("key is %d bytes, over the %d-byte limit", len(key), MaxKeyLen)
	}
	return nil
}

// shortKey quotes a key for a message, eliding the middle of long ones.
func shortKey(key string) string {
	if len(key) > 64 {
		return fmt.Sprintf("%q…%q", key[:40], key[len(key)-16:])
	}
	return fmt.Sprintf("%q", key)
}

// lookup finds key in b. Unlike Bucket.Get it tells an empty value from a
// missing key.
func lookup(b *bolt.Bucket, key string) ([]byte, bool) {
	k, v := b.Cursor().Seek([]byte(key))
	return v, k != nil && string(k) == key
}

func kvSize(tx *bolt.Tx, plugin string) int64 {
	v := tx.Bucket(bucketKVSize).Get([]byte(plugin))
	if len(v) != 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(v))
}

func setKVSize(tx *bolt.Tx, plugin string, n int64) error {
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], uint64(max(n, 0)))
	return tx.Bucket(bucketKVSize).Put([]byte(plugin), buf[:])
}
