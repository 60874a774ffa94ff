//! Helpers shared by the peer tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Run a peer tool; a missing tool fails the test with the Debian package to install.
pub fn peer(tool: &str, package: &str, args: &[&str], cwd: Option<&Path>) -> Output {
    let mut c = Command::new(tool);
    c.args(args);
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    match c.output() {
        Ok(o) => o,
        Err(e) => panic!("cannot run {tool} ({e}): install the Debian package {package}"),
    }
}

/// Like [`peer`], and the tool must succeed.
pub fn peer_ok(tool: &str, package: &str, args: &[&str], cwd: Option<&Path>) -> String {
    let o = peer(tool, package, args, cwd);
    assert!(
        o.status.success(),
        "{tool} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crate is inside the workspace")
        .to_owned()
}
