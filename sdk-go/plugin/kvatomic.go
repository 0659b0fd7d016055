package plugin

import (
	"context"
	"fmt"

	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// CompareAndSwap atomically stores new under key if the key holds old: with
// oldFound the key must exist with exactly old as its value, without it
// the key must be absent. It reports whether it swapped and the value
// stored after the call, so that a caller that lost a race can retry from
// the value that won:
//
//	cur, found, err := kv.Get(ctx, key)
//	for err == nil {
//		var ok bool
//		if ok, cur, found, err = kv.CompareAndSwap(ctx, key, cur, found, next(cur)); ok {
//			break
//		}
//	}
//
// For counters, Increment is simpler.
func (kv *KV) CompareAndSwap(ctx context.Context, key string, old []byte, oldFound bool, new []byte) (swapped bool, current []byte, found bool, err error) {
	return kv.cas(ctx, "compare-and-swap", key, old, oldFound, new, false)
}

// CompareAndDelete atomically deletes key if it holds old. It reports
// whether it deleted, and otherwise the value the key holds now.
func (kv *KV) CompareAndDelete(ctx context.Context, key string, old []byte) (deleted bool, current []byte, found bool, err error) {
	return kv.cas(ctx, "compare-and-delete", key, old, true, nil, true)
}

func (kv *KV) cas(ctx context.Context, op, key string, old []byte, oldFound bool, new []byte, del bool) (bool, []byte, bool, error) {
	if kv == nil {
		return false, nil, false, ErrKVUnavailable
	}
	c := kv.c.get()
	defer c.Release()
	fut, release := c.CompareAndSwap(ctx, func(p schema.KeyValue_compareAndSwap_Params) error {
		if err := p.SetKey(key); err != nil {
			return err
		}
		if err := p.SetOld(old); err != nil {
			return err
		}
		p.SetOldFound(oldFound)
		p.SetDelete(del)
		return p.SetNew(new)
	})
	defer release()
	res, err := fut.Struct()
	if err != nil {
		return false, nil, false, fmt.Errorf("kv %s %q: %w", op, key, err)
	}
	var cur []byte
	if res.Found() {
		v, err := res.Value()
		if err != nil {
			return false, nil, false, fmt.Errorf("kv %s %q: %w", op, key, err)
		}
		cur = append([]byte{}, v...)
	}
	return res.Swapped(), cur, res.Found(), nil
}

// Increment atomically adds delta (which may be negative) to the counter
// under key and returns the new count. A counter is stored as a decimal
// integer, so Get reads it as text; a missing key counts as 0. It fails
// when the key holds something else, or on overflow. Counters updated by
// concurrent hooks stay exact, which Get then Set does not guarantee.
func (kv *KV) Increment(ctx context.Context, key string, delta int64) (int64, error) {
	if kv == nil {
		return 0, ErrKVUnavailable
	}
	c := kv.c.get()
	defer c.Release()
	fut, release := c.Increment(ctx, func(p schema.KeyValue_increment_Params) error {
		p.SetDelta(delta)
		return p.SetKey(key)
	})
	defer release()
	res, err := fut.Struct()
	if err != nil {
		return 0, fmt.Errorf("kv increment %q: %w", key, err)
	}
	return res.Value(), nil
}
