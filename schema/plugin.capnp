# plugin.capnp — the plugin face: what every plugin implements and what the
# daemon grants it.
#
# Connection: the daemon starts the plugin with one end of a Unix socketpair
# as file descriptor 3 and speaks Cap'n Proto RPC (two-party, standard
# framing) on it. The plugin must not write protocol data to stdout or
# stderr; both are captured as the plugin's log. The plugin exports
# PluginBootstrap as its bootstrap capability. The daemon calls
# `handshake` once, first; everything else is reached through the
# capabilities that call exchanges. When fd 3 reaches EOF the plugin must
# exit: the daemon is gone or has stopped it.
#
# Protocol versions: this file describes protocol version 1.

@0xdcd0aedd1fb5a87f;

using Go = import "go.capnp";
using Cxx = import "c++.capnp";
$Go.package("schema");
$Go.import("github.com/dimplugd/dimplugd/sdk-go/schema");
$Cxx.namespace("dimplugd::schema");

using Http = import "http.capnp";

interface PluginBootstrap {
  handshake @0 (daemonVersions :List(UInt16), services :HostServices, instance :InstanceInfo)
            -> (pluginVersions :List(UInt16), version :UInt16, plugin :Plugin, info :PluginInfo);
  # Version negotiation. The daemon offers every protocol version it speaks;
  # the plugin answers with every version it speaks and the highest common
  # one in `version`. When there is none, `version` is 0 and `plugin` is
  # null: both sides then report an error naming both lists, and the daemon
  # stops the plugin. `services` are the capabilities the operator granted.
}

struct InstanceInfo {
  # Facts about this instance, for the plugin's own use.
  name @0 :Text;         # the plugin's installed name
  instanceId @1 :Text;   # unique per start, e.g. "media-badge-3"
  sandboxed @2 :Bool;    # false when the daemon runs without a sandbox
}

struct PluginInfo {
  # What a plugin says about itself. The daemon compares `phases` with the
  # manifest: a manifest hook whose phase the plugin has no handler for is an
  # error at start, not at the first request.
  name @0 :Text;
  # The plugin's installed name, as the handshake's InstanceInfo.name gave
  # it (not a name of its own choosing): the daemon fails the start of a
  # plugin that answers with another name.
  version @1 :Text;
  sdk @2 :Text;             # e.g. "dimplugd-sdk-go/0.1.0"
  phases @3 :List(Http.Phase);  # the phases the plugin has handlers for
  lane @4 :Bool;                # the plugin serves the hook lane on fd 4 (lane.capnp)
  frames @5 :Bool;
  # The plugin serves its frame socket on fd 5 (stream.capnp): frame
  # streams, and the channel over which the daemon hands it direct hook
  # lanes (LaneGrant). Hosts get direct lanes to a plugin only when it sets
  # both `lane` and `frames`; otherwise their calls go through the daemon.
  rebind @6 :Bool;
  # The plugin takes a new control socket (and hook lane) over its frame
  # socket (FrameMsg.rebind), so a daemon being upgraded in place can hand
  # it, still running, to the new daemon binary instead of restarting it.
  # Needs `frames`. A plugin that does not set it is stopped and started
  # again across an upgrade.
  frameRoles @7 :List(Text);
  # The stream roles the plugin has frame handlers for: "transform" (it
  # filters frames and passes frames on) and/or "observe" (it sees frames).
  # Needs `frames`. The daemon fails the plugin at its first start when a
  # manifest [[streams]] stage has a role not listed, as it does for hook
  # phases. Left unset (older plugins), only `frames` is checked.
}

interface Plugin {
  describe @0 () -> (info :PluginInfo);

  hook @1 (call :HookCall) -> (result :Http.HookResult);
  # Runs one hook. The call is cancelled when its deadline passes; the daemon
  # then applies the hook's failure policy. Results not allowed in
  # call.phase (e.g. mutateResponse in the request phase) are rejected.

  health @2 () -> (ok :Bool, detail :Text);
  # Cheap liveness probe. Called periodically; a plugin that answers
  # ok = false or misses the deadline repeatedly is restarted.

  stop @3 (reason :Text) -> ();
  # The shutdown call: asks the plugin to finish in-flight work and exit.
  # The daemon waits a grace period, then sends SIGTERM, then SIGKILL.
}

struct HookCall {
  hook @0 :Text;                  # the hook's name from the manifest
  phase @1 :Http.Phase;
  request @2 :Http.HttpRequest;
  response @3 :Http.HttpResponse; # response and observe phases only
  timeoutMicros @4 :UInt64;       # time left before the daemon gives up
}

struct HostServices {
  # Capabilities the daemon grants a plugin. A null capability was not
  # granted. Later protocol versions add fields (config, events); a plugin
  # must treat a missing field as not granted.
  log @0 :Logger;
  kv @1 :KeyValue;
  fetch @2 :Fetcher;
  # Outbound HTTP(S), performed by the daemon: the sandbox itself has no
  # network. Null unless the operator granted at least one outbound host.
  settings @3 :Settings;
  # The plugin's settings (manifest [settings]). Null if it declares none.
}

interface Settings {
  # What the operator (scope "global") and each user (scope "user") set,
  # validated against the plugin's schema by the daemon.
  get @0 (scope :Text, user :Int64) -> (values :Data);
  # The effective settings: the schema's defaults overlaid with what is
  # stored, as a JSON object; secrets in full (they are the plugin's own).
  # user is 0 for "global".
  watch @1 (watcher :SettingsWatcher) -> ();
  # Registers a watcher for the life of this connection: after every
  # change the daemon calls changed (in order, one at a time); the plugin
  # then gets the new values. Values the plugin read at Init plus these
  # calls are all it needs: no restart on a change.
}

interface SettingsWatcher {
  changed @0 (scope :Text, user :Int64) -> ();
}

enum LogLevel {
  # C++ names carry a suffix: DEBUG and ERROR are common macros.
  debug @0 $Cxx.name("debugLevel");
  info @1 $Cxx.name("infoLevel");
  warn @2 $Cxx.name("warnLevel");
  error @3 $Cxx.name("errorLevel");
}

struct LogField {
  key @0 :Text;
  value @1 :Text;
}

interface Logger {
  log @0 (level :LogLevel, text :Text, fields :List(LogField)) -> ();
  # Writes one structured line to the plugin's log (`dimplugctl logs`).
}

interface KeyValue {
  # A key-value store private to the plugin, persisted by the daemon across
  # restarts. Keys are 1–1024 bytes; values at most 1 MiB; 64 MiB in all.
  get @0 (key :Text) -> (value :Data, found :Bool);
  set @1 (key :Text, value :Data) -> ();
  delete @2 (key :Text) -> ();
  list @3 (prefix :Text, limit :UInt32) -> (keys :List(Text));
  # Keys with the prefix, in byte order; limit 0 means the daemon's maximum.
  compareAndSwap @4 (key :Text, old :Data, oldFound :Bool, new :Data, delete :Bool)
                 -> (swapped :Bool, value :Data, found :Bool);
  # Atomically: if the key's value is old (or, without oldFound, the key is
  # absent), set it to new (or delete it with delete). Answers whether it
  # swapped and the value now stored.
  increment @5 (key :Text, delta :Int64) -> (value :Int64);
  # Atomically adds delta to the key's value, a decimal integer (absent
  # counts as 0), and answers the sum. Fails as invalid on a value that is
  # not an integer, or on overflow.
}

interface Fetcher {
  # The plugin's only way out of its sandbox's network namespace.
  fetch @0 (request :FetchRequest) -> (response :Http.HttpResponse);
  # Performs one HTTP or HTTPS request on the plugin's behalf. Only the
  # host:port pairs in the operator's grant are reachable (a grant of
  # "*.example.com:443" covers every subdomain); anything else fails with an
  # error naming the host and the grant. Redirects are returned, not
  # followed, so every hop is checked against the grant. Request and
  # response bodies are limited to 16 MiB.
}

struct FetchRequest {
  method @0 :Text;                  # "GET" when empty
  url @1 :Text;                     # absolute http:// or https:// URL
  headers @2 :List(Http.Header);
  body @3 :Data;
  timeoutMicros @4 :UInt64;         # 0: the daemon's default (30 s)
}
