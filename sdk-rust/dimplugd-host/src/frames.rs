//! The host's frame socket (schema/stream.capnp), shared by direct lanes and
//! frame streams: opened with "DPFRAME2\n" and the session token on a new connection to the daemon's
//! socket (the daemon answers one byte, 1, and the socket's descriptor as
//! SCM_RIGHTS; or 0 and why), it is a SOCK_SEQPACKET socket whose packets
//! carry FrameMsgs back to back. The host sends `laneRequest` and
//! `hookStats`; the daemon answers a lane request with `lane` (a LaneGrant,
//! with the lane's socket as SCM_RIGHTS, or an error). Every other message
//! goes to the socket's [`Streams`] (stream.rs): frame streams and pools.
//! Stream messages are written by one writer task, which batches them into
//! packets (a message with a descriptor goes in a packet of its own).

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use capnp::message::{Builder, ReaderOptions};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use crate::schema::stream_capnp::frame_msg;
use crate::stream::{Out, Streams};

/// What a host writes to get its frame socket, followed by its session's
/// token (schema/daemon.capnp: openHost's sessionToken).
const FRAMES_PREAMBLE: &[u8; 9] = b"DPFRAME2\n";
/// The largest packet (sdk-go/frames.MaxPacket).
const MAX_PACKET: usize = 192 << 10;
/// The most descriptors one packet carries (sdk-go/frames.MaxFDs).
const MAX_FDS: usize = 8;

/// A lane grant: the plugin, and the lane's socket or why there is none.
pub(crate) type OnLane = Arc<dyn Fn(String, Result<OwnedFd, String>) + Send + Sync>;

/// The host's frame socket to one daemon.
pub(crate) struct FrameClient {
    fd: Arc<AsyncFd<OwnedFd>>,
    done: CancellationToken,
    reader: tokio::task::AbortHandle,
    writer: tokio::task::AbortHandle,
    streams: Arc<Streams>,
}

impl FrameClient {
    /// Opens the frame socket of the session `token` names; must run
    /// inside a tokio runtime, which runs its reader. `on_lane` is called
    /// (from the reader) for every grant.
    /// `pool_size` bounds the shared memory of its streams.
    pub(crate) async fn open(
        socket: &Path,
        token: &[u8],
        on_lane: OnLane,
        pool_size: usize,
    ) -> io::Result<FrameClient> {
        let mut c = UnixStream::connect(socket).await?;
        let mut preamble = FRAMES_PREAMBLE.to_vec();
        preamble.extend_from_slice(token);
        c.write_all(&preamble).await?;
        let mut buf = [0u8; 512];
        let (n, mut fds) = loop {
            c.readable().await?;
            match c.try_io(Interest::READABLE, || recv_with_fds(c.as_raw_fd(), &mut buf)) {
                Ok(r) => break r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the daemon closed the frame handshake"));
        }
        if buf[0] != 1 || fds.is_empty() {
            let why = String::from_utf8_lossy(&buf[1..n]).into_owned();
            return Err(io::Error::other(format!("the daemon refused a frame socket: {why}")));
        }
        let fd = fds.swap_remove(0);
        set_nonblocking(fd.as_raw_fd())?;
        let fd = Arc::new(AsyncFd::new(fd)?);
        let done = CancellationToken::new();
        let (out, out_rx) = tokio::sync::mpsc::unbounded_channel();
        let streams = Arc::new(Streams::new(out, pool_size));
        let reader = tokio::spawn(read_loop(fd.clone(), on_lane, streams.clone(), done.clone())).abort_handle();
        let writer = tokio::spawn(write_loop(fd.clone(), out_rx, done.clone())).abort_handle();
        Ok(FrameClient { fd, done, reader, writer, streams })
    }

    /// The socket's streams and pools.
    pub(crate) fn streams(&self) -> &Arc<Streams> {
        &self.streams
    }

    /// Whether the socket has ended (its daemon went away).
    pub(crate) fn is_done(&self) -> bool {
        self.done.is_cancelled()
    }

    /// Sends one message (in standard framing) in a packet of its own.
    pub(crate) async fn send(&self, bytes: Vec<u8>) -> io::Result<()> {
        if bytes.len() > MAX_PACKET {
            return Err(io::Error::other("message exceeds the packet limit"));
        }
        self.fd
            .async_io(Interest::WRITABLE, |fd| {
                // SAFETY: a valid socket and a buffer of that length.
                let n = unsafe { libc::send(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            })
            .await
    }

    /// Sends `laneRequest`: a direct hook lane to `plugin`, please.
    pub(crate) async fn request_lane(&self, plugin: &str) -> io::Result<()> {
        let mut m = Builder::new_default();
        m.init_root::<frame_msg::Builder>().set_lane_request(plugin);
        let bytes = capnp::serialize::write_message_to_words(&m);
        self.send(bytes).await
    }
}

impl Drop for FrameClient {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
        self.done.cancel();
        self.streams.close();
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// One recvmsg: the bytes read and the descriptors that came with them
/// (close-on-exec). Fails on a truncated packet or control data.
fn recv_with_fds(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    // Room for MAX_FDS descriptors, aligned as cmsghdr wants.
    let mut cbuf = [MaybeUninit::<u64>::uninit(); 64];
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS * size_of::<RawFd>()) as u32) } as usize;
    assert!(space <= size_of::<[u64; 64]>());
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is plain data; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg points at live buffers of the lengths given.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel wrote into cbuf.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg) as *const RawFd;
                let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other(format!("more than {MAX_FDS} file descriptors in a packet")));
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        return Err(io::Error::other(format!("a packet larger than {MAX_PACKET} bytes")));
    }
    Ok((n as usize, fds))
}

async fn read_loop(fd: Arc<AsyncFd<OwnedFd>>, on_lane: OnLane, streams: Arc<Streams>, done: CancellationToken) {
    let mut buf = vec![0u8; MAX_PACKET];
    let mut opts = ReaderOptions::new();
    opts.traversal_limit_in_words(Some(MAX_PACKET));
    loop {
        let r = fd.async_io(Interest::READABLE, |f| recv_with_fds(f.as_raw_fd(), &mut buf)).await;
        let (n, mut fds) = match r {
            Ok((0, fds)) if fds.is_empty() => break, // the daemon went away
            Ok(r) => r,
            Err(_) => break,
        };
        // The packet's descriptors belong to its first message.
        let mut pkt = &buf[..n];
        let mut first = true;
        while !pkt.is_empty() {
            let Ok(msg) = capnp::serialize::read_message(&mut pkt, opts) else { break };
            let mine = if first { std::mem::take(&mut fds) } else { Vec::new() };
            first = false;
            let Ok(root) = msg.get_root::<frame_msg::Reader>() else { continue };
            if !matches!(root.which(), Ok(frame_msg::Lane(_))) {
                streams.handle(root, mine);
                continue;
            }
            if let Ok(frame_msg::Lane(Ok(g))) = root.which() {
                let plugin = g.get_plugin().ok().and_then(|t| t.to_string().ok()).unwrap_or_default();
                let why = g.get_error().ok().and_then(|t| t.to_string().ok()).unwrap_or_default();
                let mut mine = mine;
                let lane = if mine.len() == 1 {
                    Ok(mine.remove(0))
                } else if why.is_empty() {
                    Err(format!("a lane grant with {} descriptors", mine.len()))
                } else {
                    Err(why)
                };
                on_lane(plugin, lane);
            }
        }
    }
    done.cancel();
    streams.close();
}

/// Writes the streams' messages: as many as fit in a packet of 64 KiB
/// (the Go SDKs' batch), a message with a descriptor in one of its own.
async fn write_loop(
    fd: Arc<AsyncFd<OwnedFd>>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Out>,
    done: CancellationToken,
) {
    const BATCH: usize = 64 << 10;
    let mut next: Option<Out> = None;
    loop {
        let first = match next.take() {
            Some(m) => m,
            None => tokio::select! {
                m = rx.recv() => match m { Some(m) => m, None => break },
                _ = done.cancelled() => break,
            },
        };
        let mut pkt = first.bytes;
        let pass = first.fd;
        if pass.is_none() {
            while let Ok(m) = rx.try_recv() {
                if m.fd.is_some() || pkt.len() + m.bytes.len() > BATCH {
                    next = Some(m);
                    break;
                }
                pkt.extend_from_slice(&m.bytes);
            }
        }
        if pkt.len() > MAX_PACKET {
            break; // cannot happen: frames inline at most INLINE_MAX bytes
        }
        let raw = pass.as_ref().map(|f| f.as_raw_fd());
        let r = fd.async_io(Interest::WRITABLE, |s| send_with_fd(s.as_raw_fd(), &pkt, raw)).await;
        if r.is_err() {
            break; // the reader sees the socket end
        }
    }
}

/// One sendmsg of `buf`, with `pass` as SCM_RIGHTS if given.
fn send_with_fd(fd: RawFd, buf: &[u8], pass: Option<RawFd>) -> io::Result<()> {
    let mut cbuf = [0u64; 4];
    let mut iov = libc::iovec { iov_base: buf.as_ptr() as *mut _, iov_len: buf.len() };
    // SAFETY: msghdr is plain data; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(p) = pass {
        // SAFETY: cbuf has room for one descriptor's control message.
        unsafe {
            let space = libc::CMSG_SPACE(size_of::<RawFd>() as u32) as usize;
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut RawFd, p);
        }
    }
    // SAFETY: msg points at live buffers of the lengths given.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
