use std::fmt;
use std::io;
use std::path::PathBuf;

/// What can go wrong talking to the daemon. Hook failures are not errors:
/// they are in [`crate::DispatchResult`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The host socket could not be connected to.
    Connect {
        /// The socket's path.
        socket: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The daemon and this crate share no protocol version.
    VersionMismatch {
        /// The versions this side offered.
        ours: Vec<u16>,
        /// The versions the daemon speaks.
        theirs: Vec<u16>,
    },
    /// An RPC call failed (the daemon answered with an exception, refused
    /// the connection, or the connection broke under the call).
    Rpc(capnp::Error),
    /// The daemon's answer could not be read (bad UTF-8, an enum value or
    /// union member this crate does not know: is the daemon newer?).
    Protocol(String),
    /// The connection to the daemon has ended; carries the reason when known.
    Closed(Option<String>),
    /// Connecting and opening the host session took longer than
    /// [`crate::Options::connect_timeout`].
    Timeout,
    /// The daemon is not reachable now: the session lost it and is
    /// reconnecting (with backoff). Calls that need the daemon fail at once
    /// with this; [`crate::Session::dispatch`] answers by the hooks'
    /// failure policies instead.
    DaemonAway,
    /// The daemon is stopping (or upgrading in place) and did not start the
    /// call; it may be sent again to the next daemon.
    Stopping,
    /// A frame stream was refused or failed: the daemon's reason (e.g. a
    /// fail-closed stage that failed or missed its deadline, naming the
    /// plugin and stage), or a misuse (sending after `close_send`).
    Stream(String),
    /// The frame socket ended under a stream (the daemon went away, or cut
    /// the host off: then its goodbye says why): the stream's frames are
    /// lost; open a new stream once the session is connected again.
    StreamCut(Option<String>),
    /// A local system call failed (the frame socket, a shared memory pool).
    Io(io::Error),
}

impl Error {
    /// Whether the error means the connection to the daemon is gone (the
    /// session reconnects by itself), rather than a refused call.
    pub fn is_daemon_away(&self) -> bool {
        match self {
            Error::DaemonAway | Error::Closed(_) | Error::StreamCut(_) => true,
            Error::Rpc(e) => e.kind == capnp::ErrorKind::Disconnected,
            _ => false,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect { socket, source } if source.kind() == io::ErrorKind::PermissionDenied => write!(
                f,
                "dimplugd: host socket {}: permission denied: hosts must run as root, as the daemon's user or in the daemon's --host-group",
                socket.display()
            ),
            Error::Connect { socket, source } => write!(
                f,
                "connect to dimplugd's host socket at {}: {source} (is the daemon running? start it with: dimplugd serve)",
                socket.display()
            ),
            Error::VersionMismatch { ours, theirs } => write!(
                f,
                "host protocol version mismatch: the daemon speaks {} but this host speaks {}; upgrade whichever is older",
                fmt_versions(theirs),
                fmt_versions(ours)
            ),
            Error::Rpc(e) => write!(f, "dimplugd: {e}"),
            Error::Protocol(m) => write!(f, "dimplugd: unreadable answer: {m}"),
            Error::Closed(Some(why)) => write!(f, "dimplugd: connection closed: {why}"),
            Error::Closed(None) => write!(f, "dimplugd: connection closed"),
            Error::Timeout => write!(f, "dimplugd: timed out opening the host session"),
            Error::DaemonAway => write!(f, "dimplugd is not reachable (the session is reconnecting)"),
            Error::Stopping => write!(f, "dimplugd is stopping: the call was not started"),
            Error::Stream(why) => write!(f, "dimplugd: stream failed: {why}"),
            Error::StreamCut(Some(why)) => write!(f, "dimplugd closed the frame socket: {why}"),
            Error::StreamCut(None) => {
                write!(f, "dimplugd went away: the stream was cut off (open a new one once the daemon is back)")
            }
            Error::Io(e) => write!(f, "dimplugd: {e}"),
        }
    }
}

fn fmt_versions(v: &[u16]) -> String {
    let s: Vec<String> = v.iter().map(u16::to_string).collect();
    if s.is_empty() {
        "no version".into()
    } else {
        format!("version {}", s.join(", "))
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connect { source, .. } => Some(source),
            Error::Rpc(e) => Some(e),
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<capnp::Error> for Error {
    fn from(e: capnp::Error) -> Self {
        Error::Rpc(e)
    }
}

impl From<capnp::NotInSchema> for Error {
    fn from(e: capnp::NotInSchema) -> Self {
        Error::Protocol(format!("{e} (is the daemon newer than this host?)"))
    }
}

impl From<std::str::Utf8Error> for Error {
    fn from(e: std::str::Utf8Error) -> Self {
        Error::Protocol(format!("text is not UTF-8: {e}"))
    }
}
