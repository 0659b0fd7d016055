package registry

import (
	"bytes"
	"math"
	"strconv"

	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	bolt "go.etcd.io/bbolt"
)

// CompareAndSwap atomically replaces the value of key with new if it is
// old: with oldFound, the key must exist and hold exactly old; without,
// the key must be absent. With del the key is deleted instead of set. It
// reports whether it swapped, and the value stored after the call (a copy)
// and whether there is one, so a caller that lost a race retries from
// what won. It is one durable transaction and checks the same limits as
// Set.
func (kv *KV) CompareAndSwap(key string, old []byte, oldFound bool, new []byte, del bool) (swapped bool, value []byte, found bool, err error) {
	if err := checkKey(key); err != nil {
		return false, nil, false, kv.errorf("compare-and-swap", key, err)
	}
	if !del && len(new) > MaxValueLen {
		return false, nil, false, kv.errorf("compare-and-swap", key, invalidf("value is %d bytes, over the %s limit per value",
			len(new), manifest.Size(MaxValueLen)))
	}
	err = kv.s.db.Update(func(tx *bolt.Tx) error {
		if _, err := kv.s.getRecord(tx, kv.plugin); err != nil {
			return err
		}
		b := tx.Bucket(bucketKV).Bucket([]byte(kv.plugin))
		var cur []byte
		if b != nil {
			cur, found = lookup(b, key)
		}
		if found != oldFound || (found && !bytes.Equal(cur, old)) {
			value = bytes.Clone(cur)
			return nil
		}
		swapped = true
		if del {
			value, found = nil, false
			if b == nil || !oldFound {
				return nil
			}
			return kv.deleteIn(tx, b, key, cur)
		}
		value, found = bytes.Clone(new), true
		if value == nil {
			value = []byte{}
		}
		return kv.putIn(tx, key, cur, oldFound, value)
	})
	if err != nil {
		return false, nil, false, kv.errorf("compare-and-swap", key, err)
	}
	return swapped, value, found, nil
}

// Increment atomically adds delta to the value of key, a decimal integer
// (a missing key counts as 0), stores the sum in decimal and returns it.
// It fails with ErrInvalid when the value is not an integer or the sum
// overflows an int64. It is one durable transaction.
func (kv *KV) Increment(key string, delta int64) (int64, error) {
	if err := checkKey(key); err != nil {
		return 0, kv.errorf("increment", key, err)
	}
	var sum int64
	err := kv.s.db.Update(func(tx *bolt.Tx) error {
		if _, err := kv.s.getRecord(tx, kv.plugin); err != nil {
			return err
		}
		var cur []byte
		var found bool
		if b := tx.Bucket(bucketKV).Bucket([]byte(kv.plugin)); b != nil {
			cur, found = lookup(b, key)
		}
		var n int64
		if found {
			var err error
			if n, err = strconv.ParseInt(string(cur), 10, 64); err != nil {
				return invalidf("the value is %s, not a decimal integer", shortValue(cur))
			}
		}
		if (delta > 0 && n > math.MaxInt64-delta) || (delta < 0 && n < math.MinInt64-delta) {
			return invalidf("%d + %d overflows a 64-bit integer", n, delta)
		}
		sum = n + delta
		return kv.putIn(tx, key, cur, found, []byte(strconv.FormatInt(sum, 10)))
	})
	if err != nil {
		return 0, kv.errorf("increment", key, err)
	}
	return sum, nil
}

// putIn stores value under key in tx, keeping the plugin's size, whose old
// value (if found) was old; it enforces MaxKVTotal.
func (kv *KV) putIn(tx *bolt.Tx, key string, old []byte, found bool, value []byte) error {
	b, err := tx.Bucket(bucketKV).CreateBucketIfNotExists([]byte(kv.plugin))
	if err != nil {
		return err
	}
	used := kvSize(tx, kv.plugin)
	if found {
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
}

// deleteIn deletes key, whose value is old, from the plugin's bucket b.
func (kv *KV) deleteIn(tx *bolt.Tx, b *bolt.Bucket, key string, old []byte) error {
	if err := b.Delete([]byte(key)); err != nil {
		return err
	}
	return setKVSize(tx, kv.plugin, kvSize(tx, kv.plugin)-int64(len(key)+len(old)))
}

// shortValue quotes a value for a message, eliding long ones.
func shortValue(v []byte) string {
	if len(v) > 32 {
		return strconv.Quote(string(v[:32])) + "…"
	}
	return strconv.Quote(string(v))
}
