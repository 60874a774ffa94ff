//! Small helpers to run commands from xtask with clear errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or(manifest_dir)
}

/// Run `cmd`, echoing it first; fail with its exit status when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {}", render(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", render(cmd)))?;
    if !status.success() {
        bail!("{} failed: {status}", render(cmd));
    }
    Ok(())
}

/// Run `cmd` like [`run`], its stdout and stderr lines written to our stderr as
/// `[prefix] line` (for commands that run at the same time as others).
pub fn run_prefixed(prefix: &str, cmd: &mut Command) -> Result<()> {
    use std::io::{BufRead, BufReader, Read, Write};
    eprintln!("[{prefix}] + {}", render(cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", render(cmd)))?;
    let forward = |stream: Box<dyn Read + Send>| {
        let prefix = prefix.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).split(b'\n') {
                let Ok(line) = line else { break };
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "[{prefix}] ");
                let _ = err.write_all(&line);
                let _ = writeln!(err);
            }
        })
    };
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(forward(Box::new(out)));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(forward(Box::new(err)));
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for {}", render(cmd)))?;
    for r in readers {
        let _ = r.join();
    }
    if !status.success() {
        bail!("{} failed: {status}", render(cmd));
    }
    Ok(())
}

/// Run `cmd` and return its stdout as text.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {}", render(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}\n{}",
            render(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether an executable is on PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program} >/dev/null 2>&1"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub fn render(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}
