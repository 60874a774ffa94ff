//! The fleet server on the host side of a VM scenario: the real `basalt-rollout` binary
//! (`rollout/`), started as an operator would (`operator add` against its own SQLite file,
//! then `serve` on a free 127.0.0.1 port), and its operator CLI run as a program with the
//! operator's token file — the same commands `rollout/README.md` shows.
//!
//! Owns: building the binary for the tests ([`rollout_cli`]), the server's process (killed by
//! PID when dropped, dies with the test thread), its folder (database, token, log) and the
//! CLI calls ([`RolloutServer::cli`], [`RolloutServer::json`]). Does not own: the server's
//! behaviour (`basalt-rollout`), the node side (`basalt-updated`'s server mode), the guest
//! network ([`crate::story::restricted_nic_to`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::tool::{Tool, CARGO};

static ROLLOUT: Mutex<Option<PathBuf>> = Mutex::new(None);

/// How the CLI is named in errors (and how to get it).
const ROLLOUT_TOOL: Tool = Tool::new(
    "basalt-rollout",
    "basalt-rollout (cargo build -p basalt-rollout)",
);

/// `basalt-rollout` (debug): the workspace's own build ([`crate::artifacts::prebuilt`]) or
/// else built into `<workspace>/build/target-cli`, the folder of
/// [`crate::artifacts::basalt_cli`], for the same reason: a binary of another
/// crate built in the test build's folder would unify dependency features differently and
/// make the next `cargo test` rebuild half the workspace.
pub fn rollout_cli() -> Result<PathBuf> {
    let mut done = ROLLOUT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = done.as_ref() {
        return Ok(path.clone());
    }
    if let Some(path) = crate::artifacts::prebuilt("basalt-rollout") {
        *done = Some(path.clone());
        return Ok(path);
    }
    let target_dir = crate::workspace_root().join("build").join("target-cli");
    let mut cmd = CARGO.command()?;
    cmd.current_dir(crate::workspace_root())
        .env("CARGO_TARGET_DIR", &target_dir)
        .args([
            "build",
            "--quiet",
            "-p",
            "basalt-rollout",
            "--bin",
            "basalt-rollout",
        ]);
    CARGO.run(&mut cmd)?;
    let path = target_dir.join("debug").join("basalt-rollout");
    *done = Some(path.clone());
    Ok(path)
}

/// A running `basalt-rollout serve` with one operator; killed (by its PID) when dropped.
#[derive(Debug)]
pub struct RolloutServer {
    child: Child,
    port: u16,
    dir: PathBuf,
    cli: PathBuf,
    token_file: PathBuf,
}

impl RolloutServer {
    /// In `dir` (emptied first): `basalt-rollout operator add operator --db fleet.db` (the
    /// token goes to `operator.token`, mode 0600), then `basalt-rollout serve --db fleet.db`
    /// on a free 127.0.0.1 port, trusting the releases signed under `trust_root` (an initial
    /// trust-root envelope), with `repo` as the served repository (releases published into a
    /// channel must have their blobs there) and `repo_url` as the address nodes are told to
    /// fetch from. The server's log (`BASALT_LOG=info`) is `server.log`.
    pub fn start(dir: &Path, trust_root: &Path, repo: &Path, repo_url: &str) -> Result<Self> {
        let cli = rollout_cli()?;
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|source| Error::Remove {
                path: dir.to_owned(),
                source,
            })?;
        }
        std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let db = dir.join("fleet.db");
        let out = ROLLOUT_TOOL.run(
            Command::new(&cli)
                .args(["operator", "add", "operator", "--db"])
                .arg(&db),
        )?;
        let token_file = dir.join("operator.token");
        basalt_fsutil::write_atomic(&token_file, &out.stdout, 0o600).map_err(|e| {
            Error::WriteFile {
                path: e.path,
                source: e.source,
            }
        })?;
        let log_path = dir.join("server.log");
        let mut last = None;
        // The port is free when picked but another process may take it first: retry.
        for _ in 0..5 {
            let port = crate::web::free_port()?;
            let log = std::fs::File::create(&log_path).map_err(|source| Error::WriteFile {
                path: log_path.clone(),
                source,
            })?;
            let mut command = Command::new(&cli);
            command
                .arg("serve")
                .arg("--db")
                .arg(&db)
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--trust-root")
                .arg(trust_root)
                .arg("--repo")
                .arg(repo)
                .arg("--repo-url")
                .arg(repo_url)
                .env(basalt_log::LEVEL_ENV, "info")
                .stdout(Stdio::null())
                .stderr(log);
            let mut child = crate::web::spawn("basalt-rollout", command)?;
            match crate::web::wait_listening("basalt-rollout", &mut child, port, &log_path) {
                Ok(()) => {
                    return Ok(RolloutServer {
                        child,
                        port,
                        dir: dir.to_owned(),
                        cli,
                        token_file,
                    })
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(Error::ServerStart {
            server: "basalt-rollout",
            detail: "no attempt".into(),
        }))
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's base URL on the host.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The operator token's file.
    pub fn token_file(&self) -> &Path {
        &self.token_file
    }

    /// `basalt-rollout ARGS --server URL --token-file FILE`: stdout, or an error with the exit
    /// status and stderr (exit 3 refused, 4 server failure, 5 unreachable).
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = ROLLOUT_TOOL.run(
            Command::new(&self.cli)
                .args(args)
                .arg("--server")
                .arg(self.url())
                .arg("--token-file")
                .arg(&self.token_file),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// [`RolloutServer::cli`] with `--json` added, parsed.
    pub fn json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.cli(&all)?;
        serde_json::from_str(&out).map_err(|e| {
            Error::ScenarioCheck(format!(
                "basalt-rollout {}: not JSON ({e}):\n{out}",
                all.join(" ")
            ))
        })
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        crate::web::tail(&self.dir.join("server.log"), lines)
    }
}

impl Drop for RolloutServer {
    fn drop(&mut self) {
        // Only the process this harness started, by its handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
