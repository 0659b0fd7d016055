// Package schema is dimplugd's wire contract in Go: the code generated from
// the Cap'n Proto schema files in the repository's schema/ directory
// (*.capnp.go, never edited by hand; `make generate` rewrites them byte for
// byte), part of the SDK's module so that plugins and hosts need nothing
// else.
//
// The schema has three faces, each its own file:
//
//   - plugin.capnp: what a plugin implements (PluginBootstrap, Plugin) and
//     the host services the daemon grants it (Logger, KeyValue);
//   - host.capnp: what Dim or any host calls (HostSession: route table,
//     hook dispatch);
//   - control.capnp: what the operator CLI calls (Control).
//
// daemon.capnp holds the bootstrap capability of the daemon's socket and
// http.capnp the HTTP types all faces share. Every face negotiates a
// protocol version first (see Negotiate). Plugin authors in other languages
// compile the same files with their own Cap'n Proto compiler;
// docs/protocol.md describes the connection set-up.
//
// Besides generated code this package holds only the version negotiation
// shared by every side. It must not import anything else of dimplugd.
package schema
