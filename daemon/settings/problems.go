package settings

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
)

// This file turns the validator's error trees into one problem per failing
// field, phrased for the operator (values) or the plugin author (schemas).

// fieldNamer names the location of a problem inside inst.
type fieldNamer func(inst any, loc []string) string

// problems flattens a validation error into its failing fields, sorted and
// without duplicates.
func problems(ve *jsonschema.ValidationError, inst any, name fieldNamer) []Problem {
	var out []Problem
	collect(ve, inst, name, &out, 0)
	slices.SortFunc(out, func(a, b Problem) int {
		return cmp.Or(strings.Compare(a.Field, b.Field), strings.Compare(a.Reason, b.Reason))
	})
	return slices.Compact(out)
}

// maxCauseDepth bounds the recursion into nested causes.
const maxCauseDepth = 64

func collect(e *jsonschema.ValidationError, inst any, name fieldNamer, out *[]Problem, depth int) {
	add := func(loc []string, reason string) {
		*out = append(*out, Problem{Field: name(inst, loc), Reason: reason})
	}
	child := func(tok string) []string {
		return append(append([]string{}, e.InstanceLocation...), tok)
	}
	switch k := e.ErrorKind.(type) {
	case *kind.Schema, *kind.Group, *kind.AllOf, *kind.Reference:
		// Containers: what failed is in the causes.
		if len(e.Causes) > 0 && depth < maxCauseDepth {
			for _, c := range e.Causes {
				collect(c, inst, name, out, depth+1)
			}
			return
		}
		add(e.InstanceLocation, "does not match the schema")
	case *kind.Required:
		for _, m := range k.Missing {
			add(child(m), "is required")
		}
	case *kind.DependentRequired:
		for _, m := range k.Missing {
			add(child(m), fmt.Sprintf("is required when %s is set", name(inst, child(k.Prop))))
		}
	case *kind.Dependency:
		for _, m := range k.Missing {
			add(child(m), fmt.Sprintf("is required when %s is set", name(inst, child(k.Prop))))
		}
	case *kind.AdditionalProperties:
		reason := "is not allowed here"
		if len(e.InstanceLocation) == 0 {
			reason = "is not a known setting"
		}
		for _, p := range k.Properties {
			add(child(p), reason)
		}
	case *kind.AnyOf, *kind.OneOf:
		r := reason(e.ErrorKind)
		if alts := alternatives(e, inst, name, depth); alts != "" {
			r += ": " + alts
		}
		add(e.InstanceLocation, r)
	default:
		add(e.InstanceLocation, reason(e.ErrorKind))
	}
}

// maxAlternatives bounds how many failed alternatives of an anyOf or
// oneOf a problem spells out.
const maxAlternatives = 4

// alternatives phrases why each alternative of an anyOf or oneOf failed,
// "" if there are too many to be helpful.
func alternatives(e *jsonschema.ValidationError, inst any, name fieldNamer, depth int) string {
	if len(e.Causes) == 0 || len(e.Causes) > maxAlternatives || depth >= maxCauseDepth {
		return ""
	}
	here := name(inst, e.InstanceLocation)
	var alts []string
	for _, c := range e.Causes {
		var ps []Problem
		collect(c, inst, name, &ps, depth+1)
		var parts []string
		for _, p := range ps {
			if p.Field == here {
				parts = append(parts, p.Reason)
			} else {
				parts = append(parts, p.String())
			}
		}
		if len(parts) > 0 {
			alts = append(alts, strings.Join(parts, ", "))
		}
	}
	if len(alts) > maxAlternatives {
		return ""
	}
	return strings.Join(alts, "; or ")
}

// reason phrases one failed keyword. It never quotes the value that
// failed (it may be a secret), only what the schema wants.
func reason(k jsonschema.ErrorKind) string {
	switch k := k.(type) {
	case *kind.Type:
		want := make([]string, len(k.Want))
		for i, w := range k.Want {
			want[i] = typeWithArticle(w)
		}
		return fmt.Sprintf("must be %s (got %s)", strings.Join(want, " or "), typeWithArticle(k.Got))
	case *kind.Enum:
		want := make([]string, len(k.Want))
		for i, w := range k.Want {
			want[i] = jsonText(w)
		}
		if len(want) == 1 {
			return "must be " + want[0]
		}
		return "must be one of " + strings.Join(want, ", ")
	case *kind.Const:
		return "must be " + jsonText(k.Want)
	case *kind.Format:
		return fmt.Sprintf("is not a valid %s", k.Want)
	case *kind.Minimum:
		return "must be >= " + ratText(k.Want)
	case *kind.Maximum:
		return "must be <= " + ratText(k.Want)
	case *kind.ExclusiveMinimum:
		return "must be > " + ratText(k.Want)
	case *kind.ExclusiveMaximum:
		return "must be < " + ratText(k.Want)
	case *kind.MultipleOf:
		return "must be a multiple of " + ratText(k.Want)
	case *kind.MinLength:
		return fmt.Sprintf("must be at least %s long", plural(k.Want, "character"))
	case *kind.MaxLength:
		return fmt.Sprintf("must be at most %s long", plural(k.Want, "character"))
	case *kind.Pattern:
		return fmt.Sprintf("must match the pattern %s", strconv.Quote(k.Want))
	case *kind.MinItems:
		return fmt.Sprintf("must have at least %s", plural(k.Want, "item"))
	case *kind.MaxItems:
		return fmt.Sprintf("must have at most %s", plural(k.Want, "item"))
	case *kind.UniqueItems:
		return fmt.Sprintf("must not repeat items (items %d and %d are equal)", k.Duplicates[0], k.Duplicates[1])
	case *kind.MinProperties:
		return fmt.Sprintf("must have at least %s", plural(k.Want, "entry"))
	case *kind.MaxProperties:
		return fmt.Sprintf("must have at most %s", plural(k.Want, "entry"))
	case *kind.AdditionalItems:
		return fmt.Sprintf("has %s too many", plural(k.Count, "item"))
	case *kind.PropertyNames:
		return fmt.Sprintf("has a key %s that the schema does not allow", strconv.Quote(k.Property))
	case *kind.AnyOf:
		return "matches none of the forms the schema allows"
	case *kind.OneOf:
		if len(k.Subschemas) == 0 {
			return "matches none of the forms the schema allows"
		}
		return "matches more than one of the forms the schema allows (oneOf wants exactly one)"
	case *kind.Not:
		return "is a value the schema forbids (not)"
	case *kind.FalseSchema:
		return "is not allowed"
	case *kind.Contains, *kind.MinContains, *kind.MaxContains:
		return "does not have the items the schema asks for (contains)"
	case *kind.InvalidJsonValue:
		return fmt.Sprintf("holds a %T, which is not a JSON value", k.Value)
	case *kind.RefCycle:
		return "has a reference cycle in the schema"
	}
	if path := k.KeywordPath(); len(path) > 0 {
		return fmt.Sprintf("fails the schema's %q", strings.Join(path, "/"))
	}
	return "does not match the schema"
}

func typeWithArticle(t string) string {
	switch t {
	case "integer", "object", "array":
		return "an " + t
	case "null":
		return "null"
	case "":
		return "an unknown type"
	}
	return "a " + t
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	if strings.HasSuffix(noun, "y") {
		return fmt.Sprintf("%d %sies", n, strings.TrimSuffix(noun, "y"))
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// jsonText writes a schema value (an enum or const) as JSON.
func jsonText(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

func ratText(r *big.Rat) string {
	if r == nil {
		return "?"
	}
	if r.IsInt() {
		return r.Num().String()
	}
	f, _ := r.Float64()
	return strconv.FormatFloat(f, 'g', -1, 64)
}

var identifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_-]*$`)

// valueField names a location in settings values: "max_rating",
// "server.port", "hosts[0]", `headers["X-Key"]`; "" for the whole object.
func valueField(inst any, loc []string) string {
	var b strings.Builder
	cur := inst
	for _, tok := range loc {
		if arr, ok := cur.([]any); ok {
			if i, err := strconv.Atoi(tok); err == nil && i >= 0 && i < len(arr) {
				fmt.Fprintf(&b, "[%d]", i)
				cur = arr[i]
				continue
			}
		}
		switch {
		case !identifier.MatchString(tok):
			fmt.Fprintf(&b, "[%s]", strconv.Quote(tok))
		case b.Len() > 0:
			b.WriteString("." + tok)
		default:
			b.WriteString(tok)
		}
		if m, ok := cur.(map[string]any); ok {
			cur = m[tok]
		} else {
			cur = nil
		}
	}
	return b.String()
}

// pointerField names a location in a schema document as a JSON pointer.
func pointerField(_ any, loc []string) string {
	var b strings.Builder
	for _, tok := range loc {
		b.WriteString("/" + escapePointer(tok))
	}
	return b.String()
}

func escapePointer(tok string) string {
	return strings.ReplaceAll(strings.ReplaceAll(tok, "~", "~0"), "/", "~1")
}

// compileError phrases what the compiler refused, naming file.
func compileError(file string, doc any, err error) error {
	var sve *jsonschema.SchemaValidationError
	var ve *jsonschema.ValidationError
	if errors.As(err, &sve) && errors.As(sve.Err, &ve) {
		var errs []error
		for _, p := range problems(ve, doc, pointerField) {
			at := p.Field
			if at == "" {
				at = "top level"
			}
			errs = append(errs, invalidf("%s: %s: %s", file, at, p.Reason))
		}
		if len(errs) > 0 {
			return errors.Join(errs...)
		}
	}
	var le *jsonschema.LoadURLError
	if errors.As(err, &le) {
		return invalidf("%s: refers to %s, which is not in this file: settings schemas must be self-contained (no other files, URLs or custom meta-schemas)",
			file, strconv.Quote(le.URL))
	}
	return invalidf("%s: does not compile: %s", file, strings.ReplaceAll(err.Error(), docURL, ""))
}

// defaultError reports a property's default that fails its own schema.
func defaultError(file, prop string, def any, err error) error {
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return invalidf("%s: /properties/%s/default: the default does not match the property's schema: %v", file, escapePointer(prop), err)
	}
	ptr := "/properties/" + escapePointer(prop) + "/default"
	var errs []error
	for _, p := range problems(ve, def, valueField) {
		if p.Field == "" {
			errs = append(errs, invalidf("%s: %s: the default %s", file, ptr, p.Reason))
		} else {
			errs = append(errs, invalidf("%s: %s: the default's %s %s", file, ptr, p.Field, p.Reason))
		}
	}
	if len(errs) == 0 {
		return invalidf("%s: %s: the default does not match the property's schema", file, ptr)
	}
	return errors.Join(errs...)
}

// refuseLoader loads nothing: a settings schema is compiled from its own
// document only.
type refuseLoader struct{}

func (refuseLoader) Load(url string) (any, error) {
	return nil, fmt.Errorf("%s is outside the settings schema; references to other documents are refused", url)
}
