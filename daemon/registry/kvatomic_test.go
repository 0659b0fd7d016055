package registry

import (
	"errors"
	"strings"
	"sync"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// TestKVCompareAndSwap: the swap happens only when the key holds the
// expected value (or is absent when none is expected); a lost race
// answers what is there; deletes, limits and the size account hold.
func TestKVCompareAndSwap(t *testing.T) {
	s := openStore(t, t.TempDir())
	install(t, s, writePlugin(t, "p", "1.0.0", ""), InstallOptions{})
	kv := s.KV("p")
	cas := func(key, old string, oldFound bool, new string, del bool) (bool, string, bool) {
		t.Helper()
		var nb []byte
		if !del {
			nb = []byte(new)
		}
		ok, cur, found, err := kv.CompareAndSwap(key, []byte(old), oldFound, nb, del)
		if err != nil {
			t.Fatalf("cas %q: %v", key, err)
		}
		return ok, string(cur), found
	}
	if ok, cur, found := cas("k", "", false, "a", false); !ok || cur != "a" || !found {
		t.Fatalf("create absent: %v %q %v", ok, cur, found)
	}
	if ok, cur, found := cas("k", "", false, "b", false); ok || cur != "a" || !found {
		t.Fatalf("create present: %v %q %v", ok, cur, found)
	}
	if ok, cur, _ := cas("k", "x", true, "b", false); ok || cur != "a" {
		t.Fatalf("wrong old: %v %q", ok, cur)
	}
	if ok, cur, _ := cas("k", "a", true, "b", false); !ok || cur != "b" {
		t.Fatalf("right old: %v %q", ok, cur)
	}
	if ok, cur, found := cas("k", "b", true, "", true); !ok || found || cur != "" {
		t.Fatalf("delete: %v %q %v", ok, cur, found)
	}
	if ok, _, found := cas("k", "b", true, "c", false); ok || found {
		t.Fatalf("old on an absent key: %v %v", ok, found)
	}
	// An empty value is a value.
	if ok, _, found := cas("e", "", false, "", false); !ok || !found {
		t.Fatalf("empty value: %v %v", ok, found)
	}
	if ok, _, _ := cas("e", "", true, "x", false); !ok {
		t.Fatal("swap from an empty value failed")
	}
	if _, _, _, err := kv.CompareAndSwap("big", nil, false, make([]byte, MaxValueLen+1), false); !errors.Is(err, ErrInvalid) {
		t.Fatalf("oversized value: %v", err)
	}
	if _, _, _, err := kv.CompareAndSwap("", nil, false, nil, false); !errors.Is(err, ErrInvalid) {
		t.Fatalf("empty key: %v", err)
	}
	if _, _, _, err := s.KV("nobody").CompareAndSwap("k", nil, false, nil, false); !errors.Is(err, ErrNotFound) {
		t.Fatalf("not installed: %v", err)
	}
	// The size account: "e"+"x" is all that is left.
	if got := kvSizeOf(t, s, "p"); got != 2 {
		t.Errorf("stored size %d, want 2", got)
	}
}

func kvSizeOf(t *testing.T, s *Store, plugin string) int64 {
	t.Helper()
	var n int64
	if err := s.db.View(func(tx *bolt.Tx) error { n = kvSize(tx, plugin); return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestKVIncrement: concurrent increments all count; a missing key starts
// at 0; a value that is not an integer, and overflow, are refused without
// a change.
func TestKVIncrement(t *testing.T) {
	s := openStore(t, t.TempDir())
	install(t, s, writePlugin(t, "p", "1.0.0", ""), InstallOptions{})
	kv := s.KV("p")
	const n = 50
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := kv.Increment("views", 2); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if v, _, _ := kv.Get("views"); string(v) != "100" {
		t.Fatalf("after %d concurrent increments by 2: %q", n, v)
	}
	if sum, err := kv.Increment("views", -101); err != nil || sum != -1 {
		t.Fatalf("decrement: %d, %v", sum, err)
	}
	if err := kv.Set("text", []byte("twelve")); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Increment("text", 1); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `"twelve", not a decimal integer`) {
		t.Fatalf("increment of text: %v", err)
	}
	if err := kv.Set("max", []byte("9223372036854775807")); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Increment("max", 1); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "overflows") {
		t.Fatalf("overflow: %v", err)
	}
	if v, _, _ := kv.Get("max"); string(v) != "9223372036854775807" {
		t.Fatalf("overflow changed the value: %q", v)
	}
	want := int64(len("views") + len("-1") + len("text") + len("twelve") + len("max") + len("9223372036854775807"))
	if got := kvSizeOf(t, s, "p"); got != want {
		t.Errorf("stored size %d, want %d", got, want)
	}
}
