//! Running the system tools the build is made of (apt-get, dpkg, depmod, xz, mke2fs …), with
//! errors that name the tool, its arguments and the Debian package that provides it. A missing
//! tool is an error, never a skip. The test harness (`basalt-tests`) uses the same [`Tool`]
//! for its own peers (cpio, sgdisk, mtools, QEMU).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Running a system tool failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The tool is not installed.
    #[error("`{tool}` not found: apt-get install {package}")]
    Missing {
        /// Program name.
        tool: &'static str,
        /// Debian package providing it.
        package: &'static str,
    },
    /// The tool could not be started.
    #[error("starting `{tool}`")]
    Spawn {
        /// Program name.
        tool: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The tool exited non-zero.
    #[error("`{tool} {args}` failed ({status}): {stderr}")]
    Failed {
        /// Program name.
        tool: &'static str,
        /// Its arguments, space-joined.
        args: String,
        /// How it exited.
        status: std::process::ExitStatus,
        /// The end of its stderr.
        stderr: String,
    },
}

type Result<T, E = ToolError> = std::result::Result<T, E>;

/// A system tool and the Debian package that ships it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    /// Program name as looked up in `PATH` (and the sbin folders).
    pub name: &'static str,
    /// Debian package providing it (named in errors).
    pub package: &'static str,
}

/// `apt-cache` (package `apt`).
pub const APT_CACHE: Tool = Tool::new("apt-cache", "apt");
/// `apt-get` (package `apt`).
pub const APT_GET: Tool = Tool::new("apt-get", "apt");
/// `dpkg-deb` (package `dpkg`).
pub const DPKG_DEB: Tool = Tool::new("dpkg-deb", "dpkg");
/// `depmod` (package `kmod`).
pub const DEPMOD: Tool = Tool::new("depmod", "kmod");
/// `tar` (package `tar`).
pub const TAR: Tool = Tool::new("tar", "tar");
/// `xz` (package `xz-utils`).
pub const XZ: Tool = Tool::new("xz", "xz-utils");
/// `mke2fs` (package `e2fsprogs`).
pub const MKE2FS: Tool = Tool::new("mke2fs", "e2fsprogs");
/// `debugfs` (package `e2fsprogs`): populates the root filesystem reproducibly.
pub const DEBUGFS: Tool = Tool::new("debugfs", "e2fsprogs");
/// `mmdebstrap` (package `mmdebstrap`).
pub const MMDEBSTRAP: Tool = Tool::new("mmdebstrap", "mmdebstrap");
/// `dpkg-query` (package `dpkg`).
pub const DPKG_QUERY: Tool = Tool::new("dpkg-query", "dpkg");
/// `cp` (package `coreutils`): `cp -a` keeps owners, modes, links and special files.
pub const CP: Tool = Tool::new("cp", "coreutils");
/// `git` (package `git`): the revision the Basalt binaries are built from.
pub const GIT: Tool = Tool::new("git", "git");
/// `cargo` (rustup): builds `basalt-init` and the image's Basalt binaries.
pub const CARGO: Tool = Tool::new("cargo", "cargo (rustup, https://rustup.rs)");

/// Folders searched after `PATH`: the build may run as a user whose `PATH` lacks the sbin folders,
/// where `depmod`, `sgdisk` and `mkfs.vfat` live.
const EXTRA_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

impl Tool {
    /// A tool named `name`, shipped by Debian package `package`.
    pub const fn new(name: &'static str, package: &'static str) -> Self {
        Self { name, package }
    }

    /// The tool's full path, or [`ToolError::Missing`] naming the package to install.
    pub fn locate(&self) -> Result<PathBuf> {
        let path_dirs = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path_dirs)
            .chain(EXTRA_DIRS.iter().map(PathBuf::from))
            .map(|dir| dir.join(self.name))
            .find(|candidate| is_executable(candidate))
            .ok_or(ToolError::Missing {
                tool: self.name,
                package: self.package,
            })
    }

    /// A [`Command`] for the located tool, stdin closed.
    pub fn command(&self) -> Result<Command> {
        let mut command = Command::new(self.locate()?);
        command.stdin(Stdio::null());
        Ok(command)
    }

    /// Runs `command` (made by [`Tool::command`]) to completion, capturing its output; a
    /// non-zero exit is [`ToolError::Failed`] with the arguments and the end of stderr.
    pub fn run(&self, command: &mut Command) -> Result<Output> {
        let output = command.output().map_err(|source| ToolError::Spawn {
            tool: self.name,
            source,
        })?;
        if output.status.success() {
            Ok(output)
        } else {
            Err(ToolError::Failed {
                tool: self.name,
                args: describe_args(command.get_args()),
                status: output.status,
                stderr: tail_chars(&String::from_utf8_lossy(&output.stderr), 2000),
            })
        }
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn describe_args<'a>(args: impl Iterator<Item = &'a OsStr>) -> String {
    args.map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last `max` characters of `text` (on a char boundary), trimmed.
pub fn tail_chars(text: &str, max: usize) -> String {
    let count = text.chars().count();
    text.chars()
        .skip(count.saturating_sub(max))
        .collect::<String>()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_names_its_package() {
        let err = Tool::new("basalt-no-such-tool", "basalt-pkg")
            .locate()
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("basalt-no-such-tool"), "{text}");
        assert!(text.contains("apt-get install basalt-pkg"), "{text}");
    }

    #[test]
    fn failing_tool_reports_args_and_stderr() {
        let sh = Tool::new("sh", "dash");
        let mut cmd = sh.command().unwrap();
        cmd.args(["-c", "echo boom >&2; exit 3"]);
        let text = sh.run(&mut cmd).unwrap_err().to_string();
        assert!(text.contains("boom"), "{text}");
        assert!(text.contains("exit 3"), "{text}");
        assert!(text.contains("-c"), "{text}");
    }

    #[test]
    fn tail_keeps_the_end() {
        assert_eq!(tail_chars("abcdef", 3), "def");
        assert_eq!(tail_chars("ab", 3), "ab");
    }
}
