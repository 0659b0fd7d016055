//! The lane framing (schema/lane.capnp, sdk-go/wire/lane.go): the caller
//! side of a hook lane, used for the host's lane to the daemon (dispatch
//! calls) and for direct lanes to plugins (hook calls).
//!
//! Frames, both ways: a u32 little-endian length of what follows (the
//! 8-byte call id included), the u64 little-endian call id, then one Cap'n
//! Proto message (standard unpacked stream framing) whose root is a
//! `LaneFrame`. Call ids start at 1; id 0 is the daemon's `stopping` frame.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use capnp::message::{Builder, HeapAllocator, Reader, ReaderOptions};
use capnp::serialize::OwnedSegments;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::schema::lane_capnp::lane_frame;

/// What a host writes, followed by its session token, to open its hook lane.
pub(crate) const LANE_PREAMBLE: &[u8; 8] = b"DPLANE2\n";

/// The largest frame: a 64 MiB message and its call id.
const MAX_FRAME: usize = (64 << 20) + 8;

/// The error frame text of a dispatch the stopping daemon did not start.
const STOPPING_TEXT: &str = "dimplugd is stopping: the call was not started";

/// Why a lane call has no reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LaneError {
    /// The lane ended (the other side closed it, or it broke).
    Closed(String),
    /// The daemon is stopping and did not start the call.
    Stopping,
    /// An error frame: the call failed; the text says why.
    Remote(String),
    /// The frame could not be written or read.
    Io(String),
}

impl std::fmt::Display for LaneError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LaneError::Closed(why) => write!(f, "hook lane closed: {why}"),
            LaneError::Stopping => f.write_str(STOPPING_TEXT),
            LaneError::Remote(t) => f.write_str(t),
            LaneError::Io(e) => write!(f, "hook lane: {e}"),
        }
    }
}

type Reply = Reader<OwnedSegments>;

/// The caller side of a lane. Cheap to clone; every clone is the same
/// lane. Calls may be made from any runtime; the reader runs on the
/// runtime that created the lane.
#[derive(Clone)]
pub(crate) struct LaneClient {
    sh: Arc<Shared>,
}

struct Shared {
    w: tokio::sync::Mutex<Option<OwnedWriteHalf>>,
    st: Mutex<State>,
    done: CancellationToken,
    rt: tokio::runtime::Handle,
}

struct State {
    next_id: u64,
    pending: HashMap<u64, oneshot::Sender<Reply>>,
    err: Option<LaneError>,
    reader: Option<tokio::task::AbortHandle>,
}

impl LaneClient {
    /// Wraps a connected lane socket; must be called inside a tokio
    /// runtime, which runs the lane's reader.
    pub(crate) fn new(stream: UnixStream, traversal_limit_words: usize) -> LaneClient {
        let (r, w) = stream.into_split();
        let sh = Arc::new(Shared {
            w: tokio::sync::Mutex::new(Some(w)),
            st: Mutex::new(State { next_id: 0, pending: HashMap::new(), err: None, reader: None }),
            done: CancellationToken::new(),
            rt: tokio::runtime::Handle::current(),
        });
        let mut opts = ReaderOptions::new();
        opts.traversal_limit_in_words(Some(traversal_limit_words));
        let task = tokio::spawn(read_loop(r, Arc::downgrade(&sh), opts, sh.done.clone()));
        sh.st.lock().unwrap().reader = Some(task.abort_handle());
        LaneClient { sh }
    }

    /// Opens the host's hook lane on the daemon's socket: a new connection,
    /// the preamble and the session's token written, one byte answered (1:
    /// served; 0: refused, followed by why).
    pub(crate) async fn open_host_lane(
        socket: &std::path::Path,
        token: &[u8],
        traversal_limit_words: usize,
    ) -> std::io::Result<LaneClient> {
        let mut c = UnixStream::connect(socket).await?;
        let mut preamble = LANE_PREAMBLE.to_vec();
        preamble.extend_from_slice(token);
        c.write_all(&preamble).await?;
        let mut answer = [0u8; 1];
        c.read_exact(&mut answer).await?;
        if answer[0] != 1 {
            let mut why = Vec::new();
            let _ = (&mut c).take(4 << 10).read_to_end(&mut why).await;
            if why.is_empty() {
                return Err(std::io::Error::other("the daemon does not serve the hook lane"));
            }
            return Err(std::io::Error::other(format!(
                "dimplugd refused the hook lane: {}",
                String::from_utf8_lossy(&why)
            )));
        }
        Ok(LaneClient::new(c, traversal_limit_words))
    }

    /// Whether the lane has ended.
    pub(crate) fn is_done(&self) -> bool {
        self.sh.done.is_cancelled()
    }

    /// Whether two handles are the same lane.
    pub(crate) fn same(&self, o: &LaneClient) -> bool {
        Arc::ptr_eq(&self.sh, &o.sh)
    }

    /// Ends the lane: calls in flight fail with [`LaneError::Closed`].
    pub(crate) fn close(&self) {
        let reader = {
            let mut st = self.sh.st.lock().unwrap();
            if st.err.is_none() {
                st.err = Some(LaneError::Closed("closed by the host".into()));
            }
            st.pending.clear();
            st.reader.take()
        };
        if let Some(r) = reader {
            r.abort();
        }
        self.sh.done.cancel();
        let sh = self.sh.clone();
        self.sh.rt.spawn(async move {
            if let Some(mut w) = sh.w.lock().await.take() {
                let _ = w.shutdown().await;
            }
        });
    }

    /// Sends a request frame (a LaneFrame message, see [`encode`]) and waits for its reply. An error frame comes
    /// back as [`LaneError::Remote`] (or [`LaneError::Stopping`]). If the
    /// future is dropped before the reply (the caller's deadline), a
    /// `cancel` frame is sent for the call.
    pub(crate) async fn call(&self, body: Vec<u8>) -> Result<Reply, LaneError> {
        if body.len() + 8 > MAX_FRAME {
            return Err(LaneError::Io(format!("a {} byte message exceeds the lane's frame limit", body.len())));
        }
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut st = self.sh.st.lock().unwrap();
            if let Some(e) = &st.err {
                return Err(e.clone());
            }
            st.next_id += 1;
            let id = st.next_id;
            st.pending.insert(id, tx);
            id
        };
        let mut guard = CancelGuard { sh: &self.sh, id, armed: true };
        if let Err(e) = write_frame(&self.sh, id, &body).await {
            guard.armed = false;
            self.sh.st.lock().unwrap().pending.remove(&id);
            // The other end closed: as for a read, once the reader saw it.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.sh.done.cancelled()).await;
            let st_err = self.sh.st.lock().unwrap().err.clone();
            return Err(st_err.unwrap_or(LaneError::Closed(e.to_string())));
        }
        let reply = rx.await;
        guard.armed = false;
        let reply = match reply {
            Ok(r) => r,
            Err(_) => {
                let e = self.sh.st.lock().unwrap().err.clone();
                return Err(e.unwrap_or(LaneError::Closed("the lane ended".into())));
            }
        };
        let text = {
            let f = reply.get_root::<lane_frame::Reader>().map_err(|e| LaneError::Io(e.to_string()))?;
            match f.which() {
                Ok(lane_frame::Error(t)) => {
                    Some(t.ok().and_then(|t| t.to_string().ok()).unwrap_or_else(|| "unreadable error".into()))
                }
                _ => None,
            }
        };
        match text {
            Some(t) if t == STOPPING_TEXT => Err(LaneError::Stopping),
            Some(t) => Err(LaneError::Remote(t)),
            None => Ok(reply),
        }
    }
}

/// A message in standard framing, for [`LaneClient::call`].
pub(crate) fn encode(msg: &Builder<HeapAllocator>) -> Vec<u8> {
    capnp::serialize::write_message_to_words(msg)
}

/// Sends `cancel` for a call whose caller gave up.
struct CancelGuard<'a> {
    sh: &'a Arc<Shared>,
    id: u64,
    armed: bool,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let gone = {
            let mut st = self.sh.st.lock().unwrap();
            st.pending.remove(&self.id);
            st.err.is_some()
        };
        if gone {
            return;
        }
        let mut m = Builder::new_default();
        m.init_root::<lane_frame::Builder>().set_cancel(());
        let body = capnp::serialize::write_message_to_words(&m);
        let (sh, id) = (self.sh.clone(), self.id);
        self.sh.rt.spawn(async move {
            let _ = write_frame(&sh, id, &body).await;
        });
    }
}

async fn write_frame(sh: &Shared, id: u64, body: &[u8]) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(12 + body.len());
    frame.extend_from_slice(&((8 + body.len()) as u32).to_le_bytes());
    frame.extend_from_slice(&id.to_le_bytes());
    frame.extend_from_slice(body);
    let mut w = sh.w.lock().await;
    match w.as_mut() {
        Some(w) => w.write_all(&frame).await,
        None => Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the lane is closed")),
    }
}

/// Reads reply frames and hands each to its caller, until the lane ends.
async fn read_loop(
    mut r: tokio::net::unix::OwnedReadHalf,
    sh: std::sync::Weak<Shared>,
    opts: ReaderOptions,
    done: CancellationToken,
) {
    let why = loop {
        let mut len = [0u8; 4];
        if let Err(e) = r.read_exact(&mut len).await {
            break LaneError::Closed(e.to_string());
        }
        let len = u32::from_le_bytes(len) as usize;
        if !(8..=MAX_FRAME).contains(&len) {
            break LaneError::Io(format!("a frame of {len} bytes (want 8 to {MAX_FRAME})"));
        }
        let mut buf = vec![0u8; len];
        if let Err(e) = r.read_exact(&mut buf).await {
            break LaneError::Closed(e.to_string());
        }
        let id = u64::from_le_bytes(buf[..8].try_into().unwrap());
        if id == 0 {
            break LaneError::Stopping; // what is pending was not started
        }
        let msg = match capnp::serialize::read_message(&mut &buf[8..], opts) {
            Ok(m) => m,
            Err(e) => break LaneError::Io(format!("unreadable frame: {e}")),
        };
        let Some(sh) = sh.upgrade() else { return };
        let tx = sh.st.lock().unwrap().pending.remove(&id);
        if let Some(tx) = tx {
            let _ = tx.send(msg);
        }
    };
    if let Some(sh) = sh.upgrade() {
        let mut st = sh.st.lock().unwrap();
        if st.err.is_none() {
            st.err = Some(why);
        }
        done.cancel(); // before the callers hear: they may ask is_done
        st.pending.clear(); // their callers read st.err
    }
    done.cancel();
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(r) = self.st.get_mut().map(|st| st.reader.take()).ok().flatten() {
            r.abort();
        }
    }
}
