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

use super::config::{Os, Packages};

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
    #[error("{path} is missing from the built userspace: {what}")]
    Missing { path: PathBuf, what: &'static str },
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
pub fn os_release(os: &Os, profile: &str) -> String {
    format!(
        "NAME=Basalt\nID={name}\nVERSION_ID={version}\nVERSION=\"{version} ({channel})\"\n\
         PRETTY_NAME=\"Basalt {version} ({profile})\"\nSYSEXT_LEVEL={version}\n\
         BASALT_CHANNEL={channel}\nBASALT_PROFILE={profile}\n",
        name = os.name,
        version = os.version,
        channel = os.channel,
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
pub fn stage_minimal(staging: &Path, os: &Os, busybox: &Path) -> Result<(), RootfsError> {
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
    write(&usr.join("lib/os-release"), os_release(os, "minimal"))?;
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

/// Stage the `container-host` profile: a Debian userspace built by mmdebstrap from the host's
/// apt sources, reduced to `usr/` plus the factory copies of `/etc` and `/var`.
pub fn stage_container_host(
    staging: &Path,
    os: &Os,
    packages: &Packages,
    sources: &str,
) -> Result<(), RootfsError> {
    let tree = staging.join("debian-root");
    let mut cmd = Command::new("mmdebstrap");
    cmd.args([
        "--variant=minbase",
        "--mode=root",
        "--quiet",
        // The sandbox user cannot write /dev/null on these machines (mode 0644).
        "--aptopt=APT::Sandbox::User \"root\"",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
    ])
    .arg(format!("--include={}", packages.include.join(",")))
    .arg(&packages.suite)
    .arg(&tree)
    .arg("-")
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| RootfsError::Spawn {
        program: "mmdebstrap".into(),
        source,
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin
            .write_all(sources.as_bytes())
            .map_err(io("write sources to", Path::new("mmdebstrap stdin")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| RootfsError::Spawn {
            program: "mmdebstrap".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(RootfsError::Tool {
            program: "mmdebstrap".into(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    let systemd = tree.join("usr/lib/systemd/systemd");
    if !systemd.exists() {
        return Err(RootfsError::Missing {
            path: systemd,
            what: "the container-host profile boots systemd",
        });
    }
    // /usr moves as is; /etc and /var become factory copies inside it.
    fs::rename(tree.join("usr"), staging.join("usr")).map_err(io("move", &tree))?;
    let factory = staging.join("usr/share/factory");
    mkdirs(&factory)?;
    for dir in ["etc", "var"] {
        let from = tree.join(dir);
        let to = factory.join(dir);
        fs::rename(&from, &to).map_err(io("move", &from))?;
    }
    // containerd's CRI plugin wants /etc/cni/net.d (else it fails to create it on a read-only
    // path and the unit degrades).
    mkdirs(&factory.join("etc/cni/net.d"))?;
    write(&factory.join("etc/hostname"), "basalt\n")?;
    finish_container_host(staging)?;
    write(
        &staging.join("usr/lib/os-release"),
        os_release(os, "container-host"),
    )?;
    let etc_os_release = factory.join("etc/os-release");
    let _ = fs::remove_file(&etc_os_release);
    symlink("../usr/lib/os-release", &etc_os_release).map_err(io("symlink", &etc_os_release))?;
    fs::remove_dir_all(&tree).map_err(io("remove", &tree))?;
    Ok(())
}

/// The unit that reports how a container-host boot went, for tests and the demo. Shipped and
/// enabled in `/usr`, inert unless the kernel command line has [`REPORT_OPTION`]. `Type=exec`,
/// not `oneshot`: a oneshot job would keep the boot "starting", and the script waits for the
/// boot to finish (`is-system-running --wait`). The script opens `/dev/console` itself: a unit
/// with `StandardOutput=tty` on the console makes systemd stop printing its own status lines
/// (`Reached target …`) while it runs.
pub const REPORT_UNIT: &str = "[Unit]
Description=Basalt boot report (tests only: basalt.test=report)
ConditionKernelCommandLine=basalt.test=report
After=multi-user.target

[Service]
Type=exec
ExecStart=/usr/lib/basalt/boot-report

[Install]
WantedBy=multi-user.target
";

/// The kernel option that makes `basalt-boot-report.service` report and power off.
pub const REPORT_OPTION: &str = "basalt.test=report";

/// The report script: one `BASALT-REPORT:` line (each field `key=value`, no spaces inside a
/// value), a `BASALT-REPORT-TIME:` line (systemd-analyze), then power-off. Each line is written
/// with one `printf` so a getty prompt cannot land inside it.
pub const REPORT_SCRIPT: &str = r#"#!/bin/sh
PATH=/usr/sbin:/usr/bin
exec >/dev/console 2>&1
system=$(timeout 300 systemctl is-system-running --wait 2>/dev/null)
[ -n "$system" ] || system=unknown
containerd=$(systemctl is-active containerd.service 2>/dev/null)
usr=$(findmnt -n -o FSTYPE,OPTIONS /usr | tr -s ' ' ',')
root=$(findmnt -n -o FSTYPE,OPTIONS / | cut -d, -f1 | tr -s ' ' ',')
. /usr/lib/os-release
failed=$(systemctl --failed --plain --no-legend 2>/dev/null | awk '{print $1}' | paste -sd, -)
machine_id=$(cat /etc/machine-id 2>/dev/null)
[ -n "$machine_id" ] || machine_id=none
[ -s /var/lib/dpkg/status ] && var=factory || var=empty
ctr_version=$(ctr version 2>/dev/null | awk '/Server:/{s=1} s && /Version:/{print $2; exit}')
. /run/basalt/boot.env 2>/dev/null
# Kernel start → multi-user.target, guest clock (µs since boot).
mu=$(systemctl show -P ActiveEnterTimestampMonotonic multi-user.target 2>/dev/null)
mu_s=$(awk -v us="${mu:-0}" 'BEGIN { printf "%.1f", us / 1000000 }')
# The boot entry systemd-boot started (EFI variable: 4 attribute bytes, then UTF-16LE).
# Read through a pipe: efivarfs files do not take the seek `tail -c` would do.
entry=$(cat /sys/firmware/efi/efivars/LoaderEntrySelected-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f 2>/dev/null | tail -c +5 | tr -d '\000')
printf '%s\n' "BASALT-REPORT: system=$system containerd=$containerd usr=$usr root=$root version=$VERSION_ID machine-id=$machine_id var=$var containerd-version=${ctr_version:-none} initramfs-s=${BASALT_INITRAMFS_DONE_SECS:-none} multi-user-s=$mu_s entry=${entry:-none} failed=${failed:-none}"
printf '%s\n' "BASALT-REPORT-TIME: $(systemd-analyze time 2>/dev/null | head -n 1)"
printf '%s\n' "BASALT-REPORT-CHAIN: $(systemd-analyze critical-chain --no-pager multi-user.target 2>/dev/null | grep -o '[a-z.@-]*\.service[^ ]* [^ ]*' | head -n 4 | paste -sd';' -)"
printf '%s\n' "BASALT-REPORT: done, powering off"
systemctl --no-block poweroff
"#;

/// Bump when the container-host staging changes in a way the image cache key would not see
/// (the report unit, the masks, the /var handling …): the key covers it.
pub const CONTAINER_HOST_STAGING: &str = "container-host-staging/3";

/// Units of Debian's systemd that do not fit a non-interactive, image-based host; masked in
/// the factory `/etc` (a link to `/dev/null`, so an admin can still unmask them).
/// - `systemd-firstboot.service` would prompt on the console for locale, time zone and root
///   password on the first boot (the empty `/etc/machine-id` makes it a "first boot").
pub const MASKED_UNITS: [&str; 1] = ["systemd-firstboot.service"];

/// The container-host specifics on top of the Debian tree: machine-id, the boot report unit,
/// masked units, `/var` from the factory copy on first boot, no package caches.
fn finish_container_host(staging: &Path) -> Result<(), RootfsError> {
    let usr = staging.join("usr");
    let factory = usr.join("share/factory");
    // Empty machine-id: systemd generates one on the first boot and, /etc being writable,
    // commits it (systemd-machine-id-commit); every node gets its own.
    write(&factory.join("etc/machine-id"), "")?;
    let _ = fs::remove_file(factory.join("var/lib/dbus/machine-id"));
    // The report unit, enabled in /usr (vendor preset: no /etc link needed).
    let units = usr.join("lib/systemd/system");
    write(&units.join("basalt-boot-report.service"), REPORT_UNIT)?;
    let wants = units.join("multi-user.target.wants");
    mkdirs(&wants)?;
    let link = wants.join("basalt-boot-report.service");
    symlink("../basalt-boot-report.service", &link).map_err(io("symlink", &link))?;
    let script = usr.join("lib/basalt/boot-report");
    write(&script, REPORT_SCRIPT)?;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755))
        .map_err(io("chmod", &script))?;
    let masks = factory.join("etc/systemd/system");
    mkdirs(&masks)?;
    for unit in MASKED_UNITS {
        let link = masks.join(unit);
        let _ = fs::remove_file(&link);
        symlink("/dev/null", &link).map_err(io("symlink", &link))?;
    }
    // Package caches and logs of the build host have no place in the image.
    for dir in ["var/cache/apt", "var/lib/apt/lists", "var/log"] {
        let path = factory.join(dir);
        if path.is_dir() {
            clear_dir(&path)?;
        }
    }
    // basalt-init copies only /etc; /var starts empty on the root partition and
    // systemd-tmpfiles copies the factory tree in on the first boot (`C`: only what is
    // missing, never over a node's state).
    write(
        &usr.join("lib/tmpfiles.d/basalt-factory-var.conf"),
        factory_var_tmpfiles(&factory.join("var"))?,
    )?;
    Ok(())
}

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
            lines.push(format!(
                "C /var/{name}/{second} - - - - /usr/share/factory/var/{name}/{second}"
            ));
        }
    }
    Ok(lines.join("\n") + "\n")
}

/// Remove everything inside `dir`, keeping `dir`.
fn clear_dir(dir: &Path) -> Result<(), RootfsError> {
    for entry in fs::read_dir(dir).map_err(io("read folder", dir))? {
        let path = entry.map_err(io("read folder", dir))?.path();
        let is_dir = fs::symlink_metadata(&path)
            .map(|m| m.is_dir())
            .map_err(io("stat", &path))?;
        if is_dir {
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
        let text = factory_var_tmpfiles(var).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "d /var/lib 0755 - - -",
                "C /var/lib/dpkg - - - - /usr/share/factory/var/lib/dpkg",
                "C /var/lib/systemd - - - - /usr/share/factory/var/lib/systemd",
                "d /var/log 0755 - - -",
            ]
        );
    }

    #[test]
    fn report_unit_is_inert_without_the_option_and_script_reports_one_line() {
        assert!(REPORT_UNIT.contains(&format!("ConditionKernelCommandLine={REPORT_OPTION}")));
        assert!(!REPORT_UNIT.contains("StandardOutput=tty"));
        let report_lines = REPORT_SCRIPT
            .lines()
            .filter(|l| l.contains("\"BASALT-REPORT: system="))
            .count();
        assert_eq!(report_lines, 1);
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
        };
        stage_minimal(dir.path(), &os, busybox).unwrap();
        let usr = dir.path().join("usr");
        assert_eq!(
            fs::read_link(usr.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        let rel = fs::read_to_string(usr.join("lib/os-release")).unwrap();
        assert!(rel.contains("VERSION_ID=1.2.3"), "{rel}");
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
