# daemon.capnp — the bootstrap capability of the daemon's Unix socket.
#
# Hosts and the CLI connect to the same socket and pick a face. Both faces
# negotiate a protocol version the same way the plugin face does: the client
# offers every version it speaks, the daemon answers with every version it
# speaks and the highest common one; 0 means there is none, and both sides
# report an error naming both lists.

@0xe7ec6bf594bbbfdd;

using Go = import "go.capnp";
using Cxx = import "c++.capnp";
$Go.package("schema");
$Go.import("github.com/dimplugd/dimplugd/sdk-go/schema");
$Cxx.namespace("dimplugd::schema");

using Host = import "host.capnp";
using Control = import "control.capnp";

interface Daemon {
  openHost @0 (versions :List(UInt16), client :Text)
           -> (daemonVersions :List(UInt16), version :UInt16, session :Host.HostSession,
               sessionToken :Data);
  # `client` names the host in the daemon's log ("dim 0.4.0").
  #
  # `sessionToken` (16 random bytes) ties the host's other connections to
  # this session: a host opens its hook lane with "DPLANE2\n" followed by
  # the token (lane.capnp), and its frame socket with "DPFRAME2\n" followed
  # by the token (stream.capnp). The daemon accepts a token only from the
  # uid that opened the session, and closes the lane and the frame socket
  # (with every direct lane granted on it) when the session ends. A new
  # session after a reconnect has a new token. The token is empty when the
  # version negotiated is 0.

  openControl @1 (versions :List(UInt16), client :Text)
              -> (daemonVersions :List(UInt16), version :UInt16, control :Control.Control);
}
