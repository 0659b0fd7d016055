//! Compiles dimplugd's Cap'n Proto schema (the repository's schema/*.capnp)
//! to Rust with the capnpc crate. Needs the `capnp` tool (Debian: capnproto)
//! on PATH, or its path in $CAPNP.
//!
//! The schemas carry go-capnp annotations (`$Go.package(...)`), which the
//! Rust generator ignores, but `capnp compile` must still find the file that
//! declares them:
//!   * schema/go.capnp beside the schemas (imported relatively as
//!     `import "go.capnp"`, or absolutely as `import "/go.capnp"`: the schema
//!     directory is an import path too), or
//!   * the directories in $DIMPLUGD_CAPNP_IMPORT_PATH (':'-separated), e.g.
//!     go-capnp's std/ (`go list -m -f '{{.Dir}}' capnproto.org/go/capnp/v3`/std);
//!     sdk-rust/rust.mk sets it when schema/go.capnp is not there, or
//!   * failing both, the std/ directory of the go-capnp module as `go list`
//!     finds it, when Go is installed.
//!
//! Every schema/*.capnp is compiled except the annotation files of other
//! languages (go.capnp, c++.capnp, rust.capnp); each becomes the module
//! `dimplugd_host::schema::<name>_capnp`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const FOREIGN: &[&str] = &["go.capnp", "c++.capnp", "rust.capnp"];

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let schema_dir = match env::var_os("DIMPLUGD_SCHEMA_DIR") {
        Some(d) => PathBuf::from(d),
        None => manifest.join("../../schema"),
    };
    let schema_dir = schema_dir.canonicalize().unwrap_or_else(|e| {
        panic!("dimplugd schema directory {} not found ({e}); set DIMPLUGD_SCHEMA_DIR", schema_dir.display())
    });
    println!("cargo:rerun-if-changed={}", schema_dir.display());
    println!("cargo:rerun-if-env-changed=DIMPLUGD_SCHEMA_DIR");
    println!("cargo:rerun-if-env-changed=DIMPLUGD_CAPNP_IMPORT_PATH");
    println!("cargo:rerun-if-env-changed=CAPNP");

    let mut files: Vec<PathBuf> = fs::read_dir(&schema_dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", schema_dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "capnp"))
        .filter(|p| !FOREIGN.contains(&p.file_name().unwrap().to_str().unwrap_or("")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .capnp files in {}", schema_dir.display());
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }

    let mut cmd = capnpc::CompilerCommand::new();
    if let Some(capnp) = env::var_os("CAPNP") {
        cmd.capnp_executable(capnp);
    }
    cmd.src_prefix(&schema_dir);
    cmd.default_parent_module(vec!["schema".into()]);
    for dir in import_paths(&schema_dir) {
        cmd.import_path(dir);
    }
    for f in &files {
        cmd.file(f);
    }
    if let Err(e) = cmd.run() {
        panic!(
            "capnp compile of {} failed: {e}\n\
             Is the capnp tool installed (Debian: apt-get install capnproto)? If it cannot find \
             /go.capnp: set DIMPLUGD_CAPNP_IMPORT_PATH to go-capnp's std directory \
             ($(go list -m -f '{{{{.Dir}}}}' capnproto.org/go/capnp/v3)/std).",
            schema_dir.display()
        );
    }

    // schema.rs: one module per compiled file, included by lib.rs.
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    let mut mods = String::new();
    for f in &files {
        let stem = f.file_stem().unwrap().to_str().unwrap().replace(['-', '.'], "_");
        mods.push_str(&format!(
            "#[allow(clippy::all, unused, missing_docs)]\npub mod {stem}_capnp {{ include!(concat!(env!(\"OUT_DIR\"), \"/{stem}_capnp.rs\")); }}\n"
        ));
    }
    fs::write(out.join("schema.rs"), mods).unwrap();
}

/// The import paths for `capnp compile`: the schema directory itself (so
/// `import "/go.capnp"` finds schema/go.capnp once it is there), then
/// $DIMPLUGD_CAPNP_IMPORT_PATH, then go-capnp's std/ if neither provides
/// go.capnp.
fn import_paths(schema_dir: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![schema_dir.to_path_buf()];
    if let Some(list) = env::var_os("DIMPLUGD_CAPNP_IMPORT_PATH") {
        for d in env::split_paths(&list) {
            if d.is_dir() {
                dirs.push(d);
            } else if !d.as_os_str().is_empty() {
                println!("cargo:warning=DIMPLUGD_CAPNP_IMPORT_PATH: {} is not a directory, ignored", d.display());
            }
        }
    }
    if dirs.iter().any(|d| d.join("go.capnp").is_file()) {
        return dirs;
    }
    // Last resort for a plain `cargo build` in a checkout: ask Go where
    // go-capnp is (the repository's go.mod requires it).
    let go = env::var_os("GO").unwrap_or_else(|| "go".into());
    let repo = schema_dir.parent().unwrap_or(schema_dir);
    if let Ok(out) =
        Command::new(go).args(["list", "-m", "-f", "{{.Dir}}", "capnproto.org/go/capnp/v3"]).current_dir(repo).output()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("std");
        if out.status.success() && dir.join("go.capnp").is_file() {
            dirs.push(dir);
        }
    }
    dirs
}
