// Package settings owns plugin settings schemas: it compiles the JSON
// Schema files a manifest declares ([settings.global] and [settings.user],
// see sdk-go/manifest), validates settings values against them, fills in
// defaults, and masks and merges secrets. It stores nothing (the registry
// keeps the values, daemon/registry SettingsStore) and imports no daemon
// package, so that the registry can compile schemas when it installs a
// plugin.
//
// # Schemas
//
// A settings schema is a JSON Schema document, draft 2020-12 unless its
// "$schema" names another draft, validated with
// github.com/santhosh-tekuri/jsonschema/v6. The root must be an object
// schema ("type": "object") with "properties": each top-level property is
// one setting. A property's "default" is its value while none is stored,
// its "description" explains it, and "writeOnly": true (JSON Schema's own
// keyword for values that are written but not read back) marks a secret.
// Secrets are honored on top-level properties only; Compile refuses
// "writeOnly" anywhere else, because the daemon would show such a value in
// full. A default must validate against its property's schema.
//
// Schemas must be self-contained: "$ref"s point into the same document
// ("#/$defs/..."), and anything else (another file, a URL, a custom
// meta-schema) is refused, so compiling never touches the network or the
// file system. Format assertions are on: a property with "format":
// "email" must hold an e-mail address.
//
// # Values
//
// Values are JSON objects decoded into map[string]any, as DecodeValues
// decodes them: numbers as json.Number, so that integers validate exactly
// (a float64 cannot tell 9007199254740993 from 9007199254740992). Validate
// also accepts float64 and Go integers. A key whose value is nil (JSON
// null) is not set: its default applies. Numbers, in schemas and values
// alike, must have at most MaxNumberLen characters and an exponent within
// ±MaxExponent: the validator computes exactly (math/big) and cannot
// handle more.
//
// Validate checks values with their defaults filled in (Effective), as the
// plugin will see them, and reports every failing field, one per line, as
// "<field>: <reason>" ("max_rating: must be <= 18"); nested fields read
// "server.port" and "hosts[0]". The error is a *ValidationError of class
// errdefs.ErrInvalid, and it never quotes the value that failed, so a
// rejected secret does not end up in a log.
package settings

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/url"
	"slices"
	"strings"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/santhosh-tekuri/jsonschema/v6"
)

// Masked replaces a secret that is set when values are shown (Mask); a
// write that sends it back for a secret keeps the stored secret (Merge).
const Masked = "********"

// MaxFileSize bounds a schema or UI schema file.
const MaxFileSize = 1 << 20

// docURL is the URL a schema document is compiled under. Its scheme has
// no loader, so a reference that leaves the document cannot be loaded.
const docURL = "dimplugd-settings:///schema.json"

// Schema is one scope's compiled settings schema. It is immutable and safe
// for concurrent use.
type Schema struct {
	file     string
	sch      *jsonschema.Schema
	props    []string       // top-level properties, sorted
	defaults map[string]any // top-level property defaults
	secrets  []string       // top-level writeOnly properties, sorted
}

// Compile compiles a settings schema document (JSON); file names it in
// errors. Every problem is an errdefs.ErrInvalid error naming file and
// what is wrong: not JSON, not an object schema, a keyword of the wrong
// type, a reference outside the document, a "writeOnly" that is not on a
// top-level property, a default that fails its own schema.
func Compile(file string, doc []byte) (*Schema, error) {
	if len(doc) > MaxFileSize {
		return nil, invalidf("%s: is %d bytes, over the %d KiB limit for a settings schema", file, len(doc), MaxFileSize>>10)
	}
	v, err := decodeJSON(doc)
	if err != nil {
		return nil, invalidf("%s: not valid JSON: %v", file, err)
	}
	root, ok := v.(map[string]any)
	if !ok {
		return nil, invalidf("%s: want a JSON object (an object schema), got %s", file, jsonTypeName(v))
	}
	if !isObjectType(root["type"]) {
		return nil, invalidf(`%s: the top level must say "type": "object": a settings schema describes an object whose properties are the settings`, file)
	}
	if p, ok := root["properties"]; !ok {
		return nil, invalidf(`%s: the top level has no "properties": list each setting there`, file)
	} else if _, ok := p.(map[string]any); !ok {
		return nil, invalidf(`%s: "properties" must be an object (one entry per setting), got %s`, file, jsonTypeName(p))
	}
	var errs []error
	badNumbers(root, nil, func(loc []string, reason string) {
		errs = append(errs, invalidf("%s: %s: %s", file, at(pointerField(nil, loc)), reason))
	})
	if errs = append(errs, remoteRefs(file, root)...); len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.UseLoader(refuseLoader{})
	c.AssertFormat()
	if err := c.AddResource(docURL, v); err != nil {
		return nil, invalidf("%s: %v", file, err)
	}
	sch, err := c.Compile(docURL)
	if err != nil {
		return nil, compileError(file, v, err)
	}

	s := &Schema{file: file, sch: sch, props: sortedKeys(sch.Properties), defaults: map[string]any{}}
	allowed := map[string]bool{} // where writeOnly may be: top-level properties
	for _, name := range s.props {
		p := sch.Properties[name]
		if d := defaultOf(p); d != nil {
			if err := p.Validate(*d); err != nil {
				errs = append(errs, defaultError(file, name, *d, err))
			}
			s.defaults[name] = cloneValue(*d)
		}
		secret := false
		for i, r := 0, p; r != nil && i < maxRefs; i, r = i+1, r.Ref {
			secret = secret || r.WriteOnly
			allowed[fragment(r.Location)] = true
		}
		if secret {
			s.secrets = append(s.secrets, name)
		}
	}
	errs = append(errs, misplacedWriteOnly(file, root, allowed)...)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return s, nil
}

// maxRefs bounds how many "$ref"s Compile follows from a property to find
// its default and writeOnly.
const maxRefs = 32

// defaultOf returns the default of a property: its own, or that of the
// schema it refers to.
func defaultOf(p *jsonschema.Schema) *any {
	for i := 0; p != nil && i < maxRefs; i, p = i+1, p.Ref {
		if p.Default != nil {
			return p.Default
		}
	}
	return nil
}

// fragment returns the JSON pointer of a compiled schema's location
// (which the compiler writes URL-escaped).
func fragment(loc string) string {
	i := strings.IndexByte(loc, '#')
	if i < 0 {
		return ""
	}
	if ptr, err := url.PathUnescape(loc[i+1:]); err == nil {
		return ptr
	}
	return loc[i+1:]
}

func isObjectType(t any) bool {
	switch t := t.(type) {
	case string:
		return t == "object"
	case []any:
		return len(t) == 1 && t[0] == "object"
	}
	return false
}

// File returns the name the schema was compiled under.
func (s *Schema) File() string {
	if s == nil {
		return ""
	}
	return s.file
}

// Properties returns the top-level properties (the settings), sorted.
func (s *Schema) Properties() []string {
	if s == nil {
		return nil
	}
	return slices.Clone(s.props)
}

// Defaults returns the defaults of the top-level properties that have
// one, as a copy the caller may change.
func (s *Schema) Defaults() map[string]any {
	if s == nil {
		return map[string]any{}
	}
	return cloneValue(s.defaults).(map[string]any)
}

// Effective returns the values the plugin sees: the defaults overlaid with
// the stored values (keys stored as nil are not set). The result is a copy.
func (s *Schema) Effective(stored map[string]any) map[string]any {
	out := s.Defaults()
	for k, v := range stored {
		if v != nil {
			out[k] = cloneValue(v)
		}
	}
	return out
}

// Secrets returns the top-level properties marked "writeOnly": true,
// sorted.
func (s *Schema) Secrets() []string {
	if s == nil {
		return nil
	}
	return slices.Clone(s.secrets)
}

func (s *Schema) isSecret(name string) bool {
	if s == nil {
		return false
	}
	_, ok := slices.BinarySearch(s.secrets, name)
	return ok
}

// Mask returns a copy of values in which each secret that is set (present
// and not nil) reads Masked.
func (s *Schema) Mask(values map[string]any) map[string]any {
	out := make(map[string]any, len(values))
	for k, v := range values {
		if v != nil && s.isSecret(k) {
			out[k] = Masked
			continue
		}
		out[k] = cloneValue(v)
	}
	return out
}

// Merge applies a partial update to stored values and returns the result
// as a new map; neither argument is changed. Each top-level key of update
// replaces the stored value whole, except that a key set to nil (JSON
// null) is removed, so that its default applies again, and a secret whose
// new value is Masked keeps the stored secret (a form that sends back the
// masked values it was shown does not overwrite them, nor set a secret
// that was not set). Merge does not validate; Validate the result.
func (s *Schema) Merge(stored, update map[string]any) map[string]any {
	out := cloneValue(stored).(map[string]any)
	if out == nil {
		out = map[string]any{}
	}
	for k, v := range update {
		switch {
		case v == nil:
			delete(out, k)
		case s.isSecret(k) && isMasked(v):
			// keep what is stored
		default:
			out[k] = cloneValue(v)
		}
	}
	return out
}

func isMasked(v any) bool {
	s, ok := v.(string)
	return ok && s == Masked
}

// Validate checks values, with the defaults filled in for the keys they
// leave out (Effective), against the schema. It returns nil or a
// *ValidationError (errdefs.ErrInvalid) listing every failing field, one
// per line.
func (s *Schema) Validate(values map[string]any) error {
	if s == nil || s.sch == nil {
		return errdefs.New(errdefs.ErrInvalid, "no settings schema to validate against")
	}
	eff := s.Effective(values)
	var bad []Problem
	badNumbers(eff, nil, func(loc []string, reason string) {
		bad = append(bad, Problem{Field: valueField(eff, loc), Reason: reason})
	})
	if len(bad) > 0 {
		// The validator cannot compute with them (see MaxExponent).
		return &ValidationError{Problems: bad}
	}
	err := s.sch.Validate(any(eff))
	if err == nil {
		return nil
	}
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return errdefs.WithClass(fmt.Errorf("settings do not validate: %w", err), errdefs.ErrInvalid)
	}
	return &ValidationError{Problems: problems(ve, eff, valueField)}
}

// Check validates stored values against a schema, typically the new one
// after an upgrade: nil if they validate, else the *ValidationError. The
// caller keeps the values and flags them until they are fixed.
func (s *Schema) Check(stored map[string]any) error { return s.Validate(stored) }

// ValidationError lists the fields that fail a schema. It is of class
// errdefs.ErrInvalid.
type ValidationError struct {
	// Problems are sorted by field.
	Problems []Problem
}

// Problem is one failing field.
type Problem struct {
	// Field is the setting: "max_rating", or "server.port" or "hosts[0]"
	// below it; "" for the settings object as a whole.
	Field string
	// Reason says what is wrong, e.g. "must be <= 18".
	Reason string
}

func (p Problem) String() string {
	f := p.Field
	if f == "" {
		f = "(settings)"
	}
	return f + ": " + p.Reason
}

// Error lists the problems, one per line.
func (e *ValidationError) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// Unwrap makes the error errors.Is errdefs.ErrInvalid.
func (e *ValidationError) Unwrap() error { return errdefs.ErrInvalid }

// DecodeValues decodes a JSON object of settings values as Validate wants
// them: numbers as json.Number, null as nil. Anything but one JSON object
// is an errdefs.ErrInvalid error.
func DecodeValues(data []byte) (map[string]any, error) {
	v, err := decodeJSON(data)
	if err != nil {
		return nil, invalidf("settings values are not valid JSON: %v", err)
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, invalidf("settings values must be a JSON object, got %s", jsonTypeName(v))
	}
	return m, nil
}

// decodeJSON decodes exactly one JSON value, numbers as json.Number. A
// syntax error says where.
func decodeJSON(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		var se *json.SyntaxError
		switch {
		case errors.As(err, &se):
			line, col := position(data, se.Offset-1) // Offset counts the offending byte
			return nil, fmt.Errorf("line %d, column %d: %v", line, col, se)
		case errors.Is(err, io.EOF):
			return nil, errors.New("the file is empty")
		case errors.Is(err, io.ErrUnexpectedEOF):
			return nil, errors.New("unexpected end of input")
		}
		return nil, err
	}
	end := dec.InputOffset()
	if _, err := dec.Token(); err != io.EOF {
		rest := bytes.TrimLeft(data[min(end, int64(len(data))):], " \t\r\n")
		line, col := position(data, int64(len(data)-len(rest)))
		return nil, fmt.Errorf("line %d, column %d: unexpected data after the JSON value", line, col)
	}
	return v, nil
}

// position returns the 1-based line and column of the byte at offset off.
func position(data []byte, off int64) (line, col int) {
	off = min(max(off, 0), int64(len(data)))
	before := data[:off]
	line = bytes.Count(before, []byte("\n")) + 1
	col = len(before) - bytes.LastIndexByte(before, '\n')
	return line, col
}

func jsonTypeName(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case json.Number, float64:
		return "a number"
	case string:
		return "a string"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}

// cloneValue deep-copies a JSON value (maps and slices; scalars are
// immutable).
func cloneValue(v any) any {
	switch v := v.(type) {
	case map[string]any:
		if v == nil {
			return map[string]any(nil)
		}
		out := make(map[string]any, len(v))
		for k, e := range v {
			out[k] = cloneValue(e)
		}
		return out
	case []any:
		if v == nil {
			return []any(nil)
		}
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = cloneValue(e)
		}
		return out
	}
	return v
}

func invalidf(format string, args ...any) error {
	return errdefs.New(errdefs.ErrInvalid, fmt.Sprintf(format, args...))
}

// sortedKeys returns the keys of m, sorted.
func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
