//! What the integration tests share: where the repository is, how a
//! missing prerequisite is handled, and running the Go tool.
#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The repository's root (sdk-rust/dimplugd-host/../..).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Skips (returns None) or, under CI, fails when a prerequisite is missing.
pub fn prerequisite(ok: bool, what: &str) -> Option<()> {
    if ok {
        return Some(());
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("prerequisite missing under CI=true: {what}");
    }
    eprintln!("SKIPPED: {what}");
    None
}

/// The Go tool: $GO, else go on PATH.
pub fn go_cmd() -> String {
    std::env::var("GO").unwrap_or_else(|_| "go".into())
}

/// Runs go in root, failing the test with go's stderr when it fails.
pub fn go(root: &Path, args: &[&str], envs: &[(&str, &str)]) {
    let out = Command::new(go_cmd())
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(root)
        .stdin(Stdio::null())
        .output()
        .expect("run go");
    assert!(out.status.success(), "go {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}
