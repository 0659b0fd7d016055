# c++.capnp — the C++ code generator's annotations, shipped with the schemas
# so that `capnp compile -oc++` needs nothing but the capnp tool and this
# directory (Debian's capnproto package does not install the compiler's own
# copy; libcapnp-dev does).
#
# The file ID and annotation names are the ones capnpc-c++ looks for, so
# these are the same annotations as in capnp's <capnp/c++.capnp>. Other
# languages' generators ignore them.

@0xbdf87d7bb8304e81;

annotation namespace(file) :Text;
# The C++ namespace of the generated code: dimplugd::schema for every file
# here.

annotation name(field, enumerant, struct, enum, interface, method, param, group, union) :Text;
# A C++ name to use instead of the schema's, where the schema's would clash
# with something C++ programs commonly define (LogLevel's enumerants would
# otherwise become the macros DEBUG and ERROR).
