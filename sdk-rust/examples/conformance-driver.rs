//! conformance-driver: the crate's driver for `dimplugd conformance host`
//! (docs/conformance.md, "Drivers").
//!
//! ```sh
//! cargo build --example conformance-driver
//! dimplugd conformance host --driver target/debug/examples/conformance-driver
//! ```
//!
//! The kit starts it with `DIMPLUGD_SOCKET` set to the daemon's host
//! socket. It connects with the crate's own logic ([`Session::connect_with`]:
//! reconnecting, the route watch, direct lanes), says hello, then answers
//! one JSON request per stdin line with one JSON answer per stdout line
//! (each as soon as it is done, so answers may come out of order; the
//! `id` pairs them), and exits when stdin ends. Everything it reports
//! comes from the crate: the watched route table ([`Session::route_table`],
//! never a fresh `routes` call), the route matcher ([`parse_route`],
//! [`match_route`], [`method_matches`]), [`Session::dispatch`] (over direct
//! lanes where the crate uses them) and the result applied as
//! [`dimplugd_host::layer`] applies it ([`failure_response`] for a failed
//! request, [`RequestMutation::apply`](dimplugd_host::RequestMutation::apply),
//! [`DispatchResult::apply_to_response`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use dimplugd_host::layer::{failure_response, without, REQUEST_CREDENTIALS, RESPONSE_CREDENTIALS};
use dimplugd_host::{
    match_route, method_matches, parse_route, DispatchResult, FailurePolicy, Frame, HookError, HookErrorKind, Options,
    Outcome, Phase, Request, Response, RouteTable, Session, StreamMeta,
};

/// How long observers started by `dispatch` may still run once stdin ended.
const OBSERVE_GRACE: Duration = Duration::from_secs(2);

#[tokio::main]
async fn main() {
    let socket = match std::env::var_os("DIMPLUGD_SOCKET") {
        Some(s) => s,
        None => {
            eprintln!("conformance-driver: DIMPLUGD_SOCKET is not set (the kit sets it to the daemon's host socket)");
            std::process::exit(2);
        }
    };
    let session = match Session::connect_with(&socket, Options::default()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("conformance-driver: {e}");
            std::process::exit(1);
        }
    };

    // One writer: answers from concurrent requests never interleave.
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Value>();
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(v) = out_rx.recv().await {
            let mut line = v.to_string();
            line.push('\n');
            if stdout.write_all(line.as_bytes()).await.is_err() || stdout.flush().await.is_err() {
                break;
            }
        }
    });

    let hello = json!({"hello": {
        "implementation": concat!("dimplugd-host (rust) ", env!("CARGO_PKG_VERSION")),
        "features": ["direct-lanes", "streams"],
    }});
    let _ = out_tx.send(hello);

    let observers = Arc::new(tokio::sync::Mutex::new(tokio::task::JoinSet::new()));
    let mut requests = tokio::task::JoinSet::new();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        let line = match lines.next_line().await {
            Ok(Some(l)) => l,
            Ok(None) => break,
            Err(e) => {
                eprintln!("conformance-driver: read stdin: {e}");
                break;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let (session, out_tx, observers) = (session.clone(), out_tx.clone(), observers.clone());
        requests.spawn(async move {
            let answer = handle(&session, &line, &observers).await;
            let _ = out_tx.send(answer);
        });
        // Reap the finished ones as we go.
        while requests.try_join_next().is_some() {}
    }
    while requests.join_next().await.is_some() {}
    drop(out_tx);
    let _ = writer.await;
    let mut obs = std::mem::take(&mut *observers.lock().await);
    let _ = tokio::time::timeout(OBSERVE_GRACE, async { while obs.join_next().await.is_some() {} }).await;
    obs.abort_all();
    session.close();
}

/// Answers one request line.
async fn handle(session: &Session, line: &str, observers: &tokio::sync::Mutex<tokio::task::JoinSet<()>>) -> Value {
    let req: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return json!({"id": null, "error": format!("unreadable request: {e}")}),
    };
    let id = req.get("id").cloned().unwrap_or(Value::Null);
    let res = match req.get("op").and_then(Value::as_str).unwrap_or("") {
        "routes" => routes(session),
        "match" => match_op(&req),
        "method" => method_op(&req),
        "dispatch" => dispatch(session, &req, observers).await,
        "directLane" => direct_lane(session, &req),
        "stream" => stream(session, &req).await,
        op => Err(format!("unknown op {op:?}")),
    };
    let mut answer = match res {
        Ok(Value::Object(m)) => m,
        Ok(other) => {
            let mut m = Map::new();
            m.insert("value".into(), other);
            m
        }
        Err(e) => {
            let mut m = Map::new();
            m.insert("error".into(), Value::String(e));
            m
        }
    };
    answer.insert("id".into(), id);
    Value::Object(answer)
}

/// `routes`: the table the session holds from its watch.
fn routes(session: &Session) -> Result<Value, String> {
    let t = session.route_table().ok_or("the session holds no route table (the daemon pushed none yet)")?;
    Ok(table_json(&t))
}

fn table_json(t: &RouteTable) -> Value {
    let entries: Vec<Value> = t
        .entries
        .iter()
        .map(|e| {
            let hooks: Vec<Value> = e
                .hooks
                .iter()
                .map(|h| {
                    json!({
                        "plugin": h.plugin,
                        "hook": h.hook,
                        "phase": phase_name(h.phase),
                        "priority": h.priority,
                        "deadlineMs": h.deadline.as_millis() as u64,
                        "failClosed": h.failure_policy == FailurePolicy::FailClosed,
                    })
                })
                .collect();
            json!({"method": e.method, "route": e.route, "owner": e.owner, "hooks": hooks})
        })
        .collect();
    json!({"version": t.version, "entries": entries})
}

/// `match`: the crate's route matcher.
fn match_op(req: &Value) -> Result<Value, String> {
    let template = str_field(req, "template")?;
    let path = str_field(req, "path")?;
    if parse_route(template).is_err() {
        return Ok(json!({"invalid": true}));
    }
    let params = match_route(template, path).map(|ps| ps.into_iter().map(|(n, v)| json!([n, v])).collect::<Vec<_>>());
    Ok(json!({"params": params}))
}

/// `method`: the crate's method matching.
fn method_op(req: &Value) -> Result<Value, String> {
    Ok(json!({"match": method_matches(str_field(req, "hook")?, str_field(req, "request")?)}))
}

/// `stream`: sends the frames through a stream of the kind while reading
/// what comes out (a host must read while it writes), then closes its input
/// and reads to the end.
async fn stream(session: &Session, req: &Value) -> Result<Value, String> {
    let kind = str_field(req, "kind")?;
    let mut frames = Vec::new();
    for (i, f) in req.get("frames").and_then(Value::as_array).ok_or("frames: want an array")?.iter().enumerate() {
        let data = b64_decode(f.as_str().ok_or("frames: want base64 strings")?)?;
        frames.push(Frame { seq: i as u64, data, ..Default::default() });
    }
    let run = async {
        let st = session.open_stream(kind, &StreamMeta::default()).await.map_err(|e| e.to_string())?;
        let chain = st.stages();
        let send = async {
            for f in &frames {
                st.send(f).await.map_err(|e| e.to_string())?;
            }
            st.close_send().map_err(|e| e.to_string())
        };
        let recv = async {
            let mut out = Vec::new();
            while let Some(f) = st.recv().await.map_err(|e| e.to_string())? {
                out.push(Value::String(b64_encode(f.data())));
            }
            Ok::<_, String>(out)
        };
        let (sent, got) = tokio::join!(send, recv);
        sent?;
        Ok::<_, String>(json!({"frames": got?, "chain": chain}))
    };
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .map_err(|_| "the stream did not end within 30 s".to_string())?
}

/// `directLane`: whether the session holds a live lane to the plugin.
fn direct_lane(session: &Session, req: &Value) -> Result<Value, String> {
    let plugin = str_field(req, "plugin")?;
    let granted = session.has_direct_lane(plugin);
    let reason = if granted {
        String::new()
    } else if !session.is_connected() {
        "the session is not connected to the daemon".into()
    } else {
        format!("no live direct lane to {plugin:?} (not asked for, not granted yet, or ended)")
    };
    Ok(json!({"granted": granted, "reason": reason}))
}

/// `dispatch`: one phase's hooks for one request, applied as the layer
/// applies them.
async fn dispatch(
    session: &Session,
    req: &Value,
    observers: &tokio::sync::Mutex<tokio::task::JoinSet<()>>,
) -> Result<Value, String> {
    let phase = match str_field(req, "phase")? {
        "request" => Phase::Request,
        "response" => Phase::Response,
        "route" => Phase::Route,
        "observe" => Phase::Observe,
        p => return Err(format!("unknown phase {p:?}")),
    };
    let mut wreq = Request::new(str_field(req, "method")?, str_field(req, "path")?);
    wreq.raw_query = opt_str(req, "query")?.to_string();
    // Hooks never see the client's credentials (layer.rs: wire_request).
    let client_headers = headers_from(req.get("header"))?;
    wreq.headers = without(&client_headers, REQUEST_CREDENTIALS);
    wreq.body = b64_field(req, "body")?;
    wreq.received_at_unix_nano =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
    let resp = match req.get("response") {
        None | Some(Value::Null) => None,
        Some(r) => Some(Response {
            status: r.get("status").and_then(Value::as_u64).unwrap_or(200) as u16,
            headers: headers_from(r.get("header"))?,
            body: b64_field(r, "body")?,
        }),
    };
    let timeout = Duration::from_millis(req.get("timeoutMs").and_then(Value::as_u64).unwrap_or(10_000));

    if phase == Phase::Observe {
        // Observers run off the request path: start them, answer at once.
        let t = Instant::now();
        let (session, resp) = (session.clone(), resp.clone().unwrap_or_default());
        observers.lock().await.spawn(async move {
            let d = session.dispatch(Phase::Observe, &wreq, Some(&resp));
            match tokio::time::timeout(Duration::from_secs(10), d).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => eprintln!("conformance-driver: observe dispatch: {e}"),
                Err(_) => eprintln!("conformance-driver: observe dispatch took more than 10 s"),
            }
        });
        return Ok(json!({
            "outcome": "continue", "request": null, "response": null, "failure": null,
            "skipped": [], "elapsedMs": t.elapsed().as_millis() as u64,
        }));
    }

    let t = Instant::now();
    let res = tokio::time::timeout(timeout, session.dispatch(phase, &wreq, resp.as_ref())).await;
    let elapsed = t.elapsed().as_millis() as u64;
    let res: DispatchResult = match res {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(format!("dispatch: {e}")),
        Err(_) => return Err(format!("dispatch took more than {} ms", timeout.as_millis())),
    };
    let skipped: Vec<Value> = res.skipped.iter().map(hook_error_json).collect();
    let (outcome, request, response, failure) = match &res.outcome {
        Outcome::Continue => ("continue", Value::Null, Value::Null, Value::Null),
        Outcome::MutateRequest(m) => {
            m.apply(&mut wreq);
            // As the layer passes it on: a new header set never carries
            // credentials from a plugin, and the client's are kept.
            wreq.headers = match &m.headers {
                Some(_) => {
                    let mut h = without(&wreq.headers, REQUEST_CREDENTIALS);
                    h.extend(client_headers.iter().filter(|(n, _)| is_credential(n)).cloned());
                    h
                }
                None => client_headers,
            };
            ("mutated", request_json(&wreq), Value::Null, Value::Null)
        }
        Outcome::MutateResponse(_) => {
            let r = res.apply_to_response(resp.unwrap_or_default());
            ("mutated", Value::Null, response_json(&r), Value::Null)
        }
        Outcome::Respond(r) => {
            // A plugin's answer goes out without cookies (layer.rs: plugin_answer).
            let mut r = r.clone();
            r.headers = without(&r.headers, RESPONSE_CREDENTIALS);
            ("respond", Value::Null, response_json(&r), Value::Null)
        }
        Outcome::FailClosed(e) => {
            let r = http_response(failure_response(e)).await?;
            ("failed", Value::Null, response_json(&r), hook_error_json(e))
        }
    };
    Ok(json!({
        "outcome": outcome,
        "request": request,
        "response": response,
        "failure": failure,
        "skipped": skipped,
        "elapsedMs": elapsed,
    }))
}

/// The layer's failure answer as a [`Response`].
async fn http_response(r: http::Response<dimplugd_host::layer::LayerBody>) -> Result<Response, String> {
    let (parts, body) = r.into_parts();
    let body = body.collect().await.map_err(|e| format!("read the failure response: {e}"))?.to_bytes();
    let headers = parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    Ok(Response { status: parts.status.as_u16(), headers, body: body.to_vec() })
}

fn is_credential(name: &str) -> bool {
    REQUEST_CREDENTIALS.iter().any(|c| name.eq_ignore_ascii_case(c))
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Request => "request",
        Phase::Response => "response",
        Phase::Route => "route",
        Phase::Observe => "observe",
    }
}

fn kind_name(k: HookErrorKind) -> &'static str {
    match k {
        HookErrorKind::Failed => "failed",
        HookErrorKind::Timeout => "timeout",
        HookErrorKind::Unavailable => "unavailable",
        HookErrorKind::Rejected => "rejected",
    }
}

fn hook_error_json(e: &HookError) -> Value {
    json!({"plugin": e.plugin, "hook": e.hook, "kind": kind_name(e.kind), "reason": e.reason})
}

fn request_json(r: &Request) -> Value {
    json!({"path": r.path, "query": r.raw_query, "header": headers_json(&r.headers), "body": b64_encode(&r.body)})
}

fn response_json(r: &Response) -> Value {
    json!({"status": r.status, "header": headers_json(&r.headers), "body": b64_encode(&r.body)})
}

/// Header lines as `{"Name": ["v1", "v2"]}`, values in order.
fn headers_json(h: &[(String, String)]) -> Value {
    let mut m = Map::new();
    for (n, v) in h {
        if let Value::Array(vs) = m.entry(n.clone()).or_insert_with(|| Value::Array(Vec::new())) {
            vs.push(Value::String(v.clone()));
        }
    }
    Value::Object(m)
}

/// `{"Name": ["v1", "v2"]}` (or `{"Name": "v"}`) as header lines.
fn headers_from(v: Option<&Value>) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let obj = match v {
        None | Some(Value::Null) => return Ok(out),
        Some(Value::Object(o)) => o,
        Some(_) => return Err("header: want an object of name to list of values".into()),
    };
    for (n, vs) in obj {
        match vs {
            Value::Array(vs) => {
                for v in vs {
                    let v = v.as_str().ok_or_else(|| format!("header {n:?}: a value is not a string"))?;
                    out.push((n.clone(), v.to_string()));
                }
            }
            Value::String(v) => out.push((n.clone(), v.clone())),
            Value::Null => {}
            _ => return Err(format!("header {n:?}: want a list of strings")),
        }
    }
    Ok(out)
}

fn str_field<'a>(v: &'a Value, key: &str) -> Result<&'a str, String> {
    v.get(key).and_then(Value::as_str).ok_or_else(|| format!("{key:?} is missing or not a string"))
}

fn opt_str<'a>(v: &'a Value, key: &str) -> Result<&'a str, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(format!("{key:?} is not a string")),
    }
}

fn b64_field(v: &Value, key: &str) -> Result<Vec<u8>, String> {
    b64_decode(opt_str(v, key)?).map_err(|e| format!("{key:?}: {e}"))
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648 §4), as Go's encoding/json
/// writes `[]byte`.
fn b64_encode(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len().div_ceil(3) * 4);
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// Standard base64, padded or not.
fn b64_decode(s: &str) -> Result<Vec<u8>, String> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err(format!("not base64: {:?}", c as char)),
        };
        acc = acc << 6 | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if bits >= 6 {
        return Err("not base64: a stray last character".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{b64_decode, b64_encode};

    #[test]
    fn base64_round_trips() {
        for (raw, enc) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("{}", "e30=")]
        {
            assert_eq!(b64_encode(raw.as_bytes()), enc);
            assert_eq!(b64_decode(enc).unwrap(), raw.as_bytes());
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(b64_decode(&b64_encode(&all)).unwrap(), all);
        assert!(b64_decode("Zm9v!").is_err());
        assert!(b64_decode("Z").is_err());
    }
}
