package manifest

import (
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

var namePattern = regexp.MustCompile(`^[a-z][a-z0-9-]{0,39}$`)

// ValidName reports whether s is a valid name of a plugin, hook, stream or
// page: 1 to 40 lowercase letters, digits or dashes, starting with a
// letter.
func ValidName(s string) bool { return namePattern.MatchString(s) }

const nameRule = "want 1 to 40 lowercase letters, digits or dashes, starting with a letter"

// MaxDescriptionLen bounds a manifest's description.
const MaxDescriptionLen = 1024

// raw* mirror the TOML layout. Tables are typed so that MetaData.Undecoded
// finds unknown keys; values are `any` so that a wrong type becomes one
// problem on the list instead of aborting the decode.
type rawManifest struct {
	Name        any             `toml:"name"`
	Version     any             `toml:"version"`
	Description any             `toml:"description"`
	Entrypoint  any             `toml:"entrypoint"`
	Args        any             `toml:"args"`
	API         *rawAPI         `toml:"api"`
	Hooks       []rawHook       `toml:"hooks"`
	Streams     []rawStream     `toml:"streams"`
	Permissions *rawPermissions `toml:"permissions"`
	Settings    *rawSettings    `toml:"settings"`
	UI          *rawUI          `toml:"ui"`
}

type rawAPI struct {
	Min any `toml:"min"`
	Max any `toml:"max"`
}

type rawHook struct {
	Name     any `toml:"name"`
	Phase    any `toml:"phase"`
	Method   any `toml:"method"`
	Route    any `toml:"route"`
	Priority any `toml:"priority"`
	Deadline any `toml:"deadline"`
	Failure  any `toml:"failure"`
}

type rawStream struct {
	Name     any `toml:"name"`
	Kind     any `toml:"kind"`
	Role     any `toml:"role"`
	Priority any `toml:"priority"`
	Deadline any `toml:"deadline"`
	Failure  any `toml:"failure"`
}

type rawPermissions struct {
	Memory        any `toml:"memory"`
	Pids          any `toml:"pids"`
	CPU           any `toml:"cpu"`
	Tmp           any `toml:"tmp"`
	OpenFiles     any `toml:"open_files"`
	ReadOnlyPaths any `toml:"read_only_paths"`
	OutboundHosts any `toml:"outbound_hosts"`
}

type rawSettings struct {
	Global *rawSettingsScope `toml:"global"`
	User   *rawSettingsScope `toml:"user"`
}

type rawSettingsScope struct {
	Schema any `toml:"schema"`
	UI     any `toml:"ui"`
}

// knownKeys lists the keys of each table, by the table's dotted path (array
// elements share their array's path). It must match the raw* tags.
var knownKeys = map[string][]string{
	"":                {"name", "version", "description", "entrypoint", "args", "api", "hooks", "streams", "permissions", "settings", "ui"},
	"api":             {"min", "max"},
	"hooks":           {"name", "phase", "method", "route", "priority", "deadline", "failure"},
	"streams":         {"name", "kind", "role", "priority", "deadline", "failure"},
	"permissions":     {"memory", "pids", "cpu", "tmp", "open_files", "read_only_paths", "outbound_hosts"},
	"settings":        {"global", "user"},
	"settings.global": {"schema", "ui"},
	"settings.user":   {"schema", "ui"},
	"ui":              {"pages"},
	"ui.pages":        {"id", "title", "slot", "route"},
}

// Parse parses and validates a manifest and applies its defaults. source
// names the file in errors (Load passes "plugin.toml"). It reports every
// problem it finds, joined with errors.Join (one per line), each naming the
// file and the field; a TOML syntax error is reported alone, with its line
// and column.
func Parse(data []byte, source string) (*Manifest, error) {
	if source == "" {
		source = FileName
	}
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("%s: file is larger than the %s limit", source, Size(MaxFileSize))
	}
	// The generic decode catches syntax errors and lets us check the shape
	// of tables before the typed decode, which would stop at the first
	// mismatch with a message naming Go types.
	var doc map[string]any
	if _, err := toml.Decode(string(data), &doc); err != nil {
		return nil, syntaxError(source, err)
	}
	d := &decoder{source: source, doc: doc}
	if !d.checkShape() {
		return nil, d.err()
	}
	var raw rawManifest
	md, err := toml.Decode(string(data), &raw)
	if err != nil {
		return nil, syntaxError(source, err)
	}
	d.unknownKeys(md)
	m := d.manifest(&raw)
	if err := d.err(); err != nil {
		return nil, err
	}
	return m, nil
}

func syntaxError(source string, err error) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		return &tomlError{source: source, pe: pe}
	}
	return fmt.Errorf("%s: %w", source, err)
}

// tomlError is a TOML syntax error with its position.
type tomlError struct {
	source string
	pe     toml.ParseError
}

func (e *tomlError) Error() string {
	return fmt.Sprintf("%s: line %d, column %d: %s", e.source, e.pe.Position.Line, e.pe.Position.Col, escapeControl(e.pe.Message))
}

// escapeControl escapes control characters (the parser quotes the input
// it chokes on), so that an error stays one line per problem.
func escapeControl(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// Unwrap gives access to the toml.ParseError.
func (e *tomlError) Unwrap() error { return e.pe }

// decoder collects problems while turning a raw manifest into a Manifest.
type decoder struct {
	source string
	doc    map[string]any // the generic decode, for shapes and array indexes
	errs   []error
}

func (d *decoder) addf(field, format string, args ...any) {
	d.errs = append(d.errs, fmt.Errorf("%s: %s: %s", d.source, field, fmt.Sprintf(format, args...)))
}

func (d *decoder) err() error { return errors.Join(d.errs...) }

// checkShape reports tables and arrays of tables written as something else.
func (d *decoder) checkShape() bool {
	for _, key := range []string{"api", "permissions", "settings"} {
		if v, ok := d.doc[key]; ok {
			if _, ok := v.(map[string]any); !ok {
				d.addf(key, "want a table ([%s]), got %s", key, typeName(v))
			}
		}
	}
	if settings, ok := d.doc["settings"].(map[string]any); ok {
		for _, scope := range []string{"global", "user"} {
			if v, ok := settings[scope]; ok {
				if _, ok := v.(map[string]any); !ok {
					d.addf("settings."+scope, "want a table ([settings.%s]), got %s", scope, typeName(v))
				}
			}
		}
	}
	for _, key := range []string{"hooks", "streams"} {
		v, ok := d.doc[key]
		if !ok {
			continue
		}
		switch v := v.(type) {
		case []map[string]any:
		case []any:
			for i, el := range v {
				if _, ok := el.(map[string]any); !ok {
					d.addf(fmt.Sprintf("%s[%d]", key, i), "want a table, got %s", typeName(el))
				}
			}
		default:
			d.addf(key, "want an array of tables ([[%s]]), got %s", key, typeName(v))
		}
	}
	d.caseClashes("", d.doc)
	return len(d.errs) == 0
}

// caseClashes reports keys of one table that differ only in case ("hooks"
// and "hoOks"): the typed decode matches keys case-insensitively, so it
// would take either, depending on map order.
func (d *decoder) caseClashes(path string, v any) {
	switch v := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		seen := map[string]string{}
		for _, k := range keys {
			field := k
			if path != "" {
				field = path + "." + k
			}
			if other, ok := seen[strings.ToLower(k)]; ok {
				d.addf(field, "clashes with %q: keys differ only in case (keys are case-sensitive)", other)
			} else {
				seen[strings.ToLower(k)] = k
			}
			d.caseClashes(field, v[k])
		}
	case []map[string]any:
		for i, el := range v {
			d.caseClashes(fmt.Sprintf("%s[%d]", path, i), el)
		}
	case []any:
		for i, el := range v {
			d.caseClashes(fmt.Sprintf("%s[%d]", path, i), el)
		}
	}
}

// tables returns the array of tables at key in the generic decode.
func (d *decoder) tables(key string) []map[string]any {
	switch v := d.doc[key].(type) {
	case []map[string]any:
		return v
	case []any:
		out := make([]map[string]any, 0, len(v))
		for _, el := range v {
			t, _ := el.(map[string]any)
			out = append(out, t)
		}
		return out
	}
	return nil
}

// unknownKeys reports keys the format does not know: those the typed decode
// left undecoded, and those it matched only case-insensitively.
func (d *decoder) unknownKeys(md toml.MetaData) {
	undecoded := make(map[string]bool)
	report := func(k toml.Key) {
		parent := strings.Join(k[:len(k)-1], ".")
		known, ok := knownKeys[parent]
		if !ok {
			// Below an unknown key (already reported) or below a value
			// of the wrong type (reported by its type check).
			return
		}
		name := k[len(k)-1]
		msg := "unknown key"
		if s := suggest(name, known); s != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", s)
		}
		for _, field := range d.fieldPaths(k) {
			d.addf(field, "%s", msg)
		}
	}
	for _, k := range md.Undecoded() {
		if s := k.String(); !undecoded[s] {
			undecoded[s] = true
			report(k)
		}
	}
	// BurntSushi/toml falls back to case-insensitive field matching; the
	// format is case-sensitive.
	seen := make(map[string]bool)
	for _, k := range md.Keys() {
		s := k.String()
		if undecoded[s] || seen[s] {
			continue
		}
		seen[s] = true
		if known, ok := knownKeys[strings.Join(k[:len(k)-1], ".")]; ok && !slices.Contains(known, k[len(k)-1]) {
			report(k)
		}
	}
}

// fieldPaths turns a TOML key into the field paths it occurs at, resolving
// array-of-tables indexes through the generic decode ("hooks.phse" may be
// hooks[1].phse and hooks[3].phse).
func (d *decoder) fieldPaths(k toml.Key) []string {
	if len(k) == 2 && (k[0] == "hooks" || k[0] == "streams") {
		var out []string
		for i, t := range d.tables(k[0]) {
			if _, ok := t[k[1]]; ok {
				out = append(out, fmt.Sprintf("%s[%d].%s", k[0], i, quoteKey(k[1])))
			}
		}
		if len(out) > 0 {
			return out
		}
	}
	parts := make([]string, len(k))
	for i, p := range k {
		parts[i] = quoteKey(p)
	}
	return []string{strings.Join(parts, ".")}
}

// quoteKey returns a key as TOML would write it: bare when possible.
func quoteKey(k string) string {
	if k == "" || strings.IndexFunc(k, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-')
	}) >= 0 {
		return strconv.Quote(k)
	}
	return k
}

// suggest returns a known key that name is probably a typo of: the same
// key in another case, one that starts with the other, or one a few edits
// away.
func suggest(name string, known []string) string {
	best, bestDist := "", len(name)/3+1
	for _, k := range known {
		short, long := k, name
		if len(short) > len(long) {
			short, long = long, short
		}
		if strings.EqualFold(k, name) || len(short) >= 3 && strings.HasPrefix(long, short) {
			return k
		}
		if d := editDistance(name, k); d < bestDist {
			best, bestDist = k, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between short ASCII strings.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 64
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func typeName(v any) string {
	switch v := v.(type) {
	case nil:
		return "nothing"
	case string:
		return "string"
	case int64:
		return "integer"
	case float64:
		return "float"
	case bool:
		return "boolean"
	case map[string]any:
		return "table"
	case []any, []map[string]any:
		return "array"
	case time.Time:
		return "datetime"
	default:
		return fmt.Sprintf("%T", v)
	}
}

// The typed getters below report a wrong type and return ok=false; absent
// values (nil) return ok=false without a problem.

func (d *decoder) str(field string, v any) (string, bool) {
	switch v := v.(type) {
	case nil:
		return "", false
	case string:
		return v, true
	default:
		d.addf(field, "want a string, got %s", typeName(v))
		return "", false
	}
}

// required reads a required, non-empty string.
func (d *decoder) required(field string, v any) string {
	if v == nil {
		d.addf(field, "required field is missing")
		return ""
	}
	s, ok := d.str(field, v)
	if ok && s == "" {
		d.addf(field, "must not be empty")
	}
	return s
}

func (d *decoder) integer(field string, v any) (int64, bool) {
	switch v := v.(type) {
	case nil:
		return 0, false
	case int64:
		return v, true
	default:
		d.addf(field, "want an integer, got %s", typeName(v))
		return 0, false
	}
}

func (d *decoder) strings(field string, v any) []string {
	if v == nil {
		return nil
	}
	list, ok := v.([]any)
	if !ok {
		d.addf(field, "want an array of strings, got %s", typeName(v))
		return nil
	}
	out := make([]string, 0, len(list))
	for i, el := range list {
		s, ok := el.(string)
		if !ok {
			d.addf(fmt.Sprintf("%s[%d]", field, i), "want a string, got %s", typeName(el))
			continue
		}
		out = append(out, s)
	}
	return out
}

func (d *decoder) size(field string, v any) (Size, bool) {
	switch v := v.(type) {
	case nil:
		return 0, false
	case int64:
		if v < 0 {
			d.addf(field, "%d is negative", v)
			return 0, false
		}
		return Size(v), true
	case string:
		s, err := ParseSize(v)
		if err != nil {
			d.addf(field, "%v", err)
			return 0, false
		}
		return s, true
	default:
		d.addf(field, "want a size like \"64MiB\" or a number of bytes, got %s", typeName(v))
		return 0, false
	}
}

func (d *decoder) number(field string, v any) (float64, bool) {
	switch v := v.(type) {
	case nil:
		return 0, false
	case float64:
		return v, true
	case int64:
		return float64(v), true
	default:
		d.addf(field, "want a number, got %s", typeName(v))
		return 0, false
	}
}

func (d *decoder) priority(field string, v any) int {
	n, ok := d.integer(field, v)
	if ok && (n < math.MinInt32 || n > math.MaxInt32) {
		d.addf(field, "%d is out of range (want a 32-bit integer)", n)
		return 0
	}
	return int(n)
}

func (d *decoder) deadline(field string, v any, def time.Duration) Duration {
	if v == nil {
		return Duration{def}
	}
	if _, ok := v.(int64); ok {
		d.addf(field, "want a duration string like \"250ms\", got integer (add a unit)")
		return Duration{def}
	}
	s, ok := d.str(field, v)
	if !ok {
		return Duration{def}
	}
	dur, err := time.ParseDuration(s)
	switch {
	case err != nil:
		d.addf(field, "%q is not a duration (want e.g. \"50ms\" or \"2s\")", s)
	case dur <= 0:
		d.addf(field, "%s must be positive", s)
	case dur > MaxDeadline:
		d.addf(field, "%s is longer than the maximum of %gs", s, MaxDeadline.Seconds())
	default:
		return Duration{dur}
	}
	return Duration{def}
}

func (d *decoder) failure(field string, v any, def FailurePolicy) FailurePolicy {
	s, ok := d.str(field, v)
	if !ok {
		return def
	}
	if f := FailurePolicy(s); !f.valid() {
		d.addf(field, "%q is not a failure policy (want fail-open or fail-closed)", s)
		return def
	}
	return FailurePolicy(s)
}

// manifest converts and validates the raw manifest, applying defaults.
func (d *decoder) manifest(r *rawManifest) *Manifest {
	m := &Manifest{}
	if m.Name = d.required("name", r.Name); m.Name != "" && !namePattern.MatchString(m.Name) {
		d.addf("name", "%q is not a valid name (%s)", m.Name, nameRule)
	}
	if m.Version = d.required("version", r.Version); m.Version != "" && !semver(m.Version) {
		d.addf("version", "%q is not a semantic version (want MAJOR.MINOR.PATCH, e.g. \"1.2.0\")", m.Version)
	}
	if m.Description, _ = d.str("description", r.Description); len(m.Description) > MaxDescriptionLen {
		d.addf("description", "is %d bytes; the limit is %d", len(m.Description), MaxDescriptionLen)
	}
	if m.Entrypoint = d.required("entrypoint", r.Entrypoint); m.Entrypoint != "" {
		if msg := entrypointProblem(m.Entrypoint); msg != "" {
			d.addf("entrypoint", "%s", msg)
		}
	}
	m.Args = d.strings("args", r.Args)
	for i, a := range m.Args {
		if strings.IndexByte(a, 0) >= 0 {
			d.addf(fmt.Sprintf("args[%d]", i), "contains a NUL byte")
		}
	}
	m.API = d.api(r.API)
	hookNames := make(map[string]int)
	for i := range r.Hooks {
		path := fmt.Sprintf("hooks[%d]", i)
		h := d.hook(path, &r.Hooks[i])
		d.unique(path+".name", h.Name, hookNames, "hooks", i)
		m.Hooks = append(m.Hooks, h)
	}
	d.checkRouteOwners(m.Hooks)
	streamNames := make(map[string]int)
	for i := range r.Streams {
		path := fmt.Sprintf("streams[%d]", i)
		s := d.stream(path, &r.Streams[i])
		d.unique(path+".name", s.Name, streamNames, "streams", i)
		m.Streams = append(m.Streams, s)
	}
	m.Permissions = d.permissions(r.Permissions)
	m.Settings = d.settings(r.Settings)
	m.UI = d.ui(r.UI, m.Name, m.Hooks)
	return m
}

func entrypointProblem(ep string) string {
	switch {
	case strings.IndexByte(ep, 0) >= 0:
		return "contains a NUL byte"
	case strings.HasPrefix(ep, "/"):
		return fmt.Sprintf("%q is absolute; write a path relative to the plugin directory", ep)
	case !localPath(ep):
		return fmt.Sprintf("%q leaves the plugin directory; \"..\" is not allowed", ep)
	case strings.Trim(ep, "./") == "":
		return fmt.Sprintf("%q names the plugin directory, not an executable", ep)
	}
	return ""
}

func (d *decoder) api(r *rawAPI) VersionRange {
	vr := VersionRange{Min: 1, Max: 1}
	if r == nil {
		return vr
	}
	get := func(field string, v any) (uint16, bool) {
		n, ok := d.integer(field, v)
		if !ok {
			return 0, false
		}
		if n < 1 || n > math.MaxUint16 {
			d.addf(field, "%d is out of range (want 1 to %d)", n, math.MaxUint16)
			return 0, false
		}
		return uint16(n), true
	}
	lo, okLo := get("api.min", r.Min)
	hi, okHi := get("api.max", r.Max)
	switch {
	case okLo && okHi:
		if lo > hi {
			d.addf("api", "min %d is greater than max %d", lo, hi)
		}
		vr = VersionRange{lo, hi}
	case okLo && r.Max == nil:
		vr = VersionRange{lo, lo}
	case okHi && r.Min == nil:
		vr.Max = hi
	}
	return vr
}

func (d *decoder) hook(path string, r *rawHook) Hook {
	h := Hook{}
	if h.Name = d.required(path+".name", r.Name); h.Name != "" && !namePattern.MatchString(h.Name) {
		d.addf(path+".name", "%q is not a valid hook name (%s)", h.Name, nameRule)
	}
	if s := d.required(path+".phase", r.Phase); s != "" {
		if h.Phase = Phase(s); !h.Phase.valid() {
			d.addf(path+".phase", "%q is not a phase (want request, response, route or observe)", s)
		}
	}
	if h.Method = d.required(path+".method", r.Method); h.Method != "" {
		if msg := methodProblem(h.Method); msg != "" {
			d.addf(path+".method", "%s", msg)
		}
	}
	if h.Route = d.required(path+".route", r.Route); h.Route != "" {
		if _, msg := parseRoute(h.Route); msg != "" {
			d.addf(path+".route", "%q %s", h.Route, msg)
		}
	}
	h.Priority = d.priority(path+".priority", r.Priority)
	h.Deadline = d.deadline(path+".deadline", r.Deadline, DefaultHookDeadline)
	def := FailOpen
	if h.Phase == PhaseRoute {
		def = FailClosed
	}
	h.Failure = d.failure(path+".failure", r.Failure, def)
	if h.Phase == PhaseObserve && h.Failure == FailClosed {
		d.addf(path+".failure", "observe hooks must be fail-open (they cannot affect the request)")
	}
	return h
}

func methodProblem(m string) string {
	if m == "*" {
		return ""
	}
	if len(m) > 32 {
		return fmt.Sprintf("%q is not an HTTP method", m)
	}
	for i := 0; i < len(m); i++ {
		c := m[i]
		switch {
		case 'A' <= c && c <= 'Z':
		case 'a' <= c && c <= 'z':
			if up := strings.ToUpper(m); methodProblem(up) == "" {
				return fmt.Sprintf("%q must be uppercase (write %q)", m, up)
			}
			return fmt.Sprintf("%q is not an HTTP method", m)
		default:
			return fmt.Sprintf("%q is not an HTTP method (want e.g. \"GET\", or \"*\" for any)", m)
		}
	}
	return ""
}

// unique reports a name already used at another index of the same list.
func (d *decoder) unique(field, name string, seen map[string]int, list string, i int) {
	if name == "" {
		return
	}
	if j, dup := seen[name]; dup {
		d.addf(field, "%q is already the name of %s[%d]", name, list, j)
		return
	}
	seen[name] = i
}

// checkRouteOwners rejects route hooks of this plugin that would own the
// same request.
func (d *decoder) checkRouteOwners(hooks []Hook) {
	type owner struct {
		i     int
		route Route
	}
	var owners []owner
	for i, h := range hooks {
		if h.Phase != PhaseRoute || h.Method == "" {
			continue
		}
		r, msg := parseRoute(h.Route)
		if msg != "" {
			continue
		}
		for _, o := range owners {
			om := hooks[o.i].Method
			if (om == h.Method || om == "*" || h.Method == "*") && o.route.Overlaps(r) {
				d.addf(fmt.Sprintf("hooks[%d].route", i), "\"%s %s\" overlaps route hook hooks[%d] (\"%s %s\"); a route has only one owner",
					h.Method, h.Route, o.i, om, o.route)
			}
		}
		owners = append(owners, owner{i, r})
	}
}

// kindPattern accepts "type/subtype", "type/*" (every subtype) and "*".
var kindPattern = regexp.MustCompile(`^(\*|[a-z0-9][a-z0-9.+-]{0,63}/(\*|[a-z0-9][a-z0-9.+-]{0,63}))$`)

func (d *decoder) stream(path string, r *rawStream) Stream {
	s := Stream{}
	if s.Name = d.required(path+".name", r.Name); s.Name != "" && !namePattern.MatchString(s.Name) {
		d.addf(path+".name", "%q is not a valid stream name (%s)", s.Name, nameRule)
	}
	if s.Kind = d.required(path+".kind", r.Kind); s.Kind != "" && !kindPattern.MatchString(s.Kind) {
		d.addf(path+".kind", "%q is not a kind (want lowercase type/subtype, e.g. \"audio/segment\", or \"video/*\")", s.Kind)
	}
	if role := d.required(path+".role", r.Role); role != "" {
		if s.Role = StreamRole(role); !s.Role.valid() {
			d.addf(path+".role", "%q is not a stream role (want transform or observe)", role)
		}
	}
	s.Priority = d.priority(path+".priority", r.Priority)
	s.Deadline = d.deadline(path+".deadline", r.Deadline, DefaultStreamDeadline)
	s.Failure = d.failure(path+".failure", r.Failure, FailOpen)
	if s.Role == RoleObserve && s.Failure == FailClosed {
		d.addf(path+".failure", "observe streams must be fail-open (they cannot affect the stream)")
	}
	return s
}

func (d *decoder) permissions(r *rawPermissions) Permissions {
	var p Permissions
	if r == nil {
		return p
	}
	const pre = "permissions."
	// Values are checked even when zero: in a Permissions value zero means
	// "not asked for", which a manifest spells by leaving the key out.
	if s, ok := d.size(pre+"memory", r.Memory); ok {
		if msg := minSizeProblem(s, MinMemory); msg != "" {
			d.addf(pre+"memory", "%s", msg)
		} else {
			p.Memory = s
		}
	}
	if s, ok := d.size(pre+"tmp", r.Tmp); ok {
		if msg := minSizeProblem(s, MinTmp); msg != "" {
			d.addf(pre+"tmp", "%s", msg)
		} else {
			p.Tmp = s
		}
	}
	if n, ok := d.integer(pre+"pids", r.Pids); ok {
		if msg := pidsProblem(n); msg != "" {
			d.addf(pre+"pids", "%s", msg)
		} else {
			p.Pids = n
		}
	}
	if c, ok := d.number(pre+"cpu", r.CPU); ok {
		if msg := cpuProblem(c); msg != "" {
			d.addf(pre+"cpu", "%s", msg)
		} else {
			p.CPU = c
		}
	}
	if n, ok := d.integer(pre+"open_files", r.OpenFiles); ok {
		if n < MinOpenFiles {
			d.addf(pre+"open_files", "%d is below the minimum of %d", n, MinOpenFiles)
		} else if msg := openFilesProblem(uint64(n)); msg != "" {
			d.addf(pre+"open_files", "%s", msg)
		} else {
			p.OpenFiles = uint64(n)
		}
	}
	p.ReadOnlyPaths = d.strings(pre+"read_only_paths", r.ReadOnlyPaths)
	p.OutboundHosts = d.strings(pre+"outbound_hosts", r.OutboundHosts)
	p.checkLists(func(field, problem string) { d.addf(pre+field, "%s", problem) })
	return p
}

func (d *decoder) settings(r *rawSettings) Settings {
	var s Settings
	if r == nil {
		return s
	}
	s.Global = d.settingsScope("settings.global", r.Global)
	s.User = d.settingsScope("settings.user", r.User)
	return s
}

// settingsScope reads one [settings.<scope>] table; nil when it is absent.
func (d *decoder) settingsScope(path string, r *rawSettingsScope) *SettingsScope {
	if r == nil {
		return nil
	}
	sc := &SettingsScope{}
	if sc.Schema = d.required(path+".schema", r.Schema); sc.Schema != "" {
		if msg := settingsPathProblem(sc.Schema); msg != "" {
			d.addf(path+".schema", "%s", msg)
		}
	}
	if ui, ok := d.str(path+".ui", r.UI); ok {
		if ui == "" {
			d.addf(path+".ui", "must not be empty (leave the key out for no UI schema)")
		} else if msg := settingsPathProblem(ui); msg != "" {
			d.addf(path+".ui", "%s", msg)
		}
		sc.UI = ui
	}
	return sc
}
