//! First-boot `/etc`: when the root file system has no `/etc`, copy the image's defaults from
//! `/usr/share/factory/etc` (the systemd convention). An existing `/etc` is never touched —
//! merging updates into it is systemd-tmpfiles' and the OS's job, not the initramfs's.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, Result};

/// Where the image keeps its default `/etc`, relative to the new root.
pub const FACTORY_ETC: &str = "usr/share/factory/etc";

/// What [`populate_etc`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtcOutcome {
    /// `/etc` existed; nothing done.
    Present,
    /// `/etc` was copied from the factory tree (number of entries).
    Populated(usize),
    /// Neither `/etc` nor a factory tree: an empty `/etc` was created.
    CreatedEmpty,
}

/// Give `root` an `/etc` if it has none. The copy goes to `etc.basalt-tmp` first and is
/// renamed into place, so an interrupted first boot retries from scratch.
pub fn populate_etc(root: &Path) -> Result<EtcOutcome> {
    let etc = root.join("etc");
    if fs::symlink_metadata(&etc).is_ok() {
        return Ok(EtcOutcome::Present);
    }
    let factory = root.join(FACTORY_ETC);
    let tmp = root.join("etc.basalt-tmp");
    if fs::symlink_metadata(&tmp).is_ok() {
        fs::remove_dir_all(&tmp).map_err(|source| Error::Fs {
            operation: "removing",
            path: tmp.clone(),
            source,
        })?;
    }
    let outcome = if factory.is_dir() {
        let n = copy_tree(&factory, &tmp)?;
        EtcOutcome::Populated(n)
    } else {
        fs::create_dir(&tmp).map_err(|source| Error::Fs {
            operation: "creating",
            path: tmp.clone(),
            source,
        })?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).map_err(|source| {
            Error::Fs {
                operation: "chmod",
                path: tmp.clone(),
                source,
            }
        })?;
        EtcOutcome::CreatedEmpty
    };
    fs::rename(&tmp, &etc).map_err(|source| Error::Fs {
        operation: "renaming into place",
        path: etc.clone(),
        source,
    })?;
    Ok(outcome)
}

/// Copy a directory tree (directories, regular files, symlinks) keeping permission bits and
/// owners; other file types are skipped. Returns the number of entries copied.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<usize> {
    let fs_err = |operation: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| Error::Fs {
            operation,
            path,
            source,
        }
    };
    let meta = fs::symlink_metadata(src).map_err(fs_err("reading", src))?;
    fs::create_dir(dst).map_err(fs_err("creating", dst))?;
    let mut n = 0;
    let mut entries: Vec<_> = fs::read_dir(src)
        .map_err(fs_err("listing", src))?
        .collect::<std::io::Result<_>>()
        .map_err(fs_err("listing", src))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let from = e.path();
        let to = dst.join(e.file_name());
        let m = fs::symlink_metadata(&from).map_err(fs_err("reading", &from))?;
        let ft = m.file_type();
        if ft.is_dir() {
            n += copy_tree(&from, &to)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&from).map_err(fs_err("reading link", &from))?;
            symlink(&target, &to).map_err(fs_err("creating link", &to))?;
            std::os::unix::fs::lchown(&to, Some(m.uid()), Some(m.gid()))
                .map_err(fs_err("chown", &to))?;
            n += 1;
        } else if ft.is_file() {
            fs::copy(&from, &to).map_err(fs_err("copying", &from))?;
            set_owner_mode(&to, &m)?;
            n += 1;
        }
    }
    set_owner_mode(dst, &meta)?;
    Ok(n + 1)
}

fn set_owner_mode(path: &Path, m: &fs::Metadata) -> Result<()> {
    let err = |operation| {
        move |source| Error::Fs {
            operation,
            path: path.to_owned(),
            source,
        }
    };
    std::os::unix::fs::chown(path, Some(m.uid()), Some(m.gid())).map_err(err("chown"))?;
    fs::set_permissions(path, fs::Permissions::from_mode(m.mode() & 0o7777)).map_err(err("chmod"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_factory_tree_once() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let f = root.join(FACTORY_ETC);
        fs::create_dir_all(f.join("ssh")).unwrap();
        fs::write(f.join("hostname"), "basalt\n").unwrap();
        fs::write(f.join("ssh/sshd_config"), "x").unwrap();
        fs::set_permissions(f.join("ssh/sshd_config"), fs::Permissions::from_mode(0o600)).unwrap();
        symlink("../usr/lib/os-release", f.join("os-release")).unwrap();

        assert_eq!(populate_etc(root).unwrap(), EtcOutcome::Populated(5));
        let etc = root.join("etc");
        assert_eq!(
            fs::read_to_string(etc.join("hostname")).unwrap(),
            "basalt\n"
        );
        assert_eq!(
            fs::metadata(etc.join("ssh/sshd_config")).unwrap().mode() & 0o7777,
            0o600
        );
        assert_eq!(
            fs::read_link(etc.join("os-release")).unwrap(),
            Path::new("../usr/lib/os-release")
        );
        // Second boot: /etc exists, nothing changes even if it differs from the factory.
        fs::write(etc.join("hostname"), "node-7\n").unwrap();
        assert_eq!(populate_etc(root).unwrap(), EtcOutcome::Present);
        assert_eq!(
            fs::read_to_string(etc.join("hostname")).unwrap(),
            "node-7\n"
        );
    }

    #[test]
    fn no_factory_gives_empty_etc_and_stale_tmp_is_replaced() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("etc.basalt-tmp")).unwrap();
        fs::write(t.path().join("etc.basalt-tmp/stale"), "").unwrap();
        assert_eq!(populate_etc(t.path()).unwrap(), EtcOutcome::CreatedEmpty);
        assert!(t.path().join("etc").is_dir());
        assert!(!t.path().join("etc/stale").exists());
    }
}
