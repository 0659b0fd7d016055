# control.capnp — the control face: what the operator CLI (dimplugctl) calls.
#
# Every method answers with the plugin's resulting status so that scripts
# can act on one round trip. Errors are Cap'n Proto exceptions whose
# message is written for the operator ("plugin \"subs\" is not installed").

@0x96e3335b176e694a;

using Go = import "go.capnp";
using Cxx = import "c++.capnp";
$Go.package("schema");
$Go.import("github.com/dimplugd/dimplugd/sdk-go/schema");
$Cxx.namespace("dimplugd::schema");

using Http = import "http.capnp";

interface Control {
  install @0 (archive :Data, options :InstallOptions) -> (plugin :PluginStatus);
  # Installs a plugin from a tar archive (optionally gzip-compressed) of its
  # directory: plugin.toml at the top, the entrypoint and any files it
  # needs. Atomic: a failed install leaves nothing behind.

  list @1 () -> (plugins :List(PluginStatus));
  inspect @2 (name :Text) -> (plugin :PluginStatus);
  enable @3 (name :Text) -> (plugin :PluginStatus);
  disable @4 (name :Text) -> (plugin :PluginStatus);
  remove @5 (name :Text) -> ();
  # Stops the plugin and deletes its files, grant and key-value data.

  logs @6 (name :Text, tail :UInt32, sink :LogSink) -> (lines :List(LogLine));
  # The last `tail` lines of the plugin's log (stdout, stderr, structured
  # log calls and the daemon's own lines about it). With a non-null sink,
  # every later line is pushed to it until a push fails.

  restart @7 (name :Text) -> (plugin :PluginStatus);
  # Stops and starts the plugin; also lifts a quarantine.

  status @8 () -> (daemon :DaemonStatus);

  setHookDeadline @9 (name :Text, hook :Text, deadlineMicros :UInt64) -> (plugin :PluginStatus);
  # Overrides the deadline of one hook of a plugin (0 restores the
  # manifest's). The override survives restarts and upgrades.

  getSettings @10 (name :Text, scope :Text, user :Int64) -> (settings :PluginSettings);
  # A plugin's settings in one scope: "global" (user 0) or "user" (that
  # user's own). Secrets are masked. Fails as not found if the plugin is not
  # installed or does not declare the scope.

  setSettings @11 (name :Text, scope :Text, user :Int64, values :Data, replace :Bool)
              -> (settings :PluginSettings);
  # Writes settings, validated against the plugin's schema for the scope;
  # values is a JSON object. Without replace it is a partial update: a key
  # set to null goes back to its default, and a secret sent back as the
  # masked marker "********" keeps its stored value. With replace the object
  # replaces what is stored. An invalid write fails as invalid and lists
  # every failing field; nothing is stored then. A running plugin hears of
  # the change at once (Settings.watch); no restart is needed.

  consoleLogin @12 () -> (url :Text);
  # A one-time login URL for the operator console on its loopback TCP
  # listener (dimplugd serve --console-listen): it carries a random token
  # that works once, within 60 seconds, and opens a browser session. Being
  # able to call this method (the control socket's permissions) is the
  # operator right the console asks for. Fails as unavailable when the
  # daemon has no console TCP listener.

  installStream @13 (options :InstallOptions, progress :InstallProgress) -> (upload :Upload);
  # Installs a plugin from a package streamed in chunks: a .dimplug
  # (docs/packages.md) or a tar archive of a plugin directory, as install
  # takes it. Write the bytes to upload in order, then call Upload.finish.
  # The daemon checks the package (size, hashes, signature against its
  # trusted keys and policy, hostile entries) before anything is unpacked
  # into place, and reports each stage to progress (may be null).

  rollback @14 (name :Text) -> (plugin :PluginStatus);
  # Returns a plugin to the version it had before its last upgrade: files,
  # grant and data as they were then. Fails as not found when no previous
  # version is kept.

  uninstall @15 (name :Text, purge :Bool) -> (keptDataBytes :UInt64);
  # Stops and removes a plugin. Without purge its key-value data and
  # settings are kept (keptDataBytes says how much) and come back with a
  # later install of the same name; with purge they are deleted too.

  exportData @16 (name :Text) -> (archive :Data);
  # The plugin's data (key-value store and settings) in the documented
  # export format (docs/packages.md, "Data export"), in one message: fails
  # when the export is larger than a control message carries (about 47
  # MiB of key-value data); exportDataStream has no such limit.

  importData @17 (name :Text, archive :Data, replace :Bool) -> (keys :UInt64);
  # Loads an export into a plugin's data: merged key by key, or replacing
  # everything with replace. Checked against the KV limits first; nothing
  # is written when it fails. importDataStream takes any size.

  trustAdd @18 (publicKey :Text, comment :Text) -> (key :TrustedKey);
  # Trusts a publisher key (minisign public key format) for signed packages.
  trustList @19 () -> (keys :List(TrustedKey));
  trustRemove @20 (keyId :Text) -> ();

  exportDataStream @21 (name :Text, sink :ByteSink) -> (bytes :UInt64, keys :UInt64);
  # exportData in chunks: the daemon writes the export document to sink
  # (at most 1 MiB per write, in order) and answers once all is written.
  # A sink that fails a write ends the export with that error.

  importDataStream @22 (name :Text, replace :Bool) -> (upload :DataUpload);
  # importData in chunks: write the document to upload, then finish. The
  # daemon keeps it in a file in its state directory until then (never in
  # memory), bounded by the largest export a plugin's data can make.
}

interface ByteSink {
  # Where the daemon writes a stream of bytes (exportDataStream).
  write @0 (chunk :Data) -> ();
}

interface DataUpload {
  # One streamed data import (Control.importDataStream).
  write @0 (chunk :Data) -> ();
  # The next bytes, at most 1 MiB per call; keep a few calls in flight.
  finish @1 () -> (keys :UInt64);
  # Ends the document and imports it (as importData); answers with the
  # number of keys imported.
  abort @2 (reason :Text) -> ();
}

struct InstallOptions {
  replace @0 :Bool;
  # Upgrade an installed plugin, keeping its enabled flag and data.
  enable @1 :Bool;
  # Enable (and start) the plugin once installed.
  grant @2 :Permissions;
  # What the operator approved. Null grants exactly what the manifest asks
  # for (a script that passed --yes).
  wait @3 :Bool;
  # Answer only once the plugin runs and is healthy (or the install failed
  # and was undone); without it, answer once the files are in place.
  allowUnsigned @4 :Bool;
  # The operator accepted an unsigned package (policy "prompt").
  sha256 @5 :Data;
  # When set, the package must have this SHA-256 (a pin).
}

interface Upload {
  # One streamed package (Control.installStream).
  write @0 (chunk :Data) -> ();
  # The next bytes, at most 1 MiB per call; keep a few calls in flight.
  finish @1 () -> (plugin :PluginStatus, publisher :TrustedKey, sha256 :Data);
  # Ends the package and installs it; publisher is null when unsigned.
  abort @2 (reason :Text) -> ();
}

interface InstallProgress {
  # What the daemon is doing with a streamed package.
  stage @0 (stage :Text, done :UInt64, total :UInt64) -> ();
  # Called as each stage begins, in order: "receiving" (every 8 MiB),
  # "verifying", "unpacking", "starting", "waiting" (for the plugin to be
  # healthy), "switching" (an upgrade: calls to the new version), "rolling
  # back" (it did not become healthy). done/total count bytes where that
  # means something, else 0. Stages after finish answered (without
  # InstallOptions.wait) are not reported. docs/packages.md has the table.
}

struct TrustedKey {
  keyId @0 :Text;        # minisign key id, 16 hex digits
  publicKey @1 :Text;    # minisign public key (base64)
  comment @2 :Text;      # the operator's note: who publishes with it
  addedAtUnixMs @3 :Int64;
}

struct Permissions {
  memoryBytes @0 :Int64;
  pids @1 :Int64;
  cpuMillis @2 :Int64;      # thousandths of a core
  tmpBytes @3 :Int64;
  openFiles @4 :UInt64;
  readOnlyPaths @5 :List(Text);
  outboundHosts @6 :List(Text);
}

struct HookInfo {
  name @0 :Text;
  phase @1 :Http.Phase;
  method @2 :Text;
  route @3 :Text;
  priority @4 :Int32;
  deadlineMicros @5 :UInt64;       # in force: the operator's override or the manifest's
  failurePolicy @6 :Http.FailurePolicy;
  calls @7 :UInt64;                # calls since the daemon started
  failures @8 :UInt64;             # of which failed (timeouts, errors, rejected results)
  circuit @9 :Text;                # the circuit breaker: "closed", "open" or "half-open"
  deadlineOverridden @10 :Bool;    # the operator overrode the manifest's deadline
  byPolicy @11 :List(CauseCount);  # calls not answered by the plugin, answered by the
                                   # hook's failure policy instead, by cause (see CauseCount)
  p50Micros @12 :UInt64;
  p99Micros @13 :UInt64;
  # The median and 99th percentile latency of the calls that reached the
  # plugin (through the daemon and on hosts' direct lanes) since the daemon
  # started, estimated from a histogram with fixed buckets (100 µs to 10 s;
  # see docs/metrics.md), so within a bucket's width; 0 when there were
  # none.
}

struct CauseCount {
  # How many calls of a hook were answered by its failure policy for one
  # cause since the daemon started. Causes: "not running" (stopped, in
  # backoff or failed), "quarantined", "starting", "breaker open",
  # "deadline", "crashed" (stopped while handling the call), "failed" (an
  # error), "rejected" (an answer its phase does not allow), "cancelled"
  # (the host gave up).
  cause @0 :Text;
  count @1 :UInt64;
}

struct StreamStageInfo {
  # One stream stage of a plugin (manifest [[streams]]), with what it has
  # done since the daemon started.
  name @0 :Text;
  kind @1 :Text;                   # "video/segment", "video/*", "*"
  role @2 :Text;                   # "transform" or "observe"
  priority @3 :Int32;
  deadlineMicros @4 :UInt64;       # per frame; 0: none
  failurePolicy @5 :Http.FailurePolicy;
  streams @6 :UInt64;              # streams it took part in
  open @7 :UInt32;                 # of which still open
  frames @8 :UInt64;               # frames it answered (transform) or was given (observe)
  dropped @9 :UInt64;              # frames it dropped (transform), or missed for lack of credit (observe)
  missedDeadlines @10 :UInt64;     # frames it did not answer in time
  failures @11 :UInt64;            # streams it failed or was bypassed in (crash, error, broken protocol)
}

struct PluginStatus {
  name @0 :Text;
  version @1 :Text;
  description @2 :Text;
  enabled @3 :Bool;
  state @4 :Text;
  # One of: "stopped", "starting", "running", "backoff" (waiting to restart
  # after a crash), "quarantined" (crashed too often; see `detail`),
  # "failed" (could not be started; see `detail`).
  detail @5 :Text;
  pid @6 :Int32;
  restarts @7 :UInt32;        # crashes since the plugin was last enabled
  lastExit @8 :Text;          # how the last instance ended
  runtime @9 :Text;           # "container" or "process"
  sandboxed @10 :Bool;
  protocolVersion @11 :UInt16;
  hooks @12 :List(HookInfo);
  grant @13 :Permissions;
  installedAtUnixMs @14 :Int64;
  startedAtUnixMs @15 :Int64;
  dir @16 :Text;
  streams @17 :List(StreamStageInfo);
  previousVersion @18 :Text;  # kept for rollback; empty when none
  publisher @19 :TrustedKey;  # who signed the installed package; null: unsigned
  sha256 @20 :Data;           # of the installed package
  keptDataKeys @21 :UInt64;
  keptDataSettings @22 :UInt32;
  keptDataBytes @23 :UInt64;
  # Set only in an install's answer: the data of an earlier install of this
  # name (kept by an uninstall without purge) that this install took over.
  # All zero when there was none.
}

struct LogLine {
  timeUnixNano @0 :Int64;
  stream @1 :Text;            # "stdout", "stderr", "log" or "daemon"
  text @2 :Text;
}

interface LogSink {
  push @0 (lines :List(LogLine)) -> ();
}

struct DaemonStatus {
  version @0 :Text;
  protocolVersions @1 :List(UInt16);
  runtime @2 :Text;
  sandboxed @3 :Bool;
  stateDir @4 :Text;
  socket @5 :Text;
  startedAtUnixMs @6 :Int64;
  plugins @7 :UInt32;
  ready @8 :Bool;
  # The daemon is ready: its sockets serve and every plugin enabled when it
  # started has started or failed to. False again while it stops.
  uptimeMillis @9 :UInt64;
  pluginsByState @10 :List(StateCount);
  # How many installed plugins are in each state (PluginStatus.state); only
  # states with at least one plugin are listed, in a stable order.
  metricsListen @11 :Text;
  # Where the metrics and health endpoint listens (dimplugd serve
  # --metrics-listen): "127.0.0.1:9477", "unix:/run/dimplugd/metrics.sock",
  # or empty when it is off.
}

struct StateCount {
  state @0 :Text;
  count @1 :UInt32;
}

struct PluginSettings {
  # One scope of a plugin's settings, as operators and hosts see them.
  scope @0 :Text;
  user @1 :Int64;
  values @2 :Data;     # JSON object: the defaults overlaid with what is stored; secrets masked
  stored @3 :Data;     # JSON object: only what was set; secrets masked
  schema @4 :Data;     # the scope's JSON Schema, as the plugin ships it
  ui @5 :Data;         # its JSON Forms UI schema; empty if the plugin has none
  problem @6 :Text;    # why the stored values fail the current schema (after an upgrade), or empty
}
