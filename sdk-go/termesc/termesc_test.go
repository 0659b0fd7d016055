package termesc

import (
	"encoding/json"
	"testing"
)

func TestString(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"empty", "", ""},
		{"plain", "hello world", "hello world"},
		{"tab kept", "a\tb", "a\tb"},
		{"unicode kept", "héllo → 世界 ✓", "héllo → 世界 ✓"},
		{"backslash kept", `C:\path \x1b`, `C:\path \x1b`},
		{"newline", "one\ntwo", `one\ntwo`},
		{"carriage return", "ok\rdaemon forged", `ok\rdaemon forged`},
		{"backspace", "abc\b\b\bxyz", `abc\b\b\bxyz`},
		{"bell, form feed, vtab", "\a\f\v", `\a\f\v`},
		{"NUL", "a\x00b", `a\x00b`},
		{"ESC CSI clear screen", "\x1b[2J\x1b[H", `\x1b[2J\x1b[H`},
		{"OSC title with BEL", "\x1b]0;pwned\x07", `\x1b]0;pwned\a`},
		{"OSC 52 clipboard", "\x1b]52;c;cm0gLXJmIC8=\x1b\\", `\x1b]52;c;cm0gLXJmIC8=\x1b\`},
		{"other C0", "\x01\x1f", `\x01\x1f`},
		{"DEL", "a\x7fb", `a\x7fb`},
		{"C1 CSI as UTF-8", "a\u009b2Jb", `a\u009b2Jb`},
		{"C1 NEL", "a\u0085b", `a\u0085b`},
		{"C1 range ends", "\u0080\u009f\u00a0", `\u0080\u009f` + "\u00a0"},
		{"raw C1 byte (invalid UTF-8)", "a\x9bb", `a\x9bb`},
		{"invalid UTF-8", "\xff\xfe", `\xff\xfe`},
		{"truncated UTF-8", "\xe4\xb8", `\xe4\xb8`},
		{"line separator", "a\u2028b\u2029c", `a\u2028b\u2029c`},
		{"bidi override (Trojan Source)", "x\u202eevil\u202c\u2066\u2069\u200f", `x\u202eevil\u202c\u2066\u2069\u200f`},
		{"replacement char kept", "\ufffd", "\ufffd"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := String(tt.in)
			if got != tt.want {
				t.Errorf("String(%q) = %q, want %q", tt.in, got, tt.want)
			}
			if Safe(tt.in) != (got == tt.in) {
				t.Errorf("Safe(%q) = %v, but String changes it: %v", tt.in, Safe(tt.in), got != tt.in)
			}
			if !Safe(got) {
				t.Errorf("String(%q) = %q is not safe", tt.in, got)
			}
		})
	}
}

func TestJSON(t *testing.T) {
	for _, text := range []string{
		"plain", "\x1b[31mred\x1b[0m", "a\x7fb", "a\u009bb", "a\u0085b\u2028", "x\u202eevil", "tab\tnl\ncr\r", "\xff raw",
	} {
		raw, err := json.Marshal(map[string]string{"text": text})
		if err != nil {
			t.Fatal(err)
		}
		got := JSON(raw)
		if !Safe(string(got)) {
			t.Errorf("JSON(%s) = %q is not terminal-safe", raw, got)
		}
		var back map[string]string
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatalf("JSON(%s) = %q is not JSON: %v", raw, got, err)
		}
		var orig map[string]string
		json.Unmarshal(raw, &orig)
		if back["text"] != orig["text"] {
			t.Errorf("JSON changed the value: %q, want %q", back["text"], orig["text"])
		}
	}
}

func FuzzString(f *testing.F) {
	for _, s := range []string{"", "a", "\x1b[2J", "\u009b", "\xff", "a\u202eb"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := String(s)
		if !Safe(got) {
			t.Fatalf("String(%q) = %q is not safe", s, got)
		}
		if Safe(s) && got != s {
			t.Fatalf("String changed safe %q to %q", s, got)
		}
	})
}
