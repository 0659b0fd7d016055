package manifest

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Size is a number of bytes. In manifests it is written as an integer or as
// a string with a unit: B, KiB, MiB, GiB, TiB (powers of 1024) or KB, MB,
// GB, TB (powers of 1000), e.g. "64MiB". Its text form (TOML and JSON) is
// the exact compact one ("64MiB"); String gives a form for people
// ("64 MiB").
type Size int64

// Common sizes.
const (
	KiB Size = 1 << 10
	MiB Size = 1 << 20
	GiB Size = 1 << 30
	TiB Size = 1 << 40
)

type sizeUnit struct {
	name string
	n    Size
}

// units are the units ParseSize accepts, binary ones first.
var units = []sizeUnit{
	{"TiB", TiB}, {"GiB", GiB}, {"MiB", MiB}, {"KiB", KiB},
	{"TB", 1e12}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3},
	{"B", 1},
}

// ParseSize parses a size such as "64MiB", "64 MiB", "1GB" or "4096". Only
// whole numbers are accepted.
func ParseSize(s string) (Size, error) {
	num := strings.TrimRight(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
	unit := s[len(num):]
	num = strings.TrimSuffix(num, " ")
	bad := func() (Size, error) {
		return 0, fmt.Errorf("%q is not a size (want a whole number of bytes, or one with a unit B, KiB, MiB, GiB, TiB, KB, MB, GB or TB, e.g. \"64MiB\")", s)
	}
	if num == "" || strings.IndexFunc(num, func(r rune) bool { return r < '0' || r > '9' }) >= 0 {
		return bad()
	}
	mult := Size(1)
	if unit != "" {
		found := false
		for _, u := range units {
			if u.name == unit {
				mult, found = u.n, true
				break
			}
		}
		if !found {
			return bad()
		}
	}
	v, err := strconv.ParseInt(num, 10, 64)
	if err != nil || v > math.MaxInt64/int64(mult) {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return Size(v) * mult, nil
}

// String returns the size for people: exact in the unit that gives the
// smallest number ("64 MiB", "500 MB", "1023 B"), or rounded to one decimal
// in binary units when that number would be 1024 or more ("1.5 KiB").
func (s Size) String() string {
	if s < 0 {
		return "-" + (-s).String()
	}
	n, unit := s.exact()
	if n < 1024 {
		return fmt.Sprintf("%d %s", n, unit)
	}
	for _, u := range units[:4] {
		if s >= u.n {
			return strconv.FormatFloat(float64(s)/float64(u.n), 'f', 1, 64) + " " + u.name
		}
	}
	return fmt.Sprintf("%d B", int64(s))
}

// exact returns s in the unit that divides it and gives the smallest
// number.
func (s Size) exact() (Size, string) {
	best, name := s, "B"
	for _, u := range units {
		if s%u.n == 0 && s/u.n < best {
			best, name = s/u.n, u.name
		}
	}
	return best, name
}

// MarshalText implements encoding.TextMarshaler with the exact compact form
// ("64MiB", "1536B").
func (s Size) MarshalText() ([]byte, error) {
	if s < 0 {
		return nil, fmt.Errorf("size %d is negative", int64(s))
	}
	n, unit := s.exact()
	return []byte(strconv.FormatInt(int64(n), 10) + unit), nil
}

// UnmarshalText implements encoding.TextUnmarshaler using ParseSize.
func (s *Size) UnmarshalText(text []byte) error {
	v, err := ParseSize(string(text))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// UnmarshalJSON accepts a JSON string (see ParseSize) or a JSON integer of
// bytes.
func (s *Size) UnmarshalJSON(data []byte) error {
	if len(data) > 0 && data[0] == '"' {
		var str string
		if err := json.Unmarshal(data, &str); err != nil {
			return err
		}
		return s.UnmarshalText([]byte(str))
	}
	var n int64
	if err := json.Unmarshal(data, &n); err != nil {
		return fmt.Errorf("size: want a string like \"64MiB\" or an integer, got %s", data)
	}
	*s = Size(n)
	return nil
}
