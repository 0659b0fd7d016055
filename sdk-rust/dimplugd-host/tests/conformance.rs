//! The conformance kit against this crate: runs `dimplugd conformance host
//! --driver <examples/conformance-driver>` (docs/conformance.md), which
//! starts a daemon of its own, installs the kit's plugin as conf-a and
//! conf-b and drives every case through the crate's driver, and asserts
//! that every case passes. The kit's report is printed either way.
//!
//! `dimplugd` and `dimplugd-conformance-plugin` come from
//! DIMPLUGD_TEST_BIN (`make build` puts them side by side in bin/) when
//! both are there, else they are built with Go. The driver is the example
//! next to this test's binary (target/debug/examples/conformance-driver),
//! built with `cargo build --offline --example conformance-driver` when it
//! is missing. Without Go (and no prebuilt binaries) the test is skipped,
//! except when CI=true, where a missing prerequisite fails it.

mod common;
use common::{go, go_cmd, prerequisite, repo_root};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A directory holding `dimplugd` and `dimplugd-conformance-plugin`, and
/// whether the test made it (and removes it).
fn kit_binaries() -> Option<(PathBuf, bool)> {
    if let Some(b) = std::env::var_os("DIMPLUGD_TEST_BIN").map(PathBuf::from) {
        if b.join("dimplugd").is_file() && b.join("dimplugd-conformance-plugin").is_file() {
            return Some((b, false));
        }
        eprintln!(
            "DIMPLUGD_TEST_BIN={} lacks dimplugd or dimplugd-conformance-plugin: building them with Go",
            b.display()
        );
    }
    let go_ok = Command::new(go_cmd())
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    prerequisite(go_ok, "Go is not installed (needed to build dimplugd and the kit's plugin)")?;
    let root = repo_root();
    let dir = std::env::temp_dir().join(format!("dimplugd-rs-conformance-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let t = Instant::now();
    let out = dir.to_str().unwrap();
    go(&root, &["build", "-tags", "seccomp", "-o", &format!("{out}/dimplugd"), "./cmd/dimplugd"], &[]);
    go(
        &root,
        &["build", "-trimpath", "-o", &format!("{out}/dimplugd-conformance-plugin"), "./daemon/conformance/plugin"],
        &[("CGO_ENABLED", "0")],
    );
    eprintln!("built dimplugd and the kit's plugin in {:?}", t.elapsed());
    Some((dir, true))
}

/// The crate's conformance driver: the example built next to this test
/// (target/<profile>/examples), built now if it is missing.
fn driver() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/conformance-<hash> → target/<profile>
    let profile_dir = exe.parent().and_then(Path::parent).expect("the test binary is in target/<profile>/deps");
    let driver = profile_dir.join("examples").join("conformance-driver");
    if driver.is_file() {
        return driver;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--offline", "-p", "dimplugd-host", "--example", "conformance-driver"])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .stdin(Stdio::null());
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    if let Some(target) = profile_dir.parent() {
        build.arg("--target-dir").arg(target);
    }
    let st = build.status().expect("run cargo build --example conformance-driver");
    assert!(st.success(), "cargo build --example conformance-driver: {st}");
    assert!(driver.is_file(), "cargo built the driver, but {} is not there", driver.display());
    driver
}

#[test]
fn rust_driver_passes_the_kit() {
    if prerequisite(cfg!(target_os = "linux"), "dimplugd runs on Linux only").is_none() {
        return;
    }
    let Some((bin, made)) = kit_binaries() else { return };
    let driver = driver();
    let driver_arg = driver.to_str().expect("the driver's path is UTF-8");
    assert!(!driver_arg.contains(' '), "the kit splits --driver at spaces; the driver's path has one: {driver_arg}");

    let t = Instant::now();
    let mut kit = Command::new(bin.join("dimplugd"));
    // The kit finds dimplugd-conformance-plugin next to dimplugd.
    kit.args(["conformance", "host", "--driver", driver_arg])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = kit.spawn().expect("start dimplugd conformance host");
    // The kit bounds each case; this only keeps a hung kit from hanging the test.
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(Duration::from_secs(300)).is_err() {
            eprintln!("dimplugd conformance host ran for 300 s: killing it");
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
        }
    });
    let out = child.wait_with_output().expect("wait for dimplugd conformance host");
    let _ = done_tx.send(());
    let _ = watchdog.join();
    if made && std::env::var_os("DIMPLUGD_TEST_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&bin);
    }

    let report = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("dimplugd conformance host --driver {driver_arg} ({:?}):\n{report}", t.elapsed());
    if !stderr.trim().is_empty() {
        println!("stderr:\n{stderr}");
    }
    assert!(
        out.status.success(),
        "the conformance kit failed the Rust crate ({}; exit 1: a case failed, others: the kit could not run):\n{report}\n{stderr}",
        out.status
    );
    // The crate implements every optional part: none may go unclaimed.
    assert!(
        report.contains(" passed, 0 failed, 0 not claimed"),
        "the Rust driver left cases unclaimed (its hello must list direct-lanes and streams):\n{report}"
    );
}
