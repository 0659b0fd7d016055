//! A tower [`Layer`] that applies dimplugd hooks to an HTTP service (an
//! axum `Router`, a hyper service), as sdk-go/host's `Middleware` does for
//! net/http.
//!
//! For a request the route table matches:
//!   1. the route owner answers (route phase): the plugin's response is sent
//!      and the service is not called;
//!   2. request hooks may answer (the service is not called) or change the
//!      request's headers, query and body;
//!   3. the service runs;
//!   4. response hooks may change the status, headers and body (bodies up to
//!      the limit are buffered; a larger one is sent unchanged, streaming,
//!      without response hooks);
//!   5. observers get a copy, off the request path, in the order the
//!      exchanges were served.
//!
//! A request matching no entry goes straight to the service: no copy, no
//! IPC. The answers are those of the Go middleware: 413 when a request body
//! on a hooked route exceeds the limit, 502 when a fail-closed hook failed,
//! 503 when it was unavailable or too slow (also while the daemon is away),
//! 503 when the daemon could not be asked at all.
//!
//! Credentials: plugins never see `Authorization`, `Cookie` or
//! `Proxy-Authorization` on a request, nor `Set-Cookie` on a response, and
//! cannot set them: a request hook's header set keeps the client's
//! credentials, and `Set-Cookie` from a plugin is dropped (the service's
//! own are kept).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use tokio::sync::mpsc;
use tower_layer::Layer;
use tower_service::Service;

use crate::{DispatchResult, HookError, Outcome, Phase, Request, Response, Session};

/// The error type of the bodies the layer passes on.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body of a [`DimplugdService`].
pub type LayerBody = UnsyncBoxBody<Bytes, BoxError>;

/// The request headers that carry a user's session.
pub const REQUEST_CREDENTIALS: &[&str] = &["authorization", "cookie", "proxy-authorization"];
/// The response headers that carry a user's session.
pub const RESPONSE_CREDENTIALS: &[&str] = &["set-cookie"];

/// The CSP a plugin's own pages get (sdk-go/wire.PageCSP): sandboxed, an
/// opaque origin with no cookies, storage or DOM of the host's.
const PAGE_CSP: &str = "sandbox allow-scripts allow-forms; frame-ancestors 'self'; base-uri 'none'; form-action 'self'";
/// Where plugins' own pages live (sdk-go/host.SettingsPathPrefix).
const PLUGIN_PATH_PREFIX: &str = "/api/v1/plugins/";

type PartsFn<T> = Arc<dyn Fn(&Parts) -> Option<T> + Send + Sync>;
type SkippedFn = Arc<dyn Fn(&HookError) + Send + Sync>;

/// Applies dimplugd hooks to the wrapped service (see the module
/// documentation).
#[derive(Clone)]
pub struct DimplugdLayer {
    session: Session,
    opts: Arc<LayerOptions>,
    observer: Arc<Observer>,
}

struct LayerOptions {
    max_body: usize,
    user: Option<PartsFn<i64>>,
    route: Option<PartsFn<String>>,
    remote_addr: Option<PartsFn<String>>,
    skipped: Option<SkippedFn>,
}

impl LayerOptions {
    fn log_skipped(&self, res: &DispatchResult) {
        if let Some(f) = &self.skipped {
            for e in &res.skipped {
                f(e);
            }
        }
    }
}

impl DimplugdLayer {
    /// A layer dispatching through `session`; it routes by the table the
    /// session keeps current.
    pub fn new(session: Session) -> Self {
        DimplugdLayer {
            session,
            opts: Arc::new(LayerOptions {
                max_body: 8 << 20,
                user: None,
                route: None,
                remote_addr: None,
                skipped: None,
            }),
            observer: Arc::new(Observer::default()),
        }
    }

    fn opts_mut(&mut self) -> &mut LayerOptions {
        Arc::get_mut(&mut self.opts).expect("configure the layer before cloning it")
    }

    /// The largest request or response body passed to hooks (default
    /// 8 MiB). A larger request body on a hooked route is refused with 413;
    /// a larger response body skips the response hooks and is sent
    /// unchanged, never truncated.
    pub fn max_body(mut self, n: usize) -> Self {
        self.opts_mut().max_body = n;
        self
    }

    /// Tells hooks who the request is authenticated as: the host's own
    /// authentication, never something the client claims.
    pub fn user(mut self, f: impl Fn(&Parts) -> Option<i64> + Send + Sync + 'static) -> Self {
        self.opts_mut().user = Some(Arc::new(f));
        self
    }

    /// Reports the host's own route template for a request, passed to
    /// hooks as [`Request::route`].
    pub fn route_template(mut self, f: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static) -> Self {
        self.opts_mut().route = Some(Arc::new(f));
        self
    }

    /// Reports the client's address (e.g. from axum's `ConnectInfo`).
    pub fn remote_addr(mut self, f: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static) -> Self {
        self.opts_mut().remote_addr = Some(Arc::new(f));
        self
    }

    /// Receives the fail-open hook failures that were skipped (for the
    /// host's log).
    pub fn on_skipped(mut self, f: impl Fn(&HookError) + Send + Sync + 'static) -> Self {
        self.opts_mut().skipped = Some(Arc::new(f));
        self
    }

    /// Waits until the observers have been handed every exchange already
    /// served (at most `limit`); returns whether they were. Call it before
    /// the host exits so that no observation is lost.
    pub async fn flush_observers(&self, limit: Duration) -> bool {
        let t = std::time::Instant::now();
        while self.observer.pending.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            if t.elapsed() >= limit {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }
}

impl<S> Layer<S> for DimplugdLayer {
    type Service = DimplugdService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        DimplugdService {
            inner,
            session: self.session.clone(),
            opts: self.opts.clone(),
            observer: self.observer.clone(),
        }
    }
}

/// The service [`DimplugdLayer`] makes.
#[derive(Clone)]
pub struct DimplugdService<S> {
    inner: S,
    session: Session,
    opts: Arc<LayerOptions>,
    observer: Arc<Observer>,
}

impl<S, ReqB, ResB> Service<http::Request<ReqB>> for DimplugdService<S>
where
    S: Service<http::Request<ReqB>, Response = http::Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    ReqB::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = http::Response<LayerBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        // The service that was polled ready serves this request.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let (session, opts, observer) = (self.session.clone(), self.opts.clone(), self.observer.clone());
        Box::pin(serve(inner, session, opts, observer, req))
    }
}

async fn serve<S, ReqB, ResB>(
    mut inner: S,
    session: Session,
    opts: Arc<LayerOptions>,
    observer: Arc<Observer>,
    req: http::Request<ReqB>,
) -> Result<http::Response<LayerBody>, S::Error>
where
    S: Service<http::Request<ReqB>, Response = http::Response<ResB>>,
    ReqB: Body<Data = Bytes> + From<Bytes>,
    ReqB::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    let phases = match session.route_table() {
        Some(t) => t.matches(req.method().as_str(), req.uri().path()),
        None => Vec::new(),
    };
    if phases.is_empty() {
        return Ok(inner.call(req).await?.map(boxed));
    }
    let (mut parts, body) = req.into_parts();
    let body = match Limited::new(body, opts.max_body).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let msg = if e.is::<http_body_util::LengthLimitError>() {
                format!("request body larger than {} bytes on a hooked route", opts.max_body)
            } else {
                format!("read request body: {e}")
            };
            return Ok(plain(413, &msg));
        }
    };
    let mut wreq = wire_request(&parts, &opts, &body);

    // A route owner answers first; then request hooks may answer or change
    // the request.
    for phase in [Phase::Route, Phase::Request] {
        if !phases.contains(&phase) {
            continue;
        }
        let res = match session.dispatch(phase, &wreq, None).await {
            Ok(r) => r,
            Err(e) => return Ok(unavailable(&e)),
        };
        opts.log_skipped(&res);
        match res.outcome {
            Outcome::Respond(r) => {
                let r = plugin_answer(parts.uri.path(), r);
                observer.observe(&session, &phases, &wreq, &r);
                return Ok(to_http(&r));
            }
            Outcome::FailClosed(e) => return Ok(failure_response(&e)),
            Outcome::MutateRequest(m) => {
                m.apply(&mut wreq);
                wreq.headers = without(&wreq.headers, REQUEST_CREDENTIALS);
                if m.headers.is_some() {
                    // The user's credentials stay as the client sent them.
                    let mut h = to_header_map(&wreq.headers);
                    for name in REQUEST_CREDENTIALS {
                        for v in parts.headers.get_all(*name) {
                            h.append(HeaderName::from_static(name), v.clone());
                        }
                    }
                    parts.headers = h;
                }
                if let Some(q) = &m.raw_query {
                    set_query(&mut parts, q);
                }
            }
            _ => {}
        }
    }
    if parts.headers.contains_key(http::header::CONTENT_LENGTH) || !wreq.body.is_empty() {
        parts.headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(wreq.body.len()));
        parts.headers.remove(http::header::TRANSFER_ENCODING);
    }
    let req = http::Request::from_parts(parts, ReqB::from(Bytes::from(wreq.body.clone())));

    if !phases.contains(&Phase::Response) && !phases.contains(&Phase::Observe) {
        return Ok(inner.call(req).await?.map(boxed));
    }
    let (rparts, rbody) = inner.call(req).await?.into_parts();
    let (prefix, rest) = match buffer(boxed(rbody), opts.max_body).await {
        Ok(b) => b,
        Err(e) => return Ok(plain(502, &format!("read the response body: {e}"))),
    };
    if let Some(rest) = rest {
        // Too large for hooks: sent unchanged, streaming.
        let body = Prefixed { prefix: Some(prefix), rest }.boxed_unsync();
        return Ok(http::Response::from_parts(rparts, body));
    }
    // Hooks see the response without the service's cookies, and cannot set any.
    let mut resp = Response {
        status: rparts.status.as_u16(),
        headers: without(&from_header_map(&rparts.headers), RESPONSE_CREDENTIALS),
        body: prefix.to_vec(),
    };
    if phases.contains(&Phase::Response) {
        let res = match session.dispatch(Phase::Response, &wreq, Some(&resp)).await {
            Ok(r) => r,
            Err(e) => return Ok(unavailable(&e)),
        };
        opts.log_skipped(&res);
        match &res.outcome {
            Outcome::FailClosed(e) => return Ok(failure_response(e)),
            Outcome::MutateResponse(m) => m.apply(&mut resp),
            _ => {}
        }
    }
    let mut out = resp.clone();
    out.headers = without(&resp.headers, RESPONSE_CREDENTIALS);
    let mut h = to_http(&out);
    for v in rparts.headers.get_all(http::header::SET_COOKIE) {
        h.headers_mut().append(http::header::SET_COOKIE, v.clone());
    }
    observer.observe(&session, &phases, &wreq, &resp);
    Ok(h)
}

/// The request as hooks see it: without credentials, with the body read.
fn wire_request(parts: &Parts, opts: &LayerOptions, body: &Bytes) -> Request {
    let headers = without(&from_header_map(&parts.headers), REQUEST_CREDENTIALS);
    Request {
        method: parts.method.as_str().to_string(),
        route: opts.route.as_ref().and_then(|f| f(parts)).unwrap_or_default(),
        path: parts.uri.path().to_string(),
        raw_query: parts.uri.query().unwrap_or("").to_string(),
        request_id: parts.headers.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string(),
        headers,
        body: body.to_vec(),
        params: Vec::new(),
        user_id: opts.user.as_ref().and_then(|f| f(parts)),
        remote_addr: opts.remote_addr.as_ref().and_then(|f| f(parts)).unwrap_or_default(),
        received_at_unix_nano: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64),
    }
}

/// Reads a body up to `max` bytes: `(all of it, None)`, or, when it is
/// longer, `(what was read, Some(the rest))`.
async fn buffer<B>(mut body: B, max: usize) -> Result<(Bytes, Option<B>), BoxError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut buf = bytes::BytesMut::new();
    while let Some(f) = body.frame().await {
        let f = f.map_err(Into::into)?;
        if let Ok(data) = f.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() > max {
                return Ok((buf.freeze(), Some(body)));
            }
        }
        // Trailers are dropped: hooks see no trailers.
    }
    Ok((buf.freeze(), None))
}

/// A body that was partly read: what was read, then the rest.
struct Prefixed<B> {
    prefix: Option<Bytes>,
    rest: B,
}

impl<B: Body<Data = Bytes> + Unpin> Body for Prefixed<B> {
    type Data = Bytes;
    type Error = B::Error;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if let Some(p) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }
    fn size_hint(&self) -> SizeHint {
        let mut h = self.rest.size_hint();
        let n = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        h.set_lower(h.lower() + n);
        if let Some(u) = h.upper() {
            h.set_upper(u + n);
        }
        h
    }
}

fn boxed<B>(b: B) -> LayerBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed_unsync()
}

fn full(b: impl Into<Bytes>) -> LayerBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed_unsync()
}

fn plain(status: u16, msg: &str) -> http::Response<LayerBody> {
    let mut r = http::Response::new(full(format!("{msg}\n")));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// The daemon could not be asked at all.
fn unavailable(e: &crate::Error) -> http::Response<LayerBody> {
    plain(503, &format!("plugin daemon unavailable: {e}"))
}

/// The answer to a fail-closed failure: 503 when the plugin was
/// unavailable or too slow, 502 otherwise, naming the plugin
/// (sdk-go/host: Result.FailureResponse).
pub fn failure_response(e: &HookError) -> http::Response<LayerBody> {
    let mut r = plain(e.status(), &format!("request refused: plugin {:?} (hook {:?}) {}", e.plugin, e.hook, e.reason));
    if let Ok(v) = HeaderValue::from_str(&e.plugin) {
        r.headers_mut().insert("x-dimplugd-failed-plugin", v);
    }
    r
}

/// A plugin's own answer as the client gets it: without cookies, and under
/// the plugins' namespace with the page CSP whatever the plugin said.
fn plugin_answer(path: &str, mut r: Response) -> Response {
    r.headers = without(&r.headers, RESPONSE_CREDENTIALS);
    if path.strip_prefix(PLUGIN_PATH_PREFIX).is_some_and(|rest| rest.contains('/')) {
        r.headers.retain(|(n, _)| !n.eq_ignore_ascii_case("content-security-policy"));
        r.headers.push(("Content-Security-Policy".into(), PAGE_CSP.into()));
    }
    r
}

fn to_http(r: &Response) -> http::Response<LayerBody> {
    let mut h = http::Response::new(full(r.body.clone()));
    *h.status_mut() = http::StatusCode::from_u16(if r.status == 0 { 200 } else { r.status })
        .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    *h.headers_mut() = to_header_map(&r.headers);
    h.headers_mut().insert(http::header::CONTENT_LENGTH, HeaderValue::from(r.body.len()));
    h.headers_mut().remove(http::header::TRANSFER_ENCODING);
    h
}

/// A header list without the named headers (names compared
/// case-insensitively).
pub fn without(h: &[(String, String)], names: &[&str]) -> Vec<(String, String)> {
    h.iter().filter(|(n, _)| !names.iter().any(|x| n.eq_ignore_ascii_case(x))).cloned().collect()
}

fn from_header_map(h: &HeaderMap) -> Vec<(String, String)> {
    h.iter().map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect()
}

/// Headers from a plugin; lines that are not valid HTTP are dropped.
fn to_header_map(h: &[(String, String)]) -> HeaderMap {
    let mut m = HeaderMap::new();
    for (n, v) in h {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n.as_bytes()), HeaderValue::from_str(v)) {
            m.append(n, v);
        }
    }
    m
}

fn set_query(parts: &mut Parts, q: &str) {
    let pq = if q.is_empty() { parts.uri.path().to_string() } else { format!("{}?{q}", parts.uri.path()) };
    let mut up = parts.uri.clone().into_parts();
    if let Ok(pq) = pq.parse() {
        up.path_and_query = Some(pq);
        if let Ok(u) = http::Uri::from_parts(up) {
            parts.uri = u;
        }
    }
}

/// Observe dispatches, sent one after another in the order the exchanges
/// were served, by one task (each bounded by 10 s): with the daemon's
/// per-plugin queues, each plugin observes the exchanges in that order.
#[derive(Default)]
struct Observer {
    tx: OnceLock<mpsc::UnboundedSender<(Request, Response)>>,
    pending: std::sync::atomic::AtomicUsize,
}

impl Observer {
    fn observe(self: &Arc<Self>, session: &Session, phases: &[Phase], req: &Request, resp: &Response) {
        if !phases.contains(&Phase::Observe) {
            return;
        }
        let tx = self.tx.get_or_init(|| {
            let (tx, mut rx) = mpsc::unbounded_channel::<(Request, Response)>();
            let (session, me) = (session.clone(), Arc::downgrade(self));
            tokio::spawn(async move {
                while let Some((req, resp)) = rx.recv().await {
                    let d = session.dispatch(Phase::Observe, &req, Some(&resp));
                    let _: Option<crate::Result<DispatchResult>> =
                        tokio::time::timeout(Duration::from_secs(10), d).await.ok();
                    if let Some(me) = me.upgrade() {
                        me.pending.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            });
            tx
        });
        self.pending.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if tx.send((req.clone(), resp.clone())).is_err() {
            self.pending.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_stripped_and_plugin_pages_sandboxed() {
        let h = vec![
            ("Authorization".to_string(), "Bearer x".to_string()),
            ("cookie".into(), "a=b".into()),
            ("Proxy-Authorization".into(), "y".into()),
            ("Accept".into(), "*/*".into()),
        ];
        assert_eq!(without(&h, REQUEST_CREDENTIALS), vec![("Accept".to_string(), "*/*".to_string())]);
        let r = Response {
            status: 200,
            headers: vec![("Set-Cookie".into(), "s=1".into()), ("Content-Security-Policy".into(), "none".into())],
            body: Vec::new(),
        };
        let a = plugin_answer("/api/v1/plugins/media-badge/views", r.clone());
        assert_eq!(a.headers, vec![("Content-Security-Policy".to_string(), PAGE_CSP.to_string())]);
        let a = plugin_answer("/api/v1/media/1", r);
        assert_eq!(a.headers, vec![("Content-Security-Policy".to_string(), "none".to_string())]);
    }

    #[test]
    fn failure_responses_name_the_plugin() {
        let mut e = HookError {
            plugin: "parental-controls".into(),
            hook: "guard-media".into(),
            kind: crate::HookErrorKind::Failed,
            reason: "failed on GET /x: boom".into(),
        };
        let r = failure_response(&e);
        assert_eq!(r.status(), 502);
        assert_eq!(r.headers()["x-dimplugd-failed-plugin"], "parental-controls");
        e.kind = crate::HookErrorKind::Timeout;
        assert_eq!(failure_response(&e).status(), 503);
        e.kind = crate::HookErrorKind::Unavailable;
        assert_eq!(failure_response(&e).status(), 503);
    }
}
