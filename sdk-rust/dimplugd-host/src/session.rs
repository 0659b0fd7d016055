//! The host session: a connection to the daemon's host socket that outlives
//! the daemon, run on its own thread (see the crate documentation,
//! "Threading"), as sdk-go/host's Session.
//!
//! The connection thread runs a keeper: it connects (openHost, then
//! watchRoutes, which returns the current table and pushes every later
//! one), serves calls until the connection ends, then connects again with
//! backoff (at once, then 50 ms doubling to 2 s) until it succeeds or the
//! session is closed. While the daemon is away calls that need it fail at
//! once with [`Error::DaemonAway`], and [`Session::dispatch`] answers by the
//! hooks' failure policies from the last route table.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capnp::capability::Promise;
use capnp_rpc::{rpc_twoparty_capnp::Side, twoparty, RpcSystem};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};
use tokio_util::sync::CancellationToken;

use crate::direct::{DirectHookStats, DirectLane};
use crate::frames::{FrameClient, OnLane};
use crate::lane::{LaneClient, LaneError};
use crate::schema::{daemon_capnp, host_capnp, lane_capnp};
use crate::settings::{PluginSettings, SettingsCall, UiDocument};
use crate::stream::{FrameMemory, Stream, StreamMeta};
use crate::types::fail;
use crate::{
    DispatchResult, Error, HookError, HookErrorKind, Outcome, Phase, Request, Response, Result, RouteTable,
    SUPPORTED_VERSIONS,
};

/// How [`Session::connect_with`] connects.
#[derive(Clone, Debug)]
pub struct Options {
    /// Names the host in the daemon's log ("dim 0.4.0").
    pub client_name: String,
    /// The protocol versions offered; only tests change it.
    pub versions: Vec<u16>,
    /// How long connecting and opening the host session may take (the
    /// first time; reconnects give each attempt 5 s, as the Go host).
    pub connect_timeout: Duration,
    /// The largest message read from the daemon, in 8-byte words (capnp's
    /// traversal limit). Responses carry whole bodies: the default is
    /// 128 MiB, above the daemon's default body limits.
    pub traversal_limit_words: usize,
    /// Dispatch on the hook lane (schema/lane.capnp) rather than over
    /// RPC; the results are the same, the lane is faster. A daemon without
    /// the lane is dispatched to over RPC.
    pub hook_lane: bool,
    /// Call a phase's only hook directly over a lane to its plugin, when
    /// the daemon grants one (see the crate documentation, "Direct lanes").
    pub direct_lanes: bool,
    /// The bound of the shared memory the session's frame streams have in
    /// flight ([`crate::stream::DEFAULT_POOL_SIZE`]); a send waits while it
    /// is full. A frame larger than it gets a pool of its own.
    pub stream_pool_size: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            client_name: concat!("dimplugd-host (rust) ", env!("CARGO_PKG_VERSION")).into(),
            versions: SUPPORTED_VERSIONS.to_vec(),
            connect_timeout: Duration::from_secs(10),
            traversal_limit_words: 128 << 20 >> 3,
            hook_lane: true,
            direct_lanes: true,
            stream_pool_size: crate::stream::DEFAULT_POOL_SIZE,
        }
    }
}

/// Reconnect backoff (sdk-go/host: redialFirst, redialMax).
const REDIAL_FIRST: Duration = Duration::from_millis(50);
const REDIAL_MAX: Duration = Duration::from_secs(2);
/// How long one reconnect attempt may take.
const REDIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// A callback told of every new route table (see [`Session::watch_routes`]).
type Watcher = Arc<dyn Fn(&Arc<RouteTable>) + Send + Sync>;

/// What the session's handles and its connection thread share.
pub(crate) struct Inner {
    pub(crate) socket: PathBuf,
    pub(crate) opts: Options,
    /// The connection thread's runtime: lane and frame socket readers run
    /// there.
    pub(crate) rt: tokio::runtime::Handle,
    /// The newest route table: the daemon's answer to watchRoutes on each
    /// connect (replacing whatever was known: a new daemon numbers its
    /// tables anew), then each table it pushes. Kept while the daemon is
    /// away.
    routes: watch::Sender<Option<Arc<RouteTable>>>,
    watchers: Mutex<Vec<Watcher>>,
    /// The current link's protocol versions; None while the daemon is away.
    link: Mutex<Option<LinkInfo>>,
    reconnects: AtomicU64,
    /// The protocol version negotiated with the newest daemon.
    version: std::sync::atomic::AtomicU16,
    /// Why the last connection ended, or why the last attempt failed.
    last_error: Mutex<Option<String>>,
    pub(crate) stop: CancellationToken,
    /// Direct lanes by plugin (direct.rs).
    pub(crate) direct: Mutex<HashMap<String, DirectLane>>,
    /// The frame socket of the current link, opened by the first lane
    /// request.
    pub(crate) frames: tokio::sync::Mutex<Option<Arc<FrameClient>>>,
    pub(crate) lane_grants: AtomicU64,
    pub(crate) reporter: AtomicBool,
}

#[derive(Clone)]
struct LinkInfo {
    version: u16,
    daemon_versions: Arc<[u16]>,
    /// The session's token: opens its hook lane and frame socket.
    token: Arc<[u8]>,
    /// The hook lane to the daemon; None: dispatch over RPC.
    lane: Option<LaneClient>,
}

impl Inner {
    /// Keeps the newest table and tells the watchers. `replace`: take it
    /// whatever its version (a new daemon's first table).
    fn set_routes(&self, t: RouteTable, replace: bool) {
        let t = Arc::new(t);
        let changed = self.routes.send_if_modified(|cur| {
            if !replace && cur.as_ref().is_some_and(|c| c.version >= t.version) {
                return false;
            }
            *cur = Some(t.clone());
            true
        });
        if changed {
            let ws: Vec<Watcher> = self.watchers.lock().unwrap().clone();
            for w in ws {
                w(&t);
            }
        }
    }

    fn connected(&self) -> bool {
        self.link.lock().unwrap().is_some()
    }

    pub(crate) fn route_table(&self) -> Option<Arc<RouteTable>> {
        self.routes.borrow().clone()
    }

    /// The frame socket to the current daemon, opened when there is none
    /// or the last one ended with its daemon.
    pub(crate) async fn frame_client(self: &Arc<Self>) -> Option<Arc<FrameClient>> {
        self.open_frame_client().await.ok()
    }

    /// [`Inner::frame_client`], saying why there is none.
    pub(crate) async fn open_frame_client(self: &Arc<Self>) -> Result<Arc<FrameClient>> {
        if !self.connected() {
            return Err(Error::DaemonAway);
        }
        let mut fc = self.frames.lock().await;
        if let Some(c) = fc.as_ref().filter(|c| !c.is_done()) {
            return Ok(c.clone());
        }
        let weak = Arc::downgrade(self);
        let on_lane: OnLane = Arc::new(move |plugin, lane| {
            if let Some(inner) = weak.upgrade() {
                inner.lane_granted(plugin, lane);
            }
        });
        let token = self.link.lock().unwrap().as_ref().map(|l| l.token.clone()).ok_or(Error::DaemonAway)?;
        let c =
            FrameClient::open(&self.socket, &token, on_lane, self.opts.stream_pool_size).await.map_err(Error::Io)?;
        let c = Arc::new(c);
        *fc = Some(c.clone());
        Ok(c)
    }

    /// The link's hook lane, if it has a live one.
    fn hook_lane(&self) -> Option<LaneClient> {
        self.link.lock().unwrap().as_ref().and_then(|l| l.lane.clone()).filter(|l| !l.is_done())
    }

    /// Forgets a link that ended: its hook lane and frame socket go.
    async fn lost(&self) {
        if let Some(l) = self.link.lock().unwrap().take() {
            if let Some(lane) = l.lane {
                lane.close();
            }
        }
        self.frames.lock().await.take();
    }

    /// A phase answered by its hooks' policies, as while the daemon is not
    /// reachable: a fail-closed hook (or a route owner) fails the request
    /// as unavailable, fail-open hooks are skipped (sdk-go/host: away).
    pub(crate) fn away(&self, phase: Phase, req: &Request) -> DispatchResult {
        let mut res = DispatchResult { outcome: Outcome::Continue, skipped: Vec::new(), applied: Vec::new() };
        let Some(t) = self.routes.borrow().clone() else { return res };
        for h in t.hooks(phase, &req.method, &req.path) {
            let e = HookError {
                plugin: h.plugin.clone(),
                hook: h.hook.clone(),
                kind: HookErrorKind::Unavailable,
                reason: "is unavailable: dimplugd is not reachable (the host is reconnecting)".into(),
            };
            let r = fail(h, phase, e);
            if matches!(r.outcome, Outcome::FailClosed(_)) {
                return r;
            }
            res.skipped.extend(r.skipped);
        }
        res
    }
}

/// A host's session with the daemon. `Send + Sync + Clone`: clones share
/// the one connection, and any number of calls may be in flight.
///
/// It outlives the daemon: when the connection ends (a restart, an
/// upgrade, a crash) the session connects again by itself, with backoff,
/// redoes the handshake and fetches the route table again. The connection
/// ends when [`Session::close`] is called or the last handle is dropped.
#[derive(Clone)]
pub struct Session {
    tx: mpsc::UnboundedSender<Call>,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("version", &self.version())
            .field("connected", &self.is_connected())
            .field("reconnects", &self.reconnects())
            .finish()
    }
}

enum Call {
    Routes(oneshot::Sender<Result<RouteTable>>),
    Dispatch(Box<DispatchCall>),
    Settings(SettingsCall),
}

impl Call {
    /// Answers a call the connection cannot take now.
    fn away(self) {
        match self {
            Call::Routes(reply) => {
                let _ = reply.send(Err(Error::DaemonAway));
            }
            Call::Dispatch(c) => {
                let _ = c.reply.send(Err(Error::DaemonAway));
            }
            Call::Settings(c) => c.away(),
        }
    }
}

struct DispatchCall {
    phase: Phase,
    request: Request,
    response: Option<Response>,
    reply: oneshot::Sender<Result<DispatchResult>>,
}

impl Session {
    /// Connects to the daemon's host socket with the default [`Options`].
    pub async fn connect(socket: impl AsRef<Path>) -> Result<Session> {
        Self::connect_with(socket, Options::default()).await
    }

    /// Connects to the daemon's host socket, bootstraps its `Daemon`
    /// capability, opens a host session (negotiating the protocol version)
    /// and watches the route table. The first connect must succeed; after
    /// that the session reconnects by itself whenever the daemon goes away.
    pub async fn connect_with(socket: impl AsRef<Path>, opts: Options) -> Result<Session> {
        let socket = socket.as_ref().to_path_buf();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Closed(Some(format!("cannot start the connection's runtime: {e}"))))?;
        let inner = Arc::new(Inner {
            socket: socket.clone(),
            opts: opts.clone(),
            rt: rt.handle().clone(),
            direct: Mutex::new(HashMap::new()),
            frames: tokio::sync::Mutex::new(None),
            lane_grants: AtomicU64::new(0),
            reporter: AtomicBool::new(false),
            routes: watch::channel(None).0,
            watchers: Mutex::new(Vec::new()),
            link: Mutex::new(None),
            reconnects: AtomicU64::new(0),
            version: std::sync::atomic::AtomicU16::new(0),
            last_error: Mutex::new(None),
            stop: CancellationToken::new(),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let inner2 = inner.clone();
        std::thread::Builder::new()
            .name("dimplugd-rpc".into())
            .spawn(move || {
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, keeper(inner2, socket, opts, ready_tx, rx));
            })
            .map_err(|e| Error::Closed(Some(format!("cannot start the connection thread: {e}"))))?;
        match ready_rx.await {
            Ok(Ok(())) => Ok(Session { tx, inner }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Closed(inner.last_error.lock().unwrap().clone())),
        }
    }

    /// The protocol version negotiated with the newest daemon.
    pub fn version(&self) -> u16 {
        self.inner.version.load(Ordering::Relaxed)
    }

    /// The versions the current daemon speaks (empty while it is away).
    pub fn daemon_versions(&self) -> Vec<u16> {
        self.inner.link.lock().unwrap().as_ref().map_or_else(Vec::new, |l| l.daemon_versions.to_vec())
    }

    /// Whether the session is connected to the daemon now.
    pub fn is_connected(&self) -> bool {
        self.inner.connected()
    }

    /// How many times the session connected again after losing the daemon.
    pub fn reconnects(&self) -> u64 {
        self.inner.reconnects.load(Ordering::Relaxed)
    }

    /// Why the last connection ended or the last reconnect failed.
    pub fn last_error(&self) -> Option<String> {
        self.inner.last_error.lock().unwrap().clone()
    }

    /// Whether the session has been closed (not whether the daemon is
    /// away: the session then reconnects).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Ends the session: the connection and the reconnecting. Other
    /// handles' calls then fail with [`Error::Closed`].
    pub fn close(&self) {
        self.inner.stop.cancel();
    }

    /// The newest route table the daemon pushed (kept while it is away). A
    /// request matching no entry needs no dispatch at all.
    pub fn route_table(&self) -> Option<Arc<RouteTable>> {
        self.inner.routes.borrow().clone()
    }

    /// Calls `update` with every later route table, from the connection
    /// thread, until the session ends (also with each new daemon's first
    /// table after a reconnect); returns the current one. `update` must not
    /// block for long.
    pub fn watch_routes(&self, update: impl Fn(&Arc<RouteTable>) + Send + Sync + 'static) -> Option<Arc<RouteTable>> {
        self.inner.watchers.lock().unwrap().push(Arc::new(update));
        self.route_table()
    }

    /// A receiver that sees every new route table (tokio's watch channel:
    /// `changed().await`, then `borrow()`).
    pub fn subscribe_routes(&self) -> watch::Receiver<Option<Arc<RouteTable>>> {
        self.inner.routes.subscribe()
    }

    /// Fetches the current route table from the daemon
    /// (HostSession.routes); [`Error::DaemonAway`] while it is away.
    pub async fn routes(&self) -> Result<RouteTable> {
        if !self.inner.connected() {
            return Err(Error::DaemonAway);
        }
        let (reply, rx) = oneshot::channel();
        self.call(Call::Routes(reply), rx).await
    }

    /// One user's settings of `plugin` (its manifest's `[settings.user]`;
    /// HostSession.userSettings), read on that user's behalf: pass the id
    /// of the user the host authenticated, never one taken from the
    /// request. Secrets are masked. A plugin that is not installed or has
    /// no user settings fails as not found ([`Error::Rpc`], naming it);
    /// [`Error::DaemonAway`] while the daemon is away.
    pub async fn user_settings(&self, plugin: &str, user: i64) -> Result<PluginSettings> {
        if !self.inner.connected() {
            return Err(Error::DaemonAway);
        }
        let (reply, rx) = oneshot::channel();
        self.call(Call::Settings(SettingsCall::Get { plugin: plugin.into(), user, reply }), rx).await
    }

    /// Writes one user's settings of `plugin` on that user's behalf
    /// (HostSession.setUserSettings) and returns them as stored. `values`
    /// is a JSON object (text) with a partial update: a key set to `null`
    /// goes back to its default, a secret sent back masked (`"********"`)
    /// keeps its value, keys not named are kept. The daemon validates it
    /// against the plugin's schema: an invalid write fails as invalid
    /// ([`Error::Rpc`]) naming each bad field, and nothing is stored.
    pub async fn set_user_settings(&self, plugin: &str, user: i64, values: &str) -> Result<PluginSettings> {
        if !self.inner.connected() {
            return Err(Error::DaemonAway);
        }
        let (reply, rx) = oneshot::channel();
        let call = SettingsCall::Set { plugin: plugin.into(), user, values: values.into(), reply };
        self.call(Call::Settings(call), rx).await
    }

    /// What the enabled, running plugins add to the host's web UI
    /// (HostSession.uiDocument): their Preferences tabs and pages, as one
    /// JSON document. Fetch it again when the route table changes;
    /// [`Error::DaemonAway`] while the daemon is away (serve
    /// [`UiDocument::unavailable`] then).
    pub async fn ui_document(&self) -> Result<UiDocument> {
        if !self.inner.connected() {
            return Err(Error::DaemonAway);
        }
        let (reply, rx) = oneshot::channel();
        self.call(Call::Settings(SettingsCall::Ui { reply }), rx).await
    }

    /// Opens a frame stream of `kind` (e.g. "video/segment") through the
    /// plugins whose manifests take it, in order (transforms, then
    /// observers), and waits for the daemon to build the chain. The first
    /// call opens the session's frame socket. A refused stream (e.g. a
    /// fail-closed stage whose plugin is not running) fails with
    /// [`Error::Stream`] saying why; [`Error::DaemonAway`] while the daemon
    /// is away. See [`Stream`] for sending and receiving.
    pub async fn open_stream(&self, kind: &str, meta: &StreamMeta) -> Result<Stream> {
        let inner = self.inner.clone();
        // The socket's reader and writer run on the connection thread.
        let fc = self
            .inner
            .rt
            .spawn(async move { inner.open_frame_client().await })
            .await
            .map_err(|_| Error::Closed(None))??;
        Stream::open(fc.streams().clone(), kind, meta).await
    }

    /// How much of the session's shared memory for frames (on its current
    /// frame socket) is in use: all of it is released once every frame
    /// sent has come back and every frame received was dropped.
    pub async fn frame_memory(&self) -> FrameMemory {
        match self.inner.frames.lock().await.as_ref() {
            Some(fc) => fc.streams().memory(),
            None => FrameMemory::default(),
        }
    }

    /// Runs every hook of `phase` matching the request's method and path
    /// (HostSession.dispatch). `response` is read in the response and
    /// observe phases only. An error means the daemon could not be asked;
    /// hook failures are in the result.
    ///
    /// While the daemon is away it does not wait: it answers by the hooks'
    /// policies from the last route table, at once. A fail-closed hook (or
    /// a route owner) fails the request as unavailable (503), naming the
    /// plugin and saying that dimplugd is not reachable; fail-open hooks
    /// are skipped ([`DispatchResult::skipped`] says why). A call cut off
    /// by the daemon going away is answered the same way.
    ///
    /// Call it inside a tokio runtime: direct calls time their deadlines
    /// with its timer.
    pub async fn dispatch(
        &self,
        phase: Phase,
        request: &Request,
        response: Option<&Response>,
    ) -> Result<DispatchResult> {
        if let Some(res) = self.inner.dispatch_direct(phase, request, response).await {
            return Ok(res);
        }
        for attempt in 0..2 {
            if !self.inner.connected() {
                return Ok(self.inner.away(phase, request));
            }
            let reconnects = self.reconnects();
            let res = match self.inner.hook_lane() {
                Some(lane) => dispatch_on_lane(&lane, phase, request, response).await,
                None => {
                    let (reply, rx) = oneshot::channel();
                    let call = Call::Dispatch(Box::new(DispatchCall {
                        phase,
                        request: request.clone(),
                        response: response.cloned(),
                        reply,
                    }));
                    self.call(call, rx).await
                }
            };
            match res {
                // The daemon is stopping and did not start the call: send
                // it to the next daemon if one comes within a second (an
                // upgrade in place), else answer by policy.
                Err(Error::Stopping) if attempt == 0 => {
                    let t = std::time::Instant::now();
                    while self.reconnects() == reconnects && t.elapsed() < Duration::from_secs(1) {
                        if self.inner.stop.is_cancelled() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    if self.reconnects() == reconnects {
                        return Ok(self.inner.away(phase, request));
                    }
                }
                Err(e) if (e.is_daemon_away() || matches!(e, Error::Stopping)) && !self.inner.stop.is_cancelled() => {
                    return Ok(self.inner.away(phase, request))
                }
                r => return r,
            }
        }
        Ok(self.inner.away(phase, request))
    }

    /// What the session's direct calls added up to, per hook (the counts
    /// it reports to the daemon every second).
    pub fn direct_stats(&self) -> Vec<DirectHookStats> {
        self.inner.direct_stats()
    }

    /// Whether the session holds a live direct lane to `plugin` now.
    pub fn has_direct_lane(&self, plugin: &str) -> bool {
        self.inner.has_direct_lane(plugin)
    }

    /// How many direct lanes the daemon has granted this session.
    pub fn lane_grants(&self) -> u64 {
        self.inner.lane_grants.load(Ordering::Relaxed)
    }

    /// Whether the session dispatches on the hook lane now (rather than
    /// over RPC).
    pub fn uses_hook_lane(&self) -> bool {
        self.inner.hook_lane().is_some()
    }

    async fn call<T>(&self, call: Call, rx: oneshot::Receiver<Result<T>>) -> Result<T> {
        if self.tx.send(call).is_err() {
            return Err(self.closed_error());
        }
        rx.await.unwrap_or_else(|_| Err(self.closed_error()))
    }

    fn closed_error(&self) -> Error {
        Error::Closed(self.inner.last_error.lock().unwrap().clone())
    }
}

/// Aborts a local task when dropped (an abandoned connect attempt must not
/// leave its RpcSystem running).
struct AbortOnDrop(tokio::task::JoinHandle<std::result::Result<(), capnp::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One connection to one daemon.
struct Link {
    session: host_capnp::host_session::Client,
    rpc: AbortOnDrop,
    disconnector: capnp_rpc::Disconnector<twoparty::VatId>,
    info: LinkInfo,
}

/// The connection thread: connects, serves, reconnects.
async fn keeper(
    inner: Arc<Inner>,
    socket: PathBuf,
    opts: Options,
    ready: oneshot::Sender<Result<()>>,
    mut rx: mpsc::UnboundedReceiver<Call>,
) {
    let mut ready = Some(ready);
    let mut wait = Duration::ZERO;
    let stop = inner.stop.clone();
    'outer: loop {
        if !wait.is_zero() {
            let sleep = tokio::time::sleep(wait);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    _ = stop.cancelled() => break 'outer,
                    call = rx.recv() => match call {
                        Some(c) => c.away(),
                        None => break 'outer,
                    },
                }
            }
        }
        let timeout = if ready.is_some() { opts.connect_timeout } else { REDIAL_TIMEOUT };
        let attempt = tokio::time::timeout(timeout, connect(&inner, &socket, &opts));
        tokio::pin!(attempt);
        let res = loop {
            tokio::select! {
                r = &mut attempt => break r.unwrap_or(Err(Error::Timeout)),
                _ = stop.cancelled() => break 'outer,
                _ = async { ready.as_mut().unwrap().closed().await }, if ready.is_some() => break 'outer,
                call = rx.recv() => match call {
                    Some(c) => c.away(),
                    None => break 'outer,
                },
            }
        };
        let link = match res {
            Ok(link) => link,
            Err(e) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(e));
                    break 'outer;
                }
                *inner.last_error.lock().unwrap() = Some(e.to_string());
                wait = (wait * 2).clamp(REDIAL_FIRST, REDIAL_MAX);
                continue;
            }
        };
        inner.version.store(link.info.version, Ordering::Relaxed);
        *inner.link.lock().unwrap() = Some(link.info.clone());
        match ready.take() {
            Some(r) => {
                if r.send(Ok(())).is_err() {
                    break 'outer; // the caller gave up
                }
            }
            None => {
                inner.reconnects.fetch_add(1, Ordering::Relaxed);
            }
        }
        let why = serve(link, &mut rx, &stop).await;
        if why.is_none() {
            inner.report_stats().await; // the last direct calls
        }
        inner.lost().await;
        match why {
            Some(why) => {
                *inner.last_error.lock().unwrap() = Some(why);
                wait = Duration::ZERO; // the first try is at once
            }
            None => break 'outer,
        }
    }
    inner.stop.cancel();
    inner.lost().await;
    inner.close_lanes();
    rx.close();
    while let Ok(c) = rx.try_recv() {
        c.away();
    }
}

/// Serves calls on a link until its connection ends (Some(why)) or the
/// session is closed (None).
async fn serve(mut link: Link, rx: &mut mpsc::UnboundedReceiver<Call>, stop: &CancellationToken) -> Option<String> {
    let why = loop {
        tokio::select! {
            call = rx.recv() => match call {
                Some(call) => { tokio::task::spawn_local(handle(link.session.clone(), call)); }
                None => break None, // every Session handle is gone
            },
            _ = stop.cancelled() => break None,
            r = &mut link.rpc.0 => break Some(ended(r)),
        }
    };
    drop(link.session);
    if why.is_none() {
        let _ = tokio::time::timeout(Duration::from_secs(1), link.disconnector).await;
    }
    why
}

fn ended(r: std::result::Result<std::result::Result<(), capnp::Error>, tokio::task::JoinError>) -> String {
    match r {
        Ok(Ok(())) => "the daemon closed the connection".into(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => format!("the connection task failed: {e}"),
    }
}

/// Connects, opens the host session and watches the route table.
async fn connect(inner: &Arc<Inner>, socket: &Path, opts: &Options) -> Result<Link> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| Error::Connect { socket: socket.to_path_buf(), source })?;
    let (r, w) = stream.into_split();
    let mut reader_opts = capnp::message::ReaderOptions::new();
    reader_opts.traversal_limit_in_words(Some(opts.traversal_limit_words));
    let net = twoparty::VatNetwork::new(r.compat(), w.compat_write(), Side::Client, reader_opts);
    let mut rpc = RpcSystem::new(Box::new(net), None);
    let daemon: daemon_capnp::daemon::Client = rpc.bootstrap(Side::Server);
    let disconnector = rpc.get_disconnector();
    let mut rpc_task = AbortOnDrop(tokio::task::spawn_local(rpc));

    let opened = async {
        let (session, info) = open_host(&daemon, opts).await?;
        let table = watch_routes(&session, inner).await?;
        Ok::<_, Error>((session, info, table))
    };
    let res = tokio::select! {
        r = opened => r,
        r = &mut rpc_task.0 => Err(Error::Closed(Some(ended(r)))),
    };
    drop(daemon);
    match res {
        Ok((session, mut info, table)) => {
            inner.set_routes(table, true);
            if opts.hook_lane {
                // A daemon without the lane closes the connection: dispatch
                // then stays on RPC.
                let open = LaneClient::open_host_lane(socket, &info.token, opts.traversal_limit_words);
                info.lane = tokio::time::timeout(Duration::from_secs(2), open).await.ok().and_then(|r| r.ok());
            }
            Ok(Link { session, rpc: rpc_task, disconnector, info })
        }
        Err(e) => {
            let _ = tokio::time::timeout(Duration::from_secs(1), disconnector).await;
            Err(e)
        }
    }
}

async fn open_host(
    daemon: &daemon_capnp::daemon::Client,
    opts: &Options,
) -> Result<(host_capnp::host_session::Client, LinkInfo)> {
    let mut req = daemon.open_host_request();
    {
        let mut p = req.get();
        let mut vs = p.reborrow().init_versions(opts.versions.len() as u32);
        for (i, v) in opts.versions.iter().enumerate() {
            vs.set(i as u32, *v);
        }
        p.set_client(opts.client_name.as_str());
    }
    let reply = req.send().promise.await?;
    let r = reply.get()?;
    let theirs: Vec<u16> = r.get_daemon_versions()?.iter().collect();
    let version = r.get_version();
    if version == 0 {
        return Err(Error::VersionMismatch { ours: opts.versions.clone(), theirs });
    }
    if !opts.versions.contains(&version) {
        return Err(Error::Protocol(format!("the daemon chose version {version}, which this host did not offer")));
    }
    let token: Arc<[u8]> = r.get_session_token()?.into();
    Ok((r.get_session()?, LinkInfo { version, daemon_versions: theirs.into(), token, lane: None }))
}

/// The RouteWatcher the session hands the daemon: each pushed table
/// replaces an older one.
struct RouteWatcherImpl {
    inner: Arc<Inner>,
}

impl host_capnp::route_watcher::Server for RouteWatcherImpl {
    fn update(
        &mut self,
        params: host_capnp::route_watcher::UpdateParams,
        _: host_capnp::route_watcher::UpdateResults,
    ) -> Promise<(), capnp::Error> {
        let t = match params.get().and_then(|p| p.get_table()) {
            Ok(t) => t,
            Err(e) => return Promise::err(e),
        };
        match RouteTable::read(t) {
            Ok(t) => {
                self.inner.set_routes(t, false);
                Promise::ok(())
            }
            Err(e) => Promise::err(capnp::Error::failed(format!("route table: {e}"))),
        }
    }
}

/// Asks the daemon to push every route table version (watchRoutes) and
/// returns the current one.
async fn watch_routes(session: &host_capnp::host_session::Client, inner: &Arc<Inner>) -> Result<RouteTable> {
    let watcher: host_capnp::route_watcher::Client = capnp_rpc::new_client(RouteWatcherImpl { inner: inner.clone() });
    let mut req = session.watch_routes_request();
    req.get().set_watcher(watcher);
    let reply = req.send().promise.await?;
    RouteTable::read(reply.get()?.get_table()?)
}

async fn handle(session: host_capnp::host_session::Client, call: Call) {
    match call {
        Call::Routes(reply) => {
            let res = routes(&session).await;
            let _ = reply.send(res);
        }
        Call::Dispatch(c) => {
            let res = dispatch(&session, c.phase, &c.request, c.response.as_ref()).await;
            let _ = c.reply.send(res);
        }
        Call::Settings(c) => c.run(session).await,
    }
}

async fn routes(session: &host_capnp::host_session::Client) -> Result<RouteTable> {
    let reply = session.routes_request().send().promise.await?;
    RouteTable::read(reply.get()?.get_table()?)
}

async fn dispatch(
    session: &host_capnp::host_session::Client,
    phase: Phase,
    request: &Request,
    response: Option<&Response>,
) -> Result<DispatchResult> {
    let mut req = session.dispatch_request();
    {
        let mut p = req.get();
        p.set_phase(phase);
        request.write(p.reborrow().init_request());
        if let Some(resp) = response {
            resp.write(p.reborrow().init_response());
        }
    }
    let reply = req.send().promise.await?;
    DispatchResult::read(reply.get()?.get_result()?)
}

/// A dispatch on the hook lane (LaneFrame.dispatch → dispatchResult).
async fn dispatch_on_lane(
    lane: &LaneClient,
    phase: Phase,
    request: &Request,
    response: Option<&Response>,
) -> Result<DispatchResult> {
    let body = {
        let mut m = capnp::message::Builder::new_default();
        let mut d = m.init_root::<lane_capnp::lane_frame::Builder>().init_dispatch();
        d.set_phase(phase);
        request.write(d.reborrow().init_request());
        if let Some(resp) = response {
            resp.write(d.reborrow().init_response());
        }
        crate::lane::encode(&m)
    };
    let reply = lane.call(body).await.map_err(|e| match e {
        LaneError::Stopping => Error::Stopping,
        LaneError::Closed(why) => Error::Closed(Some(why)),
        LaneError::Remote(t) => Error::Rpc(capnp::Error::failed(t)),
        LaneError::Io(e) => Error::Protocol(e),
    })?;
    let f = reply.get_root::<lane_capnp::lane_frame::Reader>()?;
    match f.which()? {
        lane_capnp::lane_frame::DispatchResult(r) => DispatchResult::read(r?),
        _ => Err(Error::Protocol("an unexpected reply to a dispatch on the hook lane".into())),
    }
}
