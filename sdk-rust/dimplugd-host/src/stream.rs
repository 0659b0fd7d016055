//! Frame streams (schema/stream.capnp, docs/host-protocol.md §7), as
//! sdk-go/host's stream.go: a host sends frames through the chain of
//! plugins whose manifests take the stream's kind and receives them back,
//! in order.
//!
//! Frames larger than [`INLINE_MAX`] travel in the session's own shared
//! memory: memfd pools, sealed against shrinking, growing and writing once
//! mapped, announced with `poolAdd` and bounded in size (a send waits while
//! the pool is full: the back-pressure). Frames that come back in a
//! plugin's memory are read through a read-only mapping of its pool.
//! Received frames are released when dropped (or with
//! [`ReceivedFrame::release`]).

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use capnp::message::Builder;
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};

use crate::schema::stream_capnp::{frame, frame_msg, frame_ref};
use crate::{Error, Result};

/// The largest frame [`Stream::send`] puts inside a message rather than in
/// shared memory (the Go host's `InlineMax`).
pub const INLINE_MAX: usize = 512;

/// The default bound of the shared memory a session's streams have in
/// flight ([`crate::Options::stream_pool_size`]). A frame larger than the
/// pool gets a pool of its own.
pub const DEFAULT_POOL_SIZE: usize = 64 << 20;

/// How many frames of a stream may be in the chain (sent, and neither
/// received back nor dropped by a stage): [`Stream::send`] waits while it is
/// full. It matches the backlog the daemon allows a stage.
pub const WINDOW: usize = 1024;

/// Offsets in a pool are aligned to this.
const ALIGN: usize = 64;

/// Describes a stream to the plugins in its chain (`StreamMeta`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamMeta {
    /// The media item.
    pub media_id: i64,
    /// The track, e.g. "video".
    pub track: String,
    /// The RFC 6381 codecs string, e.g. "avc1.64001f".
    pub codec: String,
    /// Units of the frames' pts, dts and duration per second.
    pub timescale: u32,
    /// More key/values, passed on as they are.
    pub extra: Vec<(String, String)>,
}

/// A frame to send: an fMP4 segment, an init segment, a subtitle file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    /// The host's sequence number, kept through the chain.
    pub seq: u64,
    /// Presentation timestamp, in the stream's timescale.
    pub pts: i64,
    /// Decoding timestamp.
    pub dts: i64,
    /// Duration.
    pub duration: i64,
    /// Whether the frame starts with a key frame.
    pub key_frame: bool,
    /// "video/iso.segment", "video/mp4" (an init segment), ...
    pub content_type: String,
    /// The bytes.
    pub data: Vec<u8>,
}

/// A frame whose bytes are in the session's shared memory from the start
/// ([`Stream::new_frame`]): fill [`SharedFrame::data_mut`] in place, set
/// the header and send it with [`Stream::send_shared`]. Dropping it unsent
/// frees its memory.
pub struct SharedFrame {
    /// The host's sequence number, kept through the chain.
    pub seq: u64,
    /// Presentation timestamp, in the stream's timescale.
    pub pts: i64,
    /// Decoding timestamp.
    pub dts: i64,
    /// Duration.
    pub duration: i64,
    /// Whether the frame starts with a key frame.
    pub key_frame: bool,
    /// "video/iso.segment", "video/mp4" (an init segment), ...
    pub content_type: String,
    slot: Option<Slot>,
}

impl SharedFrame {
    /// The frame's bytes (zeroed, or what was written).
    pub fn data(&self) -> &[u8] {
        match &self.slot {
            Some(s) => &s.mem.map.bytes()[s.off..s.off + s.len],
            None => &[],
        }
    }

    /// The frame's bytes, to fill in place.
    pub fn data_mut(&mut self) -> &mut [u8] {
        match &mut self.slot {
            Some(s) => s.bytes_mut(),
            None => &mut [],
        }
    }
}

impl std::fmt::Debug for SharedFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedFrame").field("seq", &self.seq).field("len", &self.data().len()).finish()
    }
}

/// Bytes of one of the session's pools allocated to a frame being made:
/// freed when dropped unless sent.
struct Slot {
    streams: Arc<Streams>,
    scope: u64,
    pool: u32,
    mem: Arc<OwnPool>,
    off: usize,
    len: usize,
    sent: bool,
}

impl Slot {
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: the slot is allocated to this frame alone (&mut self), and
        // nobody else reads it before it is sent.
        unsafe { self.mem.map.bytes_mut(self.off, self.len) }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.sent {
            self.streams.free(self.pool, self.off, self.len);
        }
    }
}

/// A frame's header, borrowed.
struct Header<'a> {
    seq: u64,
    pts: i64,
    dts: i64,
    duration: i64,
    key_frame: bool,
    content_type: &'a str,
}

impl<'a> Header<'a> {
    fn of(seq: u64, pts: i64, dts: i64, duration: i64, key_frame: bool, content_type: &'a str) -> Header<'a> {
        Header { seq, pts, dts, duration, key_frame, content_type }
    }
}

/// Where a frame's bytes travel.
enum Payload<'a> {
    Inline(&'a [u8]),
    /// (pool, offset, length) in the session's own pool.
    Ref(u32, usize, usize),
}

/// One plugin's part in a stream's chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stage {
    /// The plugin.
    pub plugin: String,
    /// The stage's name in the plugin's manifest.
    pub name: String,
    /// "transform" or "observe".
    pub role: String,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.plugin, self.name)
    }
}

/// How much of the session's shared memory for frames is in use
/// ([`crate::Session::frame_memory`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameMemory {
    /// Pools announced to the daemon and not dropped.
    pub pools: usize,
    /// Their size, in bytes.
    pub pool_bytes: u64,
    /// Bytes of them held by frames (sent and not released yet, or
    /// received back and not dropped).
    pub in_use_bytes: u64,
    /// How many frames those are.
    pub in_use_frames: usize,
}

/// A frame out of the chain. Its bytes are an inline copy or a view of
/// shared memory (the session's own pool, or a plugin's, mapped
/// read-only), valid while the frame lives: dropping it releases the
/// memory.
pub struct ReceivedFrame {
    /// The host's sequence number of the frame this answers.
    pub seq: u64,
    /// Presentation timestamp.
    pub pts: i64,
    /// Decoding timestamp.
    pub dts: i64,
    /// Duration.
    pub duration: i64,
    /// Whether it starts with a key frame.
    pub key_frame: bool,
    /// Its content type.
    pub content_type: String,
    /// Which part of the answer to frame `seq` this is (0-based).
    pub part: u32,
    /// How many parts the answer has (at least 1).
    pub parts: u32,
    data: Data,
    release: Option<Release>,
}

enum Data {
    Inline(Vec<u8>),
    Own { pool: Arc<OwnPool>, off: usize, len: usize },
    Mapped { map: Arc<Mapping>, off: usize, len: usize },
}

/// What dropping a received frame does.
enum Release {
    /// Tell the daemon (a plugin's memory, or ours still held elsewhere).
    Send { streams: Weak<Streams>, owner: u64, pool: u32, offset: u64, length: u64 },
    /// Ours, returned with no other holder: the slot is free.
    Free { streams: Weak<Streams>, pool: u32, offset: u64, length: u64 },
}

impl ReceivedFrame {
    /// The frame's bytes.
    pub fn data(&self) -> &[u8] {
        match &self.data {
            Data::Inline(v) => v,
            Data::Own { pool, off, len } => &pool.map.bytes()[*off..*off + *len],
            Data::Mapped { map, off, len } => &map.bytes()[*off..*off + *len],
        }
    }

    /// Whether the bytes came in a shared memory pool (rather than inline).
    pub fn is_shared(&self) -> bool {
        !matches!(self.data, Data::Inline(_))
    }

    /// Whether the bytes are in a plugin's memory (a frame the chain made),
    /// rather than the session's own (a frame passed on as it was sent).
    pub fn in_plugin_memory(&self) -> bool {
        matches!(self.data, Data::Mapped { .. })
    }

    /// Whether this is the last part of the answer to frame `seq`.
    pub fn is_last_part(&self) -> bool {
        self.part + 1 >= self.parts
    }

    /// Gives the frame's memory back (what dropping it does).
    pub fn release(self) {}
}

impl Drop for ReceivedFrame {
    fn drop(&mut self) {
        match self.release.take() {
            Some(Release::Send { streams, owner, pool, offset, length }) => {
                if let Some(s) = streams.upgrade() {
                    s.send_msg(release_msg(owner, pool, offset, length), None);
                }
            }
            Some(Release::Free { streams, pool, offset, length }) => {
                if let Some(s) = streams.upgrade() {
                    s.free(pool, offset as usize, length as usize);
                }
            }
            None => {}
        }
    }
}

impl std::fmt::Debug for ReceivedFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceivedFrame")
            .field("seq", &self.seq)
            .field("part", &self.part)
            .field("parts", &self.parts)
            .field("content_type", &self.content_type)
            .field("len", &self.data().len())
            .field("shared", &self.is_shared())
            .finish()
    }
}

/// A memory mapping, unmapped when the last holder is gone.
pub(crate) struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory; writes go through `bytes_mut` only
// by the one sender that allocated the slot.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(fd: &OwnedFd, len: usize, writable: bool) -> io::Result<Mapping> {
        if len == 0 {
            return Ok(Mapping { ptr: std::ptr::null_mut(), len: 0 });
        }
        let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        // SAFETY: mapping a descriptor we hold, of at least len bytes.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd.as_raw_fd(), 0) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr: p.cast(), len })
    }

    fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: a live mapping of len bytes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// # Safety
    /// The caller owns the range (an allocated slot not yet sent).
    #[allow(clippy::mut_from_ref)]
    unsafe fn bytes_mut(&self, off: usize, len: usize) -> &mut [u8] {
        std::slice::from_raw_parts_mut(self.ptr.add(off), len)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: our mapping; nothing borrows it any more.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }
}

/// One of the session's own pools.
pub(crate) struct OwnPool {
    map: Mapping,
}

struct PoolState {
    pool: Arc<OwnPool>,
    size: usize,
    scope: u64,
    /// A pool for one frame larger than the pool size: dropped when free.
    dedicated: bool,
    /// Free ranges, by offset, merged.
    free: Vec<(usize, usize)>,
    in_use: usize,
    frames: usize,
}

impl PoolState {
    fn take(&mut self, n: usize) -> Option<usize> {
        let i = self.free.iter().position(|&(_, l)| l >= n)?;
        let (off, l) = self.free[i];
        if l == n {
            self.free.remove(i);
        } else {
            self.free[i] = (off + n, l - n);
        }
        self.in_use += n;
        self.frames += 1;
        Some(off)
    }

    fn put(&mut self, off: usize, n: usize) {
        let i = self.free.partition_point(|&(o, _)| o < off);
        self.free.insert(i, (off, n));
        if i + 1 < self.free.len() && self.free[i].0 + self.free[i].1 == self.free[i + 1].0 {
            self.free[i].1 += self.free[i + 1].1;
            self.free.remove(i + 1);
        }
        if i > 0 && self.free[i - 1].0 + self.free[i - 1].1 == self.free[i].0 {
            self.free[i - 1].1 += self.free[i].1;
            self.free.remove(i);
        }
        self.in_use -= n;
        self.frames -= 1;
    }
}

#[derive(Default)]
struct Alloc {
    pools: HashMap<u32, PoolState>,
    last_id: u32,
    /// Open streams per scope: a scope's pool is dropped once none is
    /// open and nothing in it is held.
    scopes: HashMap<u64, usize>,
}

/// A message for the writer: its bytes (standard framing) and a
/// descriptor to pass with it.
pub(crate) struct Out {
    pub(crate) bytes: Vec<u8>,
    pub(crate) fd: Option<OwnedFd>,
}

/// The streams of one frame socket, and its pools: what the socket's
/// reader and the session's [`Stream`]s share.
pub(crate) struct Streams {
    out: mpsc::UnboundedSender<Out>,
    pool_size: usize,
    streams: Mutex<HashMap<u64, Arc<StreamShared>>>,
    next_stream: AtomicU64,
    /// Other peers' pools, by (owner, pool).
    maps: Mutex<HashMap<(u64, u32), Arc<Mapping>>>,
    alloc: Mutex<Alloc>,
    room: Notify,
    closed: AtomicBool,
    /// Why the socket ended (the daemon's goodbye), once it has.
    why: Mutex<Option<String>>,
}

/// Tells [`Stream::open`] the chain and the pool scope.
type OpenedTx = oneshot::Sender<(Vec<Stage>, u64)>;

struct StreamShared {
    opened: Mutex<Option<OpenedTx>>,
    events: mpsc::UnboundedSender<Event>,
    window: Semaphore,
    /// The end, once known: None for a clean one.
    ended: Mutex<Option<Option<String>>>,
    scope: AtomicU64,
}

enum Event {
    Frame(ReceivedFrame),
    /// The stream ended: None cleanly, else why it failed.
    End(Option<String>),
}

fn build(fill: impl FnOnce(frame_msg::Builder)) -> Vec<u8> {
    let mut m = Builder::new_default();
    fill(m.init_root::<frame_msg::Builder>());
    capnp::serialize::write_message_to_words(&m)
}

fn release_msg(owner: u64, pool: u32, offset: u64, length: u64) -> Vec<u8> {
    build(|m| {
        let mut r = m.init_release();
        r.set_owner(owner);
        r.set_pool(pool);
        r.set_offset(offset);
        r.set_length(length);
    })
}

fn round(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

impl Streams {
    pub(crate) fn new(out: mpsc::UnboundedSender<Out>, pool_size: usize) -> Streams {
        Streams {
            out,
            pool_size: pool_size.max(ALIGN),
            streams: Mutex::new(HashMap::new()),
            next_stream: AtomicU64::new(0),
            maps: Mutex::new(HashMap::new()),
            alloc: Mutex::new(Alloc::default()),
            room: Notify::new(),
            closed: AtomicBool::new(false),
            why: Mutex::new(None),
        }
    }

    fn send_msg(&self, bytes: Vec<u8>, fd: Option<OwnedFd>) -> bool {
        self.out.send(Out { bytes, fd }).is_ok()
    }

    fn cut_error(&self) -> Error {
        Error::StreamCut(self.why.lock().unwrap().clone())
    }

    /// The socket ended: every stream with it.
    pub(crate) fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let why = self.why.lock().unwrap().clone();
        let streams: Vec<_> = self.streams.lock().unwrap().drain().map(|(_, s)| s).collect();
        let msg = match why {
            Some(w) => format!("dimplugd closed the frame socket: {w}"),
            None => "dimplugd went away: the stream was cut off (open a new one once the daemon is back)".into(),
        };
        for s in streams {
            self.finish(&s, Some(msg.clone()));
        }
        self.room.notify_waiters();
    }

    fn finish(&self, st: &StreamShared, err: Option<String>) {
        {
            let mut e = st.ended.lock().unwrap();
            if e.is_some() {
                return;
            }
            *e = Some(err.clone());
        }
        st.opened.lock().unwrap().take();
        st.window.close();
        let _ = st.events.send(Event::End(err));
        let scope = st.scope.load(Ordering::SeqCst);
        if scope != 0 {
            let mut a = self.alloc.lock().unwrap();
            if let Some(n) = a.scopes.get_mut(&scope) {
                *n -= 1;
                if *n == 0 {
                    a.scopes.remove(&scope);
                }
            }
            self.drop_idle(&mut a);
        }
        self.room.notify_waiters();
    }

    /// Drops the pools no open stream can use and nothing holds.
    fn drop_idle(&self, a: &mut Alloc) {
        let idle: Vec<u32> = a
            .pools
            .iter()
            .filter(|(_, p)| p.in_use == 0 && (p.dedicated || !a.scopes.contains_key(&p.scope)))
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            a.pools.remove(&id);
            self.send_msg(build(|m| m.init_pool_drop().set_pool(id)), None);
        }
    }

    fn free(&self, pool: u32, off: usize, len: usize) {
        let mut a = self.alloc.lock().unwrap();
        if let Some(p) = a.pools.get_mut(&pool) {
            let n = round(len.max(1));
            if off + n <= p.size {
                p.put(off, n);
            }
            if p.in_use == 0 {
                self.drop_idle(&mut a);
            }
        }
        drop(a);
        self.room.notify_waiters();
    }

    /// Allocates `n` (> 0) bytes of a pool of `scope`, waiting while the
    /// pools are full.
    /// Stops waiting with the stream's error once `st` has ended.
    async fn alloc(&self, st: &StreamShared, scope: u64, n: usize) -> Result<(u32, Arc<OwnPool>, usize)> {
        let need = round(n);
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                if self.closed.load(Ordering::SeqCst) {
                    return Err(self.cut_error());
                }
                if let Some(e) = st.ended.lock().unwrap().clone() {
                    return Err(Error::Stream(e.unwrap_or_else(|| "the stream has ended".into())));
                }
                let mut a = self.alloc.lock().unwrap();
                if need > self.pool_size {
                    let id = self.new_pool(&mut a, scope, need, true)?;
                    let p = a.pools.get_mut(&id).unwrap();
                    let off = p.take(need).unwrap();
                    return Ok((id, p.pool.clone(), off));
                }
                let mut found = None;
                for (id, p) in a.pools.iter_mut().filter(|(_, p)| p.scope == scope && !p.dedicated) {
                    if let Some(off) = p.take(need) {
                        found = Some((*id, p.pool.clone(), off));
                        break;
                    }
                }
                if let Some(f) = found {
                    return Ok(f);
                }
                if !a.pools.values().any(|p| p.scope == scope && !p.dedicated) {
                    let id = self.new_pool(&mut a, scope, self.pool_size, false)?;
                    let p = a.pools.get_mut(&id).unwrap();
                    let off = p.take(need).unwrap();
                    return Ok((id, p.pool.clone(), off));
                }
            }
            notified.await;
        }
    }

    /// Makes a pool: a sealed memfd, mapped, announced.
    fn new_pool(&self, a: &mut Alloc, scope: u64, size: usize, dedicated: bool) -> Result<u32> {
        let (fd, map) = memfd_pool(size).map_err(Error::Io)?;
        a.last_id += 1;
        let id = a.last_id;
        let msg = build(|m| {
            let mut p = m.init_pool_add();
            p.set_id(id);
            p.set_size(size as u64);
            p.set_owner(0);
            p.set_scope(scope);
        });
        if !self.send_msg(msg, Some(fd)) {
            return Err(self.cut_error());
        }
        let pool = Arc::new(OwnPool { map });
        a.pools.insert(id, PoolState { pool, size, scope, dedicated, free: vec![(0, size)], in_use: 0, frames: 0 });
        Ok(id)
    }

    pub(crate) fn memory(&self) -> FrameMemory {
        let a = self.alloc.lock().unwrap();
        FrameMemory {
            pools: a.pools.len(),
            pool_bytes: a.pools.values().map(|p| p.size as u64).sum(),
            in_use_bytes: a.pools.values().map(|p| p.in_use as u64).sum(),
            in_use_frames: a.pools.values().map(|p| p.frames).sum(),
        }
    }

    /// Handles one message from the daemon (not a lane grant); `fds` came
    /// with it and are closed unless kept.
    pub(crate) fn handle(self: &Arc<Self>, m: frame_msg::Reader, mut fds: Vec<OwnedFd>) {
        let Ok(which) = m.which() else { return };
        match which {
            frame_msg::PoolAdd(Ok(pa)) if fds.len() == 1 => {
                let fd = fds.remove(0);
                if let Ok(map) = check_pool(&fd, pa.get_size()) {
                    self.maps.lock().unwrap().insert((pa.get_owner(), pa.get_id()), Arc::new(map));
                }
            }
            frame_msg::PoolDrop(Ok(r)) => {
                self.maps.lock().unwrap().remove(&(r.get_owner(), r.get_pool()));
            }
            frame_msg::Opened(Ok(o)) => {
                let Some(st) = self.stream(o.get_stream()) else { return };
                let names: Vec<String> = o
                    .get_stages()
                    .map(|l| l.iter().map(|t| t.ok().and_then(|t| t.to_string().ok()).unwrap_or_default()).collect())
                    .unwrap_or_default();
                let roles: Vec<String> = o
                    .get_roles()
                    .map(|l| l.iter().map(|t| t.ok().and_then(|t| t.to_string().ok()).unwrap_or_default()).collect())
                    .unwrap_or_default();
                let stages = names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        let (plugin, name) = n.split_once('/').unwrap_or((n, ""));
                        Stage {
                            plugin: plugin.into(),
                            name: name.into(),
                            role: roles.get(i).cloned().unwrap_or_default(),
                        }
                    })
                    .collect();
                let scope = o.get_scope();
                {
                    // Under the end's lock: a stream finished meanwhile
                    // (cancelled) does not count for its scope.
                    let ended = st.ended.lock().unwrap();
                    if ended.is_some() {
                        return;
                    }
                    st.scope.store(scope, Ordering::SeqCst);
                    *self.alloc.lock().unwrap().scopes.entry(scope).or_insert(0) += 1;
                }
                let tx = st.opened.lock().unwrap().take();
                if let Some(tx) = tx {
                    let _ = tx.send((stages, scope));
                }
            }
            frame_msg::Frame(Ok(f)) => self.received(f),
            frame_msg::Release(Ok(r)) if r.get_owner() == 0 => {
                self.free(r.get_pool(), r.get_offset() as usize, r.get_length() as usize);
            }
            frame_msg::End(Ok(e)) => {
                let why = e.get_error().ok().and_then(|t| t.to_string().ok()).unwrap_or_default();
                let st = self.streams.lock().unwrap().remove(&e.get_stream());
                if let Some(st) = st {
                    self.finish(&st, (!why.is_empty()).then_some(why));
                }
            }
            frame_msg::Goodbye(Ok(t)) => {
                *self.why.lock().unwrap() = Some(t.to_string().unwrap_or_default());
            }
            _ => {}
        }
    }

    fn stream(&self, id: u64) -> Option<Arc<StreamShared>> {
        self.streams.lock().unwrap().get(&id).cloned()
    }

    fn received(self: &Arc<Self>, f: frame::Reader) {
        let st = self.stream(f.get_stream());
        if f.get_dropped() {
            if let Some(st) = st {
                st.window.add_permits(1);
            }
            return;
        }
        let mut rf = ReceivedFrame {
            seq: f.get_seq(),
            pts: f.get_pts(),
            dts: f.get_dts(),
            duration: f.get_duration(),
            key_frame: f.get_key_frame(),
            content_type: f.get_content_type().ok().and_then(|t| t.to_string().ok()).unwrap_or_default(),
            part: f.get_part(),
            parts: f.get_parts().max(1),
            data: Data::Inline(Vec::new()),
            release: None,
        };
        let data = match f.get_data().which() {
            Ok(frame::data::Inline(Ok(b))) => Some((Data::Inline(b.to_vec()), None)),
            Ok(frame::data::Ref(Ok(r))) => self.view(r, f.get_returned()).map(|(d, r)| (d, Some(r))),
            _ => None,
        };
        let Some((data, release)) = data else {
            // Unreadable (a pool never announced): lost, but its place in
            // the window is free.
            if let Some(st) = st.filter(|_| rf.is_last_part()) {
                st.window.add_permits(1);
            }
            return;
        };
        rf.data = data;
        rf.release = release;
        match st {
            Some(st) => {
                let _ = st.events.send(Event::Frame(rf));
            }
            None => drop(rf), // released
        }
    }

    /// The memory a ref names, and how to release it.
    fn view(self: &Arc<Self>, r: frame_ref::Reader, returned: bool) -> Option<(Data, Release)> {
        let (owner, pool, offset, length) = (r.get_owner(), r.get_pool(), r.get_offset(), r.get_length());
        let send = Release::Send { streams: Arc::downgrade(self), owner, pool, offset, length };
        let (off, len) = (offset as usize, length as usize);
        if owner == 0 {
            let a = self.alloc.lock().unwrap();
            let p = a.pools.get(&pool).filter(|p| off.checked_add(len).is_some_and(|e| e <= p.size));
            let Some(p) = p else {
                drop(a);
                if !returned {
                    self.send_msg(release_msg(owner, pool, offset, length), None);
                }
                return None;
            };
            let data = Data::Own { pool: p.pool.clone(), off, len };
            if returned {
                return Some((data, Release::Free { streams: Arc::downgrade(self), pool, offset, length }));
            }
            return Some((data, send));
        }
        let map = self.maps.lock().unwrap().get(&(owner, pool)).cloned();
        match map.filter(|m| off.checked_add(len).is_some_and(|e| e <= m.len)) {
            Some(map) => Some((Data::Mapped { map, off, len }, send)),
            None => {
                self.send_msg(release_msg(owner, pool, offset, length), None);
                None
            }
        }
    }
}

/// A memfd of `size` bytes, mapped read-write, then sealed against
/// shrinking, growing and writing (and further sealing).
fn memfd_pool(size: usize) -> io::Result<(OwnedFd, Mapping)> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain syscalls on a descriptor we create and own.
    unsafe {
        let fd = libc::memfd_create(c"dimplugd-host-pool".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        if libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) < 0 {
            return Err(io::Error::last_os_error());
        }
        let map = Mapping::new(&fd, size, true)?;
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_SEAL;
        if libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((fd, map))
    }
}

/// Checks another peer's pool (a regular file of exactly `size` bytes,
/// sealed against shrinking, growing and writing) and maps it read-only.
fn check_pool(fd: &OwnedFd, size: u64) -> io::Result<Mapping> {
    // SAFETY: fstat and fcntl on a descriptor we hold.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd.as_raw_fd(), &mut st) < 0 {
            return Err(io::Error::last_os_error());
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_size as u64 != size {
            return Err(io::Error::other("not a pool of the announced size"));
        }
        let seals = libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS);
        let want = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
        if seals < 0 || seals & want != want || seals & (libc::F_SEAL_WRITE | libc::F_SEAL_FUTURE_WRITE) == 0 {
            return Err(io::Error::other("a pool not sealed against shrinking, growing and writing"));
        }
    }
    Mapping::new(fd, size as usize, false)
}

/// A frame stream through the plugins whose manifests take its kind
/// ([`crate::Session::open_stream`]). `send` and `recv` take `&self`: share
/// the stream (e.g. in an `Arc`) to send from one task and receive in
/// another; frames come back in the order they were sent. Dropping a
/// stream that has not ended cancels it.
pub struct Stream {
    streams: Arc<Streams>,
    st: Arc<StreamShared>,
    id: u64,
    kind: String,
    stages: Vec<Stage>,
    scope: u64,
    /// The stream's events, and its end once taken (None: clean).
    rx: tokio::sync::Mutex<(mpsc::UnboundedReceiver<Event>, Option<Option<String>>)>,
    send_closed: AtomicBool,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("id", &self.id).field("kind", &self.kind).field("stages", &self.stages).finish()
    }
}

impl Stream {
    /// Opens a stream on the frame socket `streams` serves and waits for the
    /// daemon to build its chain.
    pub(crate) async fn open(streams: Arc<Streams>, kind: &str, meta: &StreamMeta) -> Result<Stream> {
        if streams.closed.load(Ordering::SeqCst) {
            return Err(streams.cut_error());
        }
        let id = streams.next_stream.fetch_add(1, Ordering::SeqCst) + 1;
        let (otx, orx) = oneshot::channel();
        let (etx, erx) = mpsc::unbounded_channel();
        let st = Arc::new(StreamShared {
            opened: Mutex::new(Some(otx)),
            events: etx,
            window: Semaphore::new(WINDOW),
            ended: Mutex::new(None),
            scope: AtomicU64::new(0),
        });
        streams.streams.lock().unwrap().insert(id, st.clone());
        let msg = build(|m| {
            let mut o = m.init_open();
            o.set_stream(id);
            o.set_kind(kind);
            let mut sm = o.init_meta();
            sm.set_media_id(meta.media_id);
            sm.set_timescale(meta.timescale);
            sm.set_track(meta.track.as_str());
            sm.set_codec(meta.codec.as_str());
            let mut l = sm.init_extra(meta.extra.len() as u32);
            for (i, (k, v)) in meta.extra.iter().enumerate() {
                let mut e = l.reborrow().get(i as u32);
                e.set_key(k.as_str());
                e.set_value(v.as_str());
            }
        });
        if !streams.send_msg(msg, None) || streams.closed.load(Ordering::SeqCst) {
            streams.streams.lock().unwrap().remove(&id);
            return Err(streams.cut_error());
        }
        let mut stream = Stream {
            streams,
            st,
            id,
            kind: kind.into(),
            stages: Vec::new(),
            scope: 0,
            rx: tokio::sync::Mutex::new((erx, None)),
            send_closed: AtomicBool::new(false),
        };
        match orx.await {
            Ok((stages, scope)) => {
                stream.stages = stages;
                stream.scope = scope;
                Ok(stream)
            }
            // Refused: the end says why.
            Err(_) => {
                let why = stream.st.ended.lock().unwrap().clone().flatten();
                stream.send_closed.store(true, Ordering::SeqCst);
                Err(Error::Stream(format!(
                    "open {kind} stream: {}",
                    why.unwrap_or_else(|| "the daemon ended it before it opened".into())
                )))
            }
        }
    }

    /// The stream's kind.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The chain: transforms in order, then observers.
    pub fn chain(&self) -> &[Stage] {
        &self.stages
    }

    /// The chain as "plugin/stage".
    pub fn stages(&self) -> Vec<String> {
        self.stages.iter().map(Stage::to_string).collect()
    }

    /// The stream's end error (or the stream cut off), once it ended.
    fn end_error(&self) -> Option<Error> {
        let e = self.st.ended.lock().unwrap().clone()?;
        Some(match e {
            Some(why) => Error::Stream(why),
            None => Error::Stream("the stream has ended".into()),
        })
    }

    /// Sends a frame down the chain: inline up to [`INLINE_MAX`] bytes,
    /// else copied into the session's shared memory (waiting while its
    /// pool is full). Waits while [`WINDOW`] frames are in the chain. Fails
    /// once the stream ended (a stage failed it, [`Stream::cancel`], or the
    /// daemon went away) and after [`Stream::close_send`]. Cancel-safe:
    /// dropped while waiting, it sends nothing and holds nothing.
    pub async fn send(&self, f: &Frame) -> Result<()> {
        if self.send_closed.load(Ordering::SeqCst) {
            return Err(Error::Stream("send after close_send".into()));
        }
        // The place in the window is given back if the send fails or is
        // dropped before the frame went out (cancel-safe).
        let Ok(place) = self.st.window.acquire().await else {
            return Err(self.end_error().unwrap_or_else(|| self.streams.cut_error()));
        };
        self.send_frame(f).await?;
        place.forget(); // taken until the frame is answered
        Ok(())
    }

    async fn send_frame(&self, f: &Frame) -> Result<()> {
        let h = Header::of(f.seq, f.pts, f.dts, f.duration, f.key_frame, &f.content_type);
        if f.data.len() <= INLINE_MAX {
            return self.send_msg(&h, Payload::Inline(&f.data));
        }
        let mut slot = self.alloc_slot(f.data.len()).await?;
        slot.bytes_mut().copy_from_slice(&f.data);
        self.send_slot(&h, slot)
    }

    async fn alloc_slot(&self, n: usize) -> Result<Slot> {
        let (pool, mem, off) = self.streams.alloc(&self.st, self.scope, n).await?;
        Ok(Slot { streams: self.streams.clone(), scope: self.scope, pool, mem, off, len: n, sent: false })
    }

    /// Sends a frame in `slot` (freed if the stream has ended).
    fn send_slot(&self, h: &Header, mut slot: Slot) -> Result<()> {
        if slot.scope != self.scope {
            return Err(Error::Stream(format!(
                "a frame from the pool of another stream (scope {}, this stream's is {})",
                slot.scope, self.scope
            )));
        }
        if let Some(e) = self.end_error() {
            return Err(e);
        }
        self.send_msg(h, Payload::Ref(slot.pool, slot.off, slot.len))?;
        slot.sent = true; // the chain's now, until the daemon releases it
        Ok(())
    }

    fn send_msg(&self, h: &Header, data: Payload) -> Result<()> {
        let msg = build(|m| {
            let mut fr = m.init_frame();
            fr.set_stream(self.id);
            fr.set_seq(h.seq);
            fr.set_pts(h.pts);
            fr.set_dts(h.dts);
            fr.set_duration(h.duration);
            fr.set_key_frame(h.key_frame);
            fr.set_content_type(h.content_type);
            fr.set_part(0);
            fr.set_parts(1);
            match data {
                Payload::Inline(b) => fr.init_data().set_inline(b),
                Payload::Ref(pool, off, len) => {
                    let mut r = fr.init_data().init_ref();
                    r.set_owner(0);
                    r.set_pool(pool);
                    r.set_offset(off as u64);
                    r.set_length(len as u64);
                }
            }
        });
        if !self.streams.send_msg(msg, None) {
            return Err(self.streams.cut_error());
        }
        Ok(())
    }

    /// A frame of `n` bytes of the session's shared memory, to fill in
    /// place and send with [`Stream::send_shared`]: its bytes are never
    /// copied on the host (zero copy, as the Go host's `NewFrame`). Waits
    /// while the pool is full. Dropping it unsent frees its memory.
    pub async fn new_frame(&self, n: usize) -> Result<SharedFrame> {
        let slot = if n == 0 { None } else { Some(self.alloc_slot(n).await?) };
        Ok(SharedFrame { seq: 0, pts: 0, dts: 0, duration: 0, key_frame: false, content_type: String::new(), slot })
    }

    /// Sends a frame made by [`Stream::new_frame`] (of this stream, or of
    /// another stream of the same chain): as a descriptor into the shared
    /// memory it was filled in, whatever its size. Waits while [`WINDOW`]
    /// frames are in the chain.
    pub async fn send_shared(&self, f: SharedFrame) -> Result<()> {
        if self.send_closed.load(Ordering::SeqCst) {
            return Err(Error::Stream("send after close_send".into()));
        }
        let Ok(place) = self.st.window.acquire().await else {
            return Err(self.end_error().unwrap_or_else(|| self.streams.cut_error()));
        };
        let mut f = f;
        let h = Header::of(f.seq, f.pts, f.dts, f.duration, f.key_frame, &f.content_type);
        let res = match f.slot.take() {
            None => self.send_msg(&h, Payload::Inline(&[])),
            Some(slot) => self.send_slot(&h, slot),
        };
        if res.is_ok() {
            place.forget(); // taken until the frame is answered
        }
        res
    }

    /// The next frame out of the chain, in order: `Ok(None)` after the
    /// last one of a stream whose input was closed ([`Stream::close_send`])
    /// and fully answered; [`Error::Stream`] when a stage failed the stream
    /// (naming the plugin), [`Error::StreamCut`] when the daemon went away.
    /// Drop (or [`ReceivedFrame::release`]) each frame when done with it.
    pub async fn recv(&self) -> Result<Option<ReceivedFrame>> {
        let mut rx = self.rx.lock().await;
        if rx.1.is_none() {
            match rx.0.recv().await {
                Some(Event::Frame(f)) => {
                    if f.is_last_part() {
                        self.st.window.add_permits(1);
                    }
                    return Ok(Some(f));
                }
                Some(Event::End(e)) => rx.1 = Some(e),
                None => rx.1 = Some(None),
            }
        }
        match rx.1.clone().flatten() {
            None => Ok(None),
            Some(_) if self.streams.closed.load(Ordering::SeqCst) => Err(self.streams.cut_error()),
            Some(why) => Err(Error::Stream(why)),
        }
    }

    /// Says no more frames will be sent (`end`): everything sent is still
    /// answered, then [`Stream::recv`] returns `Ok(None)`.
    pub fn close_send(&self) -> Result<()> {
        if self.send_closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.send_end(false)
    }

    /// Abandons the stream (`end` with `cancel`): frames in flight are
    /// dropped, and frames received and not yet taken are released.
    pub fn cancel(&self) -> Result<()> {
        self.send_closed.store(true, Ordering::SeqCst);
        let removed = self.streams.streams.lock().unwrap().remove(&self.id);
        self.streams.finish(&self.st, Some("the stream was cancelled".into()));
        if let Ok(mut rx) = self.rx.try_lock() {
            while let Ok(ev) = rx.0.try_recv() {
                if let Event::End(e) = ev {
                    rx.1.get_or_insert(e);
                }
            }
        }
        if removed.is_some() {
            return self.send_end(true);
        }
        Ok(())
    }

    fn send_end(&self, cancel: bool) -> Result<()> {
        let msg = build(|m| {
            let mut e = m.init_end();
            e.set_stream(self.id);
            e.set_cancel(cancel);
        });
        if self.streams.send_msg(msg, None) {
            Ok(())
        } else {
            Err(self.streams.cut_error())
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if self.st.ended.lock().unwrap().is_none() {
            let _ = self.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(size: usize) -> PoolState {
        let (_fd, map) = memfd_pool(size).unwrap();
        PoolState {
            pool: Arc::new(OwnPool { map }),
            size,
            scope: 1,
            dedicated: false,
            free: vec![(0, size)],
            in_use: 0,
            frames: 0,
        }
    }

    #[test]
    fn free_ranges_merge_back_into_one() {
        let mut p = pool(4096);
        let a = p.take(1024).unwrap();
        let b = p.take(1024).unwrap();
        let c = p.take(2048).unwrap();
        assert_eq!((a, b, c), (0, 1024, 2048));
        assert_eq!(p.take(64), None, "full");
        p.put(b, 1024);
        assert_eq!(p.take(2048), None, "1024 free bytes hold no 2048");
        p.put(a, 1024);
        assert_eq!(p.take(2048), Some(0), "a and b merged");
        p.put(0, 2048);
        p.put(c, 2048);
        assert_eq!((p.free.clone(), p.in_use, p.frames), (vec![(0, 4096)], 0, 0));
    }

    #[test]
    fn pools_are_sealed_memfds() {
        let (fd, map) = memfd_pool(8192).unwrap();
        // SAFETY: fcntl on our descriptor.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        let want = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_SEAL;
        assert_eq!(seals & want, want);
        // Writable through the mapping made before the seal, and readable
        // through a read-only one made after, as a consumer's.
        // SAFETY: nothing else uses the range.
        unsafe { map.bytes_mut(100, 3) }.copy_from_slice(b"abc");
        let ro = check_pool(&fd, 8192).expect("a consumer's check");
        assert_eq!(&ro.bytes()[100..103], b"abc");
        assert!(check_pool(&fd, 4096).is_err(), "the wrong size");
        assert!(Mapping::new(&fd, 8192, true).is_err(), "a writable mapping after F_SEAL_FUTURE_WRITE");
    }
}
