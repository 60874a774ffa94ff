//! The update story on a real node, as steps: build releases v1, v2 and v3 of the
//! container-host definition, publish them with `basalt release publish`, boot v1 under OVMF +
//! systemd-boot, point its update agent at the repository, update, reboot, and read what the
//! agent says through `basaltctl … --json`. The VM scenarios (`tests/tests/vm_update_*.rs`)
//! and `cargo xtask demo` both run these steps: one implementation, two audiences.
//!
//! Owns: the three test releases (v3 = v2 plus a health check that cannot pass, see
//! [`UNHEALTHY_DROPIN`]), the repository folder and its disk image for an air-gapped node, the
//! guest network wiring (QEMU user-mode NIC in restricted mode, one `guestfwd` to nginx on
//! 127.0.0.1), and [`Node`]: a booted test image driven through its serial root shell.
//! Does not own: the image build (`basalt_image::build`, through [`crate::artifacts`]), the QEMU
//! harness ([`crate::vm`]), nginx ([`crate::web`]), the agent (`updater/`).
//!
//! Every step tells a [`Narrator`] what it is about to do (one or two plain sentences) and what
//! came out: the demo prints both, the tests keep quiet (or print with `--nocapture`).
//!
//! Why v3 gets its failing health check from a derived definition and not from a test hook:
//! the product definition must stay free of test switches (`tests/tests/image_build.rs`
//! checks the product `/usr`), and "a release whose health check fails" is a property of a
//! release, not of a test image. The derived definition is the product definition, byte for
//! byte, but for its relative paths made absolute, plus one `[[files]]` entry (checked:
//! [`unhealthy_definition`]).
//! Staging is shared: the Debian package set is the same, so the staging key is the same.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use basalt_disk::Slot;
use basalt_image::build::config::ImageConfig;
use basalt_image::build::erofs;
use basalt_image::build::{build_with_progress, Variant};

use crate::artifacts::{
    basalt_cli, container_host_request, container_host_with_progress, MinimalImage,
};
use crate::error::{Error, Result};
use crate::tool::Tool;
use crate::vm::{scale, Vm, VmConfig, RESTART_MARKER};

/// The address the guest reaches the repository at: QEMU's `guestfwd` forwards it to the
/// nginx on the host's loopback (nothing else is reachable: `restrict=on`).
pub const GUEST_REPO_ADDR: &str = "10.0.2.100";
/// The address the guest reaches a fleet server (`basalt-rollout serve`) at, when a scenario
/// has one: forwarded like [`GUEST_REPO_ADDR`] (see [`restricted_nic_to`]).
pub const GUEST_FLEET_ADDR: &str = "10.0.2.101";
/// The drop-in an operator writes to make a node follow a fleet server (server mode).
pub const FLEET_DROPIN: &str = "/etc/basalt/updater.d/50-fleet.toml";
/// Where that drop-in's enrolment token lives on the node.
pub const FLEET_ENROLL_TOKEN: &str = "/etc/basalt/fleet-enroll-token";
/// What the node's pre-reboot (drain) command writes: a file in the agent's state directory
/// (the only place its sandbox lets it write), read back after the reboot.
pub const FLEET_DRAIN_MARK: &str = "/var/lib/basalt/fleet-drained";
/// Where the air-gapped node mounts the repository disk.
pub const GUEST_REPO_MOUNT: &str = "/run/basalt-repo";
/// The drop-in the node's operator writes to name the repository (the product ships none).
pub const REPOSITORY_DROPIN: &str = "/etc/basalt/updater.d/50-repository.toml";
/// The rest of the operator's drop-in: updates and reboots when the operator says so
/// (`basaltctl update [--reboot]`); a failed health gate still reboots at once.
pub const OPERATOR_POLICY: &str =
    "[update]\nauto_download = false\nauto_apply = false\n\n[reboot]\nstrategy = \"off\"\n";
/// Where v3 ships its failing health check.
pub const UNHEALTHY_DEST: &str = "/usr/lib/basalt/updater.d/90-test-unhealthy.toml";
/// v3's extra drop-in: a health check that can never pass, with a short deadline so the
/// scenario does not wait the default five minutes.
pub const UNHEALTHY_DROPIN: &str =
    "# Test release only (v3 of the update scenarios): a health check that never passes.\n\
[health]\n\
deadline_secs = 30\n\
interval_secs = 3\n\
commands = [[\"/usr/bin/test\", \"-e\", \"/etc/basalt/this-file-never-exists\"]]\n";

/// `socat` forwards each guest connection to nginx (QEMU starts one per connection).
pub const SOCAT: Tool = Tool::new("socat", "socat");

/// basalt-init's last line before systemd (initramfs/src/boot.rs).
const SWITCH_ROOT: &str = "basalt-init: switching root to /sysroot";
/// Boot to a root shell (OVMF, systemd-boot, basalt-init, systemd: ≈20–40 s under TCG).
const BOOT: Duration = Duration::from_secs(240);
/// One shell command.
const COMMAND: Duration = Duration::from_secs(60);
/// A download of a release over the guest network and its install.
const UPDATE: Duration = Duration::from_secs(600);

/// Who hears about each step.
pub trait Narrator {
    /// Before a step: what is about to happen, in plain words.
    fn say(&mut self, text: &str);
    /// What a step printed or found.
    fn show(&mut self, output: &str);
    /// One line of a long step's progress, as it happens (default: ignored).
    fn progress(&mut self, _line: &str) {}
}

/// A narrator that writes to stderr (seen with `cargo test -- --nocapture`).
#[derive(Debug, Default)]
pub struct Stderr;

impl Narrator for Stderr {
    fn say(&mut self, text: &str) {
        eprintln!("story: {text}");
    }
    fn show(&mut self, output: &str) {
        for line in output.lines() {
            eprintln!("story:   | {line}");
        }
    }
}

/// The three releases of the story.
#[derive(Debug, Clone)]
pub struct Releases {
    /// 1.0.0: what the node is installed with.
    pub v1: MinimalImage,
    /// 2.0.0: a good update.
    pub v2: MinimalImage,
    /// 3.0.0: v2 plus [`UNHEALTHY_DROPIN`].
    pub v3: MinimalImage,
}

/// Build (or take from the image cache) the test variant of the container-host definition
/// as 1.0.0 and 2.0.0, and the unhealthy 3.0.0. Fails if the three did not share one Debian
/// staging (the cache is the reason three releases cost little more than one).
pub fn build_releases(n: &mut dyn Narrator) -> Result<Releases> {
    n.say(
        "Build three releases of the container-host image (the test variant: a root shell on \
         the serial console). 1.0.0 and 2.0.0 differ only in their version; 3.0.0 adds a \
         health check that can never pass. All three come from one Debian staging; a build \
         whose inputs were built before is taken from the image cache and only re-signed.",
    );
    let v1 = container_host_with_progress(Variant::Test, "1.0.0", &mut |l| n.show(l))?;
    let v2 = container_host_with_progress(Variant::Test, "2.0.0", &mut |l| n.show(l))?;
    let v3 = unhealthy_release("3.0.0", n)?;
    for r in [&v1, &v2, &v3] {
        n.show(&format!(
            "{} {}: usrhash {}…, {} MiB /usr, {}",
            r.report.facts.os,
            r.report.facts.version,
            &r.report.facts.root_hash[..16],
            r.report.facts.usr_img_bytes >> 20,
            if r.report.from_cache {
                "from the image cache".to_owned()
            } else {
                format!("built in {:.0} s", r.report.elapsed.as_secs_f64())
            }
        ));
    }
    let staging = |r: &MinimalImage| r.report.facts.staging_key.clone();
    if staging(&v1).is_none() || staging(&v1) != staging(&v2) || staging(&v1) != staging(&v3) {
        return Err(Error::ScenarioCheck(format!(
            "the three releases should share one Debian staging: {:?} {:?} {:?}",
            staging(&v1),
            staging(&v2),
            staging(&v3)
        )));
    }
    Ok(Releases { v1, v2, v3 })
}

/// The three releases of [`build_releases`] signed for Secure Boot with `signer` (the db key
/// the machine's firmware trusts): each built with `BuildRequest::secure_boot`, so each ships
/// its signed UKI as a release artifact (kind `uki`) and v1's `disk.img` boots through a
/// signed systemd-boot and v1's UKI. The same cache entries as [`build_releases`] (the
/// Secure Boot signing is per request), written to their own folders
/// (`…/container-host[-unhealthy]-sb-<version>/out`), so the loose-kernel releases stay as
/// they are for the other scenarios.
pub fn build_secure_releases(
    signer: &basalt_image::build::image::SecureBootSigner,
    n: &mut dyn Narrator,
) -> Result<Releases> {
    n.say(
        "Build the three releases again, signed for Secure Boot: each release also ships its \
         unified kernel image (systemd-stub + kernel + initramfs + the command line with its \
         usrhash=), signed with the db key the firmware trusts.",
    );
    let build = |definition: Option<PathBuf>, name: &str, version: &str, n: &mut dyn Narrator| {
        let parsed = semver::Version::parse(version).map_err(|e| Error::VmConfig {
            problem: format!("image version {version:?}: {e}"),
        })?;
        let out = crate::workspace_root()
            .join("build")
            .join("test-images")
            .join(format!("{name}-sb-{version}"))
            .join("out");
        let mut req = container_host_request(Variant::Test, &parsed, &out)?;
        if let Some(d) = definition {
            req.config = d;
        }
        req.secure_boot = Some(signer.clone());
        let report = build_with_progress(&req, &mut |line| n.show(line))?;
        Ok::<_, Error>(MinimalImage {
            dir: out,
            definition: req.config,
            report,
            keys: crate::artifacts::test_keys()?,
        })
    };
    let v1 = build(None, "container-host-test", "1.0.0", n)?;
    let v2 = build(None, "container-host-test", "2.0.0", n)?;
    let v3 = build(
        Some(unhealthy_definition()?),
        "container-host-unhealthy",
        "3.0.0",
        n,
    )?;
    Ok(Releases { v1, v2, v3 })
}

/// The derived definition of [`Releases::v3`] (see the module docs), written under
/// `<workspace>/build/test-images/container-host-unhealthy/`: the product definition's text
/// with its relative paths (`source = …`, `list = …`) made absolute, plus one `[[files]]`
/// entry. Checked after writing: both parse, and the derived one equals the product one but
/// for that entry — so a definition change the rewrite does not understand fails here, not in
/// a VM.
pub fn unhealthy_definition() -> Result<PathBuf> {
    let product = crate::artifacts::container_host_definition();
    let dir = crate::workspace_root()
        .join("build")
        .join("test-images")
        .join("container-host-unhealthy");
    std::fs::create_dir_all(&dir).map_err(|source| Error::CreateDir {
        path: dir.clone(),
        source,
    })?;
    let dropin = dir.join("90-test-unhealthy.toml");
    crate::artifacts::write_if_changed(&dropin, UNHEALTHY_DROPIN.as_bytes())?;
    let text = std::fs::read_to_string(&product).map_err(|source| Error::ReadFile {
        path: product.clone(),
        source,
    })?;
    let mut out = String::new();
    for line in text.lines() {
        out.push_str(&absolute_path_line(
            line,
            &product,
            &["source", "list", "definition"],
        ));
        out.push('\n');
    }
    out.push_str(&format!(
        "\n# Added by basalt_tests::story for release 3.0.0 of the update scenarios only.\n\
         [[files]]\nsource = {:?}\ndest = {UNHEALTHY_DEST:?}\n",
        dropin.display().to_string()
    ));
    let definition = dir.join("container-host-unhealthy.toml");
    crate::artifacts::write_if_changed(&definition, out.as_bytes())?;
    check_derived(&product, &definition)?;
    Ok(definition)
}

/// The text of `definition` with the relative paths of `keys` (e.g. `source`, `list`) made
/// absolute, so a copy of it elsewhere (a test's temporary folder) still finds its files.
pub fn with_absolute_paths(definition: &Path, keys: &[&str]) -> Result<String> {
    let text = std::fs::read_to_string(definition).map_err(|source| Error::ReadFile {
        path: definition.to_owned(),
        source,
    })?;
    let mut out = String::new();
    for line in text.lines() {
        out.push_str(&absolute_path_line(line, definition, keys));
        out.push('\n');
    }
    Ok(out)
}

/// `KEY = "REL"` for KEY in `keys` with REL made absolute against `definition`'s folder;
/// any other line as is.
fn absolute_path_line(line: &str, definition: &Path, keys: &[&str]) -> String {
    let trimmed = line.trim();
    for &key in keys {
        let Some(rest) = trimmed.strip_prefix(key) else {
            continue;
        };
        let Some(value) = rest.trim_start().strip_prefix('=') else {
            continue;
        };
        let value = value.trim();
        if let Some(rel) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            if !rel.contains(['"', '\\']) && !Path::new(rel).is_absolute() {
                let abs = ImageConfig::resolve_path(definition, Path::new(rel));
                return format!("{key} = {:?}", abs.display().to_string());
            }
        }
    }
    line.to_owned()
}

/// The derived definition is the product definition plus exactly one `[[files]]` entry.
fn check_derived(product: &Path, derived: &Path) -> Result<()> {
    let load = |path: &Path| {
        let mut c = ImageConfig::load(path).map_err(|e| Error::ScenarioInput {
            path: path.to_owned(),
            problem: e.to_string(),
        })?;
        for f in &mut c.files {
            f.source = ImageConfig::resolve_path(path, &f.source);
        }
        c.packages.list = c
            .packages
            .list
            .as_ref()
            .map(|l| ImageConfig::resolve_path(path, l));
        for e in &mut c.extensions {
            e.definition = ImageConfig::resolve_path(path, &e.definition);
        }
        Ok::<_, Error>(c)
    };
    let want = load(product)?;
    let mut got = load(derived)?;
    let extra = got.files.pop();
    if got != want || extra.is_none_or(|f| f.dest != UNHEALTHY_DEST) {
        return Err(Error::ScenarioInput {
            path: derived.to_owned(),
            problem: format!(
                "should be {} plus one [[files]] entry for {UNHEALTHY_DEST}; the rewrite of \
                 relative paths missed something",
                product.display()
            ),
        });
    }
    Ok(())
}

/// The unhealthy release at `version` (test variant of [`unhealthy_definition`]).
pub fn unhealthy_release(version: &str, n: &mut dyn Narrator) -> Result<MinimalImage> {
    let parsed = semver::Version::parse(version).map_err(|e| Error::VmConfig {
        problem: format!("image version {version:?}: {e}"),
    })?;
    let out = crate::workspace_root()
        .join("build")
        .join("test-images")
        .join(format!("container-host-unhealthy-{version}"))
        .join("out");
    let mut req = container_host_request(Variant::Test, &parsed, &out)?;
    req.config = unhealthy_definition()?;
    let report = build_with_progress(&req, &mut |line| n.show(line))?;
    Ok(MinimalImage {
        dir: out,
        definition: req.config,
        report,
        keys: crate::artifacts::test_keys()?,
    })
}

/// A repository folder: the test trust root, then the given releases published on `stable`
/// in order, each with `basalt release publish` (zstd level 3: these tests are about the
/// update, not the ratio).
#[derive(Debug, Clone)]
pub struct Repository {
    /// The folder (what nginx serves, what the air-gapped disk holds).
    pub dir: PathBuf,
}

impl Repository {
    /// An empty repository at `dir` with the test trust root (`basalt release publish-root`).
    pub fn create(dir: &Path, n: &mut dyn Narrator) -> Result<Self> {
        let keys = crate::artifacts::test_keys()?;
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|source| Error::Remove {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let repo = Repository {
            dir: dir.to_path_buf(),
        };
        let out = repo.basalt(&[
            "release".as_ref(),
            "publish-root".as_ref(),
            "--repo".as_ref(),
            dir.as_os_str(),
            keys.trust.as_os_str(),
        ])?;
        n.show(&out);
        Ok(repo)
    }

    /// `basalt release publish RELEASE --repo DIR --channel stable --key K --level 3`.
    pub fn publish(&self, release: &MinimalImage, n: &mut dyn Narrator) -> Result<()> {
        n.say(&format!(
            "Publish {} on channel stable: basalt release publish compresses /usr, the kernel \
             and the initramfs into content-addressed blobs and signs a new channel head.",
            release.report.facts.version
        ));
        let out = self.basalt(&[
            "release".as_ref(),
            "publish".as_ref(),
            release.dir.as_os_str(),
            "--repo".as_ref(),
            self.dir.as_os_str(),
            "--channel".as_ref(),
            "stable".as_ref(),
            "--key".as_ref(),
            release.keys.key.as_os_str(),
            "--level".as_ref(),
            "3".as_ref(),
        ])?;
        n.show(&out);
        Ok(())
    }

    fn basalt(&self, args: &[&std::ffi::OsStr]) -> Result<String> {
        let cli = basalt_cli()?;
        let tool = Tool::new("basalt", "basalt (cargo build -p basalt-image)");
        let mut cmd = Command::new(&cli);
        cmd.args(args);
        let out = tool.run(&mut cmd)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    }

    /// The repository packed into an erofs image at `image`: the data disk of an air-gapped
    /// node, mounted read-only there ([`Node::mount_repository_disk`]).
    pub fn to_disk(&self, image: &Path) -> Result<()> {
        // The image build's packer (reproducible, root-owned, no xattrs).
        let uuid = erofs::derived_uuid("basalt repository disk");
        erofs::pack(&self.dir, image, &uuid, erofs::Compression::None)
            .map_err(basalt_image::build::BuildError::from)?;
        Ok(())
    }
}

/// The QEMU argument of a guest NIC that reaches `127.0.0.1:port` at
/// `http://10.0.2.100/` and nothing else (see /work/shared/notes/environment.md).
pub fn restricted_nic(port: u16) -> Result<String> {
    restricted_nic_to(&[(GUEST_REPO_ADDR, port)])
}

/// The QEMU argument of a guest NIC in restricted mode with one `guestfwd` per entry: the
/// guest's `http://ADDR/` (port 80) is `127.0.0.1:PORT` on the host, through `socat` (QEMU
/// starts one per connection, so several connections at once work). Nothing else is
/// reachable. Each address must be in QEMU's user-mode network (10.0.2.0/24) and not one of
/// its own (.2 gateway, .3 DNS, .15 the guest); a duplicate address is refused.
pub fn restricted_nic_to(forwards: &[(&str, u16)]) -> Result<String> {
    // Fails now, naming the package, rather than as a connection reset in the guest.
    SOCAT.command()?;
    let mut arg = String::from("user,model=virtio-net-pci,restrict=on");
    let mut seen = Vec::new();
    for &(addr, port) in forwards {
        let ip: std::net::Ipv4Addr = addr.parse().map_err(|e| Error::VmConfig {
            problem: format!("guestfwd address {addr:?}: {e}"),
        })?;
        let [a, b, c, d] = ip.octets();
        if (a, b, c) != (10, 0, 2) || matches!(d, 0 | 2 | 3 | 15 | 255) || seen.contains(&ip) {
            return Err(Error::VmConfig {
                problem: format!(
                    "guestfwd address {addr}: must be a free address of 10.0.2.0/24 (not .2, \
                     .3, .15), once"
                ),
            });
        }
        seen.push(ip);
        arg.push_str(&format!(
            ",guestfwd=tcp:{addr}:80-cmd:socat - TCP:127.0.0.1:{port}"
        ));
    }
    Ok(arg)
}

/// A booted test image, driven through its serial root shell.
///
/// Every guest reboot is a new QEMU run on the same disk and variable store: the node's QEMU
/// runs with `-no-reboot`, and when the kernel says `reboot: Restarting system` the harness
/// waits for that QEMU to exit and starts the next one. Why not let QEMU reset the guest in
/// place: a 2-vCPU OVMF guest under TCG hung at that reset (`reboot: machine restart`, then
/// nothing for minutes at 100 % CPU) twice in two days, once in CI; a fresh QEMU boots the same
/// firmware, ESP and boot counters as a reset would.
pub struct Node {
    vm: Vm,
    /// How every run of this node starts (with `-no-reboot`).
    config: VmConfig,
    /// When the first run started.
    started: Instant,
    /// QEMU runs so far (one per boot).
    runs: u32,
    /// The consoles of the ended runs, in order.
    past: String,
    /// The disk image the node boots from.
    pub disk: PathBuf,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("disk", &self.disk)
            .field("serial_log", &self.vm.serial_log())
            .finish()
    }
}

impl Node {
    /// The VM configuration of a node booting `disk` (2 vCPUs, 1.5 GiB: what `boot_container_host` uses) in `dir`.
    pub fn config(dir: &Path, disk: &Path) -> VmConfig {
        VmConfig::uefi(dir).disk(disk).cpus(2).memory_mib(1536)
    }

    /// Start `config` (with `-no-reboot`: see [`Node`]) and wait for the root shell and a
    /// running agent.
    pub fn boot(config: &VmConfig, disk: &Path, n: &mut dyn Narrator) -> Result<Node> {
        let config = config.clone().no_reboot(true);
        let vm = config.spawn()?;
        let mut node = Node {
            vm,
            config,
            started: Instant::now(),
            runs: 1,
            past: String::new(),
            disk: disk.to_path_buf(),
        };
        node.wait_up(n)?;
        Ok(node)
    }

    /// Waits until the kernel restarts (`reboot: Restarting system`: the agent's reboot, a
    /// failed boot's, or one the test asked for), then for that QEMU run to end, and starts the
    /// next run. Returns the console the ended run printed from this call on.
    pub fn expect_restart(&mut self, timeout: Duration) -> Result<Vec<u8>> {
        let from = self.vm.console_len();
        self.vm.expect(RESTART_MARKER, timeout)?;
        let printed = self.vm.console_bytes_from(from);
        self.next_run()?;
        Ok(printed)
    }

    /// After the restart marker: the ended run's exit, then a new run.
    fn next_run(&mut self) -> Result<()> {
        /// Boots of one node the harness restarts: a scenario makes a handful; more is a loop.
        const MAX_RUNS: u32 = 12;
        self.vm.expect_reboot_exit(COMMAND)?;
        if self.runs >= MAX_RUNS {
            return Err(Error::ScenarioCheck(format!(
                "the node restarted {} times: a boot loop? (console: {})",
                self.runs,
                self.vm.serial_log().display()
            )));
        }
        self.past.push_str(&self.vm.console());
        self.vm = self.config.spawn()?;
        self.runs += 1;
        Ok(())
    }

    /// Everything every run of this node printed so far, run after run.
    pub fn console(&self) -> String {
        format!("{}{}", self.past, self.vm.console())
    }

    /// The harness underneath.
    pub fn vm(&mut self) -> &mut Vm {
        &mut self.vm
    }

    /// After a (re)boot: the shell answers and `basalt-updated` is active; says which version
    /// booted.
    pub fn wait_up(&mut self, n: &mut dyn Narrator) -> Result<()> {
        let started = Instant::now();
        // No typing before the kernel runs our userspace: keys typed while the firmware or
        // systemd-boot read the console open their menus (seen: OVMF's setup page after a
        // reboot). Only a boot that basalt-init let through prints this line.
        //
        // A boot that restarts before that (a slot basalt-init refused, dm-verity's restart)
        // ends this QEMU run: the next run boots what the boot counters pick next.
        while self.vm.expect_any(&[SWITCH_ROOT, RESTART_MARKER], BOOT)? == 1 {
            self.next_run()?;
        }
        self.vm.wait_for_shell(BOOT)?;
        let deadline = Instant::now() + scale(COMMAND);
        loop {
            let out = self
                .vm
                .shell("systemctl is-active basalt-updated", COMMAND)?;
            if out.status == 0 {
                break;
            }
            if Instant::now() > deadline {
                let journal = self.vm.shell(
                    "journalctl -b -u basalt-updated --no-pager | tail -n 40",
                    COMMAND,
                )?;
                return Err(Error::ScenarioCheck(format!(
                    "basalt-updated is not active ({}):\n{}",
                    out.output.trim(),
                    journal.output
                )));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        let release = self.run(". /usr/lib/os-release && echo $PRETTY_NAME")?;
        let system = self.vm.shell(
            "systemctl is-system-running; systemctl --failed --plain --no-legend",
            COMMAND,
        )?;
        n.show(&format!(
            "up after {:.0} s: {}, systemd {}",
            started.elapsed().as_secs_f64(),
            release.trim(),
            system
                .output
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        ));
        Ok(())
    }

    /// Run one shell line; an error (with its output) unless it exits 0.
    pub fn run(&mut self, command: &str) -> Result<String> {
        let out = self.vm.shell(command, COMMAND)?;
        if out.status != 0 {
            return Err(Error::GuestCommand {
                command: command.to_owned(),
                status: out.status,
                output: out.output,
            });
        }
        Ok(out.output)
    }

    /// Run a command that prints JSON, and parse it. Kernel messages can land inside console
    /// output, so the JSON is taken from the first `{`/`[` line to the last `}`/`]` line.
    pub fn json(&mut self, command: &str) -> Result<serde_json::Value> {
        let out = self.run(command)?;
        parse_console_json(&out).map_err(|problem| Error::GuestJson {
            command: command.to_owned(),
            problem,
            output: out,
        })
    }

    /// `basaltctl status --json`.
    pub fn status(&mut self) -> Result<serde_json::Value> {
        self.json("basaltctl status --json")
    }

    /// `basaltctl history --json`: the outcomes, oldest first.
    pub fn history(&mut self) -> Result<Vec<serde_json::Value>> {
        let v = self.json("basaltctl history --json")?;
        v.as_array().cloned().ok_or_else(|| Error::GuestJson {
            command: "basaltctl history --json".into(),
            problem: "not a JSON array".into(),
            output: v.to_string(),
        })
    }

    /// Polls [`Node::status`] until `done` holds (bounded by `timeout`, scaled).
    pub fn wait_status(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let deadline = Instant::now() + scale(timeout);
        loop {
            let status = self.status()?;
            if done(&status) {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let journal = self
                    .vm
                    .shell(
                        "journalctl -b -u basalt-updated --no-pager | tail -n 40",
                        COMMAND,
                    )
                    .map(|o| o.output)
                    .unwrap_or_default();
                return Err(Error::ScenarioCheck(format!(
                    "waiting for {what}: last status {status:#}\njournal:\n{journal}"
                )));
            }
            std::thread::sleep(Duration::from_secs(3));
        }
    }

    /// Name the repository in an `/etc` drop-in (what an operator does: the product ships
    /// none) and restart the agent so it reads it. The same drop-in makes updates the
    /// operator's call ([`OPERATOR_POLICY`]), so the agent's own periodic check cannot race
    /// the scenario's `basaltctl update`.
    pub fn set_repository(&mut self, url: &str, n: &mut dyn Narrator) -> Result<()> {
        n.say(&format!(
            "The product image checks no repository until an operator names one. Write \
             {REPOSITORY_DROPIN} with the repository's URL ({url}); this operator also wants \
             to start updates and reboots by hand. Restart the agent to read it."
        ));
        let text = format!("[repository]\nurl = \"{url}\"\n{OPERATOR_POLICY}");
        let printf = text
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        self.run(&format!(
            "mkdir -p /etc/basalt/updater.d && printf \"{printf}\" > {REPOSITORY_DROPIN} && \
             systemctl restart basalt-updated && cat {REPOSITORY_DROPIN}"
        ))
        .map(|out| n.show(&out))
    }

    /// Make the node follow the fleet server at `url` in pool `pool` (server mode, as
    /// `rollout/README.md` shows): the pool's enrolment token in [`FLEET_ENROLL_TOKEN`]
    /// (0600), and [`FLEET_DROPIN`] naming the server, the pool, the token file and a
    /// pre-reboot command that writes [`FLEET_DRAIN_MARK`]; the first check-in comes at once
    /// (no initial delay, no jitter). Then restart the agent so it reads them.
    pub fn join_fleet(
        &mut self,
        url: &str,
        pool: &str,
        enroll_token: &str,
        n: &mut dyn Narrator,
    ) -> Result<()> {
        n.say(&format!(
            "Make the node follow the fleet server: write the pool's enrolment token to \
             {FLEET_ENROLL_TOKEN} and {FLEET_DROPIN} naming the server ({url}) and the pool \
             ({pool}), with a pre-reboot (drain) command. No repository is named: the server \
             names it in each offer. Restart the agent to read them."
        ));
        let dropin = format!(
            "[server]\nurl = \"{url}\"\npool = \"{pool}\"\n\
             enroll_token_file = \"{FLEET_ENROLL_TOKEN}\"\n\
             pre_reboot = [\"/usr/bin/sh\", \"-c\", \"date -u > {FLEET_DRAIN_MARK}\"]\n\n\
             [check]\ninitial_delay_secs = 0\njitter_secs = 0\n"
        );
        self.write_file(
            FLEET_ENROLL_TOKEN,
            &format!("{}\n", enroll_token.trim()),
            0o600,
        )?;
        self.write_file(FLEET_DROPIN, &dropin, 0o644)?;
        self.run("systemctl restart basalt-updated")?;
        n.show(&self.run(&format!("cat {FLEET_DROPIN}"))?);
        Ok(())
    }

    /// Write `text` to `path` in the guest (its folder made first) with `mode`, through the
    /// serial shell.
    pub fn write_file(&mut self, path: &str, text: &str, mode: u32) -> Result<()> {
        // Two layers: the shell's double quotes, then printf's escapes.
        let printf = text
            .replace('\\', "\\\\\\\\")
            .replace('"', "\\\"")
            .replace('%', "%%")
            .replace('$', "\\$")
            .replace('`', "\\`")
            .replace('\n', "\\n");
        let folder = Path::new(path)
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "/".into());
        self.run(&format!(
            "mkdir -p {folder} && (umask 077 && printf \"{printf}\" > {path}) && chmod {mode:o} {path}"
        ))
        .map(|_| ())
    }

    /// Mount a repository disk (`device`, erofs) read-only at [`GUEST_REPO_MOUNT`] (over an
    /// earlier one: the newest disk wins).
    pub fn mount_repository_disk(&mut self, device: &str) -> Result<()> {
        self.run(&format!(
            "mkdir -p {GUEST_REPO_MOUNT} && mount -t erofs -o ro {device} {GUEST_REPO_MOUNT}"
        ))
        .map(|_| ())
    }

    /// `basaltctl update --reboot`: download (its progress lines go to
    /// [`Narrator::progress`] as they appear on the console), stage, reboot. Returns when the
    /// kernel restarts, with basaltctl's lines (progress thinned to a few).
    pub fn update_and_reboot(&mut self, n: &mut dyn Narrator) -> Result<String> {
        const RESTART: &str = RESTART_MARKER;
        // The typed line has `$((40+2))`; only the shell's output has the number itself.
        const RC: &str = "BASALT-UPDATE-42-RC=";
        let from = self.vm.console_len();
        self.vm
            .send("basaltctl update --reboot; echo BASALT-UPDATE-$((40+2))-RC=$?\n")?;
        let deadline = Instant::now() + scale(UPDATE);
        let mut shown = 0usize;
        let which = loop {
            let step = (Instant::now() + Duration::from_secs(1)).min(deadline);
            let hit = self.vm.wait_any(&[RESTART, &format!("{RC}0"), RC], step)?;
            let lines = basaltctl_lines(&self.vm.console_bytes_from(from));
            for line in lines.iter().skip(shown) {
                n.progress(line);
            }
            shown = lines.len();
            if let Some(i) = hit {
                break i;
            }
            if Instant::now() >= deadline {
                return Err(Error::ScenarioCheck(format!(
                    "basaltctl update --reboot: no reboot within {:?}:\n{}",
                    scale(UPDATE),
                    lines.join("\n")
                )));
            }
        };
        let printed = thin(&basaltctl_lines(&self.vm.console_bytes_from(from)));
        match which {
            0 => self.next_run()?,
            1 => {
                self.expect_restart(UPDATE)?;
            }
            _ => {
                return Err(Error::ScenarioCheck(format!(
                    "basaltctl update --reboot failed:\n{printed}"
                )))
            }
        }
        Ok(printed)
    }

    /// `basaltctl update` (no reboot): download and stage.
    pub fn update_staged(&mut self, n: &mut dyn Narrator) -> Result<String> {
        let out = self.vm.shell("basaltctl update", UPDATE)?;
        let printed = thin(&basaltctl_lines(out.output.as_bytes()));
        n.show(&printed);
        if out.status != 0 {
            return Err(Error::GuestCommand {
                command: "basaltctl update".into(),
                status: out.status,
                output: out.output,
            });
        }
        Ok(printed)
    }

    /// Write `blocks` 4 KiB blocks of zeros at `offset` of the boot disk (`BASALT_DISK` of
    /// basalt-init's `/run/basalt/boot.env`: the kernel does not always name it `/dev/vda`
    /// when data disks are attached): a partition of slot `slot` (its byte offset, from the
    /// GPT read on the host), as an attacker with the disk (or a failing disk) would.
    pub fn corrupt_usr(&mut self, slot: Slot, offset: u64, blocks: u64) -> Result<()> {
        if offset % 4096 != 0 {
            return Err(Error::ScenarioCheck(format!(
                "usr partition of slot {slot} at {offset} is not 4 KiB aligned"
            )));
        }
        self.run(&format!(
            ". /run/basalt/boot.env && test -b \"$BASALT_DISK\" && dd if=/dev/zero \
             of=\"$BASALT_DISK\" bs=4096 seek={} count={blocks} conv=notrunc,fsync status=none",
            offset / 4096
        ))
        .map(|_| ())
    }

    /// `systemctl reboot`, then wait until the node is up again.
    pub fn reboot(&mut self) -> Result<()> {
        self.vm.send("systemctl reboot\n")?;
        self.expect_restart(COMMAND)?;
        Ok(())
    }

    /// `systemctl poweroff` and wait for QEMU to exit.
    pub fn poweroff(mut self) -> Result<Duration> {
        self.vm.send("systemctl poweroff\n")?;
        self.vm.expect_poweroff(COMMAND)?;
        Ok(self.started.elapsed())
    }

    /// Time since the node's first QEMU run started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// What [`http_update`] saw, for the caller's own checks and figures.
#[derive(Debug, Clone)]
pub struct HttpOutcome {
    /// The node's disk image (after power-off: read its ESP).
    pub disk: PathBuf,
    /// `basaltctl status --json` once 2.0.0 was committed.
    pub committed: serde_json::Value,
    /// `basaltctl status --json` back on 2.0.0 after 3.0.0's rollback.
    pub rolled_back: serde_json::Value,
    /// `basaltctl history --json` at the end.
    pub history: Vec<serde_json::Value>,
    /// QEMU start → 2.0.0 committed.
    pub committed_at: Duration,
    /// QEMU start → power-off.
    pub vm_time: Duration,
    /// Requests nginx served.
    pub requests: usize,
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::ScenarioCheck(what()))
    }
}

/// The whole HTTP story on one node (a QEMU run per boot; see
/// `tests/tests/vm_update_http.rs`): publish 1.0.0 and 2.0.0, serve them with nginx on
/// 127.0.0.1, boot 1.0.0 with the restricted NIC, update
/// to 2.0.0 and see it committed; publish 3.0.0, update, see its health gate fail and the
/// node come back to 2.0.0 by itself; power off. Every expectation is checked here (a
/// [`Error::ScenarioCheck`] names it), on `basaltctl … --json` parsed as JSON.
pub fn http_update(releases: &Releases, dir: &Path, n: &mut dyn Narrator) -> Result<HttpOutcome> {
    const ROLLBACK: Duration = Duration::from_secs(400);
    const SETTLE: Duration = Duration::from_secs(180);
    let repo = Repository::create(&dir.join("repo"), n)?;
    repo.publish(&releases.v1, n)?;
    repo.publish(&releases.v2, n)?;
    n.say(
        "Serve the repository with nginx on 127.0.0.1. The VM gets one network card in QEMU's \
         restricted mode: the only address it can reach is http://10.0.2.100/, which QEMU \
         forwards to that nginx.",
    );
    let nginx = crate::web::Nginx::start(&dir.join("nginx"), &repo.dir)?;
    n.show(&format!(
        "nginx serving {} at {}",
        repo.dir.display(),
        nginx.url()
    ));
    let disk = dir.join("disk.img");
    releases.v1.copy_disk(&disk)?;

    n.say(
        "Boot 1.0.0 (a private copy of its disk image) under UEFI firmware and systemd-boot, \
         and ask the update agent what it sees: basaltctl status talks to basalt-updated over \
         D-Bus.",
    );
    let config = Node::config(dir, &disk)
        .arg("-nic")
        .arg(restricted_nic(nginx.port())?);
    let mut node = Node::boot(&config, &disk, n)?;
    let status = node.status()?;
    n.show(&node.run("basaltctl status")?);
    check(
        booted_version(&status) == Some(("A".into(), "1.0.0".into(), "good".into())),
        || format!("1.0.0 should run from slot A, blessed: {status:#}"),
    )?;
    check(node.history()?.is_empty(), || {
        "a new node has no update history".into()
    })?;

    node.set_repository(&format!("http://{GUEST_REPO_ADDR}/"), n)?;
    n.say(
        "Update: basaltctl update --reboot asks the agent to check the repository, download \
         2.0.0 (verified against the trust root, streamed into the empty slot B), stage its \
         boot entry with three tries, and reboot.",
    );
    let printed = node.update_and_reboot(n)?;
    check(printed.contains("2.0.0") || printed.contains("MiB"), || {
        format!("basaltctl update printed no progress:\n{printed}")
    })?;
    n.say(
        "systemd-boot starts 2.0.0 on trial (one of its three tries used). Once the system is \
         up, the agent's health gate runs; when it passes, the agent blesses the boot entry \
         and the update is committed.",
    );
    node.wait_up(n)?;
    let committed = node.wait_status("2.0.0 committed and blessed", SETTLE, |s| {
        booted_version(s) == Some(("B".into(), "2.0.0".into(), "good".into()))
            && s["current_version"] == "2.0.0"
    })?;
    let committed_at = node.elapsed();
    n.show(&node.run("basaltctl status")?);
    let history = node.history()?;
    check(
        history
            .iter()
            .any(|h| h["kind"] == "committed" && h["to"] == "2.0.0"),
        || format!("the history should record the commit of 2.0.0: {history:#?}"),
    )?;

    repo.publish(&releases.v3, n)?;
    n.say(
        "Update again, to 3.0.0. This release carries a health check that can never pass \
         (a stand-in for an application that does not come up after an update).",
    );
    node.update_and_reboot(n)?;
    n.say(
        "systemd-boot starts 3.0.0 on trial. Its health gate fails at the deadline (30 s): the \
         agent marks slot A bad and reboots by itself, and systemd-boot starts 2.0.0 again. \
         Nobody touches the node; we only watch its console.",
    );
    // Not through the shell: the agent's reboot can come in the middle of any command.
    let v3_boot = crate::vm::clean_console(&node.expect_restart(ROLLBACK)?);
    check(v3_boot.contains("3.0.0"), || {
        format!(
            "3.0.0 should have booted before the agent's reboot:\n{}",
            crate::scenario::tail(&v3_boot)
        )
    })?;
    n.show(
        &v3_boot
            .lines()
            .filter(|l| l.contains("Welcome to") || l.contains("basalt-updated"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    node.wait_up(n)?;
    let rolled_back = node.wait_status("back on 2.0.0 after the rollback", SETTLE, |s| {
        booted_version(s).is_some_and(|(slot, v, _)| slot == "B" && v == "2.0.0")
            && s["current_version"] == "2.0.0"
    })?;
    check(
        rolled_back["slots"][0]["version"] == "3.0.0" && rolled_back["slots"][0]["boot"] == "bad",
        || format!("slot A should hold 3.0.0, marked bad: {rolled_back:#}"),
    )?;
    n.say("What the agent recorded: basaltctl history.");
    n.show(&node.run("basaltctl history")?);
    let history = node.history()?;
    let rollback = history
        .iter()
        .find(|h| h["kind"] == "rolled-back")
        .ok_or_else(|| Error::ScenarioCheck(format!("no rollback in the history: {history:#?}")))?;
    check(
        rollback["from"] == "3.0.0" && rollback["to"] == "2.0.0",
        || format!("the rollback should go from 3.0.0 to 2.0.0: {rollback:#}"),
    )?;
    check(
        rollback["detail"]
            .as_str()
            .is_some_and(|d| d.contains("this-file-never-exists")),
        || format!("the rollback should name the failed health check: {rollback:#}"),
    )?;
    let vm_time = node.poweroff()?;
    let requests = nginx.access_log()?.len();
    Ok(HttpOutcome {
        disk,
        committed,
        rolled_back,
        history,
        committed_at,
        vm_time,
        requests,
    })
}

/// The JSON document inside console output (see [`Node::json`]).
pub fn parse_console_json(out: &str) -> std::result::Result<serde_json::Value, String> {
    let lines: Vec<&str> = out.lines().collect();
    let start = lines
        .iter()
        .position(|l| !is_kernel_line(l) && (l.starts_with('{') || l.starts_with('[')))
        .ok_or("no JSON document in the output")?;
    let end = lines
        .iter()
        .rposition(|l| {
            let l = l.trim_end();
            !is_kernel_line(l) && (l.ends_with('}') || l.ends_with(']'))
        })
        .ok_or("no end of the JSON document in the output")?;
    if end < start {
        return Err("no JSON document in the output".into());
    }
    // Kernel messages inside the document start with `[ ` and a timestamp: drop them.
    let text: String = lines[start..=end]
        .iter()
        .filter(|l| !is_kernel_line(l))
        .map(|l| format!("{l}\n"))
        .collect();
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

fn is_kernel_line(line: &str) -> bool {
    let Some(rest) = line.strip_prefix('[') else {
        return false;
    };
    let stamp = rest.trim_start();
    stamp.split(']').next().is_some_and(|s| {
        !s.is_empty() && s.contains('.') && s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    })
}

/// The lines basaltctl printed, from a stretch of raw console: each progress redraw (`\r`)
/// is a line of its own; the typed command, kernel messages and everything from systemd's
/// shutdown on are dropped.
fn basaltctl_lines(raw: &[u8]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for piece in raw.split(|b| *b == b'\r' || *b == b'\n') {
        let line = crate::vm::clean_console(piece);
        let line = line.trim_end();
        if line.contains("Stopping") || line.contains("Stopped") || line.contains("reboot: ") {
            break;
        }
        if line.trim().is_empty()
            || line.contains("basaltctl update")
            || line.contains("BASALT-UPDATE-")
            || is_kernel_line(line)
            || out.last().is_some_and(|l| l == line)
        {
            continue;
        }
        out.push(line.to_owned());
    }
    out
}

/// At most a dozen lines: the first and last few, progress in between thinned evenly.
fn thin(lines: &[String]) -> String {
    const KEEP: usize = 12;
    if lines.len() <= KEEP {
        return lines.join("\n");
    }
    let step = lines.len().div_ceil(KEEP);
    lines
        .iter()
        .enumerate()
        .filter(|(i, _)| i % step == 0 || *i + 1 == lines.len())
        .map(|(_, l)| l.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The version of the slot `basaltctl status --json` says is booted.
pub fn booted_version(status: &serde_json::Value) -> Option<(String, String, String)> {
    let booted = status["booted_slot"].as_str()?;
    let slot = status["slots"]
        .as_array()?
        .iter()
        .find(|s| s["slot"].as_str() == Some(booted))?;
    Some((
        booted.to_owned(),
        slot["version"].as_str()?.to_owned(),
        slot["boot"].as_str()?.to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_found_between_console_noise() {
        let out =
            "noise\n{\n  \"a\": 1,\n[   12.345678] virtio_net: something\n  \"b\": [2]\n}\nafter\n";
        let v = parse_console_json(out).unwrap();
        assert_eq!(v["a"], 1);
        assert_eq!(v["b"][0], 2);
        assert!(parse_console_json("no json here").is_err());
        assert_eq!(parse_console_json("[]\n").unwrap(), serde_json::json!([]));
        let v = parse_console_json("[    3.100000] x\n[\n  {\"k\": 1}\n]\n").unwrap();
        assert_eq!(v[0]["k"], 1);
    }

    #[test]
    fn the_unhealthy_definition_is_the_product_plus_one_file() {
        let path = unhealthy_definition().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(UNHEALTHY_DEST), "{text}");
        // Every relative path was made absolute (check_derived compared the parsed result).
        assert!(!text.contains("\"../../dist"), "{text}");
        let product = crate::artifacts::container_host_definition();
        assert!(
            ImageConfig::load(&product).unwrap().files.len() + 1
                == ImageConfig::load(&path).unwrap().files.len()
        );
    }

    #[test]
    fn progress_redraws_become_lines_and_shutdown_ends_them() {
        let raw = b"basaltctl update --reboot\r\n\r[##  ] downloading 10%\r[### ] downloading 20%\r\n2.0.0 staged\r\n[   12.000001] virtio\r\n         Stopping foo\r\nlater";
        let lines = basaltctl_lines(raw);
        assert_eq!(
            lines,
            [
                "[##  ] downloading 10%",
                "[### ] downloading 20%",
                "2.0.0 staged"
            ]
        );
        let many: Vec<String> = (0..100).map(|i| format!("{i}%")).collect();
        let thinned = thin(&many);
        assert!(thinned.lines().count() <= 13, "{thinned}");
        assert!(
            thinned.starts_with("0%") && thinned.ends_with("99%"),
            "{thinned}"
        );
    }

    #[test]
    fn a_nic_forwards_each_address_once_and_only_free_ones() {
        let arg = restricted_nic_to(&[(GUEST_REPO_ADDR, 8080), (GUEST_FLEET_ADDR, 9090)]).unwrap();
        assert!(
            arg.starts_with("user,model=virtio-net-pci,restrict=on,"),
            "{arg}"
        );
        assert!(
            arg.contains(",guestfwd=tcp:10.0.2.100:80-cmd:socat - TCP:127.0.0.1:8080")
                && arg.contains(",guestfwd=tcp:10.0.2.101:80-cmd:socat - TCP:127.0.0.1:9090"),
            "{arg}"
        );
        assert_eq!(
            restricted_nic(8080).unwrap(),
            restricted_nic_to(&[(GUEST_REPO_ADDR, 8080)]).unwrap()
        );
        for bad in [
            "10.0.2.2",
            "10.0.2.3",
            "10.0.2.15",
            "192.168.1.5",
            "10.0.2",
            "host",
        ] {
            let e = restricted_nic_to(&[(bad, 1)]).unwrap_err().to_string();
            assert!(e.contains(bad), "{bad}: {e}");
        }
        let twice = restricted_nic_to(&[(GUEST_REPO_ADDR, 1), (GUEST_REPO_ADDR, 2)]);
        assert!(twice.is_err(), "{twice:?}");
    }

    #[test]
    fn kernel_lines_are_told_apart_from_json_arrays() {
        assert!(is_kernel_line("[   12.345678] x"));
        assert!(!is_kernel_line("[\"a\"]"));
        assert!(!is_kernel_line("["));
    }
}
