// Package registry is the daemon's persisted state: which plugins are
// installed, their manifests, whether each is enabled, what the operator
// granted it, and each plugin's key-value data. It also owns the installed
// plugin files.
//
// It imports the manifest package and nothing else of dimplugd; the
// supervisor, dispatcher and socket servers build on it.
//
// # On-disk layout
//
// Everything lives under one state directory (mode 0700):
//
//	<state>/
//	  registry.db              bbolt database, see below
//	  plugins/<name>-<random>/ the files of one installed plugin (Record.Dir)
//	  staging/<random>/        an install in progress
//
// registry.db holds these buckets:
//
//	meta        "schema" → registry schema version ("1")
//	plugins     plugin name → Record as JSON; its "dir" is stored relative
//	            to the state directory, so the directory can be moved
//	kv          one nested bucket per plugin: kv/<name>, key → value
//	kvsize      plugin name → bytes stored in kv/<name> (keys plus values),
//	            8 bytes big-endian
//
// # Atomicity and durability
//
// An install copies or extracts the plugin into staging/, validates the
// manifest there, renames the directory into plugins/ and then commits the
// record in one bbolt transaction. The commit is the moment the plugin
// exists; anything that fails before it removes what was created, and a
// crash leaves only an unreferenced directory in staging/ or plugins/,
// which Open removes. Replacing or removing a plugin deletes its old files
// after the commit, and Open collects them if the process dies first.
//
// Every mutation is its own bbolt transaction, fsynced before it returns,
// so committed state survives kill -9 and power loss. One process at a time
// may open a state directory (bbolt's file lock).
//
// A Store is safe for concurrent use.
package registry
