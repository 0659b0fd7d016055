//! Against a real daemon: builds dimplugd, dimplugctl and the media-badge
//! example plugin from this repository with Go, starts `dimplugd serve` on a
//! temporary state directory and sockets (sandboxed as root, with
//! --insecure-no-sandbox otherwise), installs media-badge, then drives the
//! host face from Rust: openHost, routes, dispatch.
//!
//! Prebuilt binaries: DIMPLUGD_TEST_BIN=<dir holding dimplugd and
//! dimplugctl> skips building those two. Without Go the test is skipped,
//! except when CI=true, where a missing prerequisite fails it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dimplugd_host::{
    DispatchResult, Error, FailurePolicy, HookErrorKind, Options, Outcome, Phase, Request, Response, RouteTable,
    Session,
};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Skips (returns None) or, under CI, fails when a prerequisite is missing.
fn prerequisite(ok: bool, what: &str) -> Option<()> {
    if ok {
        return Some(());
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("prerequisite missing under CI=true: {what}");
    }
    eprintln!("SKIPPED: {what}");
    None
}

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

fn go(root: &Path, args: &[&str], envs: &[(&str, &str)]) {
    let out = Command::new(std::env::var("GO").unwrap_or_else(|_| "go".into()))
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(root)
        .output()
        .expect("run go");
    assert!(out.status.success(), "go {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

fn run_cmd_ok(cmd: &str) -> bool {
    Command::new(cmd).arg("version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Builds what is needed and starts the daemon with media-badge installed.
fn start() -> Option<Daemon> {
    prerequisite(cfg!(target_os = "linux"), "dimplugd runs on Linux only")?;
    let root = repo_root();
    let go_cmd = std::env::var("GO").unwrap_or_else(|_| "go".into());
    prerequisite(run_cmd_ok(&go_cmd), "Go is not installed (needed to build dimplugd and media-badge)")?;

    let dir = std::env::temp_dir().join(format!("dimplugd-rs-{}", std::process::id()));
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
    // The plugin: its manifest and a static build, in a copy of its directory.
    let plugin = dir.join("media-badge");
    fs::create_dir_all(&plugin).unwrap();
    fs::copy(root.join("examples/plugins/media-badge/plugin.toml"), plugin.join("plugin.toml")).unwrap();
    go(
        &root,
        &["build", "-trimpath", "-o", plugin.join("media-badge").to_str().unwrap(), "./examples/plugins/media-badge"],
        &[("CGO_ENABLED", "0")],
    );
    eprintln!("built the Go binaries in {:?}", t.elapsed());

    fs::write(
        dir.join("config.toml"),
        format!(
            "state_dir = \"{0}/state\"\nsocket = \"{0}/dimplugd.sock\"\ncontrol_socket = \"{0}/control.sock\"\n\
             container_state = \"{0}/containers\"\ncgroup_parent = \"dimplugd-rstest-{1}\"\n",
            dir.display(),
            std::process::id()
        ),
    )
    .unwrap();
    d.serve();
    let out = d.ctl(&["install", "--yes", plugin.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "dimplugctl install media-badge: {}{}\ndaemon log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
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
    assert_eq!(hook.deadline, Duration::from_millis(200));
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

    // The plugin's own route answers with the count it kept.
    let mut page =
        Request::new("GET", "/api/v1/plugins/media-badge/views").with_route("/api/v1/plugins/media-badge/views");
    page.raw_query = "media_id=42".into();
    let res = session.dispatch(Phase::Route, &page, None).await.expect("dispatch route");
    let Outcome::Respond(r) = &res.outcome else { panic!("want Respond, got {:?}", res.outcome) };
    assert_eq!(r.status, 200);
    let html = String::from_utf8_lossy(&r.body);
    assert!(html.contains(r#"<span class="count">2</span>"#), "views page: {html}");

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
    assert_eq!(json_field(&body, "views"), Some("3"), "{body}");
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
