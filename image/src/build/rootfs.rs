//! The userspace that goes into `/usr`, staged as a directory tree before erofs packs it.
//!
//! A staged tree has `usr/` (becomes the read-only `/usr` partition) and nothing else: the
//! factory copy of `/etc` (and `/var`) lives inside it at `usr/share/factory/{etc,var}`, from
//! which `basalt-init` populates the writable root partition on first boot. This is the
//! "hermetic /usr" model Flatcar and systemd use: everything the OS ships is covered by the
//! verity root hash, including the defaults for `/etc`.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::config::Os;
use super::modules::{InstalledModules, ModulesError};
use super::variant::Variant;
use crate::kernel::KernelTree;
use crate::tool::CP;

/// Errors staging a `/usr` tree.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    Tool {
        program: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("no usable apt source found in {path} (need deb822 .sources or sources.list with a Debian URI)")]
    NoAptSources { path: PathBuf },
    #[error("{path}: {what}")]
    Missing { path: PathBuf, what: &'static str },
    #[error("{dest}: the definition's copy replaces the packaged file with SHA-256 {expected}, but the packages installed {found}; compare the package's file with the copy, carry its changes over, then update `replaces`")]
    Replaced {
        dest: String,
        expected: String,
        found: String,
    },
    #[error(transparent)]
    Modules(#[from] ModulesError),
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RootfsError {
    let path = path.to_owned();
    move |source| RootfsError::Io { op, path, source }
}

fn mkdirs(path: &Path) -> Result<(), RootfsError> {
    fs::create_dir_all(path).map_err(io("create directory", path))
}

fn write(path: &Path, data: impl AsRef<[u8]>) -> Result<(), RootfsError> {
    if let Some(parent) = path.parent() {
        mkdirs(parent)?;
    }
    fs::write(path, data).map_err(io("write", path))
}

fn run(cmd: &mut Command) -> Result<Vec<u8>, RootfsError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|source| RootfsError::Spawn {
        program: program.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(RootfsError::Tool {
            program,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out.stdout)
}

/// `os-release(5)` for the image.
pub fn os_release(os: &Os, profile: &str, variant: Variant) -> String {
    format!(
        "NAME=Basalt\nID={name}\nVERSION_ID={version}\nVERSION=\"{version} ({channel})\"\n\
         PRETTY_NAME=\"Basalt {version} ({profile})\"\nSYSEXT_LEVEL={level}\n\
         BASALT_CHANNEL={channel}\nBASALT_PROFILE={profile}\n{variant}",
        name = os.name,
        version = os.version,
        channel = os.channel,
        level = os.sysext_level(),
        variant = variant.os_release_lines(),
    )
}

/// The script the `minimal` profile runs as its init (after `basalt-init`'s switch_root).
/// It prints what the VM tests look for, then powers off — or, when the kernel command line
/// has `basalt.test=read-payload`, reads the payload file first (a corrupted block there makes
/// dm-verity react); with `basalt.test=raise-floor` it first raises the machine's `/usr`
/// version floor to its own version, as the updater does after blessing a release.
pub const MINIMAL_INIT: &str = r#"#!/usr/bin/busybox sh
export PATH=/usr/bin
. /usr/lib/os-release
echo "BASALT-MINIMAL: userspace up, version=$VERSION_ID"
# Which root partition supplied /etc, and what the merged-/usr links resolve to.
echo "BASALT-MINIMAL: hostname=$(cat /etc/hostname 2>/dev/null)"
echo "BASALT-MINIMAL: links bin=$(readlink /bin) sbin=$(readlink /sbin) lib=$(readlink /lib) lib64=$(readlink /lib64)"
grep ' /usr ' /proc/mounts | sed 's/^/BASALT-MINIMAL: mount: /'
# The verdict as one short marker: kernel messages can split a long console line.
if grep -q '^[^ ]* /usr erofs ro[, ]' /proc/mounts; then
    echo "BASALT-MINIMAL: /usr is erofs, mounted ro"
else
    echo "BASALT-MINIMAL: /usr is NOT a read-only erofs mount"
fi
if touch /usr/.write-test 2>/dev/null; then
    echo "BASALT-MINIMAL: /usr is WRITABLE"
else
    echo "BASALT-MINIMAL: /usr is read-only"
fi
# Failures basalt-init recorded on earlier boots (EFI variable: 4 attribute bytes, then
# one line per failed boot; read through a pipe, efivarfs files do not seek).
if [ -d /sys/firmware/efi ]; then
    grep -q ' /sys/firmware/efi/efivars ' /proc/mounts ||
        mount -t efivarfs efivarfs /sys/firmware/efi/efivars 2>/dev/null
    cat /sys/firmware/efi/efivars/@FAILREC_VAR@ \
        2>/dev/null | tail -c +5 | sed 's/^/BASALT-MINIMAL: init-failure: /'
fi
for opt in $(cat /proc/cmdline); do
    case "$opt" in
    basalt.test=raise-floor)
        # What the updater does once a release is blessed (basalt_initramfs::floor): raise the
        # machine's /usr version floor (EFI variable BasaltUsrFloor) to this version.
        var=/sys/firmware/efi/efivars/@FLOOR_VAR@
        grep -q ' /sys/firmware/efi/efivars ' /proc/mounts || mount -t efivarfs efivarfs /sys/firmware/efi/efivars
        if printf '\007\000\000\000%s' "$VERSION_ID" > "$var"; then
            echo "BASALT-MINIMAL: floor raised to $VERSION_ID"
        else
            echo "BASALT-MINIMAL: floor NOT raised"
        fi
        ;;
    basalt.test=read-payload)
        echo "BASALT-MINIMAL: reading payload"
        if sha256sum /usr/share/basalt/payload.bin; then
            echo "BASALT-MINIMAL: payload read ok"
        else
            echo "BASALT-MINIMAL: payload read FAILED"
        fi
        ;;
    esac
done
echo "BASALT-MINIMAL: done"
sync
poweroff -f
"#;

/// [`MINIMAL_INIT`] as installed: `@FAILREC_VAR@` becomes the efivarfs name of
/// basalt-init's failure records (`basalt_initramfs::failrec`, the one place it is defined),
/// `@FLOOR_VAR@` that of the `/usr` version floor (`basalt_identity::efivar`).
pub fn minimal_init() -> String {
    let floor = basalt_identity::efivar::path(
        std::path::Path::new(""),
        basalt_identity::efivar::USR_FLOOR,
        basalt_identity::efivar::BASALT_VENDOR,
    );
    MINIMAL_INIT
        .replace("@FAILREC_VAR@", &basalt_initramfs::failrec::var_file_name())
        .replace("@FLOOR_VAR@", &floor.to_string_lossy())
}

/// Size of the deterministic payload in the minimal image (the corruption tests target it).
pub const PAYLOAD_BYTES: usize = 4 << 20;

/// Deterministic, incompressible-looking payload bytes (xorshift stream; same every build).
pub fn payload() -> Vec<u8> {
    let mut out = Vec::with_capacity(PAYLOAD_BYTES);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while out.len() < PAYLOAD_BYTES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Stage the `minimal` profile under `staging` (which gets `usr/`): busybox with its applet
/// links, os-release, the init script, the payload and a factory `/etc`.
pub fn stage_minimal(
    staging: &Path,
    os: &Os,
    busybox: &Path,
    variant: Variant,
) -> Result<(), RootfsError> {
    let usr = staging.join("usr");
    let bin = usr.join("bin");
    mkdirs(&bin)?;
    let bb = bin.join("busybox");
    fs::copy(busybox, &bb).map_err(io("copy busybox from", busybox))?;
    fs::set_permissions(&bb, fs::Permissions::from_mode(0o755)).map_err(io("chmod", &bb))?;
    let list = run(Command::new(busybox).arg("--list"))?;
    let mut applets: Vec<&str> = std::str::from_utf8(&list)
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .collect();
    applets.sort_unstable();
    applets.dedup();
    for applet in applets {
        let link = bin.join(applet);
        symlink("busybox", &link).map_err(io("symlink", &link))?;
    }
    write(
        &usr.join("lib/os-release"),
        os_release(os, "minimal", variant),
    )?;
    let init = usr.join("lib/basalt/init-minimal");
    write(&init, minimal_init())?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755)).map_err(io("chmod", &init))?;
    write(&usr.join("share/basalt/payload.bin"), payload())?;
    let factory = usr.join("share/factory/etc");
    write(&factory.join("hostname"), "basalt\n")?;
    write(
        &factory.join("passwd"),
        "root:x:0:0:root:/root:/usr/bin/sh\n",
    )?;
    write(&factory.join("group"), "root:x:0:\n")?;
    let link = factory.join("os-release");
    symlink("../usr/lib/os-release", &link).map_err(io("symlink", &link))?;
    Ok(())
}

/// One-line apt sources (`deb [signed-by=…] URI SUITE COMPONENTS`) derived from the host's
/// apt configuration under `apt_dir` (normally `/etc/apt`), for mmdebstrap's stdin. Mirrors
/// are never written into the project: whatever the host uses, the build uses.
pub fn apt_sources_from_host(apt_dir: &Path, suite: &str) -> Result<String, RootfsError> {
    let mut lines = Vec::new();
    let dir = apt_dir.join("sources.list.d");
    let mut files: Vec<PathBuf> = match fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "sources"))
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    for file in files {
        let text = fs::read_to_string(&file).map_err(io("read", &file))?;
        lines.extend(deb822_to_lines(&text, suite));
    }
    let list = apt_dir.join("sources.list");
    if let Ok(text) = fs::read_to_string(&list) {
        for line in text.lines().map(str::trim) {
            if line.starts_with("deb ") && line.contains("debian") {
                lines.push(with_keyring(line));
            }
        }
    }
    if lines.is_empty() {
        return Err(RootfsError::NoAptSources {
            path: apt_dir.to_owned(),
        });
    }
    Ok(lines.join("\n") + "\n")
}

const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

fn with_keyring(line: &str) -> String {
    if line.contains("signed-by") {
        return line.to_owned();
    }
    line.replacen("deb ", &format!("deb [signed-by={DEBIAN_KEYRING}] "), 1)
}

/// Convert deb822 stanzas to one-line entries, keeping only `Types: deb` and suites that
/// belong to `suite` (e.g. bookworm, bookworm-updates, bookworm-security).
fn deb822_to_lines(text: &str, suite: &str) -> Vec<String> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let l = l.trim();
                if l.starts_with('#') {
                    return None;
                }
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
        };
        let (Some(types), Some(uris), Some(suites), Some(components)) = (
            field("Types"),
            field("URIs"),
            field("Suites"),
            field("Components"),
        ) else {
            continue;
        };
        if field("Enabled").is_some_and(|e| e.eq_ignore_ascii_case("no")) {
            continue;
        }
        if !types.split_whitespace().any(|t| t == "deb") {
            continue;
        }
        let keyring = field("Signed-By").unwrap_or_else(|| DEBIAN_KEYRING.to_owned());
        for uri in uris.split_whitespace() {
            for s in suites.split_whitespace().filter(|s| s.starts_with(suite)) {
                out.push(format!("deb [signed-by={keyring}] {uri} {s} {components}"));
            }
        }
    }
    out
}

/// What a container-host `/usr` is made of besides the Debian tree.
#[derive(Debug, Clone, Copy)]
pub struct ContainerHostInput<'a> {
    /// The staged Debian tree ([`super::debian::Staging::tree`]); copied, never changed.
    pub debian_tree: &'a Path,
    pub os: &'a Os,
    pub variant: Variant,
    /// The kernel whose modules ship, and which of them (`[kernel] modules`).
    pub kernel: &'a KernelTree,
    pub modules: &'a [String],
    /// Units to enable and mask (the definition's `[units]`; [`MASKED_UNITS`] are added).
    pub enable: &'a [String],
    pub mask: &'a [String],
}

/// What [`stage_container_host`] did, for `build.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerHostFacts {
    pub modules: InstalledModules,
    /// Bytes of Debian files left out ([`TRIMMED`]).
    pub trimmed_bytes: u64,
}

/// Parts of the Debian tree a container host does not ship, and why: documentation and
/// translations nobody reads on a node (`/usr/share/doc` keeps each package's `copyright`
/// file: the license notices travel with the binaries).
pub const TRIMMED: [&str; 5] = [
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
];

/// Stage the `container-host` profile: the Debian tree's `/usr` (trimmed), the kernel
/// modules of the definition, the factory copies of `/etc` and `/var`, the Basalt specifics
/// and the variant's hooks. The definition's files and binaries are added by the caller
/// ([`install_file`]) before [`finish_units`].
pub fn stage_container_host(
    staging: &Path,
    input: &ContainerHostInput<'_>,
) -> Result<ContainerHostFacts, RootfsError> {
    let usr = staging.join("usr");
    let factory = usr.join("share/factory");
    copy_a(&input.debian_tree.join("usr"), staging)?;
    mkdirs(&factory)?;
    for dir in ["etc", "var"] {
        copy_a(&input.debian_tree.join(dir), &factory)?;
    }
    let systemd = usr.join("lib/systemd/systemd");
    if !systemd.exists() {
        return Err(RootfsError::Missing {
            path: systemd,
            what: "the container-host profile boots systemd",
        });
    }
    let trimmed_bytes = trim(staging)?;
    // Debian's tree has an empty /usr/lib/modules (no kernel package): ship the chosen set.
    let modules = super::modules::install(input.kernel, input.modules, &usr)?;
    // containerd's CRI plugin wants /etc/cni/net.d (else it fails to create it on a read-only
    // path and the unit degrades).
    mkdirs(&factory.join("etc/cni/net.d"))?;
    write(&factory.join("etc/hostname"), "basalt\n")?;
    // mmdebstrap copies the build host's resolver configuration into the tree: a node must
    // not inherit it.
    let resolv = factory.join("etc/resolv.conf");
    let _ = fs::remove_file(&resolv);
    write(
        &resolv,
        "# Basalt: no resolver configured in the image; the node's network setup writes this.\n",
    )?;
    finish_container_host(staging, input.variant)?;
    write(
        &usr.join("lib/os-release"),
        os_release(input.os, "container-host", input.variant),
    )?;
    let etc_os_release = factory.join("etc/os-release");
    let _ = fs::remove_file(&etc_os_release);
    symlink("../usr/lib/os-release", &etc_os_release).map_err(io("symlink", &etc_os_release))?;
    Ok(ContainerHostFacts {
        modules,
        trimmed_bytes,
    })
}

/// `cp -a FROM TO/` (owners, modes, links, special files as they are).
fn copy_a(from: &Path, to_dir: &Path) -> Result<(), RootfsError> {
    let mut cmd = CP.command().map_err(|e| RootfsError::Spawn {
        program: e.to_string(),
        source: std::io::Error::other("cp not found"),
    })?;
    cmd.arg("-a").arg("--reflink=auto").arg(from).arg(to_dir);
    run(&mut cmd).map(|_| ())
}

/// Remove [`TRIMMED`] (keeping `copyright` files under `usr/share/doc`); the bytes removed.
fn trim(staging: &Path) -> Result<u64, RootfsError> {
    let mut removed = 0;
    for rel in TRIMMED {
        let dir = staging.join(rel);
        if !dir.is_dir() {
            continue;
        }
        removed += prune(&dir, rel == "usr/share/doc")?;
    }
    Ok(removed)
}

/// Remove everything below `dir` except (when `keep_copyright`) files named `copyright`;
/// folders left empty go too. The bytes of regular files removed.
fn prune(dir: &Path, keep_copyright: bool) -> Result<u64, RootfsError> {
    let mut removed = 0;
    for entry in fs::read_dir(dir).map_err(io("read folder", dir))? {
        let path = entry.map_err(io("read folder", dir))?.path();
        let meta = fs::symlink_metadata(&path).map_err(io("stat", &path))?;
        if meta.is_dir() {
            removed += prune(&path, keep_copyright)?;
            if fs::read_dir(&path)
                .map_err(io("read folder", &path))?
                .next()
                .is_none()
            {
                fs::remove_dir(&path).map_err(io("remove", &path))?;
            }
        } else if !(keep_copyright && path.file_name().is_some_and(|n| n == "copyright")) {
            if meta.is_file() {
                removed += meta.len();
            }
            fs::remove_file(&path).map_err(io("remove", &path))?;
        }
    }
    Ok(removed)
}

/// Refuse unless the staged tree holds, at `dest`, a regular file whose SHA-256 is
/// `expected` (`[[files]] replaces`, see the config docs).
pub fn check_replaced(
    staging: &Path,
    dest: &str,
    expected: &basalt_manifest::Digest,
) -> Result<(), RootfsError> {
    let path = staging.join(dest.trim_start_matches('/'));
    let found = match fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "no file there".to_owned(),
        Err(e) => return Err(io("stat", &path)(e)),
        Ok(meta) if !meta.is_file() => "something other than a regular file there".to_owned(),
        Ok(_) => {
            let bytes = fs::read(&path).map_err(io("read", &path))?;
            let digest = basalt_manifest::Digest::of(&bytes);
            if digest == *expected {
                return Ok(());
            }
            format!("one with SHA-256 {digest}")
        }
    };
    Err(RootfsError::Replaced {
        dest: dest.to_owned(),
        expected: expected.to_hex(),
        found,
    })
}

/// Install `bytes` at `dest` (an absolute `/usr/…` path, validated by the definition) in
/// the staged tree, replacing what is there.
pub fn install_file(
    staging: &Path,
    dest: &str,
    bytes: &[u8],
    mode: u32,
) -> Result<(), RootfsError> {
    let path = staging.join(dest.trim_start_matches('/'));
    if let Ok(meta) = fs::symlink_metadata(&path) {
        if meta.is_dir() {
            return Err(RootfsError::Missing {
                path,
                what: "a folder is in the way of a file the definition installs",
            });
        }
        fs::remove_file(&path).map_err(io("replace", &path))?;
    }
    write(&path, bytes)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io("chmod", &path))
}

/// Units of Debian's systemd that do not fit a non-interactive, image-based host; always
/// masked in a container-host image (the definition's `[units] mask` adds to them).
/// - `systemd-firstboot.service` would prompt on the console for locale, time zone and root
///   password on the first boot (the empty `/etc/machine-id` makes it a "first boot").
pub const MASKED_UNITS: [&str; 1] = ["systemd-firstboot.service"];

/// Enable and mask units in the staged `usr/lib/systemd/system` (see the config docs for
/// why there and not in `/etc`). Enabling links the unit from each target its `[Install]`
/// section names (`WantedBy=` → `T.wants/`, `RequiredBy=` → `T.requires/`); a unit without
/// such a line, or not in the tree, is an error. Masking makes the unit file a link to
/// `/dev/null` (systemd reports it `masked`).
pub fn finish_units(staging: &Path, enable: &[String], mask: &[String]) -> Result<(), RootfsError> {
    let units = staging.join("usr/lib/systemd/system");
    for unit in MASKED_UNITS
        .iter()
        .map(|u| u.to_string())
        .chain(mask.iter().cloned())
    {
        let link = units.join(&unit);
        if fs::symlink_metadata(&link).is_ok() {
            fs::remove_file(&link).map_err(io("replace", &link))?;
        }
        symlink("/dev/null", &link).map_err(io("symlink", &link))?;
    }
    for unit in enable {
        // `name@instance.service` is installed from the template `name@.service`.
        let file = match unit.split_once('@') {
            Some((base, rest)) if !rest.starts_with('.') => {
                format!("{base}@.{}", rest.rsplit('.').next().unwrap_or("service"))
            }
            _ => unit.clone(),
        };
        let path = units.join(&file);
        let text = fs::read_to_string(&path).map_err(|source| RootfsError::Io {
            op: "read the unit to enable (units.enable)",
            path: path.clone(),
            source,
        })?;
        let targets = install_targets(&text);
        if targets.is_empty() {
            return Err(RootfsError::Missing {
                path,
                what: "units.enable names a unit without [Install] WantedBy= or RequiredBy=",
            });
        }
        for (kind, target) in targets {
            let dir = units.join(format!("{target}.{kind}"));
            mkdirs(&dir)?;
            let link = dir.join(unit);
            let _ = fs::remove_file(&link);
            symlink(format!("../{file}"), &link).map_err(io("symlink", &link))?;
        }
    }
    Ok(())
}

/// `(wants|requires, target)` pairs of a unit's `[Install]` section.
fn install_targets(unit: &str) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let mut in_install = false;
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            in_install = line == "[Install]";
            continue;
        }
        if !in_install {
            continue;
        }
        let (kind, value) = if let Some(v) = line.strip_prefix("WantedBy=") {
            ("wants", v)
        } else if let Some(v) = line.strip_prefix("RequiredBy=") {
            ("requires", v)
        } else {
            continue;
        };
        out.extend(value.split_whitespace().map(|t| (kind, t.to_owned())));
    }
    out
}

/// Bump when the container-host staging changes in a way the image cache key would not see
/// (the masks, the trims, the /var handling …): the key covers it.
pub const CONTAINER_HOST_STAGING: &str = "container-host-staging/5";

/// The container-host specifics on top of the Debian tree: machine-id, the variant's hooks,
/// `/var` from the factory copy on first boot, no package caches.
fn finish_container_host(staging: &Path, variant: Variant) -> Result<(), RootfsError> {
    let usr = staging.join("usr");
    let factory = usr.join("share/factory");
    // Empty machine-id: systemd generates one on the first boot and, /etc being writable,
    // commits it (systemd-machine-id-commit); every node gets its own.
    write(&factory.join("etc/machine-id"), "")?;
    let _ = fs::remove_file(factory.join("var/lib/dbus/machine-id"));
    for hook in variant.container_host_hooks() {
        let path = staging.join(hook.path);
        write(&path, hook.content)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(hook.mode))
            .map_err(io("chmod", &path))?;
        if let Some(target) = hook.wanted_by {
            let wants = usr
                .join("lib/systemd/system")
                .join(format!("{target}.wants"));
            mkdirs(&wants)?;
            let name = path.file_name().map(|n| n.to_owned()).unwrap_or_default();
            let link = wants.join(&name);
            symlink(Path::new("..").join(&name), &link).map_err(io("symlink", &link))?;
        }
    }
    // Package caches and logs of the build host have no place in the image. The empty
    // `/var/log/journal` stays (Debian's systemd package makes it, owned by
    // systemd-journal, mode 2755): journald keeps the journal there, on the root partition,
    // only if that folder exists — without it the journal lived in `/run` (≈ 8 MiB of RAM
    // from the first log line, measured as Shmem in docs/benchmarks.md) and every log was
    // gone after a reboot, the rollback's included.
    for dir in ["var/cache/apt", "var/lib/apt/lists", "var/log"] {
        let path = factory.join(dir);
        if path.is_dir() {
            clear_dir(&path, KEPT_EMPTY)?;
        }
    }
    // The package database describes `/usr`, so it lives in `/usr` and moves with the slot:
    // a copy in `/var` would describe the first-booted release forever after an A/B update
    // (tmpfiles `C` never overwrites a node's state), and it was ≈ 650 of the ≈ 720 entries
    // the first boot copied (≈ 3.6 of 5.2 MB, read through dm-verity). `/var/lib/dpkg` is a
    // link to it: dpkg-query reads it; nothing writes it (`/usr` is read-only anyway).
    let dpkg = factory.join("var/lib/dpkg");
    if dpkg.is_dir() {
        let sysimage = usr.join(DPKG_IN_USR.trim_start_matches("/usr/"));
        mkdirs(sysimage.parent().unwrap_or(&usr))?;
        fs::rename(&dpkg, &sysimage).map_err(io("move the dpkg database", &dpkg))?;
        symlink(DPKG_IN_USR, &dpkg).map_err(io("symlink", &dpkg))?;
    }
    // basalt-init copies the factory /etc and /var on the first boot (an empty /var);
    // systemd-tmpfiles copies what is missing on later boots (`C`: never over a node's state).
    write(
        &usr.join("lib/tmpfiles.d/basalt-factory-var.conf"),
        factory_var_tmpfiles(&factory.join("var"))?,
    )?;
    Ok(())
}

/// Where the container-host image keeps the dpkg database: with the `/usr` it describes
/// (`/var/lib/dpkg` links here).
pub const DPKG_IN_USR: &str = "/usr/lib/sysimage/dpkg";

/// `tmpfiles.d` lines copying each entry of the factory `/var` that is missing on the node.
/// Second-level entries (`/var/lib/dpkg`, not `/var/lib`): systemd's own tmpfiles create the
/// first level (`/var/lib`, `/var/log` …) as empty folders, and `C` skips a path that exists.
fn factory_var_tmpfiles(var: &Path) -> Result<String, RootfsError> {
    let mut lines =
        vec!["# Basalt: populate /var from /usr/share/factory/var on first boot.".to_owned()];
    let mut firsts: Vec<_> = fs::read_dir(var)
        .map_err(io("read folder", var))?
        .filter_map(|e| e.ok())
        .collect();
    firsts.sort_by_key(|e| e.file_name());
    for first in firsts {
        let name = first.file_name().to_string_lossy().into_owned();
        let is_dir = first.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if !is_dir {
            // /var/run, /var/lock: systemd's own tmpfiles make these links.
            continue;
        }
        lines.push(format!("d /var/{name} 0755 - - -"));
        let mut seconds: Vec<_> = fs::read_dir(first.path())
            .map_err(io("read folder", &first.path()))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        seconds.sort();
        for second in seconds {
            let factory_entry = first.path().join(&second);
            match fs::read_link(&factory_entry) {
                // A link into `/usr` (the dpkg database): forced on every boot, so a node
                // whose `/var` holds an older copy gets the link too.
                Ok(target) => lines.push(format!(
                    "L+ /var/{name}/{second} - - - - {}",
                    target.display()
                )),
                Err(_) => lines.push(format!(
                    "C /var/{name}/{second} - - - - /usr/share/factory/var/{name}/{second}"
                )),
            }
        }
    }
    Ok(lines.join("\n") + "\n")
}

/// Folders [`clear_dir`] empties but keeps, with their owner and mode (see
/// `finish_container_host`: the persistent journal's folder).
const KEPT_EMPTY: &[&str] = &["journal"];

/// Remove everything inside `dir`, keeping `dir`; a folder named in `keep_empty` directly
/// inside `dir` is emptied and kept.
fn clear_dir(dir: &Path, keep_empty: &[&str]) -> Result<(), RootfsError> {
    for entry in fs::read_dir(dir).map_err(io("read folder", dir))? {
        let entry = entry.map_err(io("read folder", dir))?;
        let path = entry.path();
        let is_dir = fs::symlink_metadata(&path)
            .map(|m| m.is_dir())
            .map_err(io("stat", &path))?;
        if is_dir && keep_empty.iter().any(|k| entry.file_name() == *k) {
            clear_dir(&path, &[])?;
        } else if is_dir {
            fs::remove_dir_all(&path).map_err(io("remove", &path))?;
        } else {
            fs::remove_file(&path).map_err(io("remove", &path))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[[files]] replaces`: the packaged file must be exactly the one named, else the
    /// error says what is there instead.
    #[test]
    fn a_replaced_file_must_be_the_one_named() {
        let dir = tempfile::tempdir().unwrap();
        let dest = "/usr/lib/systemd/system/x.service";
        let path = dir.path().join("usr/lib/systemd/system/x.service");
        let theirs = b"[Service]\nExecStart=/usr/bin/x\n";
        let named = basalt_manifest::Digest::of(theirs);
        let refused = |e: RootfsError| e.to_string();

        let missing = refused(check_replaced(dir.path(), dest, &named).unwrap_err());
        assert!(
            missing.contains(dest) && missing.contains("no file there"),
            "{missing}"
        );

        fs::create_dir_all(&path).unwrap();
        let folder = refused(check_replaced(dir.path(), dest, &named).unwrap_err());
        assert!(folder.contains("other than a regular file"), "{folder}");
        fs::remove_dir(&path).unwrap();

        fs::write(&path, theirs).unwrap();
        check_replaced(dir.path(), dest, &named).unwrap();

        fs::write(&path, b"[Service]\nExecStart=/usr/bin/x --new-flag\n").unwrap();
        let changed = refused(check_replaced(dir.path(), dest, &named).unwrap_err());
        assert!(
            changed.contains(&named.to_hex()) && changed.contains("one with SHA-256"),
            "{changed}"
        );
    }

    /// The build host's logs go, the persistent journal's folder stays (empty, same mode).
    #[test]
    fn clearing_var_log_keeps_the_journal_folder() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("var/log");
        fs::create_dir_all(log.join("journal/0123")).unwrap();
        fs::create_dir_all(log.join("apt")).unwrap();
        fs::write(log.join("apt/history.log"), b"x").unwrap();
        fs::write(log.join("dpkg.log"), b"x").unwrap();
        fs::write(log.join("journal/0123/system.journal"), b"x").unwrap();
        fs::set_permissions(log.join("journal"), fs::Permissions::from_mode(0o2755)).unwrap();
        clear_dir(&log, KEPT_EMPTY).unwrap();
        let left: Vec<_> = fs::read_dir(&log)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["journal"]);
        assert_eq!(fs::read_dir(log.join("journal")).unwrap().count(), 0);
        let mode = fs::metadata(log.join("journal"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o2755);
    }

    #[test]
    fn deb822_stanzas_become_signed_one_liners() {
        let text = "Types: deb\n# a comment: with colon\nURIs: http://mirror.example/debian\n\
                    Suites: bookworm bookworm-updates\nComponents: main\n\
                    Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
                    Types: deb-src\nURIs: http://mirror.example/debian\nSuites: bookworm\n\
                    Components: main\n\n\
                    Types: deb\nURIs: http://mirror.example/other\nSuites: trixie\n\
                    Components: main\n\n\
                    Types: deb\nEnabled: no\nURIs: http://off.example/debian\nSuites: bookworm\n\
                    Components: main\n";
        let lines = deb822_to_lines(text, "bookworm");
        assert_eq!(
            lines,
            [
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian bookworm main",
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian bookworm-updates main",
            ]
        );
    }

    #[test]
    fn host_sources_without_entries_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = apt_sources_from_host(dir.path(), "bookworm").unwrap_err();
        assert!(matches!(err, RootfsError::NoAptSources { .. }), "{err}");
        fs::write(
            dir.path().join("sources.list"),
            "deb http://mirror.example/debian bookworm main\n",
        )
        .unwrap();
        let text = apt_sources_from_host(dir.path(), "bookworm").unwrap();
        assert!(text.contains("[signed-by="), "{text}");
    }

    #[test]
    fn factory_var_becomes_copy_lines_per_second_level_entry() {
        let dir = tempfile::tempdir().unwrap();
        let var = dir.path();
        fs::create_dir_all(var.join("lib/dpkg")).unwrap();
        fs::write(var.join("lib/dpkg/status"), "").unwrap();
        fs::create_dir_all(var.join("lib/systemd")).unwrap();
        fs::create_dir_all(var.join("log")).unwrap();
        symlink("/run", var.join("run")).unwrap();
        symlink(DPKG_IN_USR, var.join("lib/sysimage-db")).unwrap();
        let text = factory_var_tmpfiles(var).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "d /var/lib 0755 - - -",
                "C /var/lib/dpkg - - - - /usr/share/factory/var/lib/dpkg",
                "L+ /var/lib/sysimage-db - - - - /usr/lib/sysimage/dpkg",
                "C /var/lib/systemd - - - - /usr/share/factory/var/lib/systemd",
                "d /var/log 0755 - - -",
            ]
        );
    }

    #[test]
    fn units_are_enabled_from_their_install_section_and_masked_in_usr() {
        let dir = tempfile::tempdir().unwrap();
        let units = dir.path().join("usr/lib/systemd/system");
        fs::create_dir_all(&units).unwrap();
        fs::write(
            units.join("a.service"),
            "[Unit]\nDescription=a\n[Service]\nExecStart=/bin/true\n[Install]\n\
             WantedBy=multi-user.target  sockets.target\nRequiredBy=b.target\n",
        )
        .unwrap();
        fs::write(
            units.join("t@.service"),
            "[Service]\nExecStart=/bin/true %i\n[Install]\nWantedBy=getty.target\n",
        )
        .unwrap();
        fs::write(
            units.join("noisy.service"),
            "[Service]\nExecStart=/bin/true\n",
        )
        .unwrap();
        finish_units(
            dir.path(),
            &["a.service".into(), "t@x.service".into()],
            &["noisy.service".into()],
        )
        .unwrap();
        let link = |p: &str| fs::read_link(units.join(p)).unwrap();
        assert_eq!(
            link("multi-user.target.wants/a.service"),
            Path::new("../a.service")
        );
        assert_eq!(
            link("sockets.target.wants/a.service"),
            Path::new("../a.service")
        );
        assert_eq!(
            link("b.target.requires/a.service"),
            Path::new("../a.service")
        );
        assert_eq!(
            link("getty.target.wants/t@x.service"),
            Path::new("../t@.service")
        );
        assert_eq!(link("noisy.service"), Path::new("/dev/null"));
        assert_eq!(link("systemd-firstboot.service"), Path::new("/dev/null"));

        // Refusals name the unit.
        let err = finish_units(dir.path(), &["missing.service".into()], &[]).unwrap_err();
        assert!(err.to_string().contains("missing.service"), "{err}");
        fs::write(
            units.join("plain.service"),
            "[Service]\nExecStart=/bin/true\n",
        )
        .unwrap();
        let err = finish_units(dir.path(), &["plain.service".into()], &[]).unwrap_err();
        assert!(err.to_string().contains("WantedBy"), "{err}");
    }

    #[test]
    fn trimming_keeps_copyright_files_and_counts_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let doc = dir.path().join("usr/share/doc/bash");
        fs::create_dir_all(&doc).unwrap();
        fs::write(doc.join("copyright"), "GPL").unwrap();
        fs::write(doc.join("changelog.gz"), vec![0u8; 1000]).unwrap();
        let man = dir.path().join("usr/share/man/man1");
        fs::create_dir_all(&man).unwrap();
        fs::write(man.join("bash.1.gz"), vec![0u8; 500]).unwrap();
        symlink("bash.1.gz", man.join("sh.1.gz")).unwrap();
        assert_eq!(trim(dir.path()).unwrap(), 1500);
        assert!(doc.join("copyright").is_file());
        assert!(!doc.join("changelog.gz").exists());
        assert!(!dir.path().join("usr/share/man/man1").exists());
    }

    #[test]
    fn installed_files_replace_files_but_not_folders() {
        let dir = tempfile::tempdir().unwrap();
        install_file(dir.path(), "/usr/bin/tool", b"one", 0o755).unwrap();
        install_file(dir.path(), "/usr/bin/tool", b"two", 0o700).unwrap();
        let path = dir.path().join("usr/bin/tool");
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o700
        );
        let err = install_file(dir.path(), "/usr/bin", b"x", 0o644).unwrap_err();
        assert!(err.to_string().contains("folder"), "{err}");
    }

    #[test]
    fn payload_is_deterministic_and_sized() {
        let a = payload();
        assert_eq!(a.len(), PAYLOAD_BYTES);
        assert_eq!(a, payload());
        // Not trivially compressible: many distinct bytes in the first block.
        let mut seen = [false; 256];
        a[..4096].iter().for_each(|b| seen[*b as usize] = true);
        assert!(seen.iter().filter(|s| **s).count() > 200);
    }

    #[test]
    fn minimal_tree_has_busybox_init_and_factory_etc() {
        let busybox = Path::new("/bin/busybox");
        assert!(
            busybox.exists(),
            "/bin/busybox missing: install busybox-static (cargo xtask test does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let os = Os {
            name: "basalt".into(),
            version: semver::Version::new(1, 2, 3),
            channel: "stable".into(),
            arch: "x86_64".into(),
            sysext_level_override: None,
        };
        stage_minimal(dir.path(), &os, busybox, Variant::Product).unwrap();
        let usr = dir.path().join("usr");
        assert_eq!(
            fs::read_link(usr.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        let rel = fs::read_to_string(usr.join("lib/os-release")).unwrap();
        assert!(rel.contains("VERSION_ID=1.2.3"), "{rel}");
        // The level defaults to the major version: a patch or minor update keeps it.
        assert!(rel.contains("\nSYSEXT_LEVEL=1\n"), "{rel}");
        let mode = fs::metadata(usr.join("lib/basalt/init-minimal"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            fs::metadata(usr.join("share/basalt/payload.bin"))
                .unwrap()
                .len(),
            PAYLOAD_BYTES as u64
        );
        assert!(usr.join("share/factory/etc/passwd").exists());
    }
}
