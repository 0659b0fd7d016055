//! The HTTP exchange, route table and dispatch result in Rust form, and
//! their conversion to and from the wire (schema/http.capnp, host.capnp).

use std::time::Duration;

use crate::route::{method_matches, Route, RouteError};
use crate::schema::{host_capnp, http_capnp};
use crate::{Error, FailurePolicy, HookErrorKind, Phase, Result};

/// A request as the host received it (schema/http.capnp `HttpRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// Upper-case method: "GET", "POST", ...
    pub method: String,
    /// The route template that matched, in axum syntax, or empty.
    pub route: String,
    /// The concrete, unescaped path.
    pub path: String,
    /// The query without its "?", as the client sent it.
    pub raw_query: String,
    /// Every header line, in order; a multi-valued header appears once per value.
    pub headers: Vec<(String, String)>,
    /// The buffered body.
    pub body: Vec<u8>,
    /// The parameters `route` captured, in template order. The daemon
    /// fills them on dispatch; the session fills them (and `route`) itself
    /// on direct lanes, from the route table entry that matched.
    pub params: Vec<(String, String)>,
    /// The authenticated Dim user, if any. The host must take it from its
    /// own authentication, never from the request itself.
    pub user_id: Option<i64>,
    /// The client's address as the host saw it.
    pub remote_addr: String,
    /// An opaque id for correlating logs.
    pub request_id: String,
    /// When the host received the request (0: not said).
    pub received_at_unix_nano: i64,
}

impl Request {
    /// A request with a method and path and nothing else.
    pub fn new(method: impl Into<String>, path: impl Into<String>) -> Self {
        Request { method: method.into(), path: path.into(), ..Default::default() }
    }

    /// Sets the route template the request matched.
    pub fn with_route(mut self, route: impl Into<String>) -> Self {
        self.route = route.into();
        self
    }

    pub(crate) fn write(&self, mut b: http_capnp::http_request::Builder<'_>) {
        b.set_method(self.method.as_str());
        b.set_route(self.route.as_str());
        b.set_path(self.path.as_str());
        b.set_raw_query(self.raw_query.as_str());
        write_headers(b.reborrow().init_headers(len32(&self.headers)), &self.headers);
        b.set_body(&self.body);
        let mut ps = b.reborrow().init_params(len32(&self.params));
        for (i, (n, v)) in self.params.iter().enumerate() {
            let mut p = ps.reborrow().get(i as u32);
            p.set_name(n.as_str());
            p.set_value(v.as_str());
        }
        b.set_user_id(self.user_id.unwrap_or(0));
        b.set_authenticated(self.user_id.is_some());
        b.set_remote_addr(self.remote_addr.as_str());
        b.set_request_id(self.request_id.as_str());
        b.set_received_at_unix_nano(self.received_at_unix_nano);
    }
}

/// A response (schema/http.capnp `HttpResponse`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Every header line, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with a status and a body and no headers.
    pub fn new(status: u16, body: Vec<u8>) -> Self {
        Response { status, headers: Vec::new(), body }
    }

    /// The first value of a header, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub(crate) fn write(&self, mut b: http_capnp::http_response::Builder<'_>) {
        b.set_status(self.status);
        write_headers(b.reborrow().init_headers(len32(&self.headers)), &self.headers);
        b.set_body(&self.body);
    }

    pub(crate) fn read(r: http_capnp::http_response::Reader<'_>) -> Result<Self> {
        Ok(Response { status: r.get_status(), headers: read_headers(r.get_headers()?)?, body: r.get_body()?.to_vec() })
    }
}

/// The first value of a header in a header list, compared case-insensitively.
pub(crate) fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// What request-phase hooks change (schema/http.capnp `RequestMutation`):
/// `None` leaves that part as it was.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestMutation {
    /// The complete new header set.
    pub headers: Option<Vec<(String, String)>>,
    /// The new raw query.
    pub raw_query: Option<String>,
    /// The new body.
    pub body: Option<Vec<u8>>,
}

impl RequestMutation {
    pub(crate) fn read(r: http_capnp::request_mutation::Reader<'_>) -> Result<Self> {
        Ok(RequestMutation {
            headers: if r.get_replace_headers() { Some(read_headers(r.get_headers()?)?) } else { None },
            raw_query: if r.get_replace_query() { Some(r.get_raw_query()?.to_string()?) } else { None },
            body: if r.get_replace_body() { Some(r.get_body()?.to_vec()) } else { None },
        })
    }

    /// Applies the mutation to a request.
    pub fn apply(&self, req: &mut Request) {
        if let Some(h) = &self.headers {
            req.headers = h.clone();
        }
        if let Some(q) = &self.raw_query {
            req.raw_query = q.clone();
        }
        if let Some(b) = &self.body {
            req.body = b.clone();
        }
    }
}

/// What response-phase hooks change (schema/http.capnp `ResponseMutation`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseMutation {
    /// The new status, if changed.
    pub status: Option<u16>,
    /// The complete new header set.
    pub headers: Option<Vec<(String, String)>>,
    /// The new body.
    pub body: Option<Vec<u8>>,
}

impl ResponseMutation {
    pub(crate) fn read(r: http_capnp::response_mutation::Reader<'_>) -> Result<Self> {
        Ok(ResponseMutation {
            status: match r.get_status() {
                0 => None,
                s => Some(s),
            },
            headers: if r.get_replace_headers() { Some(read_headers(r.get_headers()?)?) } else { None },
            body: if r.get_replace_body() { Some(r.get_body()?.to_vec()) } else { None },
        })
    }

    /// Applies the mutation to a response.
    pub fn apply(&self, resp: &mut Response) {
        if let Some(s) = self.status {
            resp.status = s;
        }
        if let Some(h) = &self.headers {
            resp.headers = h.clone();
        }
        if let Some(b) = &self.body {
            resp.body = b.clone();
        }
    }
}

/// Why one plugin's hook had no effect (schema/http.capnp `HookError`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookError {
    /// The plugin.
    pub plugin: String,
    /// The hook.
    pub hook: String,
    /// What kind of failure.
    pub kind: HookErrorKind,
    /// For the host's logs.
    pub reason: String,
}

impl HookError {
    fn read(r: http_capnp::hook_error::Reader<'_>) -> Result<Self> {
        Ok(HookError {
            plugin: r.get_plugin()?.to_string()?,
            hook: r.get_hook()?.to_string()?,
            kind: r.get_kind()?,
            reason: r.get_reason()?.to_string()?,
        })
    }

    /// The status a host answers for a fail-closed failure: 503 when the
    /// plugin was unavailable or too slow, 502 otherwise.
    pub fn status(&self) -> u16 {
        match self.kind {
            HookErrorKind::Timeout | HookErrorKind::Unavailable => 503,
            _ => 502,
        }
    }
}

impl std::fmt::Display for HookError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "plugin {:?} hook {:?}: {:?}: {}", self.plugin, self.hook, self.kind, self.reason)
    }
}

/// What a dispatch decided (schema/host.capnp `DispatchResult.outcome`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No hook changed anything (or none matched).
    Continue,
    /// Request phase: apply this before calling the handler.
    MutateRequest(RequestMutation),
    /// Request phase: send this and skip the handler; route phase: the
    /// owning plugin's response.
    Respond(Response),
    /// Response phase: the combined effect of every hook.
    MutateResponse(ResponseMutation),
    /// A fail-closed hook failed: answer [`HookError::status`] naming the plugin.
    FailClosed(HookError),
}

/// The answer to a dispatch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DispatchResult {
    /// What to do.
    pub outcome: Outcome,
    /// Fail-open hooks that failed and were skipped, for the logs.
    pub skipped: Vec<HookError>,
    /// "plugin/hook" names of the hooks that changed something, in order.
    pub applied: Vec<String>,
}

impl DispatchResult {
    pub(crate) fn read(r: host_capnp::dispatch_result::Reader<'_>) -> Result<Self> {
        use host_capnp::dispatch_result::outcome::Which;
        let outcome = match r.get_outcome().which()? {
            Which::Continue(()) => Outcome::Continue,
            Which::MutateRequest(m) => Outcome::MutateRequest(RequestMutation::read(m?)?),
            Which::Respond(m) => Outcome::Respond(Response::read(m?)?),
            Which::MutateResponse(m) => Outcome::MutateResponse(ResponseMutation::read(m?)?),
            Which::FailClosed(m) => Outcome::FailClosed(HookError::read(m?)?),
        };
        let skipped = r.get_skipped()?.iter().map(HookError::read).collect::<Result<_>>()?;
        let applied = r.get_applied()?.iter().map(|t| Ok(t?.to_string()?)).collect::<Result<_>>()?;
        Ok(DispatchResult { outcome, skipped, applied })
    }

    /// The response a response-phase dispatch leaves: `resp` with the
    /// mutation applied (unchanged for any other outcome).
    pub fn apply_to_response(&self, mut resp: Response) -> Response {
        if let Outcome::MutateResponse(m) = &self.outcome {
            m.apply(&mut resp);
        }
        resp
    }
}

/// The daemon's route table (schema/host.capnp `RouteTable`): a request
/// matching no entry needs no dispatch at all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteTable {
    /// Increases whenever the set of active hooks changes.
    pub version: u64,
    /// The hooked routes.
    pub entries: Vec<RouteEntry>,
    /// The daemon's circuit-breaker settings, for direct calls.
    pub breaker_failures: u32,
    /// See `breaker_failures`.
    pub breaker_cooldown: Duration,
}

impl RouteTable {
    pub(crate) fn read(t: host_capnp::route_table::Reader<'_>) -> Result<Self> {
        let mut entries = Vec::new();
        for e in t.get_entries()?.iter() {
            let mut hooks = Vec::new();
            for h in e.get_hooks()?.iter() {
                hooks.push(RouteHook {
                    plugin: h.get_plugin()?.to_string()?,
                    hook: h.get_hook()?.to_string()?,
                    phase: h.get_phase()?,
                    priority: h.get_priority(),
                    deadline: Duration::from_micros(h.get_deadline_micros()),
                    failure_policy: h.get_failure_policy()?,
                });
            }
            let route = e.get_route()?.to_string()?;
            let parsed =
                Route::parse(&route).map_err(|err| Error::Protocol(format!("route table entry {route:?}: {err}")))?;
            entries.push(RouteEntry {
                method: e.get_method()?.to_string()?,
                route,
                phases: e.get_phases()?.iter().collect::<std::result::Result<_, _>>()?,
                owner: e.get_owner()?.to_string()?,
                hooks,
                parsed,
            });
        }
        Ok(RouteTable {
            version: t.get_version(),
            entries,
            breaker_failures: t.get_breaker_failures(),
            breaker_cooldown: Duration::from_micros(t.get_breaker_cooldown_micros()),
        })
    }

    /// The phases hooked for a request, in table order without repeats;
    /// empty when none is (as sdk-go/host's `RouteTable.Match`).
    pub fn matches(&self, method: &str, path: &str) -> Vec<Phase> {
        let mut out = Vec::new();
        for e in self.entries.iter().filter(|e| e.matches(method, path)) {
            for p in &e.phases {
                if !out.contains(p) {
                    out.push(*p);
                }
            }
        }
        out
    }

    /// The hooks of `phase` that a request matches, in table order.
    pub fn hooks<'a>(&'a self, phase: Phase, method: &'a str, path: &'a str) -> Vec<&'a RouteHook> {
        self.entries_for(method, path).flat_map(|e| e.hooks.iter().filter(move |h| h.phase == phase)).collect()
    }

    /// The entries a request matches.
    pub fn entries_for<'a>(&'a self, method: &'a str, path: &'a str) -> impl Iterator<Item = &'a RouteEntry> + 'a {
        self.entries.iter().filter(move |e| e.matches(method, path))
    }
}

/// One hooked method and route template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    /// Upper-case method, or "*" for any.
    pub method: String,
    /// The axum-style route template.
    pub route: String,
    /// The phases to dispatch for.
    pub phases: Vec<Phase>,
    /// The owning plugin of a route-phase entry.
    pub owner: String,
    /// The hooks behind the entry.
    pub hooks: Vec<RouteHook>,
    parsed: Route,
}

impl RouteEntry {
    /// An entry; fails when `route` is not a valid template.
    pub fn new(
        method: impl Into<String>,
        route: impl Into<String>,
        phases: Vec<Phase>,
        owner: impl Into<String>,
        hooks: Vec<RouteHook>,
    ) -> std::result::Result<Self, RouteError> {
        let route = route.into();
        let parsed = Route::parse(&route)?;
        Ok(RouteEntry { method: method.into(), route, phases, owner: owner.into(), hooks, parsed })
    }

    /// Whether a request's method and path match the entry
    /// ([`crate::method_matches`] and the parsed template).
    pub fn matches(&self, method: &str, path: &str) -> bool {
        self.params(method, path).is_some()
    }

    /// The parameters the entry's template captures from a matching
    /// request, or `None` when the request does not match.
    pub fn params(&self, method: &str, path: &str) -> Option<Vec<(String, String)>> {
        if !method_matches(&self.method, method) {
            return None;
        }
        self.parsed.matches(path)
    }

    /// The parsed route template.
    pub fn parsed_route(&self) -> &Route {
        &self.parsed
    }
}

/// One hook behind a route entry, with its contract.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteHook {
    /// The plugin.
    pub plugin: String,
    /// The hook's name in the plugin's manifest.
    pub hook: String,
    /// Its phase.
    pub phase: Phase,
    /// Lower runs first (request phase).
    pub priority: i32,
    /// The hook's deadline.
    pub deadline: Duration,
    /// What its failure does.
    pub failure_policy: FailurePolicy,
}

fn len32<T>(v: &[T]) -> u32 {
    u32::try_from(v.len()).expect("more than 2^32 entries")
}

fn write_headers(mut l: capnp::struct_list::Builder<'_, http_capnp::header::Owned>, hs: &[(String, String)]) {
    for (i, (n, v)) in hs.iter().enumerate() {
        let mut h = l.reborrow().get(i as u32);
        h.set_name(n.as_str());
        h.set_value(v.as_str());
    }
}

fn read_headers(l: capnp::struct_list::Reader<'_, http_capnp::header::Owned>) -> Result<Vec<(String, String)>> {
    l.iter().map(|h| Ok((h.get_name()?.to_string()?, h.get_value()?.to_string()?))).collect::<Result<_>>()
}

impl From<std::convert::Infallible> for Error {
    fn from(e: std::convert::Infallible) -> Self {
        match e {}
    }
}

/// A hook's failure policy applied to a failure, as the daemon does (and
/// sdk-go/host's `fail`): route hooks and fail-closed hooks fail the
/// request, fail-open hooks are skipped.
pub(crate) fn fail(h: &RouteHook, phase: Phase, e: HookError) -> DispatchResult {
    if h.failure_policy == FailurePolicy::FailClosed || phase == Phase::Route {
        return DispatchResult { outcome: Outcome::FailClosed(e), skipped: Vec::new(), applied: Vec::new() };
    }
    DispatchResult { outcome: Outcome::Continue, skipped: vec![e], applied: Vec::new() }
}
