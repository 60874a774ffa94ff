//! Guest inputs for harness tests, built with the real system tools: a busybox initramfs
//! (GNU `cpio -o -H newc`) and a GPT disk image whose only partition is a FAT32 ESP (`sgdisk`,
//! `mkfs.vfat`, `mtools`; nothing is mounted).
//!
//! These are test fixtures, deliberately independent of Basalt's own cpio writer and disk
//! layout code, so that a VM scenario can tell a harness bug from a product bug.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;

use crate::elf::Elf64;
use crate::error::{Error, Result};
use crate::kernel::KernelTree;
use crate::tool::ToolError;
use crate::tool::{Tool, CPIO, MCOPY, MDIR, MKFS_VFAT, MMD, SGDISK};

/// `busybox` (package `busybox-static`: the initramfs has no libc).
pub const BUSYBOX: Tool = Tool::new("busybox", "busybox-static");

/// In the initramfs: the module files to load, one absolute path per line, in order.
pub const MODULES_LIST: &str = "etc/modules.load";

/// The start of every busybox `/init`: mounts `/proc`, `/sys`, `/dev` (devtmpfs is not
/// auto-mounted by the Debian kernel), installs the applet links, and loads the modules listed
/// in `/etc/modules.load` with `insmod` (the list is already in dependency order).
pub const INIT_PRELUDE: &str = r#"#!/bin/busybox sh
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
/bin/busybox mkdir -p /proc /sys /dev /sbin /usr/bin /usr/sbin /tmp /mnt
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
if [ -f /etc/modules.load ]; then
    while read -r module; do
        insmod "$module" || echo "init: insmod $module failed"
    done < /etc/modules.load
fi
"#;

/// Where a fixture file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file on the host, copied.
    Host(PathBuf),
    /// Literal contents.
    Bytes(Vec<u8>),
}

impl Source {
    fn write_to(&self, dest: &Path) -> Result<()> {
        match self {
            Source::Host(from) => {
                fs::copy(from, dest)
                    .map(|_| ())
                    .map_err(|source| Error::CopyFile {
                        from: from.clone(),
                        to: dest.to_path_buf(),
                        source,
                    })
            }
            Source::Bytes(bytes) => fs::write(dest, bytes).map_err(|source| Error::WriteFile {
                path: dest.to_path_buf(),
                source,
            }),
        }
    }
}

/// A busybox initramfs: `/init` (a shell script), the static `/bin/busybox`, extra files and
/// kernel modules from a [`KernelTree`].
#[derive(Debug, Clone)]
pub struct BusyboxInitramfs {
    init: String,
    files: Vec<(String, Source, u32)>,
    modules: Vec<String>,
}

impl BusyboxInitramfs {
    /// An initramfs whose `/init` is `script` (start it with [`INIT_PRELUDE`]).
    pub fn new(script: impl Into<String>) -> Self {
        Self {
            init: script.into(),
            files: Vec::new(),
            modules: Vec::new(),
        }
    }

    /// Adds `contents` at `path` (relative to the archive root) with permission bits `mode`.
    pub fn file(mut self, path: impl Into<String>, contents: Source, mode: u32) -> Self {
        self.files.push((path.into(), contents, mode));
        self
    }

    /// Adds the modules `names` and their dependencies from `kernel` under
    /// `/lib/modules/VER/…`, listed in load order in [`MODULES_LIST`].
    pub fn modules(mut self, kernel: &KernelTree, names: &[&str]) -> Result<Self> {
        let order = kernel.load_order(names)?;
        for rel in order {
            let in_archive = format!("lib/modules/{}/{rel}", kernel.version);
            self.files.push((
                in_archive.clone(),
                Source::Host(kernel.modules_dir.join(&rel)),
                0o644,
            ));
            self.modules.push(format!("/{in_archive}"));
        }
        Ok(self)
    }

    /// Writes the newc cpio archive to `out` (uncompressed: the kernel takes it as is).
    pub fn build(&self, out: &Path) -> Result<()> {
        let busybox = BUSYBOX.locate()?;
        if Elf64::open(&busybox)?.has_interpreter() {
            return Err(Error::BusyboxNotStatic { path: busybox });
        }
        let stage = tempfile::tempdir().map_err(|source| Error::CreateDir {
            path: std::env::temp_dir(),
            source,
        })?;
        let root = stage.path();
        let mut entries: Vec<(String, Source, u32)> = vec![
            ("bin/busybox".into(), Source::Host(busybox), 0o755),
            (
                "init".into(),
                Source::Bytes(self.init.clone().into_bytes()),
                0o755,
            ),
        ];
        if !self.modules.is_empty() {
            let list = self.modules.join("\n") + "\n";
            entries.push((MODULES_LIST.into(), Source::Bytes(list.into_bytes()), 0o644));
        }
        entries.extend(self.files.iter().cloned());
        for (path, source, mode) in &entries {
            let dest = root.join(checked_relative(path)?);
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent).map_err(|source| Error::CreateDir {
                    path: parent.to_path_buf(),
                    source,
                })?;
            }
            source.write_to(&dest)?;
            fs::set_permissions(&dest, fs::Permissions::from_mode(*mode)).map_err(|source| {
                Error::WriteFile {
                    path: dest.clone(),
                    source,
                }
            })?;
        }
        let list = archive_list(root)?;
        let mut cpio = CPIO.command()?;
        cpio.current_dir(root)
            .args(["-o", "-H", "newc", "--quiet", "-R", "0:0", "-O"])
            .arg(out);
        run_with_input(&CPIO, &mut cpio, list.join("\n").as_bytes())
    }
}

/// Every path under `root`, relative, parents before children (what `find .` would list).
fn archive_list(root: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut pending = vec![PathBuf::new()];
    // Bounded by the number of directories staged.
    while let Some(rel) = pending.pop() {
        let dir = root.join(&rel);
        let mut children: Vec<PathBuf> = fs::read_dir(&dir)
            .map_err(|source| Error::ReadFile {
                path: dir.clone(),
                source,
            })?
            .filter_map(|e| e.ok())
            .map(|e| rel.join(e.file_name()))
            .collect();
        children.sort();
        for child in children {
            out.push(child.to_string_lossy().into_owned());
            if root.join(&child).is_dir() {
                pending.push(child);
            }
        }
    }
    Ok(out)
}

/// Runs `command` feeding `input` on stdin (from a thread, so a chatty tool cannot deadlock).
fn run_with_input(tool: &Tool, command: &mut std::process::Command, input: &[u8]) -> Result<()> {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|source| ToolError::Spawn {
        tool: tool.name,
        source,
    })?;
    let writer = child.stdin.take().map(|mut stdin| {
        let input = input.to_vec();
        std::thread::spawn(move || stdin.write_all(&input))
    });
    let output = child
        .wait_with_output()
        .map_err(|source| ToolError::Spawn {
            tool: tool.name,
            source,
        })?;
    let fed = writer.map(|w| w.join());
    if !output.status.success() {
        return Err(ToolError::Failed {
            tool: tool.name,
            args: command
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" "),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        }
        .into());
    }
    if let Some(Ok(Err(source))) = fed {
        return Err(ToolError::Spawn {
            tool: tool.name,
            source,
        }
        .into());
    }
    Ok(())
}

/// A raw disk image: a GPT with one EFI System Partition (FAT32) starting at 1 MiB.
#[derive(Debug, Clone)]
pub struct EspDisk {
    esp_mib: u64,
    files: Vec<(String, Source)>,
}

/// Byte offset of the ESP in an [`EspDisk`] image (sector 2048).
pub const ESP_OFFSET: u64 = 1 << 20;

impl EspDisk {
    /// An ESP of `esp_mib` MiB (FAT32 needs ≥ 33 MiB with 512-byte clusters).
    pub fn new(esp_mib: u64) -> Self {
        Self {
            esp_mib,
            files: Vec::new(),
        }
    }

    /// Puts `contents` at `path` in the ESP (relative, `/`-separated, e.g.
    /// `EFI/BOOT/BOOTX64.EFI`).
    pub fn file(mut self, path: impl Into<String>, contents: Source) -> Self {
        self.files.push((path.into(), contents));
        self
    }

    /// Writes the disk image to `image` (replacing it).
    pub fn build(&self, image: &Path) -> Result<()> {
        let stage = tempfile::tempdir().map_err(|source| Error::CreateDir {
            path: std::env::temp_dir(),
            source,
        })?;
        let esp = stage.path().join("esp.img");
        let mut mkfs = MKFS_VFAT.command()?;
        mkfs.args(["-F", "32", "-n", "ESP", "-C"])
            .arg(&esp)
            .arg((self.esp_mib * 1024).to_string());
        MKFS_VFAT.run(&mut mkfs)?;

        let mut dirs = BTreeSet::new();
        for (path, _) in &self.files {
            let rel = checked_relative(path)?;
            let mut parent = rel.parent();
            while let Some(dir) = parent.filter(|p| !p.as_os_str().is_empty()) {
                dirs.insert(dir.to_path_buf());
                parent = dir.parent();
            }
        }
        // BTreeSet order puts a parent before its children ("EFI" < "EFI/BOOT").
        for dir in &dirs {
            let mut mmd = mtools(&MMD, esp.as_os_str())?;
            mmd.arg(esp_path(dir));
            MMD.run(&mut mmd)?;
        }
        for (index, (path, source)) in self.files.iter().enumerate() {
            let host = match source {
                Source::Host(p) => p.clone(),
                Source::Bytes(_) => {
                    let tmp = stage.path().join(format!("file-{index}"));
                    source.write_to(&tmp)?;
                    tmp
                }
            };
            let mut mcopy = mtools(&MCOPY, esp.as_os_str())?;
            mcopy
                .arg("-o")
                .arg(&host)
                .arg(esp_path(&checked_relative(path)?));
            MCOPY.run(&mut mcopy)?;
        }

        let total = ESP_OFFSET + (self.esp_mib << 20) + (1 << 20);
        let write_err = |source| Error::WriteFile {
            path: image.to_path_buf(),
            source,
        };
        File::create(image)
            .and_then(|f| f.set_len(total))
            .map_err(write_err)?;
        let mut sgdisk = SGDISK.command()?;
        sgdisk
            .arg("-o")
            .arg(format!("-n=1:{}:+{}M", ESP_OFFSET / 512, self.esp_mib))
            .args(["-t=1:ef00", "-c=1:ESP"])
            .arg(image);
        SGDISK.run(&mut sgdisk)?;
        copy_into(&esp, image, ESP_OFFSET)
    }
}

/// The mtools image argument for the ESP inside an [`EspDisk`] image.
pub fn esp_image_spec(image: &Path) -> OsString {
    let mut spec = image.as_os_str().to_os_string();
    spec.push(format!("@@{ESP_OFFSET}"));
    spec
}

/// The names of the files in folder `dir` of the ESP inside `image` (`mdir -b`).
pub fn esp_list(image: &Path, dir: &str) -> Result<Vec<String>> {
    let mut mdir = mtools(&MDIR, &esp_image_spec(image))?;
    mdir.arg("-b").arg(format!("::/{}", dir.trim_matches('/')));
    let output = MDIR.run(&mut mdir)?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.trim().rsplit('/').next())
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect())
}

/// The contents of file `path` of the ESP inside `image` (`mcopy` to stdout).
pub fn esp_read(image: &Path, path: &str) -> Result<Vec<u8>> {
    let mut mcopy = mtools(&MCOPY, &esp_image_spec(image))?;
    mcopy.arg(format!("::/{}", path.trim_matches('/'))).arg("-");
    Ok(MCOPY.run(&mut mcopy)?.stdout)
}

/// An mtools command on the FAT named by `spec` (a bare FAT file, or `disk@@offset`).
fn mtools(tool: &Tool, spec: &OsStr) -> Result<std::process::Command> {
    let mut command = tool.command()?;
    // mtools refuses FATs whose geometry looks odd to it; these are files, not floppies.
    command.env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(spec);
    Ok(command)
}

fn esp_path(rel: &Path) -> String {
    format!("::/{}", rel.to_string_lossy())
}

fn copy_into(from: &Path, image: &Path, offset: u64) -> Result<()> {
    let mut src = File::open(from).map_err(|source| Error::ReadFile {
        path: from.to_path_buf(),
        source,
    })?;
    let mut dst = File::options()
        .write(true)
        .open(image)
        .and_then(|mut f| f.seek(SeekFrom::Start(offset)).map(|_| f))
        .map_err(|source| Error::WriteFile {
            path: image.to_path_buf(),
            source,
        })?;
    std::io::copy(&mut src, &mut dst)
        .map(|_| ())
        .map_err(|source| Error::CopyFile {
            from: from.to_path_buf(),
            to: image.to_path_buf(),
            source,
        })
}

/// `path` as a relative path without `..` or root components.
fn checked_relative(path: &str) -> Result<PathBuf> {
    let p = Path::new(path);
    let ok = !path.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(p.to_path_buf())
    } else {
        Err(Error::FixturePath {
            path: path.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_paths_must_be_relative() {
        assert!(checked_relative("a/b").is_ok());
        for bad in ["", "/etc", "../x", "a/../b", "./a"] {
            assert!(checked_relative(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn archive_list_puts_parents_first() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("b/c")).unwrap();
        fs::write(dir.path().join("b/c/f"), "x").unwrap();
        fs::write(dir.path().join("a"), "x").unwrap();
        let list = archive_list(dir.path()).unwrap();
        let pos = |n: &str| list.iter().position(|x| x == n).unwrap();
        assert!(pos("b") < pos("b/c") && pos("b/c") < pos("b/c/f"));
        assert_eq!(list.len(), 4);
    }
}
