//! The kernel modules a `/usr` ships: the definition's `[kernel] modules` and their
//! dependencies, not Debian's whole module tree (≈400 MB unpacked for 6.1; a container host on
//! virtio, NVMe and common NICs needs ≈1–3 % of it).
//!
//! Order of work: resolve the names with `basalt-initramfs`'s modules.dep resolver (the one
//! implementation; a name that is neither a module nor built in is an error naming it) →
//! copy the module files into `usr/lib/modules/<kver>/` at their paths → copy the metadata
//! depmod needs (`modules.order` filtered to what ships, `modules.builtin`,
//! `modules.builtin.modinfo`) → `depmod -b <staging>/usr -F System.map <kver>` regenerates
//! `modules.dep`, `modules.alias` … for exactly this set, so udev's autoloading and
//! `modprobe` see only what is there.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::kernel::KernelTree;
use crate::tool::{ToolError, DEPMOD};

/// Errors installing kernel modules into a staged `/usr`.
#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    #[error("resolve kernel modules of {kernel} (kernel.modules of the image definition)")]
    Resolve {
        kernel: String,
        #[source]
        source: Box<basalt_initramfs::Error>,
    },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("depmod for {kernel} in {dir}")]
    Depmod {
        kernel: String,
        dir: PathBuf,
        #[source]
        source: Box<ToolError>,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ModulesError {
    let path = path.to_owned();
    move |source| ModulesError::Io { op, path, source }
}

/// What was installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledModules {
    /// Module files (relative to `lib/modules/<kver>`), in load order.
    pub files: Vec<String>,
    /// Requested names the kernel has built in (nothing to ship).
    pub builtin: Vec<String>,
    /// Bytes of module files.
    pub bytes: u64,
}

/// Install `names` (+ dependencies) of `kernel` into `usr` (a staged `/usr` folder).
pub fn install(
    kernel: &KernelTree,
    names: &[String],
    usr: &Path,
) -> Result<InstalledModules, ModulesError> {
    let resolve_err = |source| ModulesError::Resolve {
        kernel: kernel.version.clone(),
        source: Box::new(source),
    };
    let dep =
        basalt_initramfs::modules::ModulesDep::load(&kernel.modules_dir).map_err(resolve_err)?;
    let resolution = dep.resolve(names, &[]).map_err(resolve_err)?;
    let to = usr.join("lib/modules").join(&kernel.version);
    fs::create_dir_all(&to).map_err(io("create", &to))?;
    let mut bytes = 0;
    let mut shipped = BTreeSet::new();
    for m in &resolution.modules {
        let src = kernel.modules_dir.join(&m.path);
        let dst = to.join(&m.path);
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent).map_err(io("create", parent))?;
        }
        bytes += fs::copy(&src, &dst).map_err(io("copy module", &src))?;
        shipped.insert(m.path.clone());
    }
    for meta in ["modules.builtin", "modules.builtin.modinfo"] {
        let src = kernel.modules_dir.join(meta);
        if src.is_file() {
            fs::copy(&src, to.join(meta)).map_err(io("copy", &src))?;
        }
    }
    let order = kernel.modules_dir.join("modules.order");
    if let Ok(text) = fs::read_to_string(&order) {
        let kept: String = text
            .lines()
            .filter(|l| {
                // modules.order names `kernel/…/x.ko` (sometimes without the `.ko` suffix
                // variants); keep the lines of shipped files.
                shipped.contains(l.trim())
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let dst = to.join("modules.order");
        fs::write(&dst, kept).map_err(io("write", &dst))?;
    }
    let mut cmd = DEPMOD.command().map_err(|e| ModulesError::Depmod {
        kernel: kernel.version.clone(),
        dir: usr.to_owned(),
        source: Box::new(e),
    })?;
    cmd.arg("-b")
        .arg(usr)
        .arg("-F")
        .arg(&kernel.system_map)
        .arg(&kernel.version);
    DEPMOD.run(&mut cmd).map_err(|e| ModulesError::Depmod {
        kernel: kernel.version.clone(),
        dir: usr.to_owned(),
        source: Box::new(e),
    })?;
    Ok(InstalledModules {
        files: resolution.modules.into_iter().map(|m| m.path).collect(),
        builtin: resolution.builtin,
        bytes,
    })
}
