package manifest

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want Size
		err  string
	}{
		{"0", 0, ""},
		{"4096", 4096, ""},
		{"4096B", 4096, ""},
		{"64MiB", 64 << 20, ""},
		{"64 MiB", 64 << 20, ""},
		{"1KiB", 1024, ""},
		{"2GiB", 2 << 30, ""},
		{"1TiB", 1 << 40, ""},
		{"1KB", 1000, ""},
		{"16MB", 16e6, ""},
		{"3GB", 3e9, ""},
		{"2TB", 2e12, ""},
		{"8388607TiB", 8388607 << 40, ""},
		{"8388608TiB", 0, "too large"},
		{"99999999999999999999", 0, "too large"},
		{"", 0, "is not a size"},
		{"MiB", 0, "is not a size"},
		{"64mib", 0, "is not a size"},
		{"64M", 0, "is not a size"},
		{"1.5GiB", 0, "is not a size"},
		{"-1MiB", 0, "is not a size"},
		{" 64MiB", 0, "is not a size"},
		{"64  MiB", 0, "is not a size"},
		{"64MiB ", 0, "is not a size"},
		{"0x10", 0, "is not a size"},
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseSize(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
}

func TestSizeText(t *testing.T) {
	tests := []struct {
		s         Size
		str, text string
	}{
		{0, "0 B", "0B"},
		{1, "1 B", "1B"},
		{1000, "1 KB", "1KB"},
		{1023, "1023 B", "1023B"},
		{1024, "1 KiB", "1KiB"},
		{1536, "1.5 KiB", "1536B"},
		{64 * MiB, "64 MiB", "64MiB"},
		{16e6, "16 MB", "16MB"},
		{3 * GiB / 2, "1.5 GiB", "1536MiB"},
		{5*GiB + 1, "5.0 GiB", "5368709121B"},
		{-MiB, "-1 MiB", ""},
	}
	for _, tt := range tests {
		if got := tt.s.String(); got != tt.str {
			t.Errorf("Size(%d).String() = %q, want %q", int64(tt.s), got, tt.str)
		}
		text, err := tt.s.MarshalText()
		if tt.text == "" {
			if err == nil {
				t.Errorf("Size(%d).MarshalText succeeded, want error", int64(tt.s))
			}
			continue
		}
		if string(text) != tt.text || err != nil {
			t.Errorf("Size(%d).MarshalText() = %q, %v; want %q", int64(tt.s), text, err, tt.text)
		}
		var back Size
		if err := back.UnmarshalText(text); err != nil || back != tt.s {
			t.Errorf("UnmarshalText(%q) = %d, %v; want %d", text, back, err, tt.s)
		}
	}
}

func TestSizeJSON(t *testing.T) {
	var v struct{ A, B Size }
	if err := json.Unmarshal([]byte(`{"A":"64MiB","B":1024}`), &v); err != nil {
		t.Fatal(err)
	}
	if v.A != 64*MiB || v.B != KiB {
		t.Errorf("got %+v", v)
	}
	b, _ := json.Marshal(v)
	if string(b) != `{"A":"64MiB","B":"1KiB"}` {
		t.Errorf("marshal = %s", b)
	}
	if err := json.Unmarshal([]byte(`{"A":true}`), &v); err == nil {
		t.Error("want error for a boolean size")
	}
}
