# lane.capnp — the hook lane: the fast path for hook calls.
#
# Measured here, a go-capnp RPC round trip costs about as much as a gRPC
# call (180 µs against 35 µs for the raw socket), and a hooked request
# crosses two connections (host → daemon → plugin). The hook lane carries the
# same Cap'n Proto structs — HookCall, HookResult, a dispatch and its
# DispatchResult — over a plain multiplexed framing with no RPC machinery, so
# a hook costs little more than the socket round trips. Everything else
# (handshake, host services, control) stays on Cap'n Proto RPC. The lane is
# optional on both faces: a side that does not speak it uses the RPC methods,
# which mean exactly the same.
#
# Framing, in both directions, on a stream socket:
#
#   u32 length (little-endian) of what follows
#   u64 call id (little-endian), chosen by the caller, unique among its
#       calls in flight
#   one Cap'n Proto message in standard (unpacked) stream framing whose root
#   is a LaneFrame
#
# A caller sends a request frame (dispatch or hook) and gets exactly one
# reply frame with the same id (dispatchResult, hookResult or error), unless
# it sends cancel for that id first, in which case the reply may still come
# and is ignored. Replies may come in any order. The length field is at most
# 64 MiB + 8 (the id counts); the daemon reads frames from hosts up to its
# host message size (--host-message-size, 32 MiB by default) + 8, and
# closes the lane on a larger one.
# Call ids start at 1: id 0 is the daemon's `stopping` frame, not a reply.
#
# Where the lane runs:
#   * plugin face: the daemon passes a second socket to the plugin as file
#     descriptor 4. A plugin that serves the lane on it says so in
#     PluginInfo.lane; the daemon then sends hook calls there.
#   * host face: a host opens a second connection to the daemon's socket and
#     writes the 8 bytes "DPLANE2\n" followed by the 16-byte sessionToken
#     openHost returned (daemon.capnp); the daemon answers one byte, 1, and
#     then serves dispatch calls on the connection until it or the session
#     ends; or 0 followed by why it refused (text, until it closes: a token
#     of no open session, an older preamble version).
#   * direct lanes: a host asks for a lane to one plugin on its frame socket
#     (stream.capnp: laneRequest); the daemon hands each side one end of a
#     new socket pair (LaneGrant), with no preamble. The host sends hook
#     calls on it, filling route and params itself, and the plugin answers
#     as on fd 4. docs/host-protocol.md, "Direct lanes".

@0xe9222974464132e8;

using Go = import "go.capnp";
using Cxx = import "c++.capnp";
$Go.package("schema");
$Go.import("github.com/dimplugd/dimplugd/sdk-go/schema");
$Cxx.namespace("dimplugd::schema");

using Http = import "http.capnp";
using Plugin = import "plugin.capnp";
using Host = import "host.capnp";

struct LaneFrame {
  union {
    dispatch @0 :LaneDispatch;             # host → daemon (HostSession.dispatch)
    dispatchResult @1 :Host.DispatchResult;
    hook @2 :Plugin.HookCall;              # daemon → plugin (Plugin.hook)
    hookResult @3 :Http.HookResult;
    error @4 :Text;                        # the call failed; the text says why
    cancel @5 :Void;                       # the caller gave up on this id
    stopping @6 :Void;                     # daemon → host, id 0: see below
  }
  # stopping: the daemon is stopping or upgrading in place and closes this
  # host lane next. It has answered, before this frame, every dispatch it
  # started on the lane; a dispatch still without an answer was not started
  # (no hook saw it), so the host may send it again on its next connection
  # (an upgrading daemon's socket accepts it, see docs/protocol.md). A
  # daemon that had to cut calls in flight (a drain longer than 10 s) closes
  # the lane without this frame. The same holds for a dispatch answered
  # with an error frame whose text is "dimplugd is stopping: the call was
  # not started".
  # It is sent on host lanes only, never to plugins.
}

struct LaneDispatch {
  phase @0 :Http.Phase;
  request @1 :Http.HttpRequest;
  response @2 :Http.HttpResponse;
}
