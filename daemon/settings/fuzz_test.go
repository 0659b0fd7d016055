package settings

import (
	"errors"
	"strings"
	"testing"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
)

// FuzzCompileValidate checks that neither a schema nor values make the
// package (or the validator under it) panic, that every refusal is
// errdefs.ErrInvalid and names the file, and that masked values never
// carry a secret.
func FuzzCompileValidate(f *testing.F) {
	f.Add([]byte(mediaSchema), []byte(`{"api_key": "0123456789", "max_rating": 19, "hosts": ["a", 1]}`))
	f.Add([]byte(`{"type": "object", "properties": {"n": {"multipleOf": 0.5, "maximum": 1e300}}}`), []byte(`{"n": 1e1000001}`))
	f.Add([]byte(`{"type": "object", "properties": {"n": {"$ref": "#/$defs/a"}}, "$defs": {"a": {"$ref": "#/$defs/a"}}}`), []byte(`{"n": 1}`))
	f.Add([]byte(`{"type": "object", "properties": {"s": {"type": "string", "writeOnly": true, "pattern": "^a", "format": "regex"}}}`), []byte(`{"s": "("}`))
	f.Fuzz(func(t *testing.T, doc, values []byte) {
		s, err := Compile("f.json", doc)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Fatalf("Compile error is not ErrInvalid: %v", err)
			}
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, "f.json: ") {
					t.Fatalf("error line %q does not name the file", line)
				}
			}
			return
		}
		v, err := DecodeValues(values)
		if err != nil {
			return
		}
		if err := s.Validate(v); err != nil && !errors.Is(err, errdefs.ErrInvalid) {
			t.Fatalf("Validate error is not ErrInvalid: %v", err)
		}
		masked := s.Mask(s.Effective(v))
		for _, k := range s.Secrets() {
			if x, ok := masked[k]; ok && x != nil && x != Masked {
				t.Fatalf("secret %q shown as %v", k, x)
			}
		}
		_ = s.Merge(v, masked)
	})
}
