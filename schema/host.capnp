# host.capnp — the host face: what Dim (or any host) calls.
#
# A host connects to the daemon's Unix socket, takes the Daemon bootstrap
# capability (daemon.capnp) and calls openHost to get a HostSession. One
# session serves any number of concurrent requests.
#
# Unhooked work is free: a host keeps the route table (routes, or pushed to a
# RouteWatcher) and calls dispatch only for requests that match an entry.

@0xbc2bd2a32e7a0198;

using Go = import "go.capnp";
using Cxx = import "c++.capnp";
$Go.package("schema");
$Go.import("github.com/dimplugd/dimplugd/sdk-go/schema");
$Cxx.namespace("dimplugd::schema");

using Http = import "http.capnp";
using Control = import "control.capnp";

interface HostSession {
  routes @0 () -> (table :RouteTable);
  # The current route table.

  watchRoutes @1 (watcher :RouteWatcher) -> (table :RouteTable);
  # Returns the current table and pushes every later version to `watcher`
  # until the watcher fails or the session ends.

  dispatch @2 (phase :Http.Phase, request :Http.HttpRequest, response :Http.HttpResponse)
           -> (result :DispatchResult);
  # Runs every hook of `phase` that matches the request's method and path, in
  # order, with each hook's deadline and failure policy. `response` is read
  # in the response and observe phases only. Observe dispatch returns as soon
  # as the copies are queued.

  userSettings @3 (plugin :Text, user :Int64) -> (settings :Control.PluginSettings);
  # One user's settings of a plugin (its manifest's [settings.user]), read
  # on that user's behalf: the host passes the id of the user it
  # authenticated, and must never take it from the request itself (the Go
  # SDK's Middleware takes it from WithUser). Secrets are masked. Fails as
  # not found if the plugin is not installed or has no user settings.

  setUserSettings @4 (plugin :Text, user :Int64, values :Data) -> (settings :Control.PluginSettings);
  # Writes one user's settings on that user's behalf: a partial update as
  # Control.setSettings without replace (null resets a key, a masked secret
  # sent back keeps its value), validated against the plugin's schema; an
  # invalid write fails as invalid naming each bad field. Hosts cannot
  # read or write the operator's global settings.

  uiDocument @5 () -> (document :Data);
  # What plugins add to the host's web UI, as one JSON document (format 1,
  # see docs/protocol.md "Plugin UI"): for each enabled, running plugin, a
  # Preferences tab from its user settings schema and the pages it serves
  # in named slots (nav, media-action, player-overlay, dashboard-card).
  # Its "version" changes whenever its content does; fetch it again when
  # the route table changes.

  observed @6 (plugin :Text) -> ();
  # Returns once every observe call queued in the daemon for `plugin` when
  # it was called has been made (or has failed). A host that observes over
  # direct lanes calls it before its first direct observe call to a plugin
  # it has observed through the daemon, so that the plugin still sees the
  # host's requests in order across the switch (docs/host-protocol.md,
  # "Direct lanes"). Returns at once for a plugin that is not installed.

  # Frame streams are on the frame socket (stream.capnp).
}

struct RouteTable {
  version @0 :UInt64;
  # Increases whenever the table changes: a plugin installed, upgraded,
  # enabled, disabled or removed, a deadline override. A plugin that
  # crashes or is quarantined stays in the table (its hooks then fail by
  # policy). Each daemon process numbers its tables from the start again:
  # compare versions only within one connection.
  entries @1 :List(RouteEntry);
  breakerFailures @2 :UInt32;
  breakerCooldownMicros @3 :UInt64;
  # The daemon's circuit-breaker settings, for hosts calling hooks directly.
}

struct RouteEntry {
  # One hooked route: requests whose method and path match should be
  # dispatched for the listed phases.
  method @0 :Text;        # upper-case, or "*" for any method
  route @1 :Text;         # axum-style template
  phases @2 :List(Http.Phase);
  owner @3 :Text;         # for route-phase entries, the owning plugin
  hooks @4 :List(RouteHook);
  # The hooks behind the entry, with their contracts: a host that holds a
  # direct lane to a plugin (see lane.capnp) may call a phase's only hook
  # itself, honouring the deadline and failure policy given here.
}

struct RouteHook {
  plugin @0 :Text;
  hook @1 :Text;
  phase @2 :Http.Phase;
  priority @3 :Int32;
  deadlineMicros @4 :UInt64;
  failurePolicy @5 :Http.FailurePolicy;
}

interface RouteWatcher {
  update @0 (table :RouteTable) -> ();
}

struct DispatchResult {
  outcome :union {
    continue @0 :Void;
    # No hook changed anything (or none matched).
    mutateRequest @1 :Http.RequestMutation;
    # Request phase: the combined effect of every hook, to apply before
    # calling the handler.
    respond @2 :Http.HttpResponse;
    # Request phase: a hook answered; send this and skip the handler.
    # Route phase: the owning plugin's response.
    mutateResponse @3 :Http.ResponseMutation;
    # Response phase: the combined effect of every hook.
    failClosed @4 :Http.HookError;
    # A fail-closed hook failed. The host must answer 503 for timeout and
    # unavailable errors and 502 otherwise, saying which plugin failed.
  }
  skipped @5 :List(Http.HookError);
  # Fail-open hooks that failed and were skipped, for the host's logs.
  applied @6 :List(Text);
  # "plugin/hook" names of the hooks that changed something, in order.
}
