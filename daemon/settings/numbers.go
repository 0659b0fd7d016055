package settings

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
)

// The validator computes with exact rationals (math/big), and a number it
// cannot convert (math/big refuses a decimal exponent beyond a million,
// counting the digits after the point) makes it drop a keyword or fail
// with a nil pointer. Numbers in schemas and in values are therefore
// checked first: a JSON number of at most MaxNumberLen characters, its
// exponent within ±MaxExponent. A json.Number built in Go code is checked
// the same way.

// Bounds of a number in a schema or in settings values: 1e1000 is
// allowed, 1e1001 is not. Both are far beyond what a float64 holds (about
// 1.8e308, 17 significant digits), and small enough to stay cheap.
const (
	MaxExponent  = 1000
	MaxNumberLen = 1000
)

var jsonNumberPattern = regexp.MustCompile(`^-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE]([+-]?[0-9]+))?$`)

// numberProblem says what is wrong with a number, or returns "".
func numberProblem(n json.Number) string {
	if len(n) > MaxNumberLen {
		return fmt.Sprintf("is a number of more than %d characters", MaxNumberLen)
	}
	m := jsonNumberPattern.FindStringSubmatch(string(n))
	if m == nil {
		return "is not a valid JSON number"
	}
	if m[1] != "" {
		if e, err := strconv.Atoi(m[1]); err != nil || e > MaxExponent || e < -MaxExponent {
			return fmt.Sprintf("is a number whose exponent is beyond ±%d", MaxExponent)
		}
	}
	return ""
}

// badNumbers calls add for every number below v that numberProblem
// refuses, with its location.
func badNumbers(v any, loc []string, add func(loc []string, reason string)) {
	switch v := v.(type) {
	case json.Number:
		if p := numberProblem(v); p != "" {
			add(loc, p)
		}
	case map[string]any:
		for _, k := range sortedKeys(v) {
			badNumbers(v[k], append(loc[:len(loc):len(loc)], k), add)
		}
	case []any:
		for i, e := range v {
			badNumbers(e, append(loc[:len(loc):len(loc)], strconv.Itoa(i)), add)
		}
	}
}
