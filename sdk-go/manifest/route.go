package manifest

import (
	"fmt"
	"strings"
)

// MaxRouteLen bounds the length of a route template.
const MaxRouteLen = 1024

// Param is one route parameter captured by Route.Match.
type Param struct {
	Name  string // parameter name without its ":" or "*"
	Value string // raw path text, not percent-decoded
}

// Route is a parsed route template (see the package documentation for the
// syntax). The zero Route matches nothing. Routes are immutable and safe for
// concurrent use.
type Route struct {
	template string
	segs     []segment
	wildcard string // name of the final "*name" segment, "" if none
	nparams  int    // params in segs plus the wildcard
}

// segment is one path segment of a template: a literal or a ":param".
type segment struct {
	literal string
	param   string // non-empty for ":param" segments
}

// MethodMatches reports whether a hook declared for method hook (an
// uppercase method or "*") sees a request with method request: "*" sees
// every method, anything else only itself, compared exactly (HEAD is not
// GET). schema/conformance/routes.json has the cases.
func MethodMatches(hook, request string) bool { return hook == "*" || hook == request }

// ParseRoute parses an axum-style route template such as
// "/api/v1/stream/:gid/data/*path".
func ParseRoute(template string) (Route, error) {
	r, problem := parseRoute(template)
	if problem != "" {
		return Route{}, fmt.Errorf("route %q: %s", template, problem)
	}
	return r, nil
}

// parseRoute returns the route or a problem phrased to follow the template.
func parseRoute(t string) (Route, string) {
	switch {
	case t == "":
		return Route{}, "is empty"
	case len(t) > MaxRouteLen:
		return Route{}, fmt.Sprintf("is longer than %d bytes", MaxRouteLen)
	case t[0] != '/':
		return Route{}, `must start with "/"`
	case t == "/":
		return Route{template: t}, ""
	}
	parts := strings.Split(t[1:], "/")
	r := Route{template: t, segs: make([]segment, 0, len(parts))}
	seen := make(map[string]bool)
	addParam := func(name, form string) string {
		if name == "" {
			return fmt.Sprintf("has %q without a parameter name; write e.g. %q", form, form+"id")
		}
		if !identifier(name) {
			return fmt.Sprintf("has an invalid parameter name %q (want letters, digits and underscores, not starting with a digit)", name)
		}
		if seen[name] {
			return fmt.Sprintf("repeats parameter %q", name)
		}
		seen[name] = true
		r.nparams++
		return ""
	}
	for i, s := range parts {
		last := i == len(parts)-1
		switch {
		case s == "" && last:
			return Route{}, "ends with a slash; write it without the trailing slash"
		case s == "":
			return Route{}, `has an empty segment ("//")`
		case strings.ContainsAny(s, "{}"):
			return Route{}, fmt.Sprintf(`uses braces in segment %q; write ":name" for a parameter or "*name" for the rest of the path`, s)
		case s[0] == ':':
			if p := addParam(s[1:], ":"); p != "" {
				return Route{}, p
			}
			r.segs = append(r.segs, segment{param: s[1:]})
		case s[0] == '*':
			if !last {
				return Route{}, fmt.Sprintf("has %q before the last segment; a wildcard must come last", s)
			}
			if p := addParam(s[1:], "*"); p != "" {
				return Route{}, p
			}
			r.wildcard = s[1:]
		case s == "." || s == "..":
			return Route{}, fmt.Sprintf("has a %q segment; request paths are normalized, so it never matches", s)
		default:
			if p := literalProblem(s); p != "" {
				return Route{}, p
			}
			r.segs = append(r.segs, segment{literal: s})
		}
	}
	return r, ""
}

func identifier(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '_', 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case '0' <= c && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return s != ""
}

// literalProblem checks a literal segment against RFC 3986's pchar, minus
// ":" and "*", which would make the template ambiguous.
func literalProblem(s string) string {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("-._~!$&'()+,;=@", c) >= 0:
		case c == '%':
			if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
				return fmt.Sprintf("has a %% not followed by two hex digits in segment %q", s)
			}
			i += 2
		case c == ':' || c == '*':
			return fmt.Sprintf("has %q inside segment %q; it may only start a parameter segment", s[i:i+1], s)
		default:
			return fmt.Sprintf("has %q in segment %q, which is not allowed in a path (percent-encode it)", s[i:i+1], s)
		}
	}
	return ""
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// String returns the template the route was parsed from.
func (r Route) String() string { return r.template }

// Params returns the route's parameter names in template order, the
// wildcard last.
func (r Route) Params() []string {
	names := make([]string, 0, r.nparams)
	for _, s := range r.segs {
		if s.param != "" {
			names = append(names, s.param)
		}
	}
	if r.wildcard != "" {
		names = append(names, r.wildcard)
	}
	return names
}

// Match reports whether path (the URL path only: no query, not
// percent-decoded) matches the route, and returns the captured parameters in
// template order. A ":param" captures one non-empty segment; the final
// "*rest" captures the remainder after its slash, which must be non-empty
// and may contain slashes (as in axum). Literal segments compare byte for
// byte, and a trailing slash in path is significant.
//
// Match allocates only the returned slice, and nothing when the route has no
// parameters or path does not match; see AppendMatch to reuse a slice.
func (r Route) Match(path string) (params []Param, ok bool) {
	if r.nparams == 0 {
		_, ok = r.AppendMatch(nil, path)
		return nil, ok
	}
	var buf [8]Param
	ps, ok := r.AppendMatch(buf[:0], path)
	if !ok {
		return nil, false
	}
	params = make([]Param, len(ps))
	copy(params, ps)
	return params, true
}

// AppendMatch is Match that appends the captured parameters to dst. On no
// match it returns dst unchanged (its length restored) and false.
func (r Route) AppendMatch(dst []Param, path string) ([]Param, bool) {
	if r.template == "" || path == "" || path[0] != '/' {
		return dst, false
	}
	if len(r.segs) == 0 && r.wildcard == "" {
		return dst, path == "/"
	}
	n := len(dst)
	i := 1 // start of the next segment, just after a '/'
	for _, s := range r.segs {
		if i > len(path) {
			return dst[:n], false
		}
		end := strings.IndexByte(path[i:], '/')
		if end < 0 {
			end = len(path)
		} else {
			end += i
		}
		seg := path[i:end]
		switch {
		case seg == "":
			return dst[:n], false
		case s.param != "":
			dst = append(dst, Param{Name: s.param, Value: seg})
		case seg != s.literal:
			return dst[:n], false
		}
		i = end + 1
	}
	if r.wildcard != "" {
		if i >= len(path) {
			return dst[:n], false
		}
		return append(dst, Param{Name: r.wildcard, Value: path[i:]}), true
	}
	if i != len(path)+1 { // path has more after the last segment
		return dst[:n], false
	}
	return dst, true
}

// Overlaps reports whether some concrete path matches both r and o. A
// literal segment overlaps a parameter, two literals overlap only when equal,
// and a final "*rest" overlaps any non-empty remainder. It describes the sets
// of paths, not router priority: "/media/:id" and "/media/search" overlap
// even though axum would prefer the literal. A zero Route overlaps nothing.
func (r Route) Overlaps(o Route) bool {
	if r.template == "" || o.template == "" {
		return false
	}
	n := min(len(r.segs), len(o.segs))
	for i := 0; i < n; i++ {
		a, b := r.segs[i], o.segs[i]
		if a.param == "" && b.param == "" && a.literal != b.literal {
			return false
		}
	}
	rw, ow := r.wildcard != "", o.wildcard != ""
	switch {
	case len(r.segs) == len(o.segs):
		// Both end here: either both need a remainder or neither takes one.
		return rw == ow
	case len(r.segs) < len(o.segs):
		// o's extra segments are non-empty, so r's wildcard can take them.
		return rw
	default:
		return ow
	}
}
