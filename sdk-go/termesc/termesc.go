// Package termesc makes untrusted text safe to print on a terminal: no
// escape sequence, cursor movement, line break or bidirectional override
// in the text reaches the terminal. dimplugctl uses it for plugin logs;
// hosts that print what plugins say can use it too.
//
// String escapes, in Go's notation, every C0 control character except tab
// (\n, \r, \b, \a, \f, \v, \x1b, ...), DEL (\x7f), the C1 controls U+0080 to
// U+009F (\u009b, the one-character CSI, among them), the Unicode line and
// paragraph separators and the bidirectional formatting characters
// (U+200E, U+200F, U+202A to U+202E, U+2066 to U+2069), and each byte that
// is not valid UTF-8 (\xff). Everything else, backslashes included, is
// left as it is, so ordinary text reads the same.
package termesc

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// unsafeRune reports whether r must be escaped.
func unsafeRune(r rune) bool {
	switch {
	case r == '\t':
		return false
	case r < 0x20, r == 0x7f, r >= 0x80 && r <= 0x9f:
		return true
	case r == 0x2028, r == 0x2029, // line and paragraph separators
		r == 0x200e, r == 0x200f, // LRM, RLM
		r >= 0x202a && r <= 0x202e, // LRE, RLE, PDF, LRO, RLO
		r >= 0x2066 && r <= 0x2069: // LRI, RLI, FSI, PDI
		return true
	}
	return false
}

// Safe reports whether s prints as itself: String(s) == s.
func Safe(s string) bool {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c != '\t' && (c < 0x20 || c == 0x7f) {
				return false
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 || unsafeRune(r) {
			return false
		}
		i += size
	}
	return true
}

// String returns s with every character that could control a terminal
// escaped (see the package documentation). It returns s itself when
// nothing needs escaping.
func String(s string) string {
	if Safe(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 16)
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case !unsafeRune(r):
			b.WriteString(s[i : i+size])
		case r == '\a':
			b.WriteString(`\a`)
		case r == '\b':
			b.WriteString(`\b`)
		case r == '\f':
			b.WriteString(`\f`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\v':
			b.WriteString(`\v`)
		case r < 0x80:
			fmt.Fprintf(&b, `\x%02x`, r)
		default:
			fmt.Fprintf(&b, `\u%04x`, r)
		}
		i += size
	}
	return b.String()
}

// JSON makes encoded JSON (as from encoding/json, whose output is valid
// UTF-8 and escapes C0 controls already) safe for a terminal without
// changing what it decodes to: DEL, the C1 controls and the characters
// String escapes are rewritten as \uXXXX escapes. Such characters occur only
// inside JSON strings, where the escape means the same character.
func JSON(b []byte) []byte {
	if Safe(string(b)) {
		return b
	}
	out := make([]byte, 0, len(b)+16)
	for i := 0; i < len(b); {
		r, size := utf8.DecodeRune(b[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			// Not valid UTF-8, so not from encoding/json: drop nothing,
			// but let no raw byte through.
			out = fmt.Appendf(out, `\ufffd`)
		case r == '\t' || !unsafeRune(r):
			out = append(out, b[i:i+size]...)
		case r < 0x20 && (r == '\n' || r == '\r'):
			// Whitespace between JSON tokens (e.g. from MarshalIndent).
			out = append(out, byte(r))
		default:
			out = fmt.Appendf(out, `\u%04x`, r)
		}
		i += size
	}
	return out
}
