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
//! What it covers, each as sdk-go/host does it:
//!
//! * **Connect and stay connected**: openHost with version negotiation,
//!   then watchRoutes (the session always holds the newest route table:
//!   [`Session::route_table`], [`Session::watch_routes`],
//!   [`Session::subscribe_routes`]). When the daemon goes away the session
//!   reconnects by itself (at once, then 50 ms doubling to 2 s) and takes
//!   the new daemon's table; meanwhile [`Session::routes`] fails at once
//!   with [`Error::DaemonAway`] and [`Session::dispatch`] answers by the
//!   hooks' failure policies (fail-closed and route hooks: 503 naming the
//!   plugin; fail-open hooks: skipped).
//! * **The hook lane** (schema/lane.capnp): dispatch goes over a second
//!   connection with plain framing instead of RPC ([`Options::hook_lane`]).
//! * **Direct lanes**: when a phase of a request has exactly one hook, the
//!   session asks the daemon for a lane to that plugin (on the frame socket,
//!   schema/stream.capnp) and calls the hook itself, enforcing its deadline
//!   (sending `cancel` when it passes), its failure policy and a circuit
//!   breaker with the daemon's settings, filling the request's `route` and
//!   `params`, and reporting the calls to the daemon every second
//!   ([`Session::direct_stats`], [`Options::direct_lanes`]). Without a lane
//!   (not granted yet, the plugin restarting) the call goes through the
//!   daemon; a lane that ended is asked for again.
//! * **A tower layer**, [`DimplugdLayer`]: hooks around an axum/hyper
//!   service (see [`layer`]).
//! * Route template matching ([`Route`], [`method_matches`]), tested against
//!   the shared cases in schema/conformance/routes.json.
//!
//! * **User settings and the UI document**: [`Session::user_settings`],
//!   [`Session::set_user_settings`] (JSON text in and out: bring your own
//!   JSON library) and [`Session::ui_document`].
//! * **Frame streams** ([`stream`]): [`Session::open_stream`] opens a
//!   stream through the plugins that take its kind; [`Stream::send`] sends
//!   small frames inline and larger ones in the session's own shared
//!   memory (sealed memfd pools, bounded: a send waits for the chain to
//!   release memory), [`Stream::recv`] returns the frames coming back, in
//!   order, as [`ReceivedFrame`]s viewing shared memory (plugins' pools are
//!   mapped read-only), released when dropped.
//!   [`Stream::new_frame`] and [`Stream::send_shared`] send a frame
//!   filled in place in shared memory, without a copy.
//!
//! # Threading
//!
//! capnp-rpc's `RpcSystem` and its capability clients are `!Send` (they are
//! built on `Rc`). A tower/axum host needs `Send` futures, so [`Session`]
//! runs the whole connection on a dedicated OS thread with a current-thread
//! tokio runtime and a `LocalSet`, and is itself a `Send + Sync + Clone`
//! handle that sends each call to that thread over a channel and awaits the
//! answer on a oneshot. Calls run concurrently on the connection thread
//! (one local task each). The hook lane and direct lanes need no RPC: their
//! calls are made from the caller's task, and only their readers run on
//! the connection thread's runtime.
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

mod direct;
mod error;
mod frames;
mod lane;
pub mod layer;
mod route;
mod session;
mod settings;
pub mod stream;
mod types;

pub use direct::DirectHookStats;
pub use layer::{DimplugdLayer, DimplugdService};

pub use error::Error;
pub use route::{match_route, method_matches, parse_route, Route, RouteError, MAX_ROUTE_LEN};
pub use session::{Options, Session};
pub use settings::{PluginSettings, UiDocument, SCOPE_GLOBAL, SCOPE_USER};
pub use stream::{Frame, FrameMemory, ReceivedFrame, SharedFrame, Stage, Stream, StreamMeta};
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
