//! The root partition's ext4 file system in a built `disk.img`: formatted reproducibly, the
//! root skeleton, the first-boot `/etc` and `/var` from the image's factory trees, and the
//! install-time extension set. Written with `mke2fs` and `debugfs` under a fixed clock (no
//! loop device, no mount, so a build needs no privileges for it); every write is read back,
//! because debugfs does not fail on a command that fails.
//!
//! Not here: what goes *into* the factory trees (`super::rootfs`), and the node-side copy
//! `basalt-init` still makes when a root partition is blank (`basalt_initramfs::factory`).

use std::fs;
use std::path::{Path, PathBuf};

use basalt_disk::Inventory;

use super::error::{disk_err, io, BuildError};
use crate::tool::{DEBUGFS, MKE2FS};

/// The fixed clock of the root filesystem's creation (`E2FSPROGS_FAKE_TIME`): ext4 records
/// creation and change times; a fixed value keeps `disk.img` reproducible. 2023-11-14.
const ROOT_FS_EPOCH: &str = "1700000000";

fn uuid_text(b: &[u8; 16]) -> String {
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The root filesystem's first content: merged-/usr links and the top-level folders (`/etc`
/// is left out: [`seed_factory`] writes it whole, or basalt-init copies it on a blank root).
/// (path, mode or link target)
const ROOT_SKELETON: [(&str, Result<u32, &str>); 14] = [
    ("usr", Ok(0o755)),
    ("dev", Ok(0o755)),
    ("proc", Ok(0o555)),
    ("sys", Ok(0o555)),
    ("run", Ok(0o755)),
    ("tmp", Ok(0o1777)),
    ("var", Ok(0o755)),
    ("root", Ok(0o700)),
    ("home", Ok(0o755)),
    ("mnt", Ok(0o755)),
    ("bin", Err("usr/bin")),
    ("sbin", Err("usr/sbin")),
    ("lib", Err("usr/lib")),
    ("lib64", Err("usr/lib64")),
];

/// Runs the debugfs `script` read-write on `device` (a filesystem inside `disk`) under the
/// build's fixed clock, from a file `<name>.debugfs` beside the disk. debugfs exits 0 when a
/// command of the script fails; it reports the failure on stderr, so any stderr line other
/// than its version banner is an error here, and callers still read the result back.
fn debugfs_script(
    disk: &Path,
    device: &str,
    name: &str,
    script: &str,
    step: &str,
) -> Result<(), BuildError> {
    let tool_err = |source| BuildError::Mkfs {
        path: disk.to_owned(),
        step: format!("debugfs ({step})"),
        source: Box::new(source),
    };
    let script_path = disk.with_file_name(format!("{name}.debugfs"));
    fs::write(&script_path, script).map_err(io("write", &script_path))?;
    let mut cmd = DEBUGFS.command().map_err(tool_err)?;
    cmd.env("E2FSPROGS_FAKE_TIME", ROOT_FS_EPOCH)
        .arg("-w")
        .arg("-f")
        .arg(&script_path)
        .arg(device);
    let out = DEBUGFS.run(&mut cmd).map_err(tool_err)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let failed: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .take(10)
        .collect();
    if !failed.is_empty() {
        return Err(BuildError::Io {
            op: "write the root file system of",
            path: disk.to_owned(),
            source: std::io::Error::other(format!(
                "debugfs ({step}, script {}): {}",
                script_path.display(),
                failed.join("; ")
            )),
        });
    }
    fs::remove_file(&script_path).map_err(io("remove", &script_path))
}

/// Format the root partition as ext4 and create the skeleton, reproducibly: `mke2fs` with a
/// derived UUID and hash seed, then `debugfs` creates the folders and links (mke2fs `-d`
/// would copy the build host's change times). Both under a fixed clock. The result is read
/// back with `debugfs` and compared with [`ROOT_SKELETON`] (debugfs does not fail on a
/// command that fails).
pub(super) fn format_root(
    disk: &Path,
    offset: u64,
    size: u64,
    uuid: &[u8; 16],
    seed: &[u8; 16],
) -> Result<(), BuildError> {
    let mkfs_err = |step: &str| {
        let step = step.to_owned();
        move |source| BuildError::Mkfs {
            path: disk.to_owned(),
            step,
            source: Box::new(source),
        }
    };
    let mut cmd = MKE2FS.command().map_err(mkfs_err("mke2fs"))?;
    cmd.env("E2FSPROGS_FAKE_TIME", ROOT_FS_EPOCH)
        .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-L", "root", "-U"])
        .arg(uuid_text(uuid))
        .arg("-E")
        .arg(format!("offset={offset},hash_seed={}", uuid_text(seed)))
        .arg(disk)
        .arg((size / 4096).to_string());
    MKE2FS.run(&mut cmd).map_err(mkfs_err("mke2fs"))?;

    let device = format!("{}?offset={offset}", disk.display());
    let mut script = String::new();
    for (name, what) in ROOT_SKELETON {
        match what {
            Ok(mode) => {
                script.push_str(&format!("mkdir {name}\n"));
                script.push_str(&format!("sif {name} mode 0{:o}\n", 0o40000 | mode));
            }
            Err(target) => script.push_str(&format!("symlink {name} {target}\n")),
        }
    }
    debugfs_script(
        disk,
        &device,
        "root-skeleton",
        &script,
        "create the skeleton",
    )?;

    let mut cmd = DEBUGFS.command().map_err(mkfs_err("debugfs"))?;
    cmd.arg("-R").arg("ls -l /").arg(&device);
    let out = DEBUGFS
        .run(&mut cmd)
        .map_err(mkfs_err("debugfs (list /)"))?;
    let listing = String::from_utf8_lossy(&out.stdout);
    for (name, what) in ROOT_SKELETON {
        let want_mode = match what {
            Ok(mode) => format!("{:o}", 0o40000 | mode),
            Err(_) => "120777".to_owned(),
        };
        let found = listing.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 2 && f[1] == want_mode && f.last() == Some(&name)
        });
        if !found {
            return Err(BuildError::Io {
                op: "check the root filesystem skeleton of",
                path: disk.to_owned(),
                source: std::io::Error::other(format!(
                    "/{name} (mode {want_mode}) is missing after debugfs:\n{listing}"
                )),
            });
        }
    }
    Ok(())
}

/// Where the image carries its release's extension set on the root partition, relative to
/// the root (`basalt_sysext::store::DEFAULT_SEED` without its leading `/`): the node adopts
/// it into `/var/lib/basalt/extensions/<version>/` at its first boot (see
/// `basalt_sysext::store`).
fn seed_dir() -> &'static str {
    basalt_sysext::store::DEFAULT_SEED.trim_start_matches('/')
}

/// Writes `images` (`NAME.raw` files, already signed and checked) into the root partition of
/// `disk` as the install-time set of OS `version`: `/<seed>/<version>/NAME.raw`, root-owned,
/// folders 0755 and files 0644, under the same fixed clock as the skeleton; then reads each
/// file back and compares its SHA-256 (debugfs does not fail on a command that fails).
pub(crate) fn seed_extensions(
    disk: &Path,
    version: &str,
    images: &[PathBuf],
) -> Result<(), BuildError> {
    if images.is_empty() {
        return Ok(());
    }
    let tool_err = |step: &str| {
        let step = step.to_owned();
        move |source| BuildError::Mkfs {
            path: disk.to_owned(),
            step,
            source: Box::new(source),
        }
    };
    let inv = Inventory::read_path(disk, None).map_err(disk_err("read the layout", disk))?;
    let device = format!("{}?offset={}", disk.display(), inv.root.offset);
    let seed = seed_dir();
    let set = format!("{seed}/{version}");
    let mut script = String::new();
    for dir in [seed, set.as_str()] {
        script.push_str(&format!(
            "mkdir {dir}\nsif {dir} mode 040755\nsif {dir} uid 0\nsif {dir} gid 0\n"
        ));
    }
    let mut names = Vec::new();
    for image in images {
        let name = image
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| !n.is_empty() && !n.contains(char::is_whitespace))
            .ok_or_else(|| BuildError::Io {
                op: "seed the extension set with",
                path: image.clone(),
                source: std::io::Error::other("not a plain NAME.raw file name"),
            })?;
        let file = format!("{set}/{name}");
        script.push_str(&format!(
            "write {} {file}\nsif {file} mode 0100644\nsif {file} uid 0\nsif {file} gid 0\n",
            image.display()
        ));
        names.push((file, image));
    }
    debugfs_script(
        disk,
        &device,
        "root-extensions",
        &script,
        "write the extension set",
    )?;

    let check = tempfile::tempdir_in(disk.parent().unwrap_or(Path::new(".")))
        .map_err(io("create a folder beside", disk))?;
    for (file, image) in names {
        let back = check.path().join("back");
        let mut cmd = DEBUGFS.command().map_err(tool_err("debugfs"))?;
        cmd.arg("-R")
            .arg(format!("dump /{file} {}", back.display()))
            .arg(&device);
        DEBUGFS
            .run(&mut cmd)
            .map_err(tool_err("debugfs (read the extension set back)"))?;
        let want = super::image::sha256_file(image)?;
        let got = match fs::metadata(&back) {
            Ok(_) => Some(super::image::sha256_file(&back)?),
            Err(_) => None,
        };
        if got.as_ref() != Some(&want) {
            return Err(BuildError::Io {
                op: "check the extension set on the root partition of",
                path: disk.to_owned(),
                source: std::io::Error::other(format!(
                    "/{file} does not read back as {} (root partition too small?)",
                    image.display()
                )),
            });
        }
        fs::remove_file(&back).map_err(io("remove", &back))?;
    }
    Ok(())
}

/// The folders of the root file system that come from the image's factory trees
/// (`/usr/share/factory/<name>`, the systemd convention), in the order they are written.
pub(super) const FACTORY_DIRS: [&str; 2] = ["etc", "var"];

/// Writes the image's factory `/etc` and `/var` (from `factory`, the staged
/// `/usr/share/factory`) into the root partition of `disk` at `offset`, root-owned with the
/// factory's modes, under the fixed clock: a node's first boot then finds them in place and
/// `basalt-init` has nothing to copy (measured: that copy and its `sync` were 0.3–0.5 s of a
/// first boot's initramfs under TCG, and its page cache stayed behind as "used" memory). The
/// content is exactly what `basalt-init` would copy from the same trees on a blank root
/// (`--all-root` erofs: every owner is root there too); only the times differ (the build's
/// clock instead of the first boot's). A tree that is missing is left to `basalt-init`.
/// Read back with `debugfs rdump` and compared entry by entry. Returns the entries written.
pub(super) fn seed_factory(disk: &Path, offset: u64, factory: &Path) -> Result<usize, BuildError> {
    let device = format!("{}?offset={offset}", disk.display());
    let mut script = String::new();
    let mut written = 0;
    let mut trees = Vec::new();
    for name in FACTORY_DIRS {
        let src = factory.join(name);
        if !src.is_dir() {
            continue;
        }
        // `/var` is in the skeleton already (empty); `/etc` is not.
        let mkdir = !ROOT_SKELETON.iter().any(|(n, _)| *n == name);
        written += tree_script(&src, name, mkdir, &mut script)?;
        trees.push((name, src));
    }
    if trees.is_empty() {
        return Ok(0);
    }
    debugfs_script(
        disk,
        &device,
        "root-factory",
        &script,
        "write /etc and /var from the factory trees",
    )?;

    let check = tempfile::tempdir_in(disk.parent().unwrap_or(Path::new(".")))
        .map_err(io("create a folder beside", disk))?;
    for (name, src) in trees {
        let mut cmd = DEBUGFS.command().map_err(|source| BuildError::Mkfs {
            path: disk.to_owned(),
            step: "debugfs (read /etc and /var back)".into(),
            source: Box::new(source),
        })?;
        cmd.arg("-R")
            .arg(format!("rdump /{name} {}", check.path().display()))
            .arg(&device);
        DEBUGFS.run(&mut cmd).map_err(|source| BuildError::Mkfs {
            path: disk.to_owned(),
            step: format!("debugfs (read /{name} back)"),
            source: Box::new(source),
        })?;
        let mut special = Vec::new();
        let mut checked = same_tree(
            &src,
            &check.path().join(name),
            Path::new(name),
            &mut special,
        );
        // rdump does not restore the set-user/group-ID and sticky bits (its chown after
        // the chmod drops the first two, `/var/tmp` came back 0777): those are read back
        // from the inode itself.
        for (path, mode) in special {
            if checked.is_err() {
                break;
            }
            let stat_err = |source| BuildError::Mkfs {
                path: disk.to_owned(),
                step: format!("debugfs (stat /{})", path.display()),
                source: Box::new(source),
            };
            let mut cmd = DEBUGFS.command().map_err(stat_err)?;
            cmd.arg("-R")
                .arg(format!("stat /{}", path.display()))
                .arg(&device);
            let out = DEBUGFS.run(&mut cmd).map_err(stat_err)?;
            let stat = String::from_utf8_lossy(&out.stdout);
            if !stat.contains(&format!("Mode:  0{mode:o}")) {
                checked = Err(format!("/{} has not mode {mode:o}", path.display()));
            }
        }
        checked.map_err(|why| BuildError::Io {
            op: "check the factory trees on the root partition of",
            path: disk.to_owned(),
            source: std::io::Error::other(format!(
                "/{name} does not read back as {}: {why} (root partition too small?)",
                src.display()
            )),
        })?;
    }
    Ok(written)
}

/// A path debugfs's command parser reads as one word (it splits at blanks and treats quotes
/// and backslashes specially), or an error naming it.
fn script_word(path: &Path) -> Result<&str, BuildError> {
    path.to_str()
        .filter(|p| !p.is_empty() && !p.chars().any(|c| c.is_whitespace() || "\"'\\#".contains(c)))
        .ok_or_else(|| BuildError::Io {
            op: "write into the root file system",
            path: path.to_owned(),
            source: std::io::Error::other(
                "the name has a blank, a quote, a backslash, a '#' or is not UTF-8: debugfs \
                 scripts cannot name it",
            ),
        })
}

/// Appends the debugfs commands that recreate the tree `src` at `dest` (relative to the
/// root): folders, regular files and symlinks, in name order, root-owned with `src`'s modes;
/// other file types are skipped (as `basalt-init`'s copy skips them). Returns the entries.
fn tree_script(
    src: &Path,
    dest: &str,
    mkdir: bool,
    script: &mut String,
) -> Result<usize, BuildError> {
    use std::fmt::Write as _;
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::symlink_metadata(src).map_err(io("stat", src))?;
    let dest_word = script_word(Path::new(dest))?;
    if mkdir {
        let _ = writeln!(script, "mkdir {dest_word}");
    }
    let _ = writeln!(
        script,
        "sif {dest_word} mode 0{:o}\nsif {dest_word} uid 0\nsif {dest_word} gid 0",
        0o40000 | (meta.permissions().mode() & 0o7777)
    );
    let mut n = 1;
    let mut entries: Vec<_> = fs::read_dir(src)
        .map_err(io("read folder", src))?
        .collect::<std::io::Result<_>>()
        .map_err(io("read folder", src))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let from = e.path();
        let name = e.file_name();
        let to = Path::new(dest).join(&name);
        let to_word = script_word(&to)?;
        let m = fs::symlink_metadata(&from).map_err(io("stat", &from))?;
        let mode = m.permissions().mode() & 0o7777;
        let ft = m.file_type();
        if ft.is_dir() {
            n += tree_script(&from, to_word, true, script)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&from).map_err(io("read link", &from))?;
            let target_word = script_word(&target)?;
            let _ = writeln!(
                script,
                "symlink {to_word} {target_word}\nsif {to_word} uid 0\nsif {to_word} gid 0"
            );
            n += 1;
        } else if ft.is_file() {
            let from_word = script_word(&from)?;
            let _ = writeln!(
                script,
                "write {from_word} {to_word}\nsif {to_word} mode 0{:o}\nsif {to_word} uid 0\n\
                 sif {to_word} gid 0",
                0o100000 | mode
            );
            n += 1;
        }
    }
    Ok(n)
}

/// Compares the tree `want` (folders, regular files, symlinks) with `got` as `debugfs rdump`
/// wrote it: the same names, kinds, permission bits, bytes and link targets. The first
/// difference, named, or `Ok`. Entries with set-user/group-ID or sticky bits, which rdump
/// does not restore, go into `special` (path below the root, full permission bits) to be checked on
/// the inode; `at` is `got`'s path below the root.
fn same_tree(
    want: &Path,
    got: &Path,
    at: &Path,
    special: &mut Vec<(PathBuf, u32)>,
) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let list = |dir: &Path| -> Result<Vec<std::ffi::OsString>, String> {
        let mut names = fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        names.sort();
        Ok(names)
    };
    let stat = |p: &Path| fs::symlink_metadata(p).map_err(|e| format!("{}: {e}", p.display()));
    let (w, g) = (stat(want)?, stat(got)?);
    let kind = |m: &fs::Metadata| {
        let t = m.file_type();
        (t.is_dir(), t.is_file(), t.is_symlink())
    };
    if kind(&w) != kind(&g) {
        return Err(format!("{} is another kind of file", got.display()));
    }
    let (wm, gm) = (
        w.permissions().mode() & 0o7777,
        g.permissions().mode() & 0o7777,
    );
    if !w.file_type().is_symlink() && wm & 0o777 != gm & 0o777 {
        return Err(format!("{} has mode {gm:o}, not {wm:o}", got.display()));
    }
    if !w.file_type().is_symlink() && wm & 0o7000 != 0 {
        special.push((at.to_owned(), wm));
    }
    if w.file_type().is_symlink() {
        let (a, b) = (fs::read_link(want), fs::read_link(got));
        if a.as_ref().ok() != b.as_ref().ok() || a.is_err() {
            return Err(format!("{} points elsewhere", got.display()));
        }
    } else if w.is_file() {
        let (a, b) = (fs::read(want), fs::read(got));
        if a.as_ref().ok() != b.as_ref().ok() || a.is_err() {
            return Err(format!("{} has other bytes", got.display()));
        }
    } else if w.is_dir() {
        let want_names: Vec<_> = list(want)?
            .into_iter()
            .filter(|n| {
                fs::symlink_metadata(want.join(n)).is_ok_and(|m| {
                    let t = m.file_type();
                    t.is_dir() || t.is_file() || t.is_symlink()
                })
            })
            .collect();
        let got_names = list(got)?;
        if want_names != got_names {
            return Err(format!(
                "{} lists {} entries, the factory tree {}",
                got.display(),
                got_names.len(),
                want_names.len()
            ));
        }
        for n in want_names {
            same_tree(&want.join(&n), &got.join(&n), &at.join(&n), special)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    /// A 16 MiB file formatted as the root file system (offset 0), and a factory tree with
    /// every kind of entry `basalt-init` copies, odd modes, and a FIFO it skips.
    fn fixture(dir: &Path) -> (PathBuf, PathBuf) {
        let disk = dir.join("root.img");
        fs::File::create(&disk)
            .and_then(|f| f.set_len(16 << 20))
            .expect("disk file");
        format_root(&disk, 0, 16 << 20, &[1; 16], &[2; 16]).expect("format");
        let factory = dir.join("factory");
        let etc = factory.join("etc");
        fs::create_dir_all(etc.join("ssl/private")).expect("mkdir");
        fs::write(etc.join("hostname"), "basalt\n").expect("write");
        fs::write(etc.join("shadow"), "root:*:1::::::\n").expect("write");
        fs::set_permissions(etc.join("shadow"), fs::Permissions::from_mode(0o640)).expect("chmod");
        fs::write(etc.join("empty"), "").expect("write");
        fs::write(etc.join("ssl/private/helper"), "#!/bin/sh\n").expect("write");
        fs::set_permissions(
            etc.join("ssl/private/helper"),
            fs::Permissions::from_mode(0o4755),
        )
        .expect("chmod");
        fs::set_permissions(etc.join("ssl/private"), fs::Permissions::from_mode(0o700))
            .expect("chmod");
        symlink("../usr/lib/os-release", etc.join("os-release")).expect("symlink");
        let fifo = std::ffi::CString::new(etc.join("initctl").as_os_str().as_encoded_bytes())
            .expect("path");
        // SAFETY: a valid NUL-terminated path; mkfifo only creates a file system entry.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0, "mkfifo");
        fs::create_dir_all(factory.join("var/lib/empty")).expect("mkdir");
        fs::create_dir_all(factory.join("var/tmp")).expect("mkdir");
        fs::set_permissions(factory.join("var/tmp"), fs::Permissions::from_mode(0o1777))
            .expect("chmod");
        fs::write(factory.join("var/lib/state"), vec![7u8; 70_000]).expect("write");
        (disk, factory)
    }

    #[test]
    fn factory_trees_are_written_and_read_back_without_the_fifo() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (disk, factory) = fixture(tmp.path());
        // etc: itself, hostname, shadow, empty, ssl, ssl/private, helper, os-release = 8;
        // var: itself, lib, lib/empty, lib/state, tmp = 5. The FIFO is skipped.
        assert_eq!(seed_factory(&disk, 0, &factory).expect("seed"), 13);
        let device = format!("{}?offset=0", disk.display());
        let mut cmd = DEBUGFS.command().expect("debugfs");
        cmd.arg("-R")
            .arg("stat /etc/ssl/private/helper")
            .arg(&device);
        let out = DEBUGFS.run(&mut cmd).expect("stat");
        let stat = String::from_utf8_lossy(&out.stdout);
        assert!(stat.contains("Mode:  04755"), "{stat}");
        assert!(
            stat.contains("User:     0") && stat.contains("Group:     0"),
            "{stat}"
        );
        assert!(stat.contains("2023"), "the build's fixed clock: {stat}");
        let mut cmd = DEBUGFS.command().expect("debugfs");
        cmd.arg("-R").arg("stat /var/tmp").arg(&device);
        let out = DEBUGFS.run(&mut cmd).expect("stat");
        let stat = String::from_utf8_lossy(&out.stdout);
        assert!(stat.contains("Mode:  01777"), "{stat}");
    }

    #[test]
    fn seeding_is_reproducible() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (disk, factory) = fixture(tmp.path());
        seed_factory(&disk, 0, &factory).expect("seed");
        let first = fs::read(&disk).expect("read");
        format_root(&disk, 0, 16 << 20, &[1; 16], &[2; 16]).expect("format");
        seed_factory(&disk, 0, &factory).expect("seed");
        assert!(
            first == fs::read(&disk).expect("read"),
            "two seedings differ"
        );
    }

    #[test]
    fn a_name_debugfs_cannot_read_is_refused_by_name() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (disk, factory) = fixture(tmp.path());
        fs::write(factory.join("etc/two words"), "x").expect("write");
        let err = seed_factory(&disk, 0, &factory).expect_err("a blank in a name");
        let text = format!(
            "{err}: {}",
            std::error::Error::source(&err)
                .map(|s| s.to_string())
                .unwrap_or_default()
        );
        assert!(
            text.contains("etc/two words") && text.contains("blank"),
            "{text}"
        );
    }

    #[test]
    fn a_failing_debugfs_command_is_an_error() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (disk, _) = fixture(tmp.path());
        let device = format!("{}?offset=0", disk.display());
        // `usr` is in the skeleton already: debugfs says so on stderr and exits 0.
        let err = debugfs_script(&disk, &device, "again", "mkdir usr\n", "mkdir again")
            .expect_err("mkdir of an existing folder");
        assert!(
            err.to_string().contains("write the root file system"),
            "{err}"
        );
        let source = std::error::Error::source(&err)
            .map(|s| s.to_string())
            .unwrap_or_default();
        assert!(source.contains("already exists"), "{source}");
    }

    #[test]
    fn a_root_partition_too_small_for_the_trees_is_an_error() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (disk, factory) = fixture(tmp.path());
        // 16 MiB of one file cannot fit next to the journal of a 16 MiB file system.
        fs::write(factory.join("var/lib/big"), vec![1u8; 16 << 20]).expect("write");
        let err = seed_factory(&disk, 0, &factory).expect_err("too big");
        let source = std::error::Error::source(&err)
            .map(|s| s.to_string())
            .unwrap_or_default();
        assert!(!source.is_empty(), "{err}");
    }
}
