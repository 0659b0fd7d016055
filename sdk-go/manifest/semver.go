package manifest

import "strings"

// semver reports whether v is a semantic version 2.0.0: MAJOR.MINOR.PATCH,
// then optionally a pre-release after "-" (dot-separated alphanumeric
// identifiers, numeric ones without leading zeros) and build metadata after
// "+" (dot-separated alphanumeric identifiers).
func semver(v string) bool {
	if len(v) > 128 {
		return false
	}
	v, build, hasBuild := strings.Cut(v, "+")
	core, pre, hasPre := strings.Cut(v, "-")
	nums := strings.Split(core, ".")
	if len(nums) != 3 {
		return false
	}
	for _, n := range nums {
		if !numeric(n) {
			return false
		}
	}
	if hasPre && !identifiers(pre, true) {
		return false
	}
	if hasBuild && !identifiers(build, false) {
		return false
	}
	return true
}

// numeric reports whether s is a non-negative decimal without leading zeros.
func numeric(s string) bool {
	if s == "" || (s[0] == '0' && len(s) > 1) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// identifiers checks a dot-separated list of [0-9A-Za-z-]+ identifiers;
// with strictNumbers, all-digit identifiers must not have leading zeros.
func identifiers(s string, strictNumbers bool) bool {
	for id := range strings.SplitSeq(s, ".") {
		if id == "" {
			return false
		}
		digits := true
		for i := 0; i < len(id); i++ {
			c := id[i]
			switch {
			case '0' <= c && c <= '9':
			case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', c == '-':
				digits = false
			default:
				return false
			}
		}
		if digits && strictNumbers && !numeric(id) {
			return false
		}
	}
	return true
}
