//! Against a real daemon: builds dimplugd, dimplugctl and the media-badge
//! example plugin from this repository with Go, starts `dimplugd serve` on a
//! temporary state directory and sockets (sandboxed as root, with
//! --insecure-no-sandbox otherwise), installs media-badge, then drives the
//! host face from Rust: openHost, routes, dispatch.
//!
//! Prebuilt binaries: DIMPLUGD_TEST_BIN=<dir holding dimplugd and
//! dimplugctl> skips building those two. Without Go the test is skipped,
//! except when CI=true, where a missing prerequisite fails it.

mod common;
use common::{go, prerequisite, repo_root};

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dimplugd_host::{
    DispatchResult, Error, FailurePolicy, HookErrorKind, Options, Outcome, Phase, Request, Response, RouteTable,
    Session, UiDocument,
};

/// The tests run one at a time: media-badge's hook has a deadline (5 s here),
/// and a Go build or a sandboxed plugin starting for the other test
/// (all cores busy) can hold a plugin past it, which the session then
/// rightly reports as a timeout.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The daemon and its temporary directory; stopped and removed on drop.
struct Daemon {
    dir: PathBuf,
    child: Option<Child>,
    bin: PathBuf,
}

impl Daemon {
    fn socket(&self) -> PathBuf {
        self.dir.join("dimplugd.sock")
    }
    fn control(&self) -> PathBuf {
        self.dir.join("control.sock")
    }
    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }
    fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(self.bin.join("dimplugctl"))
            .arg("--socket")
            .arg(self.control())
            .args(["--timeout", "30s"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run dimplugctl")
    }
}

impl Daemon {
    /// Starts `dimplugd serve` on the test's config (state kept between
    /// starts) and waits for its sockets.
    fn serve(&mut self) {
        let root_user = Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
        let mut serve = Command::new(self.bin.join("dimplugd"));
        serve.arg("serve").arg("--config").arg(self.dir.join("config.toml"));
        if !root_user {
            serve.arg("--insecure-no-sandbox");
        }
        let log = fs::OpenOptions::new().create(true).append(true).open(self.dir.join("daemon.log")).unwrap();
        serve.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        self.child = Some(serve.spawn().expect("start dimplugd serve"));
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.control().exists() || !self.socket().exists() {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("dimplugd serve exited ({st}):\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "dimplugd did not create its sockets in 15 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the daemon (SIGTERM: it stops its plugins and removes its
    /// sandboxes and sockets) and waits for it to exit.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = fs::remove_file(self.control());
        let _ = fs::remove_file(self.socket());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        if std::env::var_os("DIMPLUGD_TEST_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Builds an example plugin (static, trimmed) into a copy of its directory
/// under `dir` and returns that directory.
fn build_plugin(root: &Path, dir: &Path, name: &str) -> PathBuf {
    let plugin = dir.join(name);
    fs::create_dir_all(&plugin).unwrap();
    // The examples' hooks have deadlines for a real server (media-badge:
    // 200 ms, parental-controls: 100 ms), which a loaded 2-core CI machine
    // can miss now and then; the tests count calls exactly, so every
    // millisecond deadline becomes 5 s (deadlines are the conformance kit's
    // business, with deadlines it sets itself).
    let manifest = fs::read_to_string(root.join(format!("examples/plugins/{name}/plugin.toml"))).unwrap();
    let manifest: Vec<String> = manifest
        .lines()
        .map(|l| {
            if l.starts_with("deadline = \"") && l.ends_with("ms\"") {
                "deadline = \"5s\"".to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    fs::write(plugin.join("plugin.toml"), manifest.join("\n") + "\n").unwrap();
    let src = root.join(format!("examples/plugins/{name}"));
    for extra in ["settings"] {
        if src.join(extra).is_dir() {
            fs::create_dir_all(plugin.join(extra)).unwrap();
            for f in fs::read_dir(src.join(extra)).unwrap() {
                let f = f.unwrap();
                fs::copy(f.path(), plugin.join(extra).join(f.file_name())).unwrap();
            }
        }
    }
    let out = plugin.join(name);
    let args = ["build", "-trimpath", "-o", out.to_str().unwrap()];
    let pkg = format!("./examples/plugins/{name}");
    go(root, &[&args[..], &[pkg.as_str()]].concat(), &[("CGO_ENABLED", "0")]);
    plugin
}

fn run_cmd_ok(cmd: &str) -> bool {
    Command::new(cmd).arg("version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Builds what is needed and starts the daemon with media-badge installed.
fn start() -> Option<Daemon> {
    start_with("host", &["media-badge"])
}

/// Builds what is needed and starts a daemon of its own for a test (`tag`)
/// with these example plugins installed.
fn start_with(tag: &str, plugins: &[&str]) -> Option<Daemon> {
    prerequisite(cfg!(target_os = "linux"), "dimplugd runs on Linux only")?;
    let root = repo_root();
    let go_cmd = std::env::var("GO").unwrap_or_else(|_| "go".into());
    prerequisite(run_cmd_ok(&go_cmd), "Go is not installed (needed to build dimplugd and media-badge)")?;

    let dir = std::env::temp_dir().join(format!("dimplugd-rs-{}-{tag}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    // Sandboxed plugins run as unprivileged uids that must pass through it.
    Command::new("chmod").arg("711").arg(&dir).status().unwrap();
    let mut d = Daemon { dir: dir.clone(), child: None, bin: dir.join("bin") };

    let t = Instant::now();
    match std::env::var_os("DIMPLUGD_TEST_BIN") {
        Some(b) => d.bin = PathBuf::from(b),
        None => {
            let out = d.bin.to_str().unwrap().to_string();
            go(&root, &["build", "-tags", "seccomp", "-o", &format!("{out}/dimplugd"), "./cmd/dimplugd"], &[]);
            go(&root, &["build", "-o", &format!("{out}/dimplugctl"), "./cmd/dimplugctl"], &[]);
        }
    }
    // The plugins: their manifests and static builds, in copies of their
    // directories.
    let built: Vec<PathBuf> = plugins.iter().map(|p| build_plugin(&root, &dir, p)).collect();
    eprintln!("built the Go binaries in {:?}", t.elapsed());

    fs::write(
        dir.join("config.toml"),
        format!(
            "state_dir = \"{0}/state\"\nsocket = \"{0}/dimplugd.sock\"\ncontrol_socket = \"{0}/control.sock\"\n\
             container_state = \"{0}/containers\"\ncgroup_parent = \"dimplugd-rstest-{1}-{tag}\"\n",
            dir.display(),
            std::process::id()
        ),
    )
    .unwrap();
    d.serve();
    for (name, plugin) in plugins.iter().zip(&built) {
        let out = d.ctl(&["install", "--yes", plugin.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "dimplugctl install {name}: {}{}\ndaemon log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            d.log()
        );
    }
    Some(d)
}

fn json_field<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    // Enough JSON for the plugin's flat object: "key":value up to , or }.
    let at = body.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &body[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_face_against_a_real_daemon() {
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let Some(mut d) = start() else { return };
    let t_started = t0.elapsed();

    // A version the daemon does not speak is refused with both lists.
    let opts = Options { versions: vec![999], ..Options::default() };
    match Session::connect_with(d.socket(), opts).await {
        Err(Error::VersionMismatch { ours, theirs }) => {
            assert_eq!(ours, vec![999]);
            assert!(theirs.contains(&1), "daemon versions {theirs:?}");
        }
        other => panic!("offering version 999: want VersionMismatch, got {other:?}"),
    }

    let session = Session::connect(d.socket()).await.unwrap_or_else(|e| panic!("connect: {e}\n{}", d.log()));
    assert_eq!(session.version(), 1);

    // The route table has media-badge's two hooks.
    let table = session.routes().await.expect("routes");
    assert!(table.version > 0, "{table:?}");
    let badge = table
        .entries
        .iter()
        .find(|e| e.route == "/api/v1/media/:id")
        .unwrap_or_else(|| panic!("no entry for /api/v1/media/:id in {table:#?}"));
    assert_eq!(badge.method, "GET");
    assert_eq!(badge.phases, vec![Phase::Response]);
    let hook = &badge.hooks[0];
    assert_eq!((hook.plugin.as_str(), hook.hook.as_str(), hook.phase), ("media-badge", "badge", Phase::Response));
    assert_eq!(hook.deadline, Duration::from_secs(5)); // as build_plugin set it
    assert_eq!(hook.failure_policy, FailurePolicy::FailOpen);
    let views = table.entries.iter().find(|e| e.route == "/api/v1/plugins/media-badge/views").expect("views entry");
    assert_eq!((views.phases.as_slice(), views.owner.as_str()), (&[Phase::Route][..], "media-badge"));
    assert_eq!(table.matches("GET", "/api/v1/media/42"), vec![Phase::Response]);
    assert!(table.matches("POST", "/api/v1/media/42").is_empty());
    assert!(table.matches("GET", "/api/v1/library/1").is_empty());

    // A response through the daemon: the plugin adds its badge and counts
    // the view in its KV store. Dispatch from other tasks of a
    // multi-threaded runtime: the session is Send.
    let mut req = Request::new("GET", "/api/v1/media/42").with_route("/api/v1/media/:id");
    req.user_id = Some(1);
    req.request_id = "rust-test-1".into();
    let resp = Response {
        status: 200,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: br#"{"id":42,"name":"Big Buck Bunny"}"#.to_vec(),
    };
    for want_views in 1..=2 {
        let (s, rq, rs) = (session.clone(), req.clone(), resp.clone());
        let res = tokio::spawn(async move { s.dispatch(Phase::Response, &rq, Some(&rs)).await })
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("dispatch: {e}\n{}", d.log()));
        assert!(res.skipped.is_empty(), "skipped: {:?}\n{}", res.skipped, d.log());
        assert_eq!(res.applied, vec!["media-badge/badge".to_string()]);
        let Outcome::MutateResponse(m) = &res.outcome else { panic!("want MutateResponse, got {:?}", res.outcome) };
        assert_eq!(m.status, None);
        let out = res.apply_to_response(resp.clone());
        assert_eq!(out.status, 200);
        assert_eq!(out.header("x-dim-badge"), Some("plugin-approved"), "headers {:?}", out.headers);
        let body = String::from_utf8(out.body).unwrap();
        assert_eq!(json_field(&body, "plugin_badge"), Some("\"plugin-approved\""), "{body}");
        assert_eq!(json_field(&body, "views"), Some(want_views.to_string().as_str()), "{body}");
        assert_eq!(json_field(&body, "name"), Some("\"Big Buck Bunny\""), "{body}");
    }

    // Dispatch goes on the hook lane (DPLANE1), not over RPC.
    assert!(session.uses_hook_lane(), "the session did not open the hook lane");

    // Direct lanes: the first dispatch asked the daemon for a lane to
    // media-badge (its phase has one hook); once granted, the session calls
    // the plugin itself, filling route and params (the plugin counts views
    // under "views/<id>", so the count proves the params arrived).
    wait_for("a direct lane to media-badge", Duration::from_secs(5), || session.has_direct_lane("media-badge")).await;
    assert_eq!(session.lane_grants(), 1);
    wait_daemon_calls_settle(&d).await;
    let daemon_before = daemon_hook_calls(&d, "media-badge", "badge");
    let direct_before = direct_calls(&session, "badge");
    for want_views in 3..=4 {
        let res = session.dispatch(Phase::Response, &req, Some(&resp)).await.expect("direct dispatch");
        assert!(res.skipped.is_empty(), "skipped: {:?}", res.skipped);
        assert_eq!(res.applied, vec!["media-badge/badge".to_string()]);
        let out = res.apply_to_response(resp.clone());
        assert_eq!(out.header("x-dim-badge"), Some("plugin-approved"));
        let body = String::from_utf8(out.body).unwrap();
        assert_eq!(json_field(&body, "views"), Some(want_views.to_string().as_str()), "{body}");
    }
    let st = session.direct_stats();
    let badge = st.iter().find(|s| s.hook == "badge").expect("direct stats of badge");
    assert_eq!(badge.calls, direct_before + 2, "the calls did not go over the direct lane: {st:?}");
    assert_eq!((badge.failures, badge.timeouts, badge.rejected, badge.breaker_open), (0, 0, 0, 0), "{st:?}");
    // The session reports its direct calls to the daemon (every second):
    // inspect counts them with its own.
    let t = Instant::now();
    while daemon_hook_calls(&d, "media-badge", "badge") != daemon_before + 2 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the daemon counts {} calls of badge, want {} + 2 reported by the host",
            daemon_hook_calls(&d, "media-badge", "badge"),
            daemon_before
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut page =
        Request::new("GET", "/api/v1/plugins/media-badge/views").with_route("/api/v1/plugins/media-badge/views");
    page.raw_query = "media_id=42".into();
    let res = session.dispatch(Phase::Route, &page, None).await.expect("dispatch route");
    let Outcome::Respond(r) = &res.outcome else { panic!("want Respond, got {:?}", res.outcome) };
    assert_eq!(r.status, 200);
    let html = String::from_utf8_lossy(&r.body);
    assert!(html.contains(r#"<span class="count">4</span>"#), "views page: {html}");

    // No hook in the request phase of that route: nothing to do.
    let res = session.dispatch(Phase::Request, &req, None).await.expect("dispatch request phase");
    assert_eq!(res.outcome, Outcome::Continue);
    assert!(res.applied.is_empty() && res.skipped.is_empty(), "{res:?}");

    // The session watches the route table: it holds the daemon's table
    // from the start, and every change is pushed to it.
    let pushed = Arc::new(AtomicUsize::new(0));
    let pushed2 = pushed.clone();
    let now = session.watch_routes(move |_| {
        pushed2.fetch_add(1, Ordering::SeqCst);
    });
    assert_eq!(now.as_deref(), Some(&table), "the watched table is not the one routes() returned");
    let mut sub = session.subscribe_routes();

    // Once the plugin is disabled its hooks leave the table, and the new
    // table is pushed.
    let out = d.ctl(&["disable", "media-badge"]);
    assert!(out.status.success(), "disable: {}", String::from_utf8_lossy(&out.stderr));
    let after = session.routes().await.expect("routes after disable");
    assert!(after.version > table.version, "version {} after {}", after.version, table.version);
    assert!(after.matches("GET", "/api/v1/media/42").is_empty(), "{after:#?}");
    let t = wait_table(&mut sub, |t| t.version >= after.version).await;
    assert!(t.matches("GET", "/api/v1/media/42").is_empty(), "pushed table {t:#?}");
    assert!(pushed.load(Ordering::SeqCst) >= 1, "the watcher was not called");
    let out = d.ctl(&["enable", "media-badge"]);
    assert!(out.status.success(), "enable: {}", String::from_utf8_lossy(&out.stderr));
    let t = wait_table(&mut sub, |t| !t.matches("GET", "/api/v1/media/42").is_empty()).await;
    assert!(t.version > after.version);
    // The plugin restarted (disable, enable): its old lane ended with the
    // instance. The session asks again and calls the new instance directly.
    let grants = session.lane_grants();
    let direct_before = direct_calls(&session, "badge");
    let res = dispatch_until_applied(&session, &req, &resp, &d).await;
    let body = String::from_utf8(res.apply_to_response(resp.clone()).body).unwrap();
    assert_eq!(json_field(&body, "views"), Some("5"), "{body}");
    // Lanes are asked for by dispatches (again at most once a second while
    // the daemon refuses: the plugin may still be starting).
    redispatch_until("a new direct lane after the plugin restarted", &session, &req, &resp, || {
        session.lane_grants() > grants && session.has_direct_lane("media-badge")
    })
    .await;
    let views_now = views_now(&session, &page).await;
    let res = session.dispatch(Phase::Response, &req, Some(&resp)).await.expect("dispatch on the new lane");
    let body = String::from_utf8(res.apply_to_response(resp.clone()).body).unwrap();
    assert_eq!(json_field(&body, "views"), Some((views_now + 1).to_string().as_str()), "{body}");
    assert!(direct_calls(&session, "badge") > direct_before, "no call went over the new lane");
    let t_phase1 = t0.elapsed();

    // The daemon goes away: the session notices, and answers at once while
    // it is away: routes() with DaemonAway, dispatch by each hook's policy
    // (media-badge's response hook is fail-open: skipped; its route is
    // owned: 503 naming the plugin).
    d.stop();
    wait_for("the session to notice the daemon left", Duration::from_secs(5), || !session.is_connected()).await;
    let t = Instant::now();
    let err = session.routes().await.expect_err("routes while the daemon is away");
    assert!(matches!(err, Error::DaemonAway), "{err:?}");
    assert!(err.to_string().contains("not reachable"), "{err}");
    let res = session.dispatch(Phase::Response, &req, Some(&resp)).await.expect("dispatch while away");
    assert_eq!(res.outcome, Outcome::Continue);
    assert_eq!(res.skipped.len(), 1, "{res:?}");
    let e = &res.skipped[0];
    assert_eq!((e.plugin.as_str(), e.hook.as_str(), e.kind), ("media-badge", "badge", HookErrorKind::Unavailable));
    assert!(e.reason.contains("dimplugd is not reachable"), "{e:?}");
    let res = session.dispatch(Phase::Route, &page, None).await.expect("route dispatch while away");
    let Outcome::FailClosed(e) = &res.outcome else { panic!("want FailClosed while away, got {res:?}") };
    assert_eq!((e.plugin.as_str(), e.kind, e.status()), ("media-badge", HookErrorKind::Unavailable, 503));
    assert!(t.elapsed() < Duration::from_secs(1), "calls while away took {:?}", t.elapsed());
    assert_eq!(session.reconnects(), 0);

    // The daemon comes back on the same socket and state: the session
    // reconnects by itself, takes the new daemon's table (pushed to the
    // watchers) and dispatches through it again.
    let pushed_before = pushed.load(Ordering::SeqCst);
    d.serve();
    wait_for("the session to reconnect", Duration::from_secs(10), || session.is_connected()).await;
    assert_eq!(session.reconnects(), 1);
    assert_eq!(session.version(), 1);
    assert!(pushed.load(Ordering::SeqCst) > pushed_before, "the new daemon's table was not pushed to the watcher");
    let t = session.route_table().expect("a table after the reconnect");
    assert_eq!(t.matches("GET", "/api/v1/media/42"), vec![Phase::Response], "{t:#?}");
    assert_eq!(session.routes().await.expect("routes after the reconnect"), *t);
    // The plugin starts again with the daemon; its KV store kept the count.
    let res = dispatch_until_applied(&session, &req, &resp, &d).await;
    let body = String::from_utf8(res.apply_to_response(resp.clone()).body).unwrap();
    let v: u64 = json_field(&body, "views").unwrap().parse().unwrap();
    assert!(v > views_now + 1, "the count went back to {v}: {body}");
    // The old daemon's plugin instance, and with it the lane, is gone: the
    // session gets a lane from the new daemon.
    let grants = session.lane_grants();
    redispatch_until("a direct lane from the new daemon", &session, &req, &resp, || {
        session.lane_grants() > grants && session.has_direct_lane("media-badge")
    })
    .await;
    assert!(session.uses_hook_lane(), "no hook lane to the new daemon");
    let t_phase2 = t0.elapsed();

    // Closing the session ends it: calls fail instead of hanging.
    session.close();
    wait_for("the session to close", Duration::from_secs(5), || session.is_closed()).await;
    let err = tokio::time::timeout(Duration::from_secs(5), session.routes())
        .await
        .expect("routes after close hung")
        .expect_err("routes after close");
    assert!(err.is_daemon_away(), "{err:?}");
    drop(d);
    eprintln!(
        "daemon up with media-badge in {t_started:?}; first phase done at {t_phase1:?}; reconnect done at {t_phase2:?}; whole test {:?}",
        t0.elapsed()
    );
}

/// Dispatches the response phase every 50 ms until `ok` (at most 10 s).
async fn redispatch_until(what: &str, session: &Session, req: &Request, resp: &Response, ok: impl Fn() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < Duration::from_secs(10), "waited 10 s for {what}");
        session.dispatch(Phase::Response, req, Some(resp)).await.expect("dispatch");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The view count the plugin's page shows.
async fn views_now(session: &Session, page: &Request) -> u64 {
    let res = session.dispatch(Phase::Route, page, None).await.expect("dispatch route");
    let Outcome::Respond(r) = &res.outcome else { panic!("want Respond, got {:?}", res.outcome) };
    let html = String::from_utf8_lossy(&r.body);
    let at = html.find(r#"<span class="count">"#).unwrap_or_else(|| panic!("no count in {html}")) + 20;
    html[at..html[at..].find('<').unwrap() + at].parse().unwrap()
}

/// The calls of one hook that the session made over a direct lane.
fn direct_calls(session: &Session, hook: &str) -> u64 {
    session.direct_stats().iter().filter(|s| s.hook == hook).map(|s| s.calls).sum()
}

/// The calls of a hook the daemon counts (`dimplugctl --json inspect`):
/// its own and those hosts reported from direct lanes.
fn daemon_hook_calls(d: &Daemon, plugin: &str, hook: &str) -> u64 {
    let out = d.ctl(&["--json", "inspect", plugin]);
    assert!(out.status.success(), "inspect: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("inspect --json: {e}: {}", String::from_utf8_lossy(&out.stdout)));
    let hooks = v["hooks"].as_array().unwrap_or_else(|| panic!("no hooks in inspect --json: {v}"));
    let h = hooks.iter().find(|h| h["name"] == hook).unwrap_or_else(|| panic!("no hook {hook:?} in {v}"));
    h["calls"].as_u64().unwrap_or_else(|| panic!("no calls count in {h}"))
}

/// Waits until the daemon's count stops moving (a report under way lands).
async fn wait_daemon_calls_settle(d: &Daemon) {
    let mut last = daemon_hook_calls(d, "media-badge", "badge");
    loop {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let now = daemon_hook_calls(d, "media-badge", "badge");
        if now == last {
            return;
        }
        last = now;
    }
}

/// Waits until the pushed table satisfies `ok`.
async fn wait_table(
    sub: &mut tokio::sync::watch::Receiver<Option<Arc<RouteTable>>>,
    ok: impl Fn(&RouteTable) -> bool,
) -> Arc<RouteTable> {
    let deadline = Duration::from_secs(10);
    tokio::time::timeout(deadline, async {
        loop {
            if let Some(t) = sub.borrow_and_update().clone() {
                if ok(&t) {
                    return t;
                }
            }
            sub.changed().await.expect("the session ended");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no such route table pushed in {deadline:?}; last {:#?}", sub.borrow()))
}

async fn wait_for(what: &str, limit: Duration, ok: impl Fn() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < limit, "waited {limit:?} for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Dispatches the response phase until the plugin (starting again) applies
/// its hook.
async fn dispatch_until_applied(session: &Session, req: &Request, resp: &Response, d: &Daemon) -> DispatchResult {
    let t = Instant::now();
    loop {
        let res = session.dispatch(Phase::Response, req, Some(resp)).await.expect("dispatch");
        if !res.applied.is_empty() {
            assert_eq!(res.applied, vec!["media-badge/badge".to_string()]);
            return res;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "the hook did not apply in 10 s: {res:?}\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A tiny stand-in for Dim's media handler: counts its calls, answers the
/// item with a rating by id, sets a cookie and says whether it saw one.
async fn media(
    axum::extract::State(calls): axum::extract::State<Arc<AtomicUsize>>,
    axum::extract::Path(id): axum::extract::Path<i64>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    calls.fetch_add(1, Ordering::SeqCst);
    let rating = match id {
        42 => "G",
        43 => "R",
        _ => "NR",
    };
    let saw = if headers.contains_key("cookie") && headers.contains_key("authorization") { "yes" } else { "no" };
    axum::response::Response::builder()
        .header("content-type", "application/json")
        .header("set-cookie", "dim_session=abc; HttpOnly")
        .header("x-saw-credentials", saw)
        .body(axum::body::Body::from(format!(r#"{{"id":{id},"name":"Item {id}","rating":"{rating}"}}"#)))
        .unwrap()
}

struct Got {
    status: u16,
    headers: axum::http::HeaderMap,
    body: String,
}

async fn get(app: &axum::Router, path: &str, user: Option<i64>, body: Vec<u8>) -> Got {
    use tower::ServiceExt;
    let mut b = axum::http::Request::builder()
        .method(if path == "/health" && !body.is_empty() { "POST" } else { "GET" })
        .uri(path)
        .header("cookie", "dim_session=abc")
        .header("authorization", "Bearer token");
    if let Some(u) = user {
        b = b.header("x-test-user", u.to_string());
    }
    let resp = app.clone().oneshot(b.body(axum::body::Body::from(body)).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    Got { status, headers, body: String::from_utf8_lossy(&body).into_owned() }
}

/// The tower layer around an axum Router, against a real daemon with
/// media-badge (response hook, route) and parental-controls (request hook:
/// short-circuits with 403; observe: learns ratings; fail-closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layer_against_a_real_daemon() {
    use axum::routing::get as get_route;
    use dimplugd_host::DimplugdLayer;

    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let Some(mut d) = start_with("layer", &["media-badge", "parental-controls"]) else { return };
    let session = Session::connect(d.socket()).await.unwrap_or_else(|e| panic!("connect: {e}\n{}", d.log()));
    let t = session.route_table().expect("a route table");
    let phases = t.matches("GET", "/api/v1/media/42");
    for p in [Phase::Request, Phase::Response, Phase::Observe] {
        assert!(phases.contains(&p), "{p:?} not hooked on GET /api/v1/media/:id: {t:#?}");
    }

    let calls = Arc::new(AtomicUsize::new(0));
    let layer = DimplugdLayer::new(session.clone()).max_body(4096).user(|p| {
        // The test's stand-in for the host's own authentication.
        p.headers.get("x-test-user")?.to_str().ok()?.parse().ok()
    });
    let app = axum::Router::new()
        .route("/api/v1/media/:id", get_route(media))
        .route("/health", get_route(|| async { "ok" }).post(|b: axum::body::Bytes| async move { b.len().to_string() }))
        .with_state(calls.clone())
        .layer(layer.clone());

    // A restricted user (2: PG) asking for an item of unknown rating: the
    // request hook answers 403 and the handler never runs.
    let g = get(&app, "/api/v1/media/44", Some(2), Vec::new()).await;
    assert_eq!(g.status, 403, "{}: {}\n{}", g.status, g.body, d.log());
    assert!(g.body.contains("blocked by parental controls"), "{}", g.body);
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the handler ran for a refused request");

    // An unrestricted user: the handler runs (with the client's
    // credentials), the response hook adds the badge and the view, the
    // handler's cookie is kept.
    let g = get(&app, "/api/v1/media/42", Some(1), Vec::new()).await;
    assert_eq!(g.status, 200, "{}", g.body);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(g.headers["x-dim-badge"], "plugin-approved", "{:?}", g.headers);
    assert_eq!(g.headers["x-saw-credentials"], "yes", "the handler lost the client's credentials");
    assert_eq!(g.headers["set-cookie"], "dim_session=abc; HttpOnly");
    assert_eq!(g.headers["content-length"], g.body.len().to_string().as_str());
    assert_eq!(json_field(&g.body, "plugin_badge"), Some("\"plugin-approved\""), "{}", g.body);
    assert_eq!(json_field(&g.body, "views"), Some("1"), "{}", g.body);
    assert_eq!(json_field(&g.body, "rating"), Some("\"G\""), "{}", g.body);

    // The observer learned item 42's rating (G) from that answer, off the
    // request path: the restricted user may now see it.
    assert!(layer.flush_observers(Duration::from_secs(5)).await, "observations not handed to the daemon");
    let t = Instant::now();
    loop {
        let g = get(&app, "/api/v1/media/42", Some(2), Vec::new()).await;
        if g.status == 200 {
            break;
        }
        assert_eq!(g.status, 403, "{}", g.body);
        assert!(t.elapsed() < Duration::from_secs(5), "parental-controls did not learn the rating: {}", g.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Item 43 is R: once learned, refused with its rating.
    assert_eq!(get(&app, "/api/v1/media/43", Some(1), Vec::new()).await.status, 200);
    let t = Instant::now();
    loop {
        let g = get(&app, "/api/v1/media/43", Some(2), Vec::new()).await;
        assert_eq!(g.status, 403, "{}", g.body);
        if json_field(&g.body, "rating") == Some("\"R\"") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "parental-controls did not learn rating R: {}", g.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A body over the limit on a hooked route: 413, the handler never runs;
    // unhooked routes are not limited.
    let before = calls.load(Ordering::SeqCst);
    let g = get(&app, "/api/v1/media/42", Some(1), vec![b'x'; 5000]).await;
    assert_eq!(g.status, 413, "{}", g.body);
    assert_eq!(calls.load(Ordering::SeqCst), before);
    let g = get(&app, "/health", None, vec![b'x'; 5000]).await;
    assert_eq!((g.status, g.body.as_str()), (200, "5000"));

    // The route phase: the plugin answers its own page (sandboxed by CSP).
    let g = get(&app, "/api/v1/plugins/media-badge/views?media_id=42", Some(1), Vec::new()).await;
    assert_eq!(g.status, 200, "{}", g.body);
    assert!(g.body.contains(r#"<span class="count">"#), "{}", g.body);
    assert_eq!(
        g.headers["content-security-policy"],
        "sandbox allow-scripts allow-forms; frame-ancestors 'self'; base-uri 'none'; form-action 'self'"
    );
    assert!(g.headers.get("set-cookie").is_none());

    // The daemon away: the fail-closed guard answers 503 naming the plugin;
    // unhooked routes are served.
    d.stop();
    wait_for("the session to notice the daemon left", Duration::from_secs(5), || !session.is_connected()).await;
    let before = calls.load(Ordering::SeqCst);
    let g = get(&app, "/api/v1/media/42", Some(1), Vec::new()).await;
    assert_eq!(g.status, 503, "{}", g.body);
    assert_eq!(g.headers["x-dimplugd-failed-plugin"], "parental-controls");
    assert!(g.body.contains("dimplugd is not reachable"), "{}", g.body);
    assert_eq!(calls.load(Ordering::SeqCst), before);
    assert_eq!(get(&app, "/health", None, Vec::new()).await.status, 200);
    session.close();
    eprintln!("layer test: {:?}", t0.elapsed());
}

/// User settings and the UI document: parental-controls' user scope
/// (`max_rating`, an enum) and media-badge's UI page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_ui_against_a_real_daemon() {
    use serde_json::Value;

    let _serial = SERIAL.lock().await;
    let Some(d) = start_with("settings", &["media-badge", "parental-controls"]) else { return };
    let session = Session::connect(d.socket()).await.unwrap_or_else(|e| panic!("connect: {e}\n{}", d.log()));
    let json = |s: &str| -> Value { serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}")) };

    // Nothing stored yet: the schema's default.
    let s = session.user_settings("parental-controls", 7).await.unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    assert_eq!((s.scope.as_str(), s.user), ("user", 7));
    assert_eq!(json(&s.values)["max_rating"], "");
    assert_eq!(json(&s.stored), serde_json::json!({}));
    assert_eq!(json(&s.schema)["properties"]["max_rating"]["type"], "string");
    assert_eq!(s.problem, None);

    // A write that validates, read back; another user's are untouched.
    let s = session.set_user_settings("parental-controls", 7, r#"{"max_rating":"PG"}"#).await.expect("valid write");
    assert_eq!(json(&s.values)["max_rating"], "PG");
    assert_eq!(json(&s.stored), serde_json::json!({"max_rating": "PG"}));
    let s = session.user_settings("parental-controls", 7).await.unwrap();
    assert_eq!(json(&s.values)["max_rating"], "PG");
    let other = session.user_settings("parental-controls", 8).await.unwrap();
    assert_eq!(json(&other.values)["max_rating"], "");

    // A write that fails validation names the field and stores nothing.
    for bad in [r#"{"max_rating":"XXX"}"#, r#"{"max_rating":5}"#, r#"{"no_such_field":true}"#] {
        match session.set_user_settings("parental-controls", 7, bad).await {
            Err(e @ Error::Rpc(_)) => {
                let field = if bad.contains("no_such_field") { "no_such_field" } else { "max_rating" };
                assert!(e.to_string().contains(field), "{bad}: the error does not name {field}: {e}");
            }
            other => panic!("{bad}: want an invalid error, got {other:?}"),
        }
    }
    // Not JSON at all.
    assert!(matches!(session.set_user_settings("parental-controls", 7, "{nope").await, Err(Error::Rpc(_))));
    assert_eq!(json(&session.user_settings("parental-controls", 7).await.unwrap().values)["max_rating"], "PG");

    // null resets a key to its default.
    let s = session.set_user_settings("parental-controls", 7, r#"{"max_rating":null}"#).await.expect("reset");
    assert_eq!(json(&s.values)["max_rating"], "");
    assert_eq!(json(&s.stored), serde_json::json!({}));

    // A plugin without user settings, and one not installed: not found.
    for p in ["media-badge", "no-such-plugin"] {
        match session.user_settings(p, 7).await {
            Err(e @ Error::Rpc(_)) => assert!(e.to_string().contains("not found") || e.to_string().contains(p), "{e}"),
            other => panic!("settings of {p}: want not found, got {other:?}"),
        }
    }

    // The UI document: media-badge's page in its slot, parental-controls'
    // Preferences tab.
    let doc = session.ui_document().await.unwrap_or_else(|e| panic!("ui document: {e}\n{}", d.log()));
    let v = json(doc.as_str());
    assert_eq!(v["format"], 1, "{doc}");
    assert!(v["version"].as_str().is_some_and(|s| !s.is_empty()), "{doc}");
    let plugins = v["plugins"].as_array().expect("plugins");
    let badge = plugins.iter().find(|p| p["name"] == "media-badge").unwrap_or_else(|| panic!("{doc}"));
    let page = &badge["pages"][0];
    assert_eq!((&page["id"], &page["slot"]), (&Value::from("views"), &Value::from("media-action")), "{doc}");
    let pc = plugins.iter().find(|p| p["name"] == "parental-controls").unwrap_or_else(|| panic!("{doc}"));
    assert!(pc["preferences"].is_object(), "no Preferences tab: {doc}");
    // The same content, the same version.
    assert_eq!(json(session.ui_document().await.unwrap().as_str())["version"], v["version"]);
    assert_eq!(json(UiDocument::unavailable().as_str())["plugins"], serde_json::json!([]));
    session.close();
}

/// An ISO BMFF box.
fn bmff_box(typ: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut b = ((8 + payload.len()) as u32).to_be_bytes().to_vec();
    b.extend_from_slice(typ);
    b.extend_from_slice(payload);
    b
}

/// Bytes that are not all alike, so that a misplaced copy shows.
fn pattern(n: usize, seed: u64) -> Vec<u8> {
    (0..n as u64).map(|i| (i.wrapping_mul(31).wrapping_add(seed * 7) % 251) as u8).collect()
}

/// What the stream test sends as frame `seq`, and what segment-tagger
/// makes of it (examples/plugins/segment-tagger/main.go): init segments
/// and what is not ISO BMFF pass untouched; a media segment with a free
/// box gets the tag in that box's payload; one without gets a free box
/// with the tag appended.
fn tagger_case(seq: u64) -> (Vec<u8>, Vec<u8>, &'static str) {
    let tag = format!("dimplugd:segment-tagger seq={seq}");
    // Sizes from 100 B (inline) to 300 KiB, and one of 1.5 MiB (larger
    // than the test's pool: a pool of its own).
    let sizes = [100, 400, 4 << 10, 60 << 10, 300 << 10, 1000, 200, 20 << 10];
    let n = if seq == 25 { 1536 << 10 } else { sizes[seq as usize % sizes.len()] };
    match seq % 5 {
        0 => {
            let mut f = bmff_box(b"ftyp", b"iso6mp41");
            f.extend(bmff_box(b"moov", &pattern(n, seq)));
            (f.clone(), f, "init")
        }
        1 => {
            let mut f = vec![0, 0, 0, 3]; // a box size below its header: not ISO BMFF
            f.extend(pattern(n, seq));
            (f.clone(), f, "junk")
        }
        2 | 3 => {
            let mut f = bmff_box(b"free", &[0xAA; 64]);
            f.extend(bmff_box(b"moof", &[1; 16]));
            f.extend(bmff_box(b"mdat", &pattern(n, seq)));
            let mut want = f.clone();
            let mut payload = tag.into_bytes();
            payload.resize(64, 0);
            want[8..72].copy_from_slice(&payload);
            (f, want, "tagged in place")
        }
        _ => {
            let mut f = bmff_box(b"moof", &[2; 16]);
            f.extend(bmff_box(b"mdat", &pattern(n, seq)));
            let mut want = f.clone();
            want.extend(bmff_box(b"free", tag.as_bytes()));
            (f, want, "tag appended")
        }
    }
}

/// Frame streams: segment-tagger (a transform) and stream-stats (an
/// observer) on video streams; a kind no plugin takes (an empty chain);
/// the cap on open streams (a refusal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_against_a_real_daemon() {
    use dimplugd_host::{Frame, StreamMeta};

    let _serial = SERIAL.lock().await;
    let Some(mut d) = start_with("streams", &["segment-tagger", "stream-stats"]) else { return };
    // A 1 MiB pool: sends wait for releases (back-pressure), and the
    // 1.5 MiB frame gets a pool of its own.
    let opts = Options { stream_pool_size: 1 << 20, ..Options::default() };
    let session = Session::connect_with(d.socket(), opts).await.unwrap_or_else(|e| panic!("connect: {e}\n{}", d.log()));
    let meta = StreamMeta {
        media_id: 42,
        track: "video".into(),
        codec: "avc1.64001f".into(),
        timescale: 90000,
        extra: vec![("test".into(), "rust".into())],
    };
    let stream = Arc::new(
        session.open_stream("video/segment", &meta).await.unwrap_or_else(|e| panic!("open: {e}\n{}", d.log())),
    );
    assert_eq!(stream.stages(), vec!["segment-tagger/tag".to_string(), "stream-stats/video".to_string()]);
    assert_eq!(stream.chain()[0].role, "transform");
    assert_eq!(stream.chain()[1].role, "observe");

    const N: u64 = 50;
    let sender = {
        let stream = stream.clone();
        tokio::spawn(async move {
            for seq in 0..N {
                let (data, _, _) = tagger_case(seq);
                if seq % 7 == 6 {
                    // Filled in place in shared memory: no copy.
                    let mut f = stream.new_frame(data.len()).await.unwrap_or_else(|e| panic!("new_frame {seq}: {e}"));
                    f.data_mut().copy_from_slice(&data);
                    (f.seq, f.pts, f.dts, f.duration) = (seq, seq as i64 * 3000, seq as i64 * 3000, 3000);
                    f.key_frame = seq % 5 == 0;
                    f.content_type = "video/iso.segment".into();
                    stream.send_shared(f).await.unwrap_or_else(|e| panic!("send_shared {seq}: {e}"));
                    continue;
                }
                let f = Frame {
                    seq,
                    pts: seq as i64 * 3000,
                    dts: seq as i64 * 3000,
                    duration: 3000,
                    key_frame: seq % 5 == 0,
                    content_type: if seq % 5 == 0 { "video/mp4".into() } else { "video/iso.segment".into() },
                    data,
                };
                stream.send(&f).await.unwrap_or_else(|e| panic!("send {seq}: {e}"));
            }
            stream.close_send().expect("close_send");
        })
    };
    let mut shared = 0;
    let mut plugin_memory = 0;
    for seq in 0..N {
        let f = tokio::time::timeout(Duration::from_secs(20), stream.recv())
            .await
            .unwrap_or_else(|_| panic!("no frame {seq} in 20 s\n{}", d.log()))
            .unwrap_or_else(|e| panic!("recv {seq}: {e}\n{}", d.log()))
            .unwrap_or_else(|| panic!("the stream ended before frame {seq}"));
        let (sent, want, case) = tagger_case(seq);
        assert_eq!((f.seq, f.part, f.parts), (seq, 0, 1), "{f:?}");
        assert_eq!(f.pts, seq as i64 * 3000);
        assert_eq!(f.key_frame, seq % 5 == 0);
        assert_eq!(f.data().len(), want.len(), "frame {seq} ({case}, {} bytes sent)", sent.len());
        assert!(f.data() == want.as_slice(), "frame {seq} ({case}): not what segment-tagger makes of it");
        shared += f.is_shared() as u32;
        plugin_memory += f.in_plugin_memory() as u32;
        if case.starts_with("tag") {
            assert!(f.in_plugin_memory(), "frame {seq} ({case}) is not in the plugin's memory");
        }
        drop(f); // released
    }
    assert!(shared > 0 && plugin_memory > 0, "shared {shared}, in plugin memory {plugin_memory}");
    let end = tokio::time::timeout(Duration::from_secs(10), stream.recv()).await.expect("the end");
    assert!(matches!(end, Ok(None)), "want the clean end, got {end:?}");
    assert!(matches!(stream.recv().await, Ok(None)), "the end is kept");
    sender.await.unwrap();
    assert!(stream.send(&Frame::default()).await.is_err(), "a send after the end");

    // Every frame released: the daemon gave back what the tagger and the
    // observer held, and the pools went with the stream.
    let t = Instant::now();
    loop {
        let m = session.frame_memory().await;
        if m.in_use_bytes == 0 && m.in_use_frames == 0 && m.pools == 0 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "frame memory not all released: {m:?}\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A kind no plugin takes: an empty chain, frames come straight back
    // (our own memory, returned).
    let plain = session.open_stream("text/x-test", &StreamMeta::default()).await.expect("open an empty chain");
    assert!(plain.chain().is_empty());
    for (seq, n) in [(1u64, 10usize), (2, 5000), (3, 0)] {
        plain.send(&Frame { seq, data: pattern(n, seq), ..Frame::default() }).await.unwrap();
    }
    for (seq, n) in [(1u64, 10usize), (2, 5000), (3, 0)] {
        let f = plain.recv().await.unwrap().unwrap();
        assert_eq!((f.seq, f.data()), (seq, pattern(n, seq).as_slice()));
        assert!(!f.in_plugin_memory());
    }
    assert!(session.frame_memory().await.in_use_bytes == 0, "returned frames not freed");
    // Back-pressure: three frames of 300 KiB held (received back, not
    // taken) fill most of the 1 MiB pool; a fourth send waits until one is
    // taken and dropped.
    let big = |seq: u64| Frame { seq, data: pattern(300 << 10, seq), ..Frame::default() };
    for seq in 10..13 {
        plain.send(&big(seq)).await.unwrap();
    }
    let waited = tokio::time::timeout(Duration::from_millis(300), plain.send(&big(13))).await;
    assert!(waited.is_err(), "a send into a full pool did not wait: {waited:?}");
    let m = session.frame_memory().await;
    assert_eq!((m.in_use_frames, m.pools), (3, 1), "{m:?}");
    let f = plain.recv().await.unwrap().unwrap();
    assert_eq!(f.seq, 10);
    drop(f); // its slot is free: the send goes
    tokio::time::timeout(Duration::from_secs(5), plain.send(&big(13)))
        .await
        .expect("the send waited on with room in the pool")
        .expect("the send once there was room");
    for seq in 11..14 {
        let f = plain.recv().await.unwrap().unwrap();
        assert!((f.seq, f.data()) == (seq, big(seq).data.as_slice()), "frame {seq}");
    }
    let unsent = plain.new_frame(3000).await.unwrap();
    assert_eq!(unsent.data().len(), 3000);
    assert_eq!(session.frame_memory().await.in_use_frames, 1);
    drop(unsent);
    assert_eq!(session.frame_memory().await.in_use_bytes, 0, "an unsent frame's memory not freed");
    plain.cancel().unwrap();
    assert!(plain.recv().await.is_err(), "recv after cancel");

    // The cap on open streams: the 257th is refused, saying why.
    let mut open = Vec::new();
    let refused = loop {
        match session.open_stream("text/x-test", &StreamMeta::default()).await {
            Ok(s) => open.push(s),
            Err(e) => break e,
        }
        assert!(open.len() <= 256, "more than 256 streams open");
    };
    assert!(matches!(refused, Error::Stream(_)), "{refused:?}");
    assert!(refused.to_string().contains("too many open streams"), "{refused}");
    assert_eq!(open.len(), 256);
    drop(open); // cancelled
    let again = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match session.open_stream("text/x-test", &StreamMeta::default()).await {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("a stream after the others were cancelled");
    drop(again);

    // The daemon going away cuts the streams off: recv says so, and so
    // does send; opening waits for the daemon.
    let cut = session.open_stream("video/segment", &meta).await.expect("open");
    cut.send(&Frame { seq: 1, data: pattern(2000, 1), ..Frame::default() }).await.unwrap();
    let first = cut.recv().await.expect("the frame before the cut").expect("a frame");
    d.stop();
    let end = tokio::time::timeout(Duration::from_secs(10), cut.recv()).await.expect("recv after the daemon left");
    assert!(matches!(end, Err(Error::StreamCut(_))), "want StreamCut, got {end:?}");
    assert!(end.unwrap_err().is_daemon_away());
    assert!(cut.send(&Frame::default()).await.is_err(), "a send on a cut stream");
    // The frame received before the cut is still readable.
    assert_eq!(first.data().len(), 2000);
    drop(first);
    wait_for("the session to notice the daemon left", Duration::from_secs(5), || !session.is_connected()).await;
    let away = session.open_stream("video/segment", &meta).await;
    assert!(matches!(away, Err(Error::DaemonAway)), "{away:?}");
    session.close();
}

/// A fail-closed stage failing under a stream: a copy of segment-tagger
/// installed as "strict-tagger" with `failure = "fail-closed"`, restarted
/// while the stream is open. The stream ends with an error naming it;
/// the memory the chain held comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_stage_failure_against_a_real_daemon() {
    use dimplugd_host::{Frame, StreamMeta};

    let _serial = SERIAL.lock().await;
    let Some(d) = start_with("strict", &["segment-tagger"]) else { return };
    let strict = d.dir.join("strict-tagger");
    fs::create_dir_all(&strict).unwrap();
    fs::copy(d.dir.join("segment-tagger/segment-tagger"), strict.join("segment-tagger")).unwrap();
    let manifest = fs::read_to_string(d.dir.join("segment-tagger/plugin.toml")).unwrap();
    let manifest = manifest
        .replace("name = \"segment-tagger\"", "name = \"strict-tagger\"")
        .replace("failure = \"fail-open\"", "failure = \"fail-closed\"");
    assert!(manifest.contains("strict-tagger") && manifest.contains("fail-closed"), "{manifest}");
    fs::write(strict.join("plugin.toml"), manifest).unwrap();
    let out = d.ctl(&["install", "--yes", strict.to_str().unwrap()]);
    assert!(out.status.success(), "install strict-tagger: {}", String::from_utf8_lossy(&out.stderr));

    let session = Session::connect(d.socket()).await.unwrap_or_else(|e| panic!("connect: {e}\n{}", d.log()));
    let meta = StreamMeta { media_id: 7, track: "video".into(), timescale: 1000, ..StreamMeta::default() };
    let stream = session.open_stream("video/segment", &meta).await.unwrap_or_else(|e| panic!("open: {e}\n{}", d.log()));
    assert_eq!(stream.stages(), vec!["segment-tagger/tag".to_string(), "strict-tagger/tag".to_string()]);
    let (data, want, _) = tagger_case(2); // tagged in place (by both: the same tag)
    stream.send(&Frame { seq: 2, data, ..Frame::default() }).await.unwrap();
    let f = stream.recv().await.unwrap().expect("a frame");
    assert!(f.data() == want.as_slice(), "frame 2 not tagged");
    drop(f);

    let out = d.ctl(&["restart", "strict-tagger"]);
    assert!(out.status.success(), "restart: {}", String::from_utf8_lossy(&out.stderr));
    let t = Instant::now();
    let mut seq = 3;
    let err = loop {
        assert!(t.elapsed() < Duration::from_secs(15), "the stream did not fail\n{}", d.log());
        // Fails once the stream has ended: recv says why.
        let _ = stream.send(&Frame { seq, data: tagger_case(seq).0, ..Frame::default() }).await;
        seq += 1;
        match tokio::time::timeout(Duration::from_millis(500), stream.recv()).await {
            Ok(Ok(Some(_))) | Err(_) => continue,
            Ok(Ok(None)) => panic!("the stream ended cleanly"),
            Ok(Err(e)) => break e,
        }
    };
    assert!(matches!(err, Error::Stream(_)), "{err:?}");
    assert!(err.to_string().contains("strict-tagger"), "the error does not name the plugin: {err}");
    eprintln!("the stage failure: {err}");
    assert!(stream.send(&Frame::default()).await.is_err(), "a send on a failed stream");
    drop(stream);
    let t = Instant::now();
    loop {
        let m = session.frame_memory().await;
        if m.in_use_bytes == 0 && m.pools == 0 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(35), "frame memory not released after the failure: {m:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    session.close();
}
