// Package frames owns the shared-memory transport of frame streams (see
// schema/stream.capnp): frame sockets whose packets carry batches of
// FrameMsgs, with memfds attached as SCM_RIGHTS (Conn: senders share a
// bounded batch, whoever finds no write in progress writes it), producers'
// bounded pools and the
// allocator that hands out their slots (Pool, Allocator), and consumers'
// read views of other producers' pools (Mappings).
//
// It is used by the daemon (which only routes descriptors and never maps a
// pool), by the host SDK and by the plugin SDK, so it must not import the
// daemon, the sandbox or cobra.
//
// Nothing here starts a goroutine. Every type is safe for concurrent use
// unless its documentation says otherwise; Conn.Recv has a single reader.
package frames
