//! The README's run command on a machine without protoc: the build scripts
//! that compile .proto files (etcd-client's and floe-rpc's) run
//! with protoc hidden — not on PATH, PROTOC unset — and find the binary of
//! the protoc-bin-vendored crate through `scripts/protoc`
//! (`.cargo/config.toml`).
//!
//! `cargo check` of the `floe` package in its own target directory stands
//! for `cargo run --release -p floe`: it runs the same build scripts (the
//! step that needs protoc) for the whole dependency graph, without the
//! release code generation that would cost CI minutes. The two packages
//! with proto build scripts are cleaned first, so their scripts really run
//! every time.
// Tests run real processes in real time: outside the time seam.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ is inside the workspace")
        .to_path_buf()
}

/// A directory of links to every program on PATH except protoc.
fn path_without_protoc(dir: &Path) -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    for d in std::env::split_paths(&path) {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let link = dir.join(&name);
            if name == "protoc" || link.exists() {
                continue;
            }
            let _ = std::os::unix::fs::symlink(e.path(), &link);
        }
    }
    dir.display().to_string()
}

#[test]
fn floe_builds_on_a_machine_without_protoc() {
    let bin = tempfile::tempdir().unwrap();
    let path = path_without_protoc(bin.path());
    let hidden = Command::new("sh")
        .args(["-c", "command -v protoc"])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(!hidden.status.success(), "protoc is still on the PATH");

    let root = workspace_root();
    let target = root.join("target").join("fresh-build");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let run = |args: &[&str]| {
        Command::new(&cargo)
            .args(args)
            .current_dir(&root)
            .env("PATH", &path)
            .env_remove("PROTOC")
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .unwrap()
    };
    let clean = run(&["clean", "-p", "etcd-client", "-p", "floe-rpc"]);
    assert!(
        clean.status.success(),
        "{}",
        String::from_utf8_lossy(&clean.stderr)
    );
    let check = run(&["check", "--locked", "-p", "floe"]);
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(
        check.status.success(),
        "cargo check without protoc:\n{stderr}"
    );
    // The build scripts ran (the packages were cleaned) and made the code
    // of each proto file.
    for (package, generated) in [
        ("etcd-client", "etcdserverpb.rs"),
        ("floe-rpc", "floe.tail.v1.rs"),
        ("floe-rpc", "floe.admin.v1.rs"),
    ] {
        let found = std::fs::read_dir(target.join("debug").join("build"))
            .unwrap()
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().to_string();
                n.strip_prefix(package)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|hash| !hash.contains('-'))
            })
            .any(|e| e.path().join("out").join(generated).exists());
        assert!(found, "{package}: no {generated} generated\n{stderr}");
    }
}
