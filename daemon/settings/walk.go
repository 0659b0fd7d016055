package settings

import (
	"strconv"
	"strings"
)

// This file walks a schema document before and after compiling it, for
// what the compiler accepts and a settings schema must not have.

// Keywords whose value is a schema, an array of schemas, or an object of
// schemas by name. Keywords whose value is data ("default", "const",
// "enum", "examples") and unknown keywords are not walked.
var (
	schemaKeywords = map[string]bool{
		"additionalProperties": true, "not": true, "if": true, "then": true, "else": true,
		"contains": true, "propertyNames": true, "unevaluatedProperties": true,
		"unevaluatedItems": true, "additionalItems": true, "contentSchema": true, "items": true,
	}
	schemaArrayKeywords = map[string]bool{
		"allOf": true, "anyOf": true, "oneOf": true, "prefixItems": true, "items": true,
	}
	schemaMapKeywords = map[string]bool{
		"properties": true, "patternProperties": true, "$defs": true, "definitions": true,
		"dependentSchemas": true, "dependencies": true,
	}
)

// walk calls fn for every schema object in the document below v, with its
// JSON pointer, in a stable order.
func walk(v any, ptr string, fn func(ptr string, obj map[string]any)) {
	obj, ok := v.(map[string]any)
	if !ok {
		return
	}
	fn(ptr, obj)
	for _, k := range sortedKeys(obj) {
		val, p := obj[k], ptr+"/"+escapePointer(k)
		switch {
		case schemaMapKeywords[k]:
			if m, ok := val.(map[string]any); ok {
				for _, name := range sortedKeys(m) {
					walk(m[name], p+"/"+escapePointer(name), fn)
				}
			}
		case schemaArrayKeywords[k]:
			if arr, ok := val.([]any); ok {
				for i, el := range arr {
					walk(el, p+"/"+strconv.Itoa(i), fn)
				}
				continue
			}
			if schemaKeywords[k] {
				walk(val, p, fn)
			}
		case schemaKeywords[k]:
			walk(val, p, fn)
		}
	}
}

// at names a JSON pointer in a message.
func at(ptr string) string {
	if ptr == "" {
		return "top level"
	}
	return ptr
}

// remoteRefs reports references that leave the document. The compiler's
// loader refuses them too; this says which keyword and where.
func remoteRefs(file string, root map[string]any) []error {
	var errs []error
	walk(root, "", func(ptr string, obj map[string]any) {
		for _, kw := range []string{"$ref", "$dynamicRef", "$recursiveRef"} {
			if ref, ok := obj[kw].(string); ok && !strings.HasPrefix(ref, "#") {
				errs = append(errs, invalidf(`%s: %s: "%s": %s is not in this file: settings schemas must be self-contained (put shared definitions under "$defs" and refer to them as "#/$defs/<name>")`,
					file, at(ptr), kw, strconv.Quote(ref)))
			}
		}
	})
	return errs
}

// misplacedWriteOnly reports "writeOnly": true anywhere but on a top-level
// property (or a schema one refers to): the daemon masks only top-level
// settings, so a nested secret would be shown in full.
func misplacedWriteOnly(file string, root map[string]any, allowed map[string]bool) []error {
	var errs []error
	walk(root, "", func(ptr string, obj map[string]any) {
		if obj["writeOnly"] == true && !allowed[ptr] {
			errs = append(errs, invalidf(`%s: %s: "writeOnly" (a secret) works only on a top-level property, where the daemon masks it; a nested secret would be shown in full: make it a top-level property`,
				file, at(ptr)))
		}
	})
	return errs
}
