//! The host session: one connection to the daemon's host socket, run on its
//! own thread (see the crate documentation, "Threading").

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capnp_rpc::{rpc_twoparty_capnp::Side, twoparty, RpcSystem};
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

use crate::schema::{daemon_capnp, host_capnp};
use crate::{DispatchResult, Error, Phase, Request, Response, Result, RouteTable, SUPPORTED_VERSIONS};

/// How [`Session::connect_with`] connects.
#[derive(Clone, Debug)]
pub struct Options {
    /// Names the host in the daemon's log ("dim 0.4.0").
    pub client_name: String,
    /// The protocol versions offered; only tests change it.
    pub versions: Vec<u16>,
    /// How long connecting and opening the host session may take.
    pub connect_timeout: Duration,
    /// The largest message read from the daemon, in 8-byte words (capnp's
    /// traversal limit). Responses carry whole bodies: the default is
    /// 128 MiB, above the daemon's default body limits.
    pub traversal_limit_words: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            client_name: concat!("dimplugd-host (rust) ", env!("CARGO_PKG_VERSION")).into(),
            versions: SUPPORTED_VERSIONS.to_vec(),
            connect_timeout: Duration::from_secs(10),
            traversal_limit_words: 128 << 20 >> 3,
        }
    }
}

/// A host's session with the daemon. `Send + Sync + Clone`: clones share
/// the one connection, and any number of calls may be in flight.
///
/// The connection is not re-established when the daemon goes away: calls
/// then fail with [`Error::Closed`] and the host connects again.
#[derive(Clone)]
pub struct Session {
    tx: mpsc::UnboundedSender<Call>,
    version: u16,
    daemon_versions: Arc<[u16]>,
    closed: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("version", &self.version).field("closed", &self.is_closed()).finish()
    }
}

enum Call {
    Routes(oneshot::Sender<Result<RouteTable>>),
    Dispatch(Box<DispatchCall>),
}

struct DispatchCall {
    phase: Phase,
    request: Request,
    response: Option<Response>,
    reply: oneshot::Sender<Result<DispatchResult>>,
}

struct Opened {
    version: u16,
    daemon_versions: Vec<u16>,
}

impl Session {
    /// Connects to the daemon's host socket with the default [`Options`].
    pub async fn connect(socket: impl AsRef<Path>) -> Result<Session> {
        Self::connect_with(socket, Options::default()).await
    }

    /// Connects to the daemon's host socket, bootstraps its `Daemon`
    /// capability and opens a host session (negotiating the protocol
    /// version).
    pub async fn connect_with(socket: impl AsRef<Path>, opts: Options) -> Result<Session> {
        let socket = socket.as_ref().to_path_buf();
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let closed = Arc::new(Mutex::new(None));
        let closed2 = closed.clone();
        let timeout = opts.connect_timeout;
        std::thread::Builder::new()
            .name("dimplugd-rpc".into())
            .spawn(move || run(socket, opts, ready_tx, rx, closed2))
            .map_err(|e| Error::Closed(Some(format!("cannot start the connection thread: {e}"))))?;
        let opened = match tokio::time::timeout(timeout, ready_rx).await {
            Err(_) => return Err(Error::Timeout), // dropping tx ends the thread
            Ok(Err(_)) => return Err(Error::Closed(closed.lock().unwrap().clone())),
            Ok(Ok(r)) => r?,
        };
        Ok(Session { tx, version: opened.version, daemon_versions: opened.daemon_versions.into(), closed })
    }

    /// The negotiated protocol version.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// The versions the daemon speaks.
    pub fn daemon_versions(&self) -> &[u16] {
        &self.daemon_versions
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// The current route table (HostSession.routes).
    pub async fn routes(&self) -> Result<RouteTable> {
        let (reply, rx) = oneshot::channel();
        self.call(Call::Routes(reply), rx).await
    }

    /// Runs every hook of `phase` matching the request's method and path
    /// (HostSession.dispatch). `response` is read in the response and
    /// observe phases only. An error means the daemon could not be asked;
    /// hook failures are in the result.
    pub async fn dispatch(
        &self,
        phase: Phase,
        request: &Request,
        response: Option<&Response>,
    ) -> Result<DispatchResult> {
        let (reply, rx) = oneshot::channel();
        let call = Call::Dispatch(Box::new(DispatchCall {
            phase,
            request: request.clone(),
            response: response.cloned(),
            reply,
        }));
        self.call(call, rx).await
    }

    async fn call<T>(&self, call: Call, rx: oneshot::Receiver<Result<T>>) -> Result<T> {
        if self.tx.send(call).is_err() {
            return Err(self.closed_error());
        }
        rx.await.unwrap_or_else(|_| Err(self.closed_error()))
    }

    fn closed_error(&self) -> Error {
        Error::Closed(self.closed.lock().unwrap().clone())
    }
}

/// The connection thread: a current-thread runtime and a LocalSet own the
/// RpcSystem and every capability client.
fn run(
    socket: PathBuf,
    opts: Options,
    ready: oneshot::Sender<Result<Opened>>,
    rx: mpsc::UnboundedReceiver<Call>,
    closed: Arc<Mutex<Option<String>>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(Error::Closed(Some(format!("cannot start the connection's runtime: {e}")))));
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    let why = local.block_on(&rt, serve(socket, opts, ready, rx));
    *closed.lock().unwrap() = why;
    // Dropping the LocalSet drops the calls still in flight: their callers
    // get Error::Closed with the reason just stored.
}

async fn serve(
    socket: PathBuf,
    opts: Options,
    ready: oneshot::Sender<Result<Opened>>,
    mut rx: mpsc::UnboundedReceiver<Call>,
) -> Option<String> {
    let stream = match tokio::net::UnixStream::connect(&socket).await {
        Ok(s) => s,
        Err(source) => {
            let _ = ready.send(Err(Error::Connect { socket, source }));
            return None;
        }
    };
    let (r, w) = stream.into_split();
    let mut reader_opts = capnp::message::ReaderOptions::new();
    reader_opts.traversal_limit_in_words(Some(opts.traversal_limit_words));
    let net = twoparty::VatNetwork::new(r.compat(), w.compat_write(), Side::Client, reader_opts);
    let mut rpc = RpcSystem::new(Box::new(net), None);
    let daemon: daemon_capnp::daemon::Client = rpc.bootstrap(Side::Server);
    let disconnector = rpc.get_disconnector();
    let mut rpc_done = tokio::task::spawn_local(rpc);

    let mut ready = ready;
    let opened = tokio::select! {
        r = open_host(&daemon, &opts) => r,
        r = &mut rpc_done => Err(Error::Closed(Some(ended(r)))),
        // The caller timed out: give up rather than wait on the daemon.
        _ = ready.closed() => return None,
    };
    let session = match opened {
        Ok((session, opened)) => {
            if ready.send(Ok(opened)).is_err() {
                return None; // the caller gave up (timeout)
            }
            session
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            drop(daemon);
            let _ = disconnector.await;
            return None;
        }
    };
    drop(daemon);

    let why = loop {
        tokio::select! {
            call = rx.recv() => match call {
                Some(call) => { tokio::task::spawn_local(handle(session.clone(), call)); }
                None => break None, // every Session handle is gone
            },
            r = &mut rpc_done => break Some(ended(r)),
        }
    };
    rx.close();
    drop(session);
    if why.is_none() {
        let _ = disconnector.await;
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

async fn open_host(
    daemon: &daemon_capnp::daemon::Client,
    opts: &Options,
) -> Result<(host_capnp::host_session::Client, Opened)> {
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
    Ok((r.get_session()?, Opened { version, daemon_versions: theirs }))
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
