//go:build linux

package escapetest

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// These tests run on the host, unsandboxed, so they only make attempts that
// are harmless there. They check that attempts report honestly: what the
// host allows is reported as an escape.

func TestRegistry(t *testing.T) {
	all := All()
	if len(all) < 20 {
		t.Errorf("only %d attempts", len(all))
	}
	seen := map[string]bool{}
	for _, a := range all {
		switch {
		case a.Name == "" || strings.ContainsAny(a.Name, " =&/"):
			t.Errorf("attempt name %q is not a plain word", a.Name)
		case seen[a.Name]:
			t.Errorf("attempt %q is listed twice", a.Name)
		case a.Description == "" || a.Run == nil:
			t.Errorf("attempt %q lacks a description or a Run", a.Name)
		}
		seen[a.Name] = true
		if got, ok := Lookup(a.Name); !ok || got.Name != a.Name {
			t.Errorf("Lookup(%q) = %q, %v", a.Name, got.Name, ok)
		}
	}
	if _, ok := Lookup("no-such-attempt"); ok {
		t.Error("Lookup found an attempt that does not exist")
	}
	if last := all[len(all)-1].Name; last != "memory-bomb" {
		t.Errorf("the last attempt is %q; the memory bomb, which ends the process, must be last", last)
	}
	all[0].Name = "changed"
	if All()[0].Name == "changed" {
		t.Error("All returns the registry itself, not a copy")
	}
	if err := Syscall("no-such-call"); err == nil || !strings.Contains(err.Error(), "unknown") {
		t.Errorf("Syscall of an unknown name: %v", err)
	}
}

func TestResultString(t *testing.T) {
	if got := (Result{Blocked: true, Errno: "EPERM", Detail: "mount: EPERM"}).String(); got != "blocked: mount: EPERM" {
		t.Errorf("blocked: %q", got)
	}
	if got := (Result{Detail: "mount: succeeded"}).String(); got != "ESCAPED: mount: succeeded" {
		t.Errorf("escaped: %q", got)
	}
}

func TestHonestOnHost(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "plugin.toml"), []byte("name = \"x\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	defer func() { ln.Close(); <-done }()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()

	tests := []struct {
		attempt, arg string
		blocked      bool
		errno        string
	}{
		{"read-state-dir", dir, false, ""},
		{"read-state-dir", filepath.Join(dir, "missing"), true, "ENOENT"},
		{"read-state-dir", "", false, ""}, // nothing tried
		{"connect-loopback", ln.Addr().String(), false, ""},
		{"connect-loopback", closedAddr, true, "ECONNREFUSED"},
		{"connect-control-socket", filepath.Join(dir, "none.sock"), true, "ENOENT"},
		{"kill-daemon", strconv.Itoa(os.Getpid()), false, ""},
	}
	for _, tc := range tests {
		a, ok := Lookup(tc.attempt)
		if !ok {
			t.Fatalf("no attempt %q", tc.attempt)
		}
		r := a.Run(tc.arg)
		if r.Blocked != tc.blocked || r.Errno != tc.errno {
			t.Errorf("%s %q: got %+v, want blocked=%v errno=%q", tc.attempt, tc.arg, r, tc.blocked, tc.errno)
		}
	}
}
