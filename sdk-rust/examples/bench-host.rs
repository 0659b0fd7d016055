//! bench-host: the Rust host's row of `make bench` (bench/rusthost.go runs
//! it). It connects to a daemon's host socket, dispatches until the session
//! holds a direct lane to the plugin under test, then times hooked requests
//! on that lane: `warm` untimed calls, `n` sequential timed ones, and as
//! many as `inflight` concurrent tasks complete in `tput_ms` milliseconds.
//!
//! ```sh
//! bench-host SOCKET PLUGIN WARM N TPUT_MS INFLIGHT < workload.json
//! ```
//!
//! The workload comes on stdin as JSON, written by the Go harness from the
//! one its Go host and go-plugin rows use (bench/internal/hookwire), so the
//! three rows send the same request:
//!
//! ```json
//! {"method": "GET", "path": "/api/v1/media/42", "headers": [["Accept", "application/json"]],
//!  "body": "...", "response": {"status": 200, "headers": [["Cache-Control", "no-store"]], "body": "..."},
//!  "expect_header": ["X-Dim-Badge", "plugin-approved"]}
//! ```
//!
//! Every answer is checked: a response mutation setting `expect_header`,
//! nothing skipped, and every call after the lane came made on it. The result is one JSON line on stdout:
//! `{"lat_ns": [...], "p50_us": .., "p99_us": .., "calls": .., "secs": .., "calls_per_s": ..,
//! "lane_calls": ..}` (`lane_calls`: dispatches made before the lane came, through the daemon).

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dimplugd_host::{DispatchResult, Outcome, Phase, Request, Response, Session};
use serde_json::Value;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// How long the session may take to get its direct lane.
const LANE_WAIT: Duration = Duration::from_secs(10);

struct Workload {
    request: Request,
    response: Response,
    expect: (String, String),
}

fn string(v: &Value, what: &str) -> Result<String, Error> {
    Ok(v.as_str().ok_or_else(|| format!("workload: {what} is not a string"))?.to_string())
}

fn headers(v: &Value, what: &str) -> Result<Vec<(String, String)>, Error> {
    let list = v.as_array().ok_or_else(|| format!("workload: {what} is not a list"))?;
    list.iter()
        .map(|h| match h.as_array().map(Vec::as_slice) {
            Some([n, v]) => Ok((string(n, what)?, string(v, what)?)),
            _ => Err(format!("workload: {what}: {h} is not a [name, value] pair").into()),
        })
        .collect()
}

fn parse_workload(text: &str) -> Result<Workload, Error> {
    let w: Value = serde_json::from_str(text).map_err(|e| format!("workload: {e}"))?;
    let mut request = Request::new(string(&w["method"], "method")?, string(&w["path"], "path")?);
    request.headers = headers(&w["headers"], "headers")?;
    request.body = string(&w["body"], "body")?.into_bytes();
    let r = &w["response"];
    let status = r["status"].as_u64().and_then(|s| u16::try_from(s).ok()).ok_or("workload: response.status")?;
    let mut response = Response::new(status, string(&r["body"], "response.body")?.into_bytes());
    response.headers = headers(&r["headers"], "response.headers")?;
    let expect = match w["expect_header"].as_array().map(Vec::as_slice) {
        Some([n, v]) => (string(n, "expect_header")?, string(v, "expect_header")?),
        _ => return Err("workload: expect_header is not a [name, value] pair".into()),
    };
    Ok(Workload { request, response, expect })
}

/// Checks an answer: the hook's header set, nothing skipped.
fn check(res: &DispatchResult, (name, value): &(String, String)) -> Result<(), Error> {
    if !res.skipped.is_empty() {
        return Err(format!("skipped hooks: {:?}", res.skipped).into());
    }
    let got = match &res.outcome {
        Outcome::MutateResponse(m) => {
            m.headers.as_ref().and_then(|h| h.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v))
        }
        _ => None,
    };
    if got != Some(value) {
        return Err(format!("unexpected dispatch result {:?}", res.outcome).into());
    }
    Ok(())
}

async fn call(s: &Session, w: &Workload) -> Result<(), Error> {
    let res = s.dispatch(Phase::Response, &w.request, Some(&w.response)).await?;
    check(&res, &w.expect)
}

/// The calls the session made on its direct lane to `plugin`, all hooks.
fn direct_calls(s: &Session, plugin: &str) -> u64 {
    s.direct_stats().iter().filter(|h| h.plugin == plugin).map(|h| h.calls).sum()
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, name: &str) -> Result<T, Error> {
    args.get(i).and_then(|a| a.parse().ok()).ok_or_else(|| format!("argument {i} ({name}) missing or invalid").into())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 6 {
        return Err("usage: bench-host SOCKET PLUGIN WARM N TPUT_MS INFLIGHT < workload.json".into());
    }
    let (socket, plugin) = (&args[0], &args[1]);
    let warm: usize = arg(&args, 2, "WARM")?;
    let n: usize = arg(&args, 3, "N")?;
    let tput = Duration::from_millis(arg(&args, 4, "TPUT_MS")?);
    let inflight: usize = arg(&args, 5, "INFLIGHT")?;
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text)?;
    let w = Arc::new(parse_workload(&text)?);

    let session = Session::connect(socket).await.map_err(|e| format!("connect {socket}: {e}"))?;
    // The first dispatch asks the daemon for the lane (in the background);
    // the dispatches until it comes go through the daemon.
    let t0 = Instant::now();
    let mut lane_calls = 0u64;
    while !session.has_direct_lane(plugin) {
        if t0.elapsed() > LANE_WAIT {
            return Err(format!("no direct lane to {plugin} after {LANE_WAIT:?} ({lane_calls} dispatches)").into());
        }
        call(&session, &w).await.map_err(|e| format!("dispatch before the lane: {e}"))?;
        lane_calls += 1;
    }

    let direct_before = direct_calls(&session, plugin);
    for _ in 0..warm {
        call(&session, &w).await?;
    }
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        call(&session, &w).await?;
        lat.push(t.elapsed());
    }

    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let until = start + tput;
    let mut tasks = Vec::with_capacity(inflight);
    for _ in 0..inflight {
        let (s, w, count) = (session.clone(), w.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                call(&s, &w).await?;
                count.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    // Every timed call went on the direct lane, none through the daemon.
    let calls = count.load(Ordering::Relaxed);
    let direct = direct_calls(&session, plugin) - direct_before;
    let want = (warm + n) as u64 + calls;
    if direct != want {
        return Err(format!("{direct} of {want} calls went on the direct lane to {plugin}").into());
    }
    session.close();

    let lat_ns: Vec<u64> = lat.iter().map(|d| d.as_nanos() as u64).collect();
    let mut sorted = lat_ns.clone();
    sorted.sort_unstable();
    // Nearest rank, as bench/harness.go's pct.
    let pct = |p: f64| -> f64 {
        if sorted.is_empty() {
            return 0.0;
        }
        let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[i] as f64 / 1000.0
    };
    let out = serde_json::json!({
        "lat_ns": lat_ns,
        "p50_us": pct(0.5),
        "p99_us": pct(0.99),
        "calls": calls,
        "secs": secs,
        "calls_per_s": calls as f64 / secs,
        "lane_calls": lane_calls,
    });
    println!("{out}");
    Ok(())
}
