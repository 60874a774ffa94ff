//! The Basalt programs an image carries, found or built from this Cargo workspace, with the
//! git revision they come from (for the SBOM).
//!
//! - `basalt-init` must be a **static** program (it is PID 1 of the initramfs, where there is
//!   no libc): [`find_or_build_init`] builds it with
//!   `RUSTFLAGS='-C target-feature=+crt-static -C strip=symbols' cargo build --release
//!   -p basalt-initramfs --bin basalt-init --target x86_64-unknown-linux-gnu` into
//!   `<workspace>/build/target-init` (its own target folder: other RUSTFLAGS would otherwise
//!   rebuild the whole workspace each time). Cargo makes a repeated call a no-op.
//! - A definition's `[[binaries]]` ([`build_binary`]) are built the same way, dynamically
//!   linked into `build/target-image` (the image's `/usr` has the glibc they link against), or
//!   static into `build/target-init` when asked.
//!
//! The revision is `git rev-parse HEAD` of the workspace, with `+dirty` when tracked files
//! differ from it: honest about a binary built from uncommitted changes.

use std::path::{Path, PathBuf};

use crate::tool::{ToolError, CARGO, GIT};

/// The target triple of static builds (static glibc; the musl target is not installed).
pub const INIT_TARGET: &str = "x86_64-unknown-linux-gnu";
/// RUSTFLAGS of static builds.
pub const STATIC_RUSTFLAGS: &str = "-C target-feature=+crt-static -C strip=symbols";
/// The Cargo profile of the programs a node runs (`[profile.node]` in the workspace's
/// Cargo.toml).
pub const NODE_PROFILE: &str = "node";

/// Errors finding or building a Basalt program.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("build {what} with cargo in {workspace}")]
    Cargo {
        what: String,
        workspace: PathBuf,
        #[source]
        source: Box<ToolError>,
    },
    #[error("no basalt-init: pass --init PATH (a static build), or run from a Basalt source checkout (cargo builds it), or install basalt-init next to {exe}")]
    InitNotFound { exe: PathBuf },
    #[error(
        "{what} needs a Basalt source checkout to build from ({workspace} has no Cargo workspace)"
    )]
    NoWorkspace { what: String, workspace: PathBuf },
}

/// A program and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    pub path: PathBuf,
    /// The git revision it was built from; `None` when not known (a file handed in by path).
    pub revision: Option<String>,
    /// How it was obtained, for the user ("built by cargo …", "given with --init").
    pub how: String,
}

/// Whether `dir` is a Basalt source checkout (the workspace manifest and the initramfs crate).
pub fn is_checkout(dir: &Path) -> bool {
    dir.join("Cargo.toml").is_file() && dir.join("initramfs/Cargo.toml").is_file()
}

/// `git rev-parse HEAD` of `workspace` (+`dirty`), or `None` without git or outside a repo.
pub fn git_revision(workspace: &Path) -> Option<String> {
    let run = |args: &[&str]| -> Option<String> {
        let mut cmd = GIT.command().ok()?;
        cmd.arg("-C").arg(workspace).args(args);
        let out = GIT.run(&mut cmd).ok()?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let head = run(&["rev-parse", "HEAD"])?;
    if head.len() != 40 || !head.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let dirty = run(&["status", "--porcelain", "--untracked-files=no"])
        .map(|s| !s.is_empty())
        .unwrap_or(true);
    Some(if dirty { format!("{head}+dirty") } else { head })
}

/// The `basalt-init` for an image: `explicit` when given; else built from the source checkout
/// at `workspace` (when it is one); else `basalt-init` next to the running program `exe`.
/// `log` hears what is done (the first build takes a minute or two).
pub fn find_or_build_init(
    explicit: Option<&Path>,
    workspace: &Path,
    exe: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<Program, WorkspaceError> {
    if let Some(path) = explicit {
        return Ok(Program {
            path: path.to_owned(),
            revision: None,
            how: format!("given: {}", path.display()),
        });
    }
    if is_checkout(workspace) && CARGO.locate().is_ok() {
        return build_package(workspace, "basalt-initramfs", "basalt-init", true, log);
    }
    let beside = exe.with_file_name("basalt-init");
    if beside.is_file() {
        return Ok(Program {
            how: format!("installed next to {}: {}", exe.display(), beside.display()),
            path: beside,
            revision: None,
        });
    }
    Err(WorkspaceError::InitNotFound {
        exe: exe.to_owned(),
    })
}

/// Build a `[[binaries]]` entry of a definition from the checkout at `workspace`.
pub fn build_binary(
    workspace: &Path,
    package: &str,
    bin: &str,
    static_link: bool,
    log: &mut dyn FnMut(&str),
) -> Result<Program, WorkspaceError> {
    if !is_checkout(workspace) {
        return Err(WorkspaceError::NoWorkspace {
            what: format!("binary {bin} of package {package}"),
            workspace: workspace.to_owned(),
        });
    }
    build_package(workspace, package, bin, static_link, log)
}

fn build_package(
    workspace: &Path,
    package: &str,
    bin: &str,
    static_link: bool,
    log: &mut dyn FnMut(&str),
) -> Result<Program, WorkspaceError> {
    let cargo_err = |e: ToolError| WorkspaceError::Cargo {
        what: format!("{bin} (package {package})"),
        workspace: workspace.to_owned(),
        source: Box::new(e),
    };
    let (target_dir, path) = if static_link {
        let dir = workspace.join("build").join("target-init");
        let path = dir.join(INIT_TARGET).join("release").join(bin);
        (dir, path)
    } else {
        let dir = workspace.join("build").join("target-image");
        let path = dir.join(NODE_PROFILE).join(bin);
        (dir, path)
    };
    let mut cmd = CARGO.command().map_err(cargo_err)?;
    // Shipped programs carry no debug info: the workspace's release profile keeps line
    // tables for developers' backtraces, which made the node binaries ≈75 MB each (≈49 MB of
    // a compressed /usr). Symbols stay, so a panic still names its functions. The node
    // programs use the `node` profile (Cargo.toml: size-optimised but for the install's hot
    // path, no debug info).
    cmd.current_dir(workspace)
        .env("CARGO_TARGET_DIR", &target_dir)
        .args(["build", "--quiet", "-p", package, "--bin", bin]);
    let how = if static_link {
        cmd.env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
            .env("RUSTFLAGS", STATIC_RUSTFLAGS)
            .args(["--release", "--target", INIT_TARGET]);
        format!(
            "RUSTFLAGS='{STATIC_RUSTFLAGS}' CARGO_PROFILE_RELEASE_STRIP=debuginfo cargo build --release -p {package} --bin {bin} \
             --target {INIT_TARGET} (static) into {}",
            target_dir.display()
        )
    } else {
        cmd.args(["--profile", NODE_PROFILE]);
        format!(
            "cargo build --profile {NODE_PROFILE} -p {package} --bin {bin} into {}",
            target_dir.display()
        )
    };
    log(&format!("{bin}: {how}"));
    CARGO.run(&mut cmd).map_err(cargo_err)?;
    Ok(Program {
        path,
        revision: git_revision(workspace),
        how,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_init_is_taken_as_is_with_no_revision() {
        let mut said = Vec::new();
        let p = find_or_build_init(
            Some(Path::new("/x/basalt-init")),
            Path::new("/nonexistent"),
            Path::new("/usr/bin/basalt"),
            &mut |s| said.push(s.to_owned()),
        )
        .unwrap();
        assert_eq!(p.path, Path::new("/x/basalt-init"));
        assert_eq!(p.revision, None);
        assert!(said.is_empty());
    }

    #[test]
    fn no_checkout_and_nothing_installed_explains_the_choices() {
        let dir = tempfile::tempdir().unwrap();
        let err = find_or_build_init(None, dir.path(), &dir.path().join("basalt"), &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("--init") && err.contains("checkout"), "{err}");
        std::fs::write(dir.path().join("basalt-init"), b"x").unwrap();
        let p =
            find_or_build_init(None, dir.path(), &dir.path().join("basalt"), &mut |_| {}).unwrap();
        assert_eq!(p.path, dir.path().join("basalt-init"));
        let err = build_binary(dir.path(), "p", "b", false, &mut |_| {}).unwrap_err();
        assert!(matches!(err, WorkspaceError::NoWorkspace { .. }), "{err}");
    }

    #[test]
    fn this_checkout_has_a_revision() {
        let ws = crate::workspace_root();
        assert!(is_checkout(&ws));
        if let Some(rev) = git_revision(&ws) {
            assert!(rev.len() == 40 || rev.ends_with("+dirty"), "{rev}");
        }
    }
}
