package registry

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

func TestKVRoundTrip(t *testing.T) {
	s := openStore(t, t.TempDir())
	install(t, s, writePlugin(t, "kv", "1.0.0", ""), InstallOptions{})
	kv := s.KV("kv")

	if v, ok, err := kv.Get("missing"); v != nil || ok || err != nil {
		t.Errorf("Get missing = %q, %v, %v", v, ok, err)
	}
	for _, k := range []string{"b/2", "a", "b/1", "b/3", "c", "b"} {
		if err := kv.Set(k, []byte("value of "+k)); err != nil {
			t.Fatal(err)
		}
	}
	v, ok, err := kv.Get("b/1")
	if string(v) != "value of b/1" || !ok || err != nil {
		t.Errorf("Get = %q, %v, %v", v, ok, err)
	}
	// The returned value is a copy.
	v[0] = 'X'
	if again, _, _ := kv.Get("b/1"); string(again) != "value of b/1" {
		t.Errorf("changing a returned value changed the store: %q", again)
	}
	if err := kv.Set("a", []byte("new")); err != nil {
		t.Fatal(err)
	}
	if v, _, _ := kv.Get("a"); string(v) != "new" {
		t.Errorf("overwrite: %q", v)
	}
	// Empty and nil values exist and are not nil.
	if err := kv.Set("empty", nil); err != nil {
		t.Fatal(err)
	}
	if v, ok, err := kv.Get("empty"); v == nil || len(v) != 0 || !ok || err != nil {
		t.Errorf("Get empty = %#v, %v, %v", v, ok, err)
	}

	lists := []struct {
		prefix string
		limit  int
		want   []string
	}{
		{"", 0, []string{"a", "b", "b/1", "b/2", "b/3", "c", "empty"}},
		{"b/", 0, []string{"b/1", "b/2", "b/3"}},
		{"b", 2, []string{"b", "b/1"}},
		{"b/", -1, []string{"b/1", "b/2", "b/3"}},
		{"zzz", 0, nil},
	}
	for _, l := range lists {
		got, err := kv.List(l.prefix, l.limit)
		if err != nil || !reflect.DeepEqual(got, l.want) {
			t.Errorf("List(%q, %d) = %q, %v; want %q", l.prefix, l.limit, got, err, l.want)
		}
	}

	if err := kv.Delete("b/2"); err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete("b/2"); err != nil {
		t.Errorf("deleting a missing key: %v", err)
	}
	if err := kv.Delete("empty"); err != nil {
		t.Fatal(err)
	}
	if got, _ := kv.List("", 0); !reflect.DeepEqual(got, []string{"a", "b", "b/1", "b/3", "c"}) {
		t.Errorf("after delete: %q", got)
	}
}

func TestKVLimits(t *testing.T) {
	s := openStore(t, t.TempDir())
	install(t, s, writePlugin(t, "big", "1.0.0", ""), InstallOptions{})
	kv := s.KV("big")

	tests := []struct {
		name string
		err  error
		want string
	}{
		{"empty key", kv.Set("", []byte("x")), `set key "" of plugin "big": key is empty`},
		{"long key", kv.Set(strings.Repeat("k", MaxKeyLen+1), nil), `of plugin "big": key is 1025 bytes, over the 1024-byte limit`},
		{"long key get", third(kv.Get(strings.Repeat("k", MaxKeyLen+1))), "key is 1025 bytes, over the 1024-byte limit"},
		{"empty key delete", kv.Delete(""), "key is empty"},
		{"large value", kv.Set("v", make([]byte, MaxValueLen+1)), `set key "v" of plugin "big": value is 1048577 bytes, over the 1 MiB limit per value`},
	}
	for _, tt := range tests {
		if !errors.Is(tt.err, ErrInvalid) || !strings.Contains(tt.err.Error(), tt.want) {
			t.Errorf("%s: error %v, want ErrInvalid containing %q", tt.name, tt.err, tt.want)
		}
	}
	if err := kv.Set(strings.Repeat("k", MaxKeyLen), make([]byte, MaxValueLen)); err != nil {
		t.Errorf("largest key and value: %v", err)
	}

	// Fill up to the total limit, counting keys and values.
	value := make([]byte, MaxValueLen)
	used := int64(MaxKeyLen + MaxValueLen)
	for i := 0; used+int64(len("fill-00")+MaxValueLen) <= MaxKVTotal; i++ {
		key := fmt.Sprintf("fill-%02d", i)
		if err := kv.Set(key, value); err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		used += int64(len(key) + MaxValueLen)
	}
	err := kv.Set("one-more", value)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), fmt.Sprintf(`plugin "big" would store %d bytes, over its 64 MiB limit; delete keys first`, used+int64(len("one-more")+MaxValueLen))) {
		t.Fatalf("over the total limit: %v", err)
	}
	// Overwriting in place counts only the difference.
	if err := kv.Set("fill-00", value[:10]); err != nil {
		t.Fatal(err)
	}
	if err := kv.Set("fill-00", value); err != nil {
		t.Errorf("overwrite back to the same size: %v", err)
	}
	// Deleting frees space.
	if err := kv.Delete("fill-01"); err != nil {
		t.Fatal(err)
	}
	if err := kv.Set("one-more", value[:MaxValueLen-100]); err != nil {
		t.Errorf("after delete: %v", err)
	}
	// Another plugin has its own quota.
	install(t, s, writePlugin(t, "small", "1.0.0", ""), InstallOptions{})
	if err := s.KV("small").Set("x", value); err != nil {
		t.Errorf("other plugin: %v", err)
	}
}

func TestKVIsolationAndRemoval(t *testing.T) {
	s := openStore(t, t.TempDir())
	src := writePlugin(t, "one", "1.0.0", "")
	install(t, s, src, InstallOptions{})
	install(t, s, writePlugin(t, "two", "1.0.0", ""), InstallOptions{})
	if err := s.KV("one").Set("k", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if err := s.KV("two").Set("k", []byte("2")); err != nil {
		t.Fatal(err)
	}
	if v, _, _ := s.KV("one").Get("k"); string(v) != "1" {
		t.Errorf("one sees %q", v)
	}
	if v, _, _ := s.KV("two").Get("k"); string(v) != "2" {
		t.Errorf("two sees %q", v)
	}
	if keys, _ := s.KV("two").List("", 0); !reflect.DeepEqual(keys, []string{"k"}) {
		t.Errorf("two lists %q", keys)
	}

	if err := s.Remove("one"); err != nil {
		t.Fatal(err)
	}
	kv := s.KV("one")
	for name, err := range map[string]error{
		"Get":    third(kv.Get("k")),
		"Set":    kv.Set("k", []byte("x")),
		"Delete": kv.Delete("k"),
		"List":   second(kv.List("", 0)),
	} {
		if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `plugin "one" is not installed`) {
			t.Errorf("%s after Remove = %v", name, err)
		}
	}
	// A reinstall starts empty, and the other plugin is untouched.
	install(t, s, src, InstallOptions{})
	if _, ok, _ := s.KV("one").Get("k"); ok {
		t.Error("data survived Remove")
	}
	if v, _, _ := s.KV("two").Get("k"); !bytes.Equal(v, []byte("2")) {
		t.Errorf("two lost its data: %q", v)
	}
}

func third[T, U any](_ T, _ U, err error) error { return err }
