//! Direct hook lanes, as sdk-go/host/direct.go.
//!
//! A hooked request normally crosses two connections: host → daemon →
//! plugin. When a phase of a request has exactly one hook, the session
//! calls that plugin itself over a direct lane the daemon set up between
//! the two (a LaneGrant on the frame socket, schema/stream.capnp): one round
//! trip instead of two. The session then applies what the daemon would —
//! the hook's deadline (sending `cancel` when it passes), its failure
//! policy, a circuit breaker with the daemon's settings, the rules of the
//! phase — from the contract the route table carries, fills the request's
//! `route` and `params` itself, and reports the calls to the daemon every
//! second (HookStats). Everything else (several hooks in a phase,
//! observers, a plugin without a lane, a lane that broke) goes through the
//! daemon.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capnp::message::Builder;

use crate::lane::{LaneClient, LaneError};
use crate::route::method_matches;
use crate::schema::{http_capnp, lane_capnp::lane_frame, stream_capnp::frame_msg};
use crate::session::Inner;
use crate::types::fail;
use crate::{
    DispatchResult, HookError, HookErrorKind, Outcome, Phase, Request, RequestMutation, Response, ResponseMutation,
    RouteHook, RouteTable,
};

/// How often a session tells the daemon what its direct calls added up to
/// (sdk-go/host: statsEvery).
pub(crate) const STATS_EVERY: Duration = Duration::from_secs(1);
/// How long a session waits before asking again for a lane the daemon
/// refused, or that it has not granted yet (sdk-go/host: retryLane).
const RETRY_LANE: Duration = Duration::from_secs(1);

/// The latency histogram's bucket bounds (sdk-go/wire.LatencyBuckets), in
/// microseconds; a last count holds slower calls.
const LATENCY_BUCKETS_MICROS: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];
const NUM_LATENCY_COUNTS: usize = LATENCY_BUCKETS_MICROS.len() + 1;

/// The circuit breaker of one hook (sdk-go/wire.Breaker): after `threshold`
/// consecutive failures (timeouts, errors, rejected results) it opens:
/// calls are answered by the hook's failure policy at once, for a cool-down
/// that doubles on every failed probe (up to 32 times). When the cool-down
/// ends one call goes through as a probe; its success closes the circuit.
/// Unavailability (the plugin not running, the lane gone) is not counted.
pub(crate) struct Breaker {
    threshold: u32,
    min_cooldown: Duration,
    max_cooldown: Duration,
    st: Mutex<BreakerState>,
}

#[derive(Default)]
struct BreakerState {
    calls: u64,
    failures: u64,
    consecutive: u32,
    cooldown: Duration,
    open_until: Option<Instant>,
    probing: bool,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker { threshold, min_cooldown: cooldown, max_cooldown: cooldown * 32, st: Mutex::default() }
    }

    /// Whether a call may go through now; if not, why.
    pub(crate) fn allow(&self, now: Instant) -> Result<(), String> {
        let mut b = self.st.lock().unwrap();
        let Some(until) = b.open_until else { return Ok(()) };
        if now < until {
            return Err(format!(
                "is not being called: its circuit breaker opened after {} consecutive failures (next probe in {:?})",
                b.consecutive,
                Duration::from_millis((until - now).as_millis() as u64)
            ));
        }
        if b.probing {
            return Err("is not being called: its circuit breaker is probing it with another request".into());
        }
        b.probing = true;
        Ok(())
    }

    /// Counts the outcome of a call that `allow` let through.
    pub(crate) fn record(&self, ok: bool, now: Instant) {
        let mut b = self.st.lock().unwrap();
        b.calls += 1;
        b.probing = false;
        if ok {
            b.consecutive = 0;
            b.cooldown = Duration::ZERO;
            b.open_until = None;
            return;
        }
        b.failures += 1;
        b.consecutive += 1;
        if b.consecutive >= self.threshold {
            if b.cooldown.is_zero() {
                b.cooldown = self.min_cooldown;
            } else if b.cooldown < self.max_cooldown {
                b.cooldown *= 2;
            }
            b.open_until = Some(now + b.cooldown);
        }
    }

    /// Undoes `allow` for a call that never reached the plugin.
    pub(crate) fn release(&self) {
        self.st.lock().unwrap().probing = false;
    }

    /// Calls and failures counted.
    pub(crate) fn stats(&self) -> (u64, u64) {
        let b = self.st.lock().unwrap();
        (b.calls, b.failures)
    }
}

/// What the daemon hears of a hook's direct calls besides their number and
/// failures, and what was already reported.
#[derive(Default)]
pub(crate) struct DirectStats {
    timeouts: AtomicU64,
    rejected: AtomicU64,
    breaker_open: AtomicU64,
    latency: Mutex<Latency>,
    sent: Mutex<(u64, u64, u64, Latency)>,
}

#[derive(Clone, Copy, Default)]
struct Latency {
    counts: [u64; NUM_LATENCY_COUNTS],
    sum: Duration,
}

impl DirectStats {
    fn observe(&self, d: Duration) {
        // Go compares durations (d <= bound): a call of 100.5 µs is in the
        // 250 µs bucket, so compare in nanoseconds.
        let nanos = d.as_nanos();
        let i = LATENCY_BUCKETS_MICROS.iter().position(|b| nanos <= u128::from(*b) * 1000).unwrap_or(16);
        let mut l = self.latency.lock().unwrap();
        l.counts[i] += 1;
        l.sum += d;
    }
}

/// The session's lane to one plugin, or the memory of having asked for one.
#[derive(Default)]
pub(crate) struct DirectLane {
    lane: Option<LaneClient>,
    breakers: HashMap<String, Arc<Breaker>>,
    reported: HashMap<String, (u64, u64)>,
    stats: HashMap<String, Arc<DirectStats>>,
    asked_at: Option<Instant>,
}

/// One hook's direct calls as the session counted them (see
/// [`crate::Session::direct_stats`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirectHookStats {
    /// The plugin.
    pub plugin: String,
    /// The hook.
    pub hook: String,
    /// Calls made on the direct lane (answered, failed or timed out).
    pub calls: u64,
    /// Of those, the failures the circuit breaker counts.
    pub failures: u64,
    /// Of the failures, deadline misses.
    pub timeouts: u64,
    /// Of the failures, answers the phase does not allow.
    pub rejected: u64,
    /// Calls answered by the failure policy because the breaker was open.
    pub breaker_open: u64,
}

/// What a hook answered (sdk-go/wire.HookAnswer).
#[derive(Debug)]
enum HookAnswer {
    Continue,
    MutateRequest(RequestMutation),
    Respond(Response),
    MutateResponse(ResponseMutation),
}

impl Inner {
    /// Runs a phase's only hook over a direct lane; `None` when the request
    /// must go through the daemon.
    pub(crate) async fn dispatch_direct(
        self: &Arc<Self>,
        phase: Phase,
        req: &Request,
        resp: Option<&Response>,
    ) -> Option<DispatchResult> {
        if !self.opts.direct_lanes || phase == Phase::Observe {
            return None;
        }
        let t = self.route_table()?;
        let mut found = None;
        for e in &t.entries {
            if !method_matches(&e.method, &req.method) {
                continue;
            }
            for h in e.hooks.iter().filter(|h| h.phase == phase) {
                if e.parsed_route().matches(&req.path).is_none() {
                    break;
                }
                if found.is_some() {
                    return None; // several hooks: the daemon orders them
                }
                found = Some((h, e));
            }
        }
        let (hook, entry) = found?;
        let (lane, br, st) = self.direct_lane_for(hook, &t)?;
        let mut hreq = req.clone();
        hreq.route = entry.route.clone();
        hreq.params = entry.parsed_route().matches(&req.path).unwrap_or_default();
        let place = format!("on {} {}", req.method, entry.route);
        if let Err(why) = br.allow(Instant::now()) {
            st.breaker_open.fetch_add(1, Ordering::Relaxed);
            let e = HookError {
                plugin: hook.plugin.clone(),
                hook: hook.hook.clone(),
                kind: HookErrorKind::Unavailable,
                reason: format!("{why} {place}"),
            };
            return Some(fail(hook, phase, e));
        }
        let began = Instant::now();
        // If the caller drops this future mid-call (its request was
        // cancelled), the call never counts: undo allow (Go: a cancelled
        // context is "unavailable", and release).
        let mut guard = ReleaseOnDrop(Some(&br));
        let res = call_hook(&lane, hook, phase, &hreq, resp, &place).await;
        guard.0 = None;
        if !matches!(&res, Err(e) if e.kind == HookErrorKind::Unavailable) {
            st.observe(began.elapsed()); // the calls the breaker counts below
        }
        match res {
            Err(herr) => {
                if lane.is_done() {
                    // The lane closed (the instance went away) or broke:
                    // the next call asks for a new one, going through the
                    // daemon meanwhile.
                    self.drop_lane(&hook.plugin, &lane);
                }
                if herr.kind == HookErrorKind::Unavailable {
                    // The plugin went away: the daemon knows what to say.
                    br.release();
                    return None;
                }
                match herr.kind {
                    HookErrorKind::Timeout => st.timeouts.fetch_add(1, Ordering::Relaxed),
                    HookErrorKind::Rejected => st.rejected.fetch_add(1, Ordering::Relaxed),
                    _ => 0,
                };
                br.record(false, Instant::now());
                Some(fail(hook, phase, herr))
            }
            Ok(a) => {
                br.record(true, Instant::now());
                Some(result_of(hook, a))
            }
        }
    }

    /// The session's lane to the hook's plugin, with the hook's breaker and
    /// stats; asks the daemon for a lane (in the background) when there is
    /// none yet.
    fn direct_lane_for(
        self: &Arc<Self>,
        hook: &RouteHook,
        t: &RouteTable,
    ) -> Option<(LaneClient, Arc<Breaker>, Arc<DirectStats>)> {
        let mut lanes = self.direct.lock().unwrap();
        let dl = lanes.entry(hook.plugin.clone()).or_default();
        if dl.lane.as_ref().is_some_and(LaneClient::is_done) {
            dl.lane = None; // its instance ended: ask again at once
            dl.asked_at = None;
        }
        let Some(lane) = dl.lane.clone() else {
            if dl.asked_at.is_none_or(|at| at.elapsed() > RETRY_LANE) {
                dl.asked_at = Some(Instant::now());
                self.ask_lane(hook.plugin.clone());
            }
            return None;
        };
        let br = dl
            .breakers
            .entry(hook.hook.clone())
            .or_insert_with(|| {
                let (mut failures, mut cooldown) = (t.breaker_failures, t.breaker_cooldown);
                if failures == 0 || cooldown.is_zero() {
                    (failures, cooldown) = (5, Duration::from_secs(1));
                }
                Arc::new(Breaker::new(failures, cooldown))
            })
            .clone();
        let st = dl.stats.entry(hook.hook.clone()).or_default().clone();
        Some((lane, br, st))
    }

    /// Asks the daemon for a lane to `plugin` on the frame socket (opening
    /// it if need be), and starts the stats reporter.
    fn ask_lane(self: &Arc<Self>, plugin: String) {
        let inner = self.clone();
        self.rt.spawn(async move {
            let Some(fc) = inner.frame_client().await else { return };
            inner.start_reporter();
            let _ = fc.request_lane(&plugin).await;
        });
    }

    /// Takes a lane the daemon set up (or its refusal: asked again later).
    pub(crate) fn lane_granted(&self, plugin: String, lane: Result<OwnedFd, String>) {
        let Ok(fd) = lane else { return };
        let std = std::os::unix::net::UnixStream::from(fd);
        if std.set_nonblocking(true).is_err() {
            return;
        }
        let Ok(stream) = tokio::net::UnixStream::from_std(std) else { return };
        let l = LaneClient::new(stream, self.opts.traversal_limit_words);
        let old = {
            let mut lanes = self.direct.lock().unwrap();
            match lanes.get_mut(&plugin) {
                Some(dl) if !self.stop.is_cancelled() => dl.lane.replace(l.clone()),
                _ => Some(l.clone()),
            }
        };
        if old.as_ref().is_some_and(|o| o.same(&l)) {
            l.close(); // not taken
            return;
        }
        self.lane_grants.fetch_add(1, Ordering::Relaxed);
        if let Some(o) = old {
            o.close();
        }
    }

    /// Forgets a lane that broke, so that the next request asks again.
    fn drop_lane(&self, plugin: &str, l: &LaneClient) {
        let mut lanes = self.direct.lock().unwrap();
        if let Some(dl) = lanes.get_mut(plugin) {
            if dl.lane.as_ref().is_some_and(|x| x.same(l)) {
                dl.lane = None;
                dl.asked_at = None;
            }
        }
        drop(lanes);
        l.close();
    }

    /// Ends every direct lane.
    pub(crate) fn close_lanes(&self) {
        let mut lanes = self.direct.lock().unwrap();
        for dl in lanes.values_mut() {
            if let Some(l) = dl.lane.take() {
                l.close();
            }
        }
    }

    fn start_reporter(self: &Arc<Self>) {
        if self.reporter.swap(true, Ordering::SeqCst) {
            return;
        }
        let inner = Arc::downgrade(self);
        let stop = self.stop.clone();
        self.rt.spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(STATS_EVERY) => {}
                    _ = stop.cancelled() => return,
                }
                let Some(inner) = inner.upgrade() else { return };
                inner.report_stats().await;
            }
        });
    }

    /// Sends the daemon the calls made on direct lanes since the last
    /// report (HookStats on the frame socket), so that its metrics and
    /// `dimplugctl inspect` count them. Nothing is marked reported without
    /// a frame socket to send on.
    pub(crate) async fn report_stats(&self) {
        let Some(fc) = self.frames.lock().await.clone().filter(|fc| !fc.is_done()) else { return };
        let mut msgs = Vec::new();
        {
            let mut lanes = self.direct.lock().unwrap();
            for (plugin, dl) in lanes.iter_mut() {
                for (hook, br) in &dl.breakers {
                    let (calls, failures) = br.stats();
                    let was = dl.reported.get(hook).copied().unwrap_or_default();
                    let (dc, df) = (calls - was.0, failures - was.1);
                    let (mut dt, mut dr, mut db, mut dl_) = (0, 0, 0, Latency::default());
                    if let Some(st) = dl.stats.get(hook) {
                        let (t, r, b) = (
                            st.timeouts.load(Ordering::Relaxed),
                            st.rejected.load(Ordering::Relaxed),
                            st.breaker_open.load(Ordering::Relaxed),
                        );
                        let l = *st.latency.lock().unwrap();
                        let mut sent = st.sent.lock().unwrap();
                        (dt, dr, db) = (t - sent.0, r - sent.1, b - sent.2);
                        for i in 0..NUM_LATENCY_COUNTS {
                            dl_.counts[i] = l.counts[i] - sent.3.counts[i];
                        }
                        dl_.sum = l.sum.saturating_sub(sent.3.sum);
                        *sent = (t, r, b, l);
                    }
                    let lat_n: u64 = dl_.counts.iter().sum();
                    if dc == 0 && df == 0 && db == 0 && lat_n == 0 {
                        continue;
                    }
                    dl.reported.insert(hook.clone(), (calls, failures));
                    let mut m = Builder::new_default();
                    {
                        let mut hs = m.init_root::<frame_msg::Builder>().init_hook_stats();
                        hs.set_plugin(plugin.as_str());
                        hs.set_hook(hook.as_str());
                        hs.set_calls(dc);
                        hs.set_failures(df);
                        hs.set_timeouts(dt);
                        hs.set_rejected(dr);
                        hs.set_breaker_open(db);
                        let mut l = hs.reborrow().init_latency_counts(NUM_LATENCY_COUNTS as u32);
                        for (i, n) in dl_.counts.iter().enumerate() {
                            l.set(i as u32, *n);
                        }
                        hs.set_latency_sum_micros(dl_.sum.as_micros() as u64);
                    }
                    msgs.push(capnp::serialize::write_message_to_words(&m));
                }
            }
        }
        for m in msgs {
            let _ = fc.send(m).await;
        }
    }

    /// The per-hook counts of direct calls.
    pub(crate) fn direct_stats(&self) -> Vec<DirectHookStats> {
        let lanes = self.direct.lock().unwrap();
        let mut out = Vec::new();
        for (plugin, dl) in lanes.iter() {
            for (hook, br) in &dl.breakers {
                let (calls, failures) = br.stats();
                let st = dl.stats.get(hook);
                let ld = |f: fn(&DirectStats) -> &AtomicU64| st.map_or(0, |s| f(s).load(Ordering::Relaxed));
                out.push(DirectHookStats {
                    plugin: plugin.clone(),
                    hook: hook.clone(),
                    calls,
                    failures,
                    timeouts: ld(|s| &s.timeouts),
                    rejected: ld(|s| &s.rejected),
                    breaker_open: ld(|s| &s.breaker_open),
                });
            }
        }
        out.sort_by(|a, b| (&a.plugin, &a.hook).cmp(&(&b.plugin, &b.hook)));
        out
    }

    /// Whether the session holds a live direct lane to `plugin`.
    pub(crate) fn has_direct_lane(&self, plugin: &str) -> bool {
        self.direct.lock().unwrap().get(plugin).and_then(|dl| dl.lane.as_ref()).is_some_and(|l| !l.is_done())
    }
}

/// Releases a breaker's allow when dropped armed.
struct ReleaseOnDrop<'a>(Option<&'a Breaker>);

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.0 {
            b.release();
        }
    }
}

/// What the daemon would have answered for a phase whose only hook
/// answered `a`.
fn result_of(hook: &RouteHook, a: HookAnswer) -> DispatchResult {
    let outcome = match a {
        HookAnswer::Continue => Outcome::Continue,
        HookAnswer::MutateRequest(m) => Outcome::MutateRequest(m),
        HookAnswer::Respond(r) => Outcome::Respond(r),
        HookAnswer::MutateResponse(m) => Outcome::MutateResponse(m),
    };
    let applied =
        if outcome == Outcome::Continue { Vec::new() } else { vec![format!("{}/{}", hook.plugin, hook.hook)] };
    DispatchResult { outcome, skipped: Vec::new(), applied }
}

/// Calls one hook on a lane with its deadline (sdk-go/wire.CallHook): past
/// the deadline the call is given up (a `cancel` frame is sent) and fails
/// as a timeout.
async fn call_hook(
    lane: &LaneClient,
    hook: &RouteHook,
    phase: Phase,
    req: &Request,
    resp: Option<&Response>,
    place: &str,
) -> Result<HookAnswer, HookError> {
    let err = |kind, reason: String| HookError { plugin: hook.plugin.clone(), hook: hook.hook.clone(), kind, reason };
    let body = {
        let mut m = Builder::new_default();
        let mut hc = m.init_root::<lane_frame::Builder>().init_hook();
        hc.set_hook(hook.hook.as_str());
        hc.set_phase(phase);
        if !hook.deadline.is_zero() {
            hc.set_timeout_micros(hook.deadline.as_micros() as u64);
        }
        req.write(hc.reborrow().init_request());
        if let Some(r) = resp {
            r.write(hc.reborrow().init_response());
        }
        crate::lane::encode(&m)
    };
    let start = Instant::now();
    let call = lane.call(body);
    let res = if hook.deadline.is_zero() {
        call.await
    } else {
        match tokio::time::timeout(hook.deadline, call).await {
            Ok(r) => r,
            Err(_) => {
                return Err(err(HookErrorKind::Timeout, format!("exceeded its {:?} deadline {place}", hook.deadline)))
            }
        }
    };
    let reply = match res {
        Ok(r) => r,
        Err(LaneError::Closed(_) | LaneError::Stopping) => {
            return Err(err(HookErrorKind::Unavailable, format!("stopped while handling the request {place}")))
        }
        // The plugin enforces the same deadline and may answer with its own
        // "context deadline exceeded" a moment before the timer above fires:
        // a timeout all the same (sdk-go/wire.CallError).
        Err(LaneError::Remote(text))
            if !hook.deadline.is_zero()
                && (start.elapsed() >= hook.deadline || text.ends_with("context deadline exceeded")) =>
        {
            return Err(err(HookErrorKind::Timeout, format!("exceeded its {:?} deadline {place}", hook.deadline)))
        }
        Err(LaneError::Remote(text)) => {
            return Err(match text.strip_prefix("[unavailable] ") {
                Some(msg) => err(HookErrorKind::Unavailable, format!("is unavailable {place}: {msg}")),
                None => err(HookErrorKind::Failed, format!("failed {place}: {}", strip_mark(&text))),
            })
        }
        Err(e @ LaneError::Io(_)) => return Err(err(HookErrorKind::Failed, format!("failed {place}: {e}"))),
    };
    let unreadable = |e: String| err(HookErrorKind::Failed, format!("sent an unreadable result {place}: {e}"));
    let f = reply.get_root::<lane_frame::Reader>().map_err(|e| unreadable(e.to_string()))?;
    let hr = match f.which() {
        Ok(lane_frame::HookResult(hr)) => hr.map_err(|e| unreadable(e.to_string()))?,
        _ => {
            return Err(err(HookErrorKind::Failed, format!("failed {place}: unexpected reply on the hook lane")));
        }
    };
    read_hook_result(phase, hr).map_err(|e| match e {
        ReadError::Rejected(msg) => err(HookErrorKind::Rejected, msg),
        ReadError::Unreadable(msg) => unreadable(msg),
    })
}

/// A class mark ("[code] ") at the start of a remote message, removed.
fn strip_mark(text: &str) -> &str {
    if let Some(rest) = text.strip_prefix('[') {
        if let Some(i) = rest.find("] ") {
            if rest[..i].bytes().all(|c| c.is_ascii_lowercase() || c == b'-' || c == b'_') {
                return &rest[i + 2..];
            }
        }
    }
    text
}

enum ReadError {
    Rejected(String),
    Unreadable(String),
}

/// Reads a hook's result and checks it against the phase's rules
/// (sdk-go/wire.ReadHookResult, CheckAnswer); an answer that changes
/// nothing is `Continue`.
fn read_hook_result(phase: Phase, hr: http_capnp::hook_result::Reader<'_>) -> Result<HookAnswer, ReadError> {
    use http_capnp::hook_result::Which;
    let which = hr.which().map_err(|e| ReadError::Unreadable(format!("unknown answer {e} (is the plugin newer?)")))?;
    let kind = match &which {
        Which::Continue(()) => 0,
        Which::MutateRequest(_) => 1,
        Which::Respond(_) => 2,
        Which::MutateResponse(_) => 3,
    };
    let reject = |m: &str| Err(ReadError::Rejected(m.to_string()));
    match phase {
        Phase::Request if kind == 3 => return reject("answered a request hook with a response mutation"),
        Phase::Response if kind != 0 && kind != 3 => {
            return reject("answered a response hook with something other than a response mutation")
        }
        Phase::Route if kind != 2 => return reject("owns the route but answered without a response"),
        _ => {}
    }
    let bad = |e: crate::Error| ReadError::Unreadable(e.to_string());
    let cap = |e: capnp::Error| ReadError::Unreadable(e.to_string());
    let a = match which {
        Which::Continue(()) => HookAnswer::Continue,
        Which::MutateRequest(m) => {
            let m = RequestMutation::read(m.map_err(cap)?).map_err(bad)?;
            if m == RequestMutation::default() {
                HookAnswer::Continue
            } else {
                HookAnswer::MutateRequest(m)
            }
        }
        Which::Respond(r) => HookAnswer::Respond(Response::read(r.map_err(cap)?).map_err(bad)?),
        Which::MutateResponse(m) => {
            let m = ResponseMutation::read(m.map_err(cap)?).map_err(bad)?;
            if m == ResponseMutation::default() {
                HookAnswer::Continue
            } else {
                HookAnswer::MutateResponse(m)
            }
        }
    };
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::Breaker;
    use std::time::{Duration, Instant};

    #[test]
    fn breaker_opens_probes_and_closes() {
        let b = Breaker::new(2, Duration::from_millis(100));
        let t = Instant::now();
        assert!(b.allow(t).is_ok());
        b.record(false, t);
        assert!(b.allow(t).is_ok(), "one failure of two opened it");
        b.record(false, t);
        let why = b.allow(t).expect_err("two consecutive failures left it closed");
        assert!(why.contains("2 consecutive failures"), "{why}");
        // After the cool-down one probe goes through, and only one.
        let later = t + Duration::from_millis(101);
        assert!(b.allow(later).is_ok());
        assert!(b.allow(later).unwrap_err().contains("probing"));
        // A failed probe doubles the cool-down.
        b.record(false, later);
        assert!(b.allow(later + Duration::from_millis(150)).is_err());
        assert!(b.allow(later + Duration::from_millis(201)).is_ok());
        b.record(true, later + Duration::from_millis(201));
        assert!(b.allow(later + Duration::from_millis(202)).is_ok());
        assert_eq!(b.stats(), (4, 3));
        // release undoes allow without counting.
        b.release();
        assert_eq!(b.stats(), (4, 3));
    }

    use super::{call_hook, HookAnswer};
    use crate::lane::LaneClient;
    use crate::schema::{lane_capnp::lane_frame, plugin_capnp};
    use crate::{FailurePolicy, HookErrorKind, Phase, Request, RouteHook};
    use capnp::message::{Builder, ReaderOptions};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    /// The plugin end of a lane: reads one frame.
    async fn read_frame(c: &mut UnixStream) -> (u64, capnp::message::Reader<capnp::serialize::OwnedSegments>) {
        let mut len = [0u8; 4];
        c.read_exact(&mut len).await.unwrap();
        let mut buf = vec![0u8; u32::from_le_bytes(len) as usize];
        c.read_exact(&mut buf).await.unwrap();
        let id = u64::from_le_bytes(buf[..8].try_into().unwrap());
        (id, capnp::serialize::read_message(&mut &buf[8..], ReaderOptions::new()).unwrap())
    }

    async fn write_frame(c: &mut UnixStream, id: u64, fill: impl FnOnce(lane_frame::Builder<'_>)) {
        let mut m = Builder::new_default();
        fill(m.init_root::<lane_frame::Builder>());
        let body = capnp::serialize::write_message_to_words(&m);
        let mut f = ((body.len() + 8) as u32).to_le_bytes().to_vec();
        f.extend_from_slice(&id.to_le_bytes());
        f.extend_from_slice(&body);
        c.write_all(&f).await.unwrap();
    }

    fn hook(deadline_ms: u64) -> RouteHook {
        RouteHook {
            plugin: "p".into(),
            hook: "h".into(),
            phase: Phase::Response,
            priority: 0,
            deadline: Duration::from_millis(deadline_ms),
            failure_policy: FailurePolicy::FailClosed,
        }
    }

    /// A hook call on a direct lane: the request carries the route and
    /// params the host filled and the deadline; past the deadline the call
    /// fails as a timeout and a cancel frame follows for the same id;
    /// answers the phase does not allow are rejected; error frames and a
    /// closed lane are told apart.
    #[tokio::test]
    async fn hook_calls_on_a_lane() {
        let (ours, mut plugin) = UnixStream::pair().unwrap();
        let lane = LaneClient::new(ours, 1 << 20);
        let mut req = Request::new("GET", "/api/v1/media/42");
        req.route = "/api/v1/media/:id".into();
        req.params = vec![("id".into(), "42".into())];
        let resp = crate::Response::new(200, b"{}".to_vec());

        // Timeout, then cancel.
        let h = hook(50);
        let call = call_hook(&lane, &h, Phase::Response, &req, Some(&resp), "on GET /api/v1/media/:id");
        let server = async {
            let (id, m) = read_frame(&mut plugin).await;
            {
                let f = m.get_root::<lane_frame::Reader>().unwrap();
                let lane_frame::Hook(hc) = f.which().unwrap() else { panic!("not a hook frame") };
                let hc: plugin_capnp::hook_call::Reader = hc.unwrap();
                assert_eq!(hc.get_hook().unwrap().to_str().unwrap(), "h");
                assert_eq!(hc.get_timeout_micros(), 50_000);
                let r = hc.get_request().unwrap();
                assert_eq!(r.get_route().unwrap().to_str().unwrap(), "/api/v1/media/:id");
                let ps = r.get_params().unwrap();
                assert_eq!(ps.len(), 1);
                assert_eq!(ps.get(0).get_name().unwrap().to_str().unwrap(), "id");
                assert_eq!(ps.get(0).get_value().unwrap().to_str().unwrap(), "42");
                assert_eq!(hc.get_response().unwrap().get_status(), 200);
            }
            let (cid, m) = read_frame(&mut plugin).await;
            assert_eq!(cid, id, "cancel for another call");
            let f = m.get_root::<lane_frame::Reader>().unwrap();
            assert!(matches!(f.which().unwrap(), lane_frame::Cancel(())), "not a cancel frame");
        };
        let (res, ()) = tokio::join!(call, server);
        let e = res.expect_err("a call past its deadline succeeded");
        assert_eq!(e.kind, HookErrorKind::Timeout);
        assert!(e.reason.contains("exceeded its 50ms deadline on GET /api/v1/media/:id"), "{e:?}");
        assert_eq!(e.status(), 503);
        let r = super::fail(&h, Phase::Response, e.clone());
        assert_eq!(r.outcome, crate::Outcome::FailClosed(e));

        // An answer the phase does not allow.
        let h = hook(1000);
        let call = call_hook(&lane, &h, Phase::Response, &req, Some(&resp), "here");
        let server = async {
            let (id, _) = read_frame(&mut plugin).await;
            write_frame(&mut plugin, id, |f| {
                let mut r = f.init_hook_result().init_respond();
                r.set_status(200);
            })
            .await;
        };
        let (res, ()) = tokio::join!(call, server);
        let e = res.expect_err("a respond answer to a response hook was taken");
        assert_eq!(e.kind, HookErrorKind::Rejected, "{e:?}");

        // A response mutation that changes nothing is a Continue.
        let call = call_hook(&lane, &h, Phase::Response, &req, Some(&resp), "here");
        let server = async {
            let (id, _) = read_frame(&mut plugin).await;
            write_frame(&mut plugin, id, |f| {
                f.init_hook_result().init_mutate_response();
            })
            .await;
        };
        let (res, ()) = tokio::join!(call, server);
        assert!(matches!(res, Ok(HookAnswer::Continue)), "{res:?}");

        // Error frames: marked unavailable, or failed.
        for (text, kind) in [("[unavailable] starting", HookErrorKind::Unavailable), ("boom", HookErrorKind::Failed)] {
            let call = call_hook(&lane, &h, Phase::Response, &req, Some(&resp), "here");
            let server = async {
                let (id, _) = read_frame(&mut plugin).await;
                write_frame(&mut plugin, id, |mut f| f.set_error(text)).await;
            };
            let (res, ()) = tokio::join!(call, server);
            let e = res.expect_err("an error frame was taken as an answer");
            assert_eq!(e.kind, kind, "{e:?}");
        }

        // The plugin goes away: unavailable, and the lane is done.
        drop(plugin);
        let e = call_hook(&lane, &h, Phase::Response, &req, Some(&resp), "here").await.unwrap_err();
        assert_eq!(e.kind, HookErrorKind::Unavailable, "{e:?}");
        assert!(lane.is_done());
    }

    #[test]
    fn strip_mark_removes_class_marks_only() {
        assert_eq!(super::strip_mark("[not-found] no such thing"), "no such thing");
        assert_eq!(super::strip_mark("[x y] a"), "[x y] a");
        assert_eq!(super::strip_mark("plain"), "plain");
    }
}
