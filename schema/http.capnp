# http.capnp — how dimplugd represents an HTTP exchange on the wire.
#
# These types are shared by the plugin face (plugin.capnp) and the host face
# (host.capnp). They model a real Dim request closely enough that a plugin
# can make every decision Dim's own handlers make: the method, the route
# template that matched (axum syntax, e.g. "/api/v1/media/:id"), the concrete
# path, the raw query, all header values in order, the body and the
# authenticated user.
#
# Conventions used throughout the schema:
#   * Header names are compared case-insensitively; a header with several
#     values appears once per value, in order.
#   * Optional scalars use a companion `has…`/`replace…` Bool rather than a
#     magic value, so that every language binding reads them the same way.
#   * Lists are never null on the wire when they matter: an empty list and a
#     null list mean the same thing.

@0xef4232f91829290c;

using Go = import "go.capnp";
using Cxx = import "c++.capnp";
$Go.package("schema");
$Go.import("github.com/dimplugd/dimplugd/sdk-go/schema");
$Cxx.namespace("dimplugd::schema");

struct Header {
  # One header line. Multi-valued headers appear as several Header entries.
  name @0 :Text;
  value @1 :Text;
}

struct Param {
  # A parameter captured by a route template: for "/api/v1/media/:id" and the
  # path "/api/v1/media/42" there is one Param{name = "id", value = "42"}.
  # A trailing wildcard "*path" captures the rest of the path without its
  # leading slash.
  name @0 :Text;
  value @1 :Text;
}

struct HttpRequest {
  method @0 :Text;
  # Upper-case HTTP method: "GET", "POST", ...

  route @1 :Text;
  # The route template that matched, in axum syntax ("/api/v1/media/:id").
  # Empty when the host did not match the request against a template.

  path @2 :Text;
  # The concrete path ("/api/v1/media/42"), without the query, in the form
  # the host's own router routes on: as received (percent-encoded) for a
  # router that matches raw paths, like axum's; percent-decoded for one that
  # decodes first, like Go's net/http ServeMux. Hooks must match exactly the
  # requests the host's handlers serve, so a host matches its route table
  # against, and sends, the very string its router used; route matching
  # itself never decodes (schema/conformance/routes.json).

  rawQuery @3 :Text;
  # The query string without the leading "?", exactly as the client sent it.

  headers @4 :List(Header);

  body @5 :Data;
  # The request body, buffered in full. Hosts refuse bodies larger than their
  # configured limit with 413 rather than truncating them.

  params @6 :List(Param);
  # Parameters captured by `route`. On a dispatch through the daemon, the
  # daemon matches the request against each hook's template and fills
  # `route` and `params` itself (what the host sent is replaced). On a
  # direct lane the daemon is not there: the host fills both, from the
  # route table entry that matched (docs/host-protocol.md).

  userId @7 :Int64;
  authenticated @8 :Bool;
  # The Dim user the request is authenticated as. `userId` is meaningful only
  # when `authenticated` is true.

  remoteAddr @9 :Text;
  # The client's address as the host saw it ("192.0.2.7:51234").

  requestId @10 :Text;
  # An opaque id the host assigned, for correlating logs across plugins.

  receivedAtUnixNano @11 :Int64;
  # When the host received the request (0 if it did not say). Observers run
  # concurrently and in no particular order; this orders what they see.
}

struct HttpResponse {
  status @0 :UInt16;
  headers @1 :List(Header);
  body @2 :Data;
}

struct RequestMutation {
  # Changes a request-phase hook makes to the request before the host's
  # handler sees it. Unset parts are left as they were. The method and path
  # cannot be changed: a plugin that wants a different route owns it instead
  # (Phase.route).
  replaceHeaders @0 :Bool;
  headers @1 :List(Header);
  # When replaceHeaders is true, `headers` is the complete new header set.

  replaceQuery @2 :Bool;
  rawQuery @3 :Text;

  replaceBody @4 :Bool;
  body @5 :Data;
}

struct ResponseMutation {
  # Changes a response-phase hook makes to the response before the client
  # sees it. Unset parts are left as they were.
  status @0 :UInt16;
  # 0 keeps the status.

  replaceHeaders @1 :Bool;
  headers @2 :List(Header);

  replaceBody @3 :Bool;
  body @4 :Data;
}

enum Phase {
  # Where in a request's life a hook runs.
  request @0;
  # Before the host's handler: may mutate headers, query and body, or answer
  # at once (e.g. 403) so the handler never runs. Hooks run in priority order.
  response @1;
  # After the host's handler: may mutate status, headers and body. Hooks run
  # in reverse priority order.
  route @2;
  # The plugin owns the route and produces the whole response; the host's
  # handler (if any) never runs. At most one plugin owns a route.
  observe @3;
  # A copy of the finished request and response, delivered after the host
  # answered. Never delays the host; the result is ignored.
}

enum FailurePolicy {
  failOpen @0;
  # A failing hook is skipped: the request continues as if the plugin were
  # not installed, and the failure is counted and reported.
  failClosed @1;
  # A failing hook fails the request: the host answers 502 (the plugin
  # answered with an error) or 503 (the plugin was unavailable or too slow).
}

enum HookErrorKind {
  failed @0;      # the plugin answered with an error (or its handler panicked)
  timeout @1;     # the plugin did not answer within the hook's deadline
  unavailable @2; # the plugin is not running (starting, restarting, quarantined)
  rejected @3;    # the plugin returned a result not allowed in this phase
}

struct HookError {
  # Why one plugin's hook had no effect. Messages are written for the person
  # reading the host's logs.
  plugin @0 :Text;
  hook @1 :Text;
  kind @2 :HookErrorKind;
  reason @3 :Text;
}

struct HookResult {
  # What a plugin's hook returns (plugin face).
  union {
    continue @0 :Void;
    # No change.
    mutateRequest @1 :RequestMutation;
    # Request phase only.
    respond @2 :HttpResponse;
    # Request phase: answer now, skipping the handler and later hooks.
    # Route phase: the response.
    mutateResponse @3 :ResponseMutation;
    # Response phase only.
  }
}
