# stream.capnp — frame streams: media frames (one fMP4 segment per track,
# 4 KiB to 100+ MiB) flowing from a host through a chain of plugins and back.
#
# Frames do not travel inside Cap'n Proto messages. Each producer (the host,
# and every plugin that makes new frames) owns shared-memory pools — memfd
# files it creates, announces once with PoolAdd and passes as file
# descriptors — and frames are descriptors into them: (pool, offset,
# length). A pass-through plugin returns the descriptor it was given, so no
# frame byte is copied anywhere; the daemon routes descriptors and never maps
# a pool. Small frames may travel inline instead.
#
# Connection: every peer (a host, a plugin) talks to the daemon on its own
# SOCK_SEQPACKET Unix socket. A packet carries one or more FrameMsgs back to
# back, each in standard Cap'n Proto framing (batching many small frames
# into one packet is what makes them cheap; packets are at most 192 KiB).
# A packet with file descriptors (SCM_RIGHTS: a PoolAdd's memfd, a lane's
# socket) carries exactly one message, the one they belong to. Plugins find
# theirs at file descriptor 5. A host writes the 9 bytes "DPFRAME2\n" and
# the 16-byte sessionToken openHost returned (daemon.capnp) on a new
# connection to the daemon's socket (the socket is closed when that session
# ends); the daemon answers with one byte:
# 1 with a socket file descriptor (SCM_RIGHTS), the host's frame socket;
# or 0 followed by why it refused (text, until the daemon closes the
# connection). docs/host-protocol.md has the sequence.
#
# Reading while writing: the daemon reads a host's socket only while the
# stages keep up (it stops reading at a stage backlog of 1,024 frames)
# and answers every frame (its frames back, or a dropped mark). A host must
# read its socket while it writes, or both sides stall.
#
# Memory and flow control: a descriptor is a reference. Whoever receives a
# frame releases it (Release) when done with it; the daemon counts the
# references it handed out and sends Release to the pool's owner when the
# last one is gone. A frame that comes back to its owner as the last
# reference is marked returned: the owner frees it without a round trip. Producers allocate only from their own bounded pools, so
# a slow consumer holds slots, the producer's allocation waits, and memory
# stays bounded end to end. A frame larger than a pool gets a pool of its own.

@0xf7ae6596281489a0;

using Go = import "go.capnp";
using Cxx = import "c++.capnp";
$Go.package("schema");
$Go.import("github.com/dimplugd/dimplugd/sdk-go/schema");

const maxInlineBytes :UInt32 = 65536;
# The most bytes a frame may carry inline (Frame.data.inline), and all the
# inline parts of one answer together; larger frames travel in a pool. The
# Go SDKs inline frames up to 512 bytes. A peer over the limit is cut off
# (FrameMsg.goodbye says so).
$Cxx.namespace("dimplugd::schema");

struct FrameMsg {
  union {
    poolAdd @0 :PoolAdd;       # producer → daemon → consumers; carries the memfd
    poolDrop @1 :FrameRef;     # the owner will not use this pool again (offset and length unused)
    open @2 :StreamOpen;       # host → daemon; daemon → plugin
    opened @3 :StreamOpened;   # daemon → host: the chain is ready
    frame @4 :Frame;           # any direction: a frame of a stream
    release @5 :FrameRef;      # "I am done with this descriptor"
    end @6 :StreamEnd;         # no more frames on this stream (either way)
    laneRequest @7 :Text;      # host → daemon: a direct hook lane to this plugin, please
    lane @8 :LaneGrant;        # daemon → host and → plugin; carries the lane's socket
    hookStats @9 :HookStats;   # host → daemon: calls made on direct lanes since the last report
    rebind @10 :Rebind;        # daemon → plugin: carries a new control socket (and hook lane)
    rebound @11 :Rebind;       # plugin → daemon: the rebind is done (no fds)
    goodbye @12 :Text;
    # daemon → host or plugin, last: why the daemon is closing this frame
    # socket (the peer broke the protocol: e.g. a pool whose memfd is not
    # sealed against shrinking, growing and writing, a frame naming memory
    # it does not own). A peer should report it as the reason its streams
    # ended; the socket closes right after.
  }
}

struct Rebind {
  # An in-place upgrade of the daemon (see docs/protocol.md, "Upgrades in
  # place"). Only sent to a plugin whose PluginInfo.rebind is set, after
  # every stream of the plugin has ended and every hook call on its lane was
  # answered. The message carries one or two sockets (SCM_RIGHTS): first the
  # new control socket, then, if the plugin serves the hook lane, its new
  # lane. The plugin then
  #   1. ends whatever is left of its streams and forgets every pool it
  #      mapped or announced (pool ids and scopes start over with the new
  #      daemon);
  #   2. serves its bootstrap (PluginBootstrap) on the new control socket
  #      and hook calls on the new lane, and stops treating the end of the
  #      old control socket (fd 3) and old lane (fd 4) as the daemon going
  #      away: they close when the old daemon's process image is replaced;
  #   3. answers `rebound` with the same instance id.
  # The new daemon calls handshake again on the new control socket, with new
  # host services; the plugin swaps them in without running its
  # initialisation again, and keeps its instance id, its direct lanes to
  # hosts and this frame socket. A plugin that does not answer within a few
  # seconds is stopped and started again by the new daemon.
  instance @0 :Text;         # the instance being handed over
}

struct HookStats {
  # What a host's direct calls to one hook added up to since its last
  # report, so that `dimplugctl inspect` counts every call.
  plugin @0 :Text;
  hook @1 :Text;
  calls @2 :UInt64;
  failures @3 :UInt64;
  # Of the failures, deadline misses and answers the phase does not allow;
  # the rest are errors.
  timeouts @4 :UInt64;
  rejected @5 :UInt64;
  breakerOpen @6 :UInt64;
  # Calls answered by the hook's failure policy because the host's circuit
  # breaker was open (not in calls).
  latencyCounts @7 :List(UInt64);
  latencySumMicros @8 :UInt64;
  # The calls' latency: counts per bucket of a fixed histogram (not
  # cumulative; the bounds are wire.LatencyBuckets, 100 µs to 10 s, and a
  # last count for slower calls) and their total. A list of another length
  # is ignored. Older hosts send neither.
}

struct LaneGrant {
  # A direct hook lane (lane.capnp framing, hook calls only) between a host
  # and one plugin instance, set up by the daemon: the host gets one end,
  # the plugin the other, each as SCM_RIGHTS with this message. It ends with
  # the instance; the host then asks again.
  plugin @0 :Text;
  instance @1 :Text;
  error @2 :Text;            # to the host: why there is no lane (no fd then)
}

struct PoolAdd {
  # The memfd travels with this message (SCM_RIGHTS, exactly one). The
  # daemon accepts it only if it is a memfd of exactly `size` bytes sealed
  # with F_SEAL_SHRINK, F_SEAL_GROW and F_SEAL_FUTURE_WRITE (checked with
  # fstat and F_GET_SEALS on the received descriptor itself; it is never
  # reopened): then only the producer, which mapped it before sealing, can
  # ever write it, and every consumer maps it read-only.
  id @0 :UInt32;       # unique per producer; 0 is never used
  size @1 :UInt64;     # bytes; the memfd is exactly this long
  owner @2 :UInt64;    # 0 from the producer ("mine"); the daemon fills in
                       # the producer's id when it forwards the pool
  scope @3 :UInt64;    # the scope the pool serves (see StreamOpened.scope):
                       # its frames may travel only in streams of that
                       # scope, so only the peers of that scope's chain
                       # ever receive the pool. 0 from the daemon when it
                       # forwards (consumers need not know).
}

struct StreamOpen {
  stream @0 :UInt64;   # chosen by the opener, unique on its connection
  kind @1 :Text;       # "video/segment", "audio/segment", "subtitle/vtt", ...
  meta @2 :StreamMeta;
  role @3 :Text;       # daemon → plugin: "transform" or "observe"
  stage @4 :Text;      # daemon → plugin: the manifest's stream name
  scope @5 :UInt64;    # daemon → plugin: the pool scope of the stream (see
                       # StreamOpened.scope); new frames for this stream
                       # come from pools announced with this scope
}

struct StreamMeta {
  mediaId @0 :Int64;
  track @1 :Text;
  codec @2 :Text;      # RFC 6381 codecs string, e.g. "avc1.64001f"
  timescale @3 :UInt32;
  extra @4 :List(MetaEntry);
}

struct MetaEntry {
  key @0 :Text;
  value @1 :Text;
}

struct StreamOpened {
  stream @0 :UInt64;
  stages @1 :List(Text); # "plugin/stage" in chain order, observers last
  roles @2 :List(Text);  # each stage's role, "transform" or "observe"
  scope @3 :UInt64;      # the pool scope: the daemon's number for this
                         # host and this exact chain (the same plugin
                         # instances in the same roles). Frames of the
                         # stream must come from pools announced with this
                         # scope; streams of one scope may share pools,
                         # because the same peers see all of them. Never 0.
}

struct Frame {
  stream @0 :UInt64;
  seq @1 :UInt64;            # the host's sequence number, kept through the chain
  pts @2 :Int64;             # presentation timestamp, in timescale units
  dts @3 :Int64;
  duration @4 :Int64;
  keyFrame @5 :Bool;
  contentType @6 :Text;      # "video/iso.segment", "video/mp4" (init), ...
  data :union {
    inline @7 :Data;         # small frames travel in the message
    ref @8 :FrameRef;        # everything else is a descriptor
  }
  part @9 :UInt32;           # a stage may answer one frame with several:
  parts @10 :UInt32;         # part i of parts (0-based); parts = 0 means 1
  dropped @11 :Bool;         # a stage's answer: it dropped the frame, nothing
                             # passes on (no data then). The daemon tells the
                             # host too, so that every frame a host sends gets
                             # an answer: its frames back, or a dropped mark.
  returned @12 :Bool;        # daemon → the pool's owner (a host): the frame
                             # comes back with no other holder left, so the
                             # owner frees the memory itself when done with it
                             # and sends no Release
}

struct FrameRef {
  owner @0 :UInt64;
  # The daemon-assigned id of the pool's producer. 0 names the receiver's
  # own pools, both ways: a producer sends 0 for its own pools, and the
  # daemon sends 0 to a peer for frames in that peer's own pools (a frame
  # coming back to its host), so no peer needs to know its own id. Other
  # peers' ids come with their PoolAdd; peers echo them in Release.
  pool @1 :UInt32;
  offset @2 :UInt64;
  length @3 :UInt64;
}

struct StreamEnd {
  # After an end, a plugin stops work on the stream and answers every frame
  # it was given and has not answered with "dropped": the daemon gives the
  # frames' memory back to its owner only then. Once done with the stream,
  # the plugin acknowledges with an end of its own (no error).
  stream @0 :UInt64;
  error @1 :Text;            # empty: a clean end; else why the stream failed
  cancel @2 :Bool;           # the sender gave up (host or daemon)
}
