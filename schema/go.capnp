# go.capnp — the Go code generator's annotations, shipped with the schemas so
# that `capnp compile` needs nothing but the capnp tool and this directory,
# for any target language (-oc++, -orust, -ogo, ...).
#
# The file ID and annotation names are those capnpc-go
# (capnproto.org/go/capnp/v3) looks for: annotation IDs derive from them, so
# this declaration and the one in go-capnp's std/go.capnp are the same
# annotations. Other languages' generators ignore them. Do not compile this
# file with -ogo: it is an import, not part of the API.

@0xd12a1c51fedd6c88;

annotation package(file) :Text;
# The Go package name of the generated file.

annotation import(file) :Text;
# The Go import path of the generated file's package.

annotation doc(struct, field, enum) :Text;
# Documentation for the generated Go declaration.

annotation tag(enumerant) :Text;
# The string form of an enumerant in Go.

annotation notag(enumerant) :Void;
# The enumerant has no string form in Go.

annotation customtype(field) :Text;
# A Go type to use for the field.

annotation name(struct, field, union, enum, enumerant, interface, method, param, annotation, const, group) :Text;
# A Go name to use instead of the schema's.
