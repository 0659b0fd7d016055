// Package registry is the daemon's persisted state: which plugins are
// installed, their manifests, whether each is enabled, what the operator
// granted it, each plugin's key-value data and its settings values. It
// also owns the installed plugin files.
//
// Of dimplugd it imports sdk-go/manifest, sdk-go/errdefs and
// daemon/settings (to compile a plugin's settings schemas when installing
// it; that package must never import this one); the supervisor,
// dispatcher and socket servers build on it.
//
// # On-disk layout
//
// Everything lives under one state directory (mode 0700):
//
//	<state>/
//	  registry.db              bbolt database, see below
//	  lock                     flock(2)ed by the process that has the directory open
//	  plugins/<name>-<random>/ the files of one installed plugin (Record.Dir)
//	  staging/<random>/        an install in progress
//	  backup/registry.db.<gen> consistent copies of registry.db (Tx.WriteTo)
//	  lost+found/<dir>         plugin directories no record referred to at Open
//
// registry.db holds these buckets:
//
//	meta        "schema" → registry schema version ("2")
//	plugins     plugin name → Record as JSON; its "dir" is stored relative
//	            to the state directory, so the directory can be moved
//	kv          one nested bucket per plugin: kv/<name>, key → value
//	kvsize      plugin name → bytes stored in kv/<name> (keys plus values),
//	            8 bytes big-endian
//	gc          "plugins/<dir>" → why it is slated for deletion (an install
//	            in progress, or replaced or removed as of backup generation
//	            N), as JSON
//	settings    "<name>\x00global" and "<name>\x00user\x00<user id>"
//	            (decimal) → that scope's settings values, a JSON object of
//	            at most 256 KiB (SettingsStore). Added without a schema
//	            version bump: the bucket is additive, Open creates it in a
//	            database of schema 2 that lacks it, and a dimplugd that does
//	            not know it leaves it alone (settings it leaves behind when
//	            it removes a plugin are deleted when the name is installed
//	            fresh)
//	kept        plugin name → when it was uninstalled with its data kept
//	            (Uninstall without purge), as JSON: its kv, kvsize and
//	            settings entries stay with no record, on purpose, until a
//	            fresh install of the name takes them over or a purge
//	            deletes them. Created when first needed, like settings
//
// # Never destroy on doubt
//
// Files are deleted only when the registry says so: a directory in
// plugins/ is deleted only if the gc bucket slates it, in the same commit
// that unreferenced it (or before an install moved it there). A directory
// that no record refers to and nothing slated (say after a restore of an
// older registry.db) is moved to lost+found/ with a warning, never
// deleted. Replaced and removed plugin files are kept while a kept backup
// may refer to them, so that restoring any kept backup finds its plugins'
// files; they go when the last such backup is rotated out.
//
// Open checks registry.db before it opens it for writing (verify.go: both
// meta pages, every page reachable from the newest commit, then bbolt's
// own Tx.Check and a read of every record, with panics and memory faults
// turned into errors), because bbolt itself panics or faults on some
// damage, and falls back to the older meta page without a word when the
// newest is damaged, losing the last acknowledged commit. A damaged,
// truncated or empty file, or a missing one next to installed plugins, is
// refused with ErrDamaged, a DamageError saying what is wrong, and what
// to run; the file is not touched. CheckState, RestoreState and
// CompactState (maintain.go, `dimplugd state`) work on a stopped daemon's
// directory.
//
// # Atomicity and durability
//
// An install copies or extracts the plugin into staging/, validates the
// manifest there and compiles the settings schemas it declares, records an install intent for its final directory,
// renames it into plugins/ and then commits the record in one bbolt
// transaction, which also drops the intent. The commit is the moment the
// plugin exists; anything that fails before it removes what was created,
// and a crash leaves only staging/ (emptied at Open) or a directory whose
// intent says to delete it.
//
// Fsync policy: every mutation is its own bbolt transaction, and bbolt
// fsyncs (fdatasync) the data pages and then the meta page before Commit
// returns, so nothing is acknowledged (to a control client, a plugin's KV
// write, an install) before it is on disk; NoSync and NoFreelistSync stay
// off. Renames of plugin directories and backups are followed by an fsync
// of the directory, and backups and compacted copies are fsynced before
// they are renamed into place. The cost is one or two fsyncs per write,
// which is why key-value writes are per call and not batched; committed
// state survives kill -9 (TestCrashConsistency kills a process writing,
// installing, replacing and removing) and, as far as the file system
// keeps its fsync promises, power loss. One process at a time may open a
// state directory (the lock file, then bbolt's own file lock).
//
// A backup is taken on a schedule (Options.BackupInterval, when something
// changed), before every replace and before a schema migration; the newest
// Options.KeepBackups are kept. Open compacts a database over 1 MiB whose
// free pages outnumber its live ones.
//
// A Store is safe for concurrent use.
package registry
