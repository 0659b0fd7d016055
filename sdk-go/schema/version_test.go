package schema

import (
	"errors"
	"strings"
	"testing"
)

func TestNegotiate(t *testing.T) {
	tests := []struct {
		local, remote []uint16
		want          uint16
		wantErr       string
	}{
		{[]uint16{1}, []uint16{1}, 1, ""},
		{[]uint16{1, 2, 3}, []uint16{2, 3, 4}, 3, ""},
		{[]uint16{1, 2}, []uint16{2}, 2, ""},
		{[]uint16{1}, []uint16{2, 3}, 0, "peer speaks v2–v3 but this side speaks v1"},
		{[]uint16{1}, nil, 0, "peer speaks no versions"},
		{[]uint16{1}, []uint16{0}, 0, "mismatch"},
	}
	for _, tt := range tests {
		got, err := Negotiate("plugin", "this side", "peer", tt.local, tt.remote)
		if tt.wantErr != "" {
			var vm *VersionMismatchError
			if !errors.As(err, &vm) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Negotiate(%v, %v) error = %v, want %q", tt.local, tt.remote, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("Negotiate(%v, %v) = %d, %v; want %d", tt.local, tt.remote, got, err, tt.want)
		}
	}
}

func TestFormatVersions(t *testing.T) {
	for in, want := range map[string]string{
		"1":     "v1",
		"1,2,3": "v1–v3",
		"1,3":   "v1, v3",
		"3,1,2": "v1–v3",
		"":      "no versions",
	} {
		var vs []uint16
		for _, f := range strings.Split(in, ",") {
			if f != "" {
				vs = append(vs, uint16(f[0]-'0'))
			}
		}
		if got := FormatVersions(vs); got != want {
			t.Errorf("FormatVersions(%v) = %q, want %q", vs, got, want)
		}
	}
}
