//! Host SDK for dimplugd, the plugin daemon of the Dim media server.
//!
//! A host (Dim) connects to the daemon's host socket, reads the route table
//! and asks the daemon to run the plugins' hooks for the requests that match
//! it:
//!
//! ```no_run
//! # async fn f() -> Result<(), dimplugd_host::Error> {
//! use dimplugd_host::{Phase, Request, Response, Session};
//!
//! let session = Session::connect("/run/dimplugd/dimplugd.sock").await?;
//! let table = session.routes().await?;
//! if table.matches("GET", "/api/v1/media/42").contains(&Phase::Response) {
//!     let req = Request::new("GET", "/api/v1/media/42").with_route("/api/v1/media/:id");
//!     let resp = Response::new(200, br#"{"id":42}"#.to_vec());
//!     let result = session.dispatch(Phase::Response, &req, Some(&resp)).await?;
//!     let _resp = result.apply_to_response(resp);
//! }
//! # Ok(()) }
//! ```
//!
//! This first slice speaks the RPC face only (schema/daemon.capnp,
//! schema/host.capnp): openHost, routes and dispatch. It does not yet open
//! the hook lane (schema/lane.capnp), direct lanes, frame streams, watch
//! routes or reconnect; sdk-go/host is the reference for all of those.
//!
//! # Threading
//!
//! capnp-rpc's `RpcSystem` and its capability clients are `!Send` (they are
//! built on `Rc`). A tower/axum host needs `Send` futures, so [`Session`]
//! runs the whole connection on a dedicated OS thread with a current-thread
//! tokio runtime and a `LocalSet`, and is itself a `Send + Sync + Clone`
//! handle that sends each call to that thread over a channel and awaits the
//! answer on a oneshot. Calls run concurrently on the connection thread
//! (one local task each). The cost is one channel hop each way and a copy
//! of the request into the call's message; the connection thread does all
//! Cap'n Proto work, so it does not compete with the host's own runtime.
//!
//! The generated Cap'n Proto code is in [`schema`] for hosts that want to
//! drive the protocol themselves.

#![warn(missing_docs)]

/// The code generated from schema/*.capnp by capnpc (one module per file,
/// e.g. `schema::host_capnp`).
#[allow(missing_docs, clippy::all)]
pub mod schema {
    include!(concat!(env!("OUT_DIR"), "/schema.rs"));
}

mod error;
mod route;
mod session;
mod types;

pub use error::Error;
pub use route::{match_route, method_matches, parse_route, Route, RouteError, MAX_ROUTE_LEN};
pub use session::{Options, Session};
pub use types::{
    DispatchResult, HookError, Outcome, Request, RequestMutation, Response, ResponseMutation, RouteEntry, RouteHook,
    RouteTable,
};

/// What a failing hook does to the request (schema/http.capnp).
pub use schema::http_capnp::FailurePolicy;
/// Why a hook had no effect (schema/http.capnp).
pub use schema::http_capnp::HookErrorKind;
/// Where a hook runs in a request's life (schema/http.capnp `Phase`).
pub use schema::http_capnp::Phase;

/// The protocol versions this crate speaks, on the host face (see
/// schema/version.go: `SupportedVersions`).
pub const SUPPORTED_VERSIONS: &[u16] = &[1];

/// A `Result` whose error is this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
