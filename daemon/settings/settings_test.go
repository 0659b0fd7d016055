package settings

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
)

// mediaSchema is the settings schema most tests use: a parental-control
// plugin's global settings.
const mediaSchema = `{
  "type": "object",
  "additionalProperties": false,
  "required": ["api_key", "mode"],
  "properties": {
    "max_rating": {"type": "integer", "minimum": 0, "maximum": 18, "default": 12, "description": "Highest age rating shown"},
    "mode": {"type": "string", "enum": ["strict", "lenient"], "default": "strict"},
    "api_key": {"type": "string", "writeOnly": true, "minLength": 8},
    "password": {"$ref": "#/$defs/secret"},
    "label": {"type": "string", "maxLength": 10, "pattern": "^[a-z]+$"},
    "server": {
      "type": "object",
      "additionalProperties": false,
      "properties": {"port": {"type": "integer", "maximum": 65535}}
    },
    "hosts": {"type": "array", "items": {"type": "string", "format": "hostname"}},
    "ratio": {"type": "number", "exclusiveMinimum": 0},
    "id": {"anyOf": [{"type": "string"}, {"type": "integer"}]}
  },
  "$defs": {"secret": {"type": "string", "writeOnly": true}}
}`

func mustCompile(t *testing.T, doc string) *Schema {
	t.Helper()
	s, err := Compile("settings/global.json", []byte(doc))
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return s
}

func TestCompileRefuses(t *testing.T) {
	obj := func(props string) string { return `{"type": "object", "properties": {` + props + `}}` }
	tests := []struct {
		name, doc string
		want      []string // each line of the error, in order
	}{
		{"empty", ``, []string{"settings/global.json: not valid JSON: the file is empty"}},
		{"bad JSON", "{\"type\": \"object\",\n \"properties\": {]}", []string{"settings/global.json: not valid JSON: line 2, column 17: invalid character ']' looking for beginning of object key string"}},
		{"truncated", `{"type": "object", "properties": {}`, []string{"settings/global.json: not valid JSON: unexpected end of input"}},
		{"trailing data", `{"type": "object", "properties": {}} {}`, []string{"settings/global.json: not valid JSON: line 1, column 38: unexpected data after the JSON value"}},
		{"array document", `[{"type": "object"}]`, []string{"settings/global.json: want a JSON object (an object schema), got an array"}},
		{"not an object schema", `{"type": "string"}`, []string{`settings/global.json: the top level must say "type": "object": a settings schema describes an object whose properties are the settings`}},
		{"type missing", `{"properties": {}}`, []string{`settings/global.json: the top level must say "type": "object"`}},
		{"type nullable object", `{"type": ["object", "null"], "properties": {}}`, []string{`settings/global.json: the top level must say "type": "object"`}},
		{"no properties", `{"type": "object"}`, []string{`settings/global.json: the top level has no "properties": list each setting there`}},
		{"properties not an object", `{"type": "object", "properties": []}`, []string{`settings/global.json: "properties" must be an object (one entry per setting), got an array`}},
		{"remote $ref", obj(`"a": {"$ref": "https://example.com/rating.json"}`),
			[]string{`settings/global.json: /properties/a: "$ref": "https://example.com/rating.json" is not in this file: settings schemas must be self-contained`}},
		{"file $ref", obj(`"a": {"items": {"$ref": "other.json#/x"}}`),
			[]string{`settings/global.json: /properties/a/items: "$ref": "other.json#/x" is not in this file`}},
		{"remote $ref in $defs", `{"type": "object", "properties": {}, "$defs": {"x": {"$ref": "file:///etc/passwd"}}}`,
			[]string{`settings/global.json: /$defs/x: "$ref": "file:///etc/passwd" is not in this file`}},
		{"remote $dynamicRef", obj(`"a": {"$dynamicRef": "https://example.com/s#meta"}`),
			[]string{`settings/global.json: /properties/a: "$dynamicRef": "https://example.com/s#meta" is not in this file`}},
		{"custom meta-schema", `{"$schema": "https://example.com/meta", "type": "object", "properties": {}}`,
			[]string{`settings/global.json: refers to "https://example.com/meta", which is not in this file: settings schemas must be self-contained`}},
		{"missing local $ref", obj(`"a": {"$ref": "#/$defs/nope"}`), []string{`settings/global.json: does not compile: json-pointer in "#/$defs/nope" not found`}},
		{"minimum not a number", obj(`"a": {"type": "integer", "minimum": "0"}`),
			[]string{"settings/global.json: /properties/a/minimum: must be a number (got a string)"}},
		{"unknown type", obj(`"a": {"type": "objekt"}`),
			[]string{`settings/global.json: /properties/a/type: matches none of the forms the schema allows: must be one of "array", "boolean", "integer", "null", "number", "object", "string"; or must be an array (got a string)`}},
		{"property not a schema", obj(`"a": 1`), []string{"settings/global.json: /properties/a: must be a boolean or an object (got a number)"}},
		{"required not an array", `{"type": "object", "properties": {}, "required": "a"}`,
			[]string{"settings/global.json: /required: must be an array (got a string)"}},
		{"every keyword problem", obj(`"a": {"minimum": "0"}, "b": {"maxLength": -1}`), []string{
			"settings/global.json: /properties/a/minimum: must be a number (got a string)",
			"settings/global.json: /properties/b/maxLength: must be >= 0",
		}},
		{"bad pattern", obj(`"a": {"type": "string", "pattern": "("}`), []string{"settings/global.json: /properties/a/pattern: is not a valid regex"}},
		{"default fails its schema", obj(`"max_rating": {"type": "integer", "maximum": 18, "default": 21}`),
			[]string{"settings/global.json: /properties/max_rating/default: the default must be <= 18"}},
		{"every default problem", obj(`"b": {"type": "string", "default": 1}, "a": {"type": "integer", "default": "x"}`), []string{
			"settings/global.json: /properties/a/default: the default must be an integer (got a string)",
			"settings/global.json: /properties/b/default: the default must be a string (got a number)",
		}},
		{"nested default fails", obj(`"server": {"type": "object", "properties": {"port": {"type": "integer"}}, "default": {"port": "80"}}`),
			[]string{"settings/global.json: /properties/server/default: the default's port must be an integer (got a string)"}},
		{"nested secret", obj(`"server": {"type": "object", "properties": {"token": {"type": "string", "writeOnly": true}}}`),
			[]string{`settings/global.json: /properties/server/properties/token: "writeOnly" (a secret) works only on a top-level property`}},
		{"secret in allOf", obj(`"token": {"allOf": [{"type": "string", "writeOnly": true}]}`),
			[]string{`settings/global.json: /properties/token/allOf/0: "writeOnly" (a secret) works only on a top-level property`}},
		{"secret at the top level", `{"type": "object", "writeOnly": true, "properties": {}}`,
			[]string{`settings/global.json: top level: "writeOnly" (a secret) works only on a top-level property`}},
		// math/big cannot convert these, and the validator would drop
		// the keyword or fail with a nil pointer.
		{"number beyond the exponent bound", obj(`"n": {"multipleOf": 1e-1001}, "m": {"enum": [1, 2E+1001]}`), []string{
			"settings/global.json: /properties/m/enum/1: is a number whose exponent is beyond ±1000",
			"settings/global.json: /properties/n/multipleOf: is a number whose exponent is beyond ±1000",
		}},
		{"default beyond the exponent bound", obj(`"n": {"minimum": 0, "default": 1e1000001}`),
			[]string{"settings/global.json: /properties/n/default: is a number whose exponent is beyond ±1000"}},
		{"number too long", obj(`"n": {"maximum": 0.` + strings.Repeat("0", MaxNumberLen) + `1}`),
			[]string{"settings/global.json: /properties/n/maximum: is a number of more than 1000 characters"}},
		{"too large", `{"type": "object", "properties": {}, "description": "` + strings.Repeat("x", MaxFileSize) + `"}`,
			[]string{"settings/global.json: is 1048631 bytes, over the 1024 KiB limit for a settings schema"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Compile("settings/global.json", []byte(tt.doc))
			if err == nil {
				t.Fatalf("Compile succeeded, want %q", tt.want)
			}
			if s != nil {
				t.Errorf("Compile returned a schema with its error")
			}
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Errorf("error %v is not errdefs.ErrInvalid", err)
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(tt.want) {
				t.Fatalf("error has %d lines, want %d:\n%v", len(lines), len(tt.want), err)
			}
			for i, w := range tt.want {
				if !strings.HasPrefix(lines[i], w) {
					t.Errorf("line %d:\n%s\nwant it to start with\n%s", i, lines[i], w)
				}
			}
		})
	}
}

func TestCompileAccepts(t *testing.T) {
	tests := []struct {
		name     string
		doc      string
		props    []string
		secrets  []string
		defaults map[string]any
	}{
		{"empty", `{"type": "object", "properties": {}}`, nil, nil, map[string]any{}},
		{"type as a list", `{"type": ["object"], "properties": {"a": {"type": "boolean", "default": false}}}`,
			[]string{"a"}, nil, map[string]any{"a": false}},
		{"draft-07", `{"$schema": "http://json-schema.org/draft-07/schema#", "type": "object", "properties": {"a": {"type": "string", "default": "x"}}}`,
			[]string{"a"}, nil, map[string]any{"a": "x"}},
		{"media", mediaSchema,
			[]string{"api_key", "hosts", "id", "label", "max_rating", "mode", "password", "ratio", "server"},
			[]string{"api_key", "password"},
			map[string]any{"max_rating": json.Number("12"), "mode": "strict"}},
		{"default and secret through $ref", `{"type": "object", "properties": {"t": {"$ref": "#/$defs/tok"}},
			"$defs": {"tok": {"type": "string", "writeOnly": true, "default": "none"}}}`,
			[]string{"t"}, []string{"t"}, map[string]any{"t": "none"}},
		{"odd property names", `{"type": "object", "properties": {"a/b~c": {"writeOnly": true}, "x y": {"default": 1}}}`,
			[]string{"a/b~c", "x y"}, []string{"a/b~c"}, map[string]any{"x y": json.Number("1")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := mustCompile(t, tt.doc)
			if got := s.Properties(); !reflect.DeepEqual(got, tt.props) {
				t.Errorf("Properties = %q, want %q", got, tt.props)
			}
			if got := s.Secrets(); !reflect.DeepEqual(got, tt.secrets) {
				t.Errorf("Secrets = %q, want %q", got, tt.secrets)
			}
			if got := s.Defaults(); !reflect.DeepEqual(got, tt.defaults) {
				t.Errorf("Defaults = %v, want %v", got, tt.defaults)
			}
			if s.File() != "settings/global.json" {
				t.Errorf("File = %q", s.File())
			}
		})
	}
}

func TestValidate(t *testing.T) {
	media := mustCompile(t, mediaSchema)
	big := mustCompile(t, `{"type": "object", "properties": {"n": {"type": "integer", "maximum": 9007199254740992}}}`)
	const key = "0123456789"
	tests := []struct {
		name   string
		schema *Schema
		values map[string]any
		want   string // the whole error, "" for none
	}{
		{"valid", media, map[string]any{"api_key": key}, ""},
		{"every field valid", media, map[string]any{
			"api_key": key, "password": "p", "max_rating": json.Number("18"), "mode": "lenient", "label": "kids",
			"server": map[string]any{"port": json.Number("8080")}, "hosts": []any{"a.example", "b"},
			"ratio": 0.5, "id": json.Number("7"),
		}, ""},
		{"nil values use defaults", media, nil, "api_key: is required"},
		{"null is unset", media, map[string]any{"api_key": key, "max_rating": nil, "mode": nil}, ""},
		{"integral number is an integer", media, map[string]any{"api_key": key, "max_rating": json.Number("12.0")}, ""},
		{"Go integers and floats", media, map[string]any{"api_key": key, "max_rating": 3, "ratio": float64(2)}, ""},
		{"type", media, map[string]any{"api_key": key, "max_rating": "12"}, "max_rating: must be an integer (got a string)"},
		{"fraction is not an integer", media, map[string]any{"api_key": key, "max_rating": json.Number("1.5")}, "max_rating: must be an integer (got a number)"},
		{"enum", media, map[string]any{"api_key": key, "mode": "loose"}, `mode: must be one of "strict", "lenient"`},
		{"maximum", media, map[string]any{"api_key": key, "max_rating": json.Number("19")}, "max_rating: must be <= 18"},
		{"minimum", media, map[string]any{"api_key": key, "max_rating": -1}, "max_rating: must be >= 0"},
		{"exclusive minimum", media, map[string]any{"api_key": key, "ratio": 0}, "ratio: must be > 0"},
		{"required", media, map[string]any{"max_rating": json.Number("3")}, "api_key: is required"},
		{"required with a default is met", media, map[string]any{"api_key": key}, ""},
		{"additional property", media, map[string]any{"api_key": key, "colour": "red"}, "colour: is not a known setting"},
		{"nested", media, map[string]any{"api_key": key, "server": map[string]any{"port": 70000, "tls": true}},
			"server.port: must be <= 65535\nserver.tls: is not allowed here"},
		{"array item format", media, map[string]any{"api_key": key, "hosts": []any{"ok.example", "not a host!"}}, "hosts[1]: is not a valid hostname"},
		{"anyOf", media, map[string]any{"api_key": key, "id": true},
			"id: matches none of the forms the schema allows: must be a string (got a boolean); or must be an integer (got a boolean)"},
		{"every failing field, sorted, one per line", media, map[string]any{
			"mode": "loose", "max_rating": json.Number("99"), "label": "ABCDEFGHIJKL", "colour": "red",
		}, strings.Join([]string{
			"api_key: is required",
			"colour: is not a known setting",
			`label: must be at most 10 characters long`,
			`label: must match the pattern "^[a-z]+$"`,
			"max_rating: must be <= 18",
			`mode: must be one of "strict", "lenient"`,
		}, "\n")},
		{"secret is not echoed", media, map[string]any{"api_key": "hunter2"}, "api_key: must be at least 8 characters long"},
		{"not a JSON value", media, map[string]any{"api_key": []string{key}}, "api_key: holds a []string, which is not a JSON value"},
		// A float64 cannot tell 2^53+1 from 2^53: decode with UseNumber.
		{"big integer as json.Number", big, map[string]any{"n": json.Number("9007199254740993")}, "n: must be <= 9007199254740992"},
		{"big integer at the limit", big, map[string]any{"n": json.Number("9007199254740992")}, ""},
		{"largest exponent", media, map[string]any{"api_key": key, "ratio": json.Number("1E+1000")}, ""},
		{"smallest exponent", media, map[string]any{"api_key": key, "ratio": json.Number("1e-1000")}, ""},
		{"number beyond the exponent bound", media, map[string]any{"api_key": key, "ratio": json.Number("1e1000001"), "hosts": []any{json.Number("1e-1001")}},
			"hosts[0]: is a number whose exponent is beyond ±1000\nratio: is a number whose exponent is beyond ±1000"},
		{"number too long", media, map[string]any{"api_key": key, "ratio": json.Number("0." + strings.Repeat("0", MaxNumberLen) + "1")},
			"ratio: is a number of more than 1000 characters"},
		{"json.Number that is no number", media, map[string]any{"api_key": key, "ratio": json.Number("NaN")}, "ratio: is not a valid JSON number"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.schema.Validate(tt.values)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate succeeded, want:\n%s", tt.want)
			}
			if err.Error() != tt.want {
				t.Errorf("error:\n%s\nwant:\n%s", err, tt.want)
			}
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Errorf("error is not errdefs.ErrInvalid")
			}
			var ve *ValidationError
			if !errors.As(err, &ve) || len(ve.Problems) != strings.Count(tt.want, "\n")+1 {
				t.Errorf("error is not a *ValidationError with one problem per line: %#v", err)
			}
			if strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "ABCDEFGHIJKL") {
				t.Errorf("error quotes the value that failed: %v", err)
			}
		})
	}
}

func TestValidationErrorFields(t *testing.T) {
	s := mustCompile(t, `{"type": "object", "properties": {
		"headers": {"type": "object", "additionalProperties": {"type": "string"}},
		"matrix": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}
	}, "minProperties": 3}`)
	err := s.Validate(map[string]any{
		"headers": map[string]any{"X.Key": 1},
		"matrix":  []any{[]any{json.Number("1")}, []any{"x"}},
	})
	want := []Problem{
		{"", "must have at least 3 entries"},
		{`headers["X.Key"]`, "must be a string (got a number)"},
		{"matrix[1][0]", "must be an integer (got a string)"},
	}
	var ve *ValidationError
	if !errors.As(err, &ve) || !reflect.DeepEqual(ve.Problems, want) {
		t.Fatalf("Validate = %#v, want problems %v", err, want)
	}
	if !strings.HasPrefix(err.Error(), "(settings): must have at least 3 entries\n") {
		t.Errorf("error = %q", err)
	}
}

func TestDefaultsAndEffective(t *testing.T) {
	s := mustCompile(t, mediaSchema)
	defaults := map[string]any{"max_rating": json.Number("12"), "mode": "strict"}
	if got := s.Defaults(); !reflect.DeepEqual(got, defaults) {
		t.Fatalf("Defaults = %v, want %v", got, defaults)
	}
	tests := []struct {
		name   string
		stored map[string]any
		want   map[string]any
	}{
		{"nothing stored", nil, defaults},
		{"stored overrides default", map[string]any{"max_rating": json.Number("7")},
			map[string]any{"max_rating": json.Number("7"), "mode": "strict"}},
		{"stored without default", map[string]any{"label": "kids"},
			map[string]any{"max_rating": json.Number("12"), "mode": "strict", "label": "kids"}},
		{"null falls back to default", map[string]any{"mode": nil},
			map[string]any{"max_rating": json.Number("12"), "mode": "strict"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := s.Effective(tt.stored); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Effective = %v, want %v", got, tt.want)
			}
		})
	}
	// The results are copies: changing them changes neither the schema
	// nor what was stored.
	d := s.Defaults()
	d["mode"] = "lenient"
	stored := map[string]any{"server": map[string]any{"port": json.Number("1")}}
	e := s.Effective(stored)
	e["max_rating"] = json.Number("0")
	e["server"].(map[string]any)["port"] = json.Number("2")
	if got := s.Defaults(); !reflect.DeepEqual(got, defaults) {
		t.Errorf("Defaults changed to %v", got)
	}
	if stored["server"].(map[string]any)["port"] != json.Number("1") {
		t.Errorf("Effective shares nested values with the stored map")
	}
}

func TestSecretsMaskMerge(t *testing.T) {
	s := mustCompile(t, mediaSchema)
	if got, want := s.Secrets(), []string{"api_key", "password"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Secrets = %q, want %q", got, want)
	}

	stored := map[string]any{"api_key": "s3cret-key", "password": nil, "max_rating": json.Number("3"), "label": "kids"}
	masked := s.Mask(stored)
	if want := (map[string]any{"api_key": Masked, "password": nil, "max_rating": json.Number("3"), "label": "kids"}); !reflect.DeepEqual(masked, want) {
		t.Errorf("Mask = %v, want %v", masked, want)
	}
	if stored["api_key"] != "s3cret-key" {
		t.Errorf("Mask changed its argument")
	}
	if got := s.Mask(s.Effective(map[string]any{"api_key": "x"})); got["api_key"] != Masked || got["mode"] != "strict" {
		t.Errorf("Mask(Effective) = %v", got)
	}

	tests := []struct {
		name           string
		stored, update map[string]any
		want           map[string]any
	}{
		{"masked secret keeps the stored one", map[string]any{"api_key": "s3cret-key", "max_rating": json.Number("3")},
			map[string]any{"api_key": Masked, "max_rating": json.Number("5")},
			map[string]any{"api_key": "s3cret-key", "max_rating": json.Number("5")}},
		{"form sends back what it was shown", stored, s.Mask(stored), map[string]any{"api_key": "s3cret-key", "max_rating": json.Number("3"), "label": "kids"}},
		{"new secret replaces", map[string]any{"api_key": "s3cret-key"}, map[string]any{"api_key": "n3w-secret-key"},
			map[string]any{"api_key": "n3w-secret-key"}},
		{"masked value does not set an unset secret", map[string]any{}, map[string]any{"password": Masked}, map[string]any{}},
		{"null resets to default", map[string]any{"max_rating": json.Number("5"), "mode": "lenient"}, map[string]any{"max_rating": nil},
			map[string]any{"mode": "lenient"}},
		{"null removes a secret", map[string]any{"api_key": "s3cret-key"}, map[string]any{"api_key": nil}, map[string]any{}},
		{"marker is literal for other settings", nil, map[string]any{"label": Masked}, map[string]any{"label": Masked}},
		{"keys not in the update stay", map[string]any{"label": "kids", "mode": "strict"}, map[string]any{"mode": "lenient"},
			map[string]any{"label": "kids", "mode": "lenient"}},
		{"nothing stored, nothing sent", nil, nil, map[string]any{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := s.Mask(tt.stored) // a copy, to see that Merge leaves stored alone
			got := s.Merge(tt.stored, tt.update)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Merge = %v, want %v", got, tt.want)
			}
			if !reflect.DeepEqual(s.Mask(tt.stored), before) {
				t.Errorf("Merge changed the stored map")
			}
		})
	}
	// Reset to default, seen through Effective.
	if got := s.Effective(s.Merge(map[string]any{"max_rating": json.Number("5")}, map[string]any{"max_rating": nil})); got["max_rating"] != json.Number("12") {
		t.Errorf("after a null update, max_rating = %v, want the default 12", got["max_rating"])
	}
}

func TestCheckAfterSchemaChange(t *testing.T) {
	v1 := mustCompile(t, `{"type": "object", "additionalProperties": false, "properties": {
		"max_rating": {"type": "integer", "maximum": 18},
		"theme": {"type": "string"}
	}}`)
	v2 := mustCompile(t, `{"type": "object", "additionalProperties": false, "required": ["region"], "properties": {
		"max_rating": {"type": "integer", "maximum": 16},
		"region": {"type": "string"},
		"lang": {"type": "string", "default": "en"}
	}}`)
	tests := []struct {
		name   string
		stored map[string]any
		want   string
	}{
		{"still valid", map[string]any{"max_rating": json.Number("12"), "region": "eu"}, ""},
		{"no longer valid", map[string]any{"max_rating": json.Number("17"), "theme": "dark"},
			"max_rating: must be <= 16\nregion: is required\ntheme: is not a known setting"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stored := map[string]any{}
			for k, v := range tt.stored {
				if k != "region" {
					stored[k] = v
				}
			}
			if err := v1.Check(stored); err != nil {
				t.Fatalf("v1.Check of values valid under v1: %v", err)
			}
			err := v2.Check(tt.stored)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("v2.Check: %v", err)
			case tt.want != "" && (err == nil || err.Error() != tt.want):
				t.Errorf("v2.Check = %v, want:\n%s", err, tt.want)
			case tt.want != "" && !errors.Is(err, errdefs.ErrInvalid):
				t.Errorf("v2.Check error is not errdefs.ErrInvalid")
			}
		})
	}
}

func TestDecodeValues(t *testing.T) {
	tests := []struct {
		name, data string
		want       map[string]any
		err        string
	}{
		{"object", `{"n": 9007199254740993, "s": "x", "z": null}`,
			map[string]any{"n": json.Number("9007199254740993"), "s": "x", "z": nil}, ""},
		{"empty object", `{}`, map[string]any{}, ""},
		{"array", `[1]`, nil, "settings values must be a JSON object, got an array"},
		{"null", `null`, nil, "settings values must be a JSON object, got null"},
		{"trailing", `{} {}`, nil, "settings values are not valid JSON: line 1, column 4: unexpected data after the JSON value"},
		{"syntax", `{"a" 1}`, nil, "settings values are not valid JSON: line 1, column 6: invalid character '1' after object key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeValues([]byte(tt.data))
			if tt.err != "" {
				if err == nil || err.Error() != tt.err || !errors.Is(err, errdefs.ErrInvalid) {
					t.Errorf("DecodeValues error = %v, want %q (errdefs.ErrInvalid)", err, tt.err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("DecodeValues = %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func TestLoadDir(t *testing.T) {
	const good = `{"type": "object", "properties": {"a": {"type": "string", "default": "x"}}}`
	const ui = `{"type": "VerticalLayout", "elements": [{"type": "Control", "scope": "#/properties/a"}]}`
	write := func(t *testing.T, dir, name, content string) {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	global := &manifest.SettingsScope{Schema: "settings/global.json", UI: "settings/global.ui.json"}
	user := &manifest.SettingsScope{Schema: "settings/user.json"}

	t.Run("ok", func(t *testing.T) {
		dir := t.TempDir()
		write(t, dir, "settings/global.json", good)
		write(t, dir, "settings/global.ui.json", ui)
		write(t, dir, "real/user.json", good)
		if err := os.Symlink("../real/user.json", filepath.Join(dir, "settings/user.json")); err != nil {
			t.Fatal(err)
		}
		set, err := LoadDir(dir, manifest.Settings{Global: global, User: user})
		if err != nil {
			t.Fatal(err)
		}
		g, u := set.Scope("global"), set.Scope("user")
		if g == nil || u == nil || g != set.Global || u != set.User || set.Scope("admin") != nil {
			t.Fatalf("Set = %+v", set)
		}
		if string(g.Doc) != good || string(g.UI) != ui || g.Schema.File() != "settings/global.json" {
			t.Errorf("global scope = %s, %s, %s", g.Doc, g.UI, g.Schema.File())
		}
		if string(u.Doc) != good || u.UI != nil {
			t.Errorf("user scope = %s, UI %q; want no UI", u.Doc, u.UI)
		}
		if d := g.Schema.Defaults(); d["a"] != "x" {
			t.Errorf("defaults = %v", d)
		}
	})
	t.Run("no settings", func(t *testing.T) {
		set, err := LoadDir(t.TempDir(), manifest.Settings{})
		if err != nil || set == nil || set.Global != nil || set.User != nil {
			t.Errorf("LoadDir = %+v, %v; want an empty set", set, err)
		}
		var none *Set
		if none.Scope("global") != nil {
			t.Errorf("nil Set has a scope")
		}
	})

	tests := []struct {
		name  string
		setup func(t *testing.T, dir string)
		m     manifest.Settings
		want  []string // each line of the error
	}{
		{"missing schema", func(t *testing.T, dir string) {}, manifest.Settings{User: user},
			[]string{"settings/user.json: does not exist in the plugin directory (named by settings.user.schema in plugin.toml)"}},
		{"missing UI", func(t *testing.T, dir string) { write(t, dir, "settings/global.json", good) }, manifest.Settings{Global: global},
			[]string{"settings/global.ui.json: does not exist in the plugin directory (named by settings.global.ui in plugin.toml)"}},
		{"schema does not compile", func(t *testing.T, dir string) {
			write(t, dir, "settings/global.json", `{"type": "array"}`)
			write(t, dir, "settings/global.ui.json", ui)
		}, manifest.Settings{Global: global}, []string{`settings/global.json: the top level must say "type": "object"`}},
		{"both scopes reported", func(t *testing.T, dir string) {
			write(t, dir, "settings/global.json", `{`)
			write(t, dir, "settings/global.ui.json", ui)
		}, manifest.Settings{Global: global, User: user}, []string{
			"settings/global.json: not valid JSON: unexpected end of input",
			"settings/user.json: does not exist in the plugin directory",
		}},
		{"UI not JSON", func(t *testing.T, dir string) {
			write(t, dir, "settings/global.json", good)
			write(t, dir, "settings/global.ui.json", `{"type": `)
		}, manifest.Settings{Global: global}, []string{"settings/global.ui.json: not valid JSON: unexpected end of input"}},
		{"UI not an object", func(t *testing.T, dir string) {
			write(t, dir, "settings/global.json", good)
			write(t, dir, "settings/global.ui.json", `["Control"]`)
		}, manifest.Settings{Global: global}, []string{"settings/global.ui.json: a UI schema must be a JSON object (a JSON Forms layout), got an array"}},
		{"symlink outside", func(t *testing.T, dir string) {
			outside := filepath.Join(t.TempDir(), "global.json")
			write(t, filepath.Dir(outside), "global.json", good)
			write(t, dir, "settings/x", "")
			if err := os.Symlink(outside, filepath.Join(dir, "settings/user.json")); err != nil {
				t.Fatal(err)
			}
		}, manifest.Settings{User: user}, []string{"settings/user.json: is a symbolic link that leads outside the plugin directory"}},
		{"directory symlink outside", func(t *testing.T, dir string) {
			outside := t.TempDir()
			write(t, outside, "user.json", good)
			if err := os.Symlink(outside, filepath.Join(dir, "settings")); err != nil {
				t.Fatal(err)
			}
		}, manifest.Settings{User: user}, []string{"settings/user.json: leads outside the plugin directory (through a symbolic link)"}},
		{"absolute path", func(t *testing.T, dir string) {}, manifest.Settings{User: &manifest.SettingsScope{Schema: "/etc/passwd"}},
			[]string{"/etc/passwd: is outside the plugin directory (named by settings.user.schema in plugin.toml)"}},
		{"dot-dot path", func(t *testing.T, dir string) {}, manifest.Settings{User: &manifest.SettingsScope{Schema: "../x.json"}},
			[]string{"../x.json: is outside the plugin directory"}},
		{"directory", func(t *testing.T, dir string) {
			if err := os.MkdirAll(filepath.Join(dir, "settings/user.json"), 0o755); err != nil {
				t.Fatal(err)
			}
		}, manifest.Settings{User: user}, []string{"settings/user.json: is a directory; settings.user.schema in plugin.toml must name a JSON file"}},
		{"fifo", func(t *testing.T, dir string) {
			write(t, dir, "settings/x", "")
			if err := syscall.Mkfifo(filepath.Join(dir, "settings/user.json"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, manifest.Settings{User: user}, []string{"settings/user.json: is not a regular file"}},
		{"too large", func(t *testing.T, dir string) {
			write(t, dir, "settings/user.json", `{"type": "object", "properties": {}, "description": "`+strings.Repeat("x", MaxFileSize)+`"}`)
		}, manifest.Settings{User: user}, []string{"settings/user.json: is 1048631 bytes, over the 1024 KiB limit"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			tt.setup(t, dir)
			set, err := LoadDir(dir, tt.m)
			if err == nil {
				t.Fatalf("LoadDir succeeded, want %q", tt.want)
			}
			if set != nil {
				t.Errorf("LoadDir returned a set with its error")
			}
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Errorf("error %v is not errdefs.ErrInvalid", err)
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(tt.want) {
				t.Fatalf("error has %d lines, want %d:\n%v", len(lines), len(tt.want), err)
			}
			for i, w := range tt.want {
				if !strings.HasPrefix(lines[i], w) {
					t.Errorf("line %d:\n%s\nwant it to start with\n%s", i, lines[i], w)
				}
			}
		})
	}
}
