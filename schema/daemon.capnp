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
           -> (daemonVersions :List(UInt16), version :UInt16, session :Host.HostSession);
  # `client` names the host in the daemon's log ("dim 0.4.0").

  openControl @1 (versions :List(UInt16), client :Text)
              -> (daemonVersions :List(UInt16), version :UInt16, control :Control.Control);
}
