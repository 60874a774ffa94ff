//! `cargo xtask bench --only boot`: Basalt's container-host image against a stock Debian
//! system with the same packages, booted side by side under the same QEMU settings, several
//! rounds interleaved; writes `docs/benchmarks.md` and `docs/benchmarks-boot.svg`.
//!
//! **The reference** is built in the same run from the *same* Debian staging the image is made
//! from (`basalt_image::build::inputs::stage_definition`: one mmdebstrap tree for both, so the
//! package set and versions are identical): the stock tree with Debian's whole module tree of
//! the same kernel, on a writable ext4 root partition, booted by a busybox initramfs that only
//! loads the disk modules (virtio, ext4) and mounts it. Both get the same test hooks
//! (`basalt_image::build::variant`: the boot report, inert without `basalt.test=report`, and
//! the serial autologin), the same masked `systemd-firstboot` (or Debian would prompt on the
//! first boot), and boot fresh copies of their disks (a first boot each time).
//!
//! **Ours** is the test variant of `image/definitions/container-host.toml`: the product plus
//! the report hook and the serial autologin (which only starts a shell on ttyS0).
//!
//! **The initramfs peer** (the issue's yardstick for `basalt-init`): a busybox initramfs that
//! does the same DM setup on *Basalt's* disk, the way a script-based initramfs would: the
//! same kernel modules loaded with `insmod`, Debian's `veritysetup open` (with its shared
//! libraries, from this host: Debian 12 like the image) on slot A's usr and verity
//! partitions with the booted root hash, the erofs `/usr` and the ext4 root mounted. It
//! prints its uptime where it would switch_root and powers off; only its initramfs stage is
//! measured (direct kernel boot, each round beside the others).
//!
//! QEMU: TCG, `-smp 2 -cpu qemu64,+rdrand`, the same memory, no network. Two boot paths:
//! direct kernel boot (the PVH `vmlinux` of the same kernel, with each image's initramfs and
//! command line) and OVMF → systemd-boot (each disk's ESP entry). Per boot, from the console
//! and the report line:
//!
//! ```text
//! QEMU start ─► kernel start ─► /init ─► switch_root ─► multi-user.target
//!   firmware     kernel        initramfs   userspace (systemd's own timestamp)
//! ```
//! Kernel start on the host's clock = when the report line arrived − the guest uptime in it.
//! Memory: `MemTotal − MemAvailable` after the boot finished and settled. Sizes: `/usr`
//! (files, and bytes on disk: erofs vs ext4 blocks), and what is downloaded (zstd).
//! Every figure is the median of the rounds (best in brackets): another process's build on the
//! same cores moves absolute figures by 20–100 %, so read the ratios.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use basalt_image::build::image::INITRD_IMG;
use basalt_image::build::inputs::stage_definition;
use basalt_image::build::variant::{
    AUTOLOGIN_DROPIN, REPORT_OPTION, REPORT_SCRIPT, REPORT_UNIT, SETTLE_OPTION,
};
use basalt_image::build::Variant;
use basalt_image::kernel::KernelTree;
use basalt_tests::fixture::{BusyboxInitramfs, INIT_PRELUDE};
use basalt_tests::vm::{scenario_dir, VmConfig};

use crate::sh;

/// Guest memory, for both images.
const MEMORY_MIB: u32 = 1536;
/// vCPUs of every guest the bench boots.
const VCPUS: u32 = 2;
/// Each boot step's bound (the harness scales it by BASALT_VM_TIMEOUT_FACTOR).
const STEP: Duration = Duration::from_secs(200);
/// The reference's partitions: ESP then root.
const REF_ESP_MIB: u64 = 128;
const REF_ROOT_MIB: u64 = 2048;
const MIB: u64 = 1 << 20;

/// Which system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum System {
    Basalt,
    Reference,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Basalt => "Basalt container-host",
            System::Reference => "Debian reference",
        }
    }
}

/// Which boot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum BootPath {
    Direct,
    Uefi,
}

impl BootPath {
    fn name(self) -> &'static str {
        match self {
            BootPath::Direct => "direct kernel boot",
            BootPath::Uefi => "OVMF + systemd-boot",
        }
    }
}

/// One boot's figures (seconds; memory in KiB).
#[derive(Debug, Clone, Default)]
struct Sample {
    /// QEMU start → kernel start.
    kernel_at: f64,
    /// Kernel start → `Run /init`.
    init_at: f64,
    /// Kernel start → switch_root.
    switch_root: f64,
    /// Kernel start → multi-user.target.
    multi_user: f64,
    mem_kib: f64,
    /// Free pages in the kernel's per-CPU lists, read with `mem_kib` (which counts them as in
    /// use: `MemFree` leaves them out).
    pcp_kib: f64,
    modules: f64,
    time_line: String,
    blame: String,
    /// `BASALT-REPORT-MEM:`: meminfo fields and the largest processes.
    mem_line: String,
    chain: String,
    /// `BASALT-REPORT-CPU:`: CPU seconds until the boot finished (guest, kernel threads,
    /// services) and the MiB read from `/usr`'s device.
    cpu_line: String,
}

/// What a system is, to boot it.
struct Bootable {
    disk: PathBuf,
    /// Direct boot: initrd and command line (with the report options).
    initrd: PathBuf,
    cmdline: String,
}

pub fn run(rounds: u32, settle: u32) -> Result<()> {
    ensure!(rounds > 0, "--boot-rounds must be positive");
    let root = sh::root();
    let kernel = KernelTree::shared()?;
    let work = root.join("target").join("bench").join("boot");
    fs::create_dir_all(&work)?;
    let report_opts = format!("{REPORT_OPTION} {SETTLE_OPTION}={settle}");

    eprintln!("bench boot: building the Basalt test image (cached after the first run)");
    let ours = basalt_tests::artifacts::container_host(Variant::Test, "1.0.0")?;
    let facts = ours.report.facts.clone();
    let ours_disk = work.join("basalt-disk.img");
    ours.copy_disk(&ours_disk)?;
    basalt_tests::artifacts::add_kernel_option(&ours_disk, &report_opts)?;
    let basalt = Bootable {
        disk: ours_disk,
        initrd: ours.file(INITRD_IMG),
        cmdline: format!(
            "{} usrhash={} basalt.slot=a {report_opts}",
            facts.cmdline, facts.root_hash
        ),
    };

    eprintln!("bench boot: building the Debian reference from the same staging");
    let definition = basalt_tests::artifacts::container_host_definition();
    let (_, staging) =
        stage_definition(&definition, &basalt_image::cache_root(), false, &mut |m| {
            eprintln!("bench boot: {m}")
        })?;
    ensure!(
        Some(&staging.facts.key) == facts.staging_key.as_ref(),
        "the reference's staging {} is not the image's {:?}: build both in one run",
        staging.facts.key,
        facts.staging_key
    );
    let reference = build_reference(&work, &staging.tree(), &kernel, &report_opts)?;
    let dm_busybox = build_dm_busybox(&work, &kernel, &basalt, &facts.root_hash)?;

    // Sizes.
    eprintln!("bench boot: measuring sizes (zstd -9 of what is downloaded)");
    let sizes = Sizes {
        ours_usr_files: facts.usr_tree_bytes,
        ours_usr_disk: facts.hash_offset,
        ours_verity: facts.usr_img_bytes - facts.hash_offset,
        ours_update: zstd_len(&ours.file("usr.img"))?
            + zstd_len(&ours.file("vmlinuz"))?
            + zstd_len(&ours.file("initrd.img"))?,
        ours_disk: zstd_len(&ours.file("disk.img"))?,
        ref_usr_files: reference.usr_files,
        ref_usr_disk: reference.usr_blocks,
        ref_disk: zstd_len(&reference.boot.disk)?,
        packages: facts.packages.len(),
        ours_modules: facts.usr_modules.len(),
        ref_modules: reference.modules,
    };

    // Boots, interleaved: each round boots every (path, system) once, fresh disks.
    let mut samples: BTreeMap<(BootPath, System), Vec<Sample>> = BTreeMap::new();
    let mut dm_samples: Vec<Sample> = Vec::new();
    for round in 1..=rounds {
        for path in [BootPath::Direct, BootPath::Uefi] {
            for system in [System::Basalt, System::Reference] {
                let b = match system {
                    System::Basalt => &basalt,
                    System::Reference => &reference.boot,
                };
                let dir = scenario_dir(&format!(
                    "bench-boot-{}-{}",
                    if system == System::Basalt {
                        "basalt"
                    } else {
                        "reference"
                    },
                    if path == BootPath::Direct {
                        "direct"
                    } else {
                        "uefi"
                    }
                ))?;
                let sample = boot_with_retry(&dir, &kernel, b, path, system)?;
                eprintln!(
                    "bench boot: round {round} {} / {}: multi-user {:.1} s after kernel start \
                     (+{:.1} s before it), switch_root {:.2} s, {:.0} MiB in use ({:.0} MiB of \
                     it free in per-CPU lists)",
                    system.name(),
                    path.name(),
                    sample.multi_user,
                    sample.kernel_at,
                    sample.switch_root,
                    sample.mem_kib / 1024.0,
                    sample.pcp_kib / 1024.0
                );
                samples.entry((path, system)).or_default().push(sample);
            }
        }
        let dir = scenario_dir("bench-boot-dm-busybox")?;
        let s = boot_dm_busybox(&dir, &kernel, &dm_busybox)?;
        eprintln!(
            "bench boot: round {round} busybox + veritysetup initramfs on Basalt's disk: \
             /init {:.2} s, switch_root point {:.2} s after kernel start",
            s.init_at, s.switch_root
        );
        dm_samples.push(s);
        // After every round: a run cut short (the machine is shared) still leaves its figures.
        write_report(
            &root,
            &samples,
            &dm_samples,
            &sizes,
            round,
            settle,
            &facts.kernel_version,
        )?;
    }
    Ok(())
}

/// Render `docs/benchmarks.md` (the notes kept) and the chart from the rounds done so far.
fn write_report(
    root: &Path,
    samples: &BTreeMap<(BootPath, System), Vec<Sample>>,
    dm: &[Sample],
    sizes: &Sizes,
    rounds: u32,
    settle: u32,
    kver: &str,
) -> Result<()> {
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let doc = render(samples, dm, sizes, rounds, settle, &load, kver);
    let svg = chart(samples);
    let docs = root.join("docs");
    let md_path = docs.join("benchmarks.md");
    let notes = fs::read_to_string(&md_path)
        .ok()
        .and_then(|old| keep_notes(&old))
        .unwrap_or_else(|| format!("{NOTES_BEGIN}\n(no notes yet)\n{NOTES_END}\n"));
    fs::write(&md_path, format!("{doc}\n{notes}"))?;
    fs::write(docs.join("benchmarks-boot.svg"), svg)?;
    println!("{doc}");
    println!("wrote {} and docs/benchmarks-boot.svg", md_path.display());
    Ok(())
}

/// The hand-written part of docs/benchmarks.md, kept across runs.
const NOTES_BEGIN: &str = "<!-- notes: kept by the bench -->";
const NOTES_END: &str = "<!-- end of notes -->";

fn keep_notes(old: &str) -> Option<String> {
    let start = old.find(NOTES_BEGIN)?;
    let end = old[start..].find(NOTES_END)? + start + NOTES_END.len();
    Some(format!("{}\n", &old[start..end]))
}

fn boot_with_retry(
    dir: &Path,
    kernel: &KernelTree,
    b: &Bootable,
    path: BootPath,
    system: System,
) -> Result<Sample> {
    let mut last = None;
    for attempt in 1..=2 {
        let disk = dir.join(format!("disk-{attempt}.img"));
        basalt_image::build::image::copy_sparse(&b.disk, &disk)?;
        let config = match path {
            BootPath::Direct => VmConfig::direct(
                dir,
                &kernel.vmlinux,
                Some(b.initrd.clone()),
                b.cmdline.clone(),
            ),
            BootPath::Uefi => VmConfig::uefi(dir),
        }
        .disk(&disk)
        .memory_mib(MEMORY_MIB)
        .cpus(VCPUS)
        .cpu_model("qemu64,+rdrand")
        .no_reboot(true);
        let result = boot_once(&config, system);
        fs::remove_file(&disk).ok();
        match result {
            Ok(sample) => return Ok(sample),
            Err(e) => {
                eprintln!(
                    "bench boot: {} / {} attempt {attempt} failed: {e:#}",
                    system.name(),
                    path.name()
                );
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("boot failed")))
}

fn boot_once(config: &VmConfig, system: System) -> Result<Sample> {
    let mut vm = config.spawn()?;
    let report_at = vm.expect("BASALT-REPORT: system=", STEP)?;
    vm.expect("BASALT-REPORT: done, powering off", STEP)?;
    vm.expect_poweroff(STEP)?;
    let console = vm.console();
    let field_line = rest_of_line(&console, "BASALT-REPORT: system=");
    let fields: BTreeMap<&str, &str> = format_fields(&field_line);
    let number = |k: &str| -> Result<f64> {
        fields
            .get(k)
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("{k} in the report {field_line:?}"))
    };
    ensure!(
        fields.get("system") == Some(&"running"),
        "{} did not reach a running system: {field_line}",
        system.name()
    );
    ensure!(
        fields.get("containerd") == Some(&"active"),
        "{}: containerd is not active: {field_line}",
        system.name()
    );
    let uptime = number("uptime-s")?;
    let switch_root = match system {
        System::Basalt => {
            // "basalt-init: switching root to /sysroot, exec … (3.4 s since kernel start)"
            let line = rest_of_line(&console, "basalt-init: switching root to /sysroot");
            line.rsplit('(')
                .next()
                .and_then(|s| s.split_whitespace().next())
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("basalt-init line {line:?}"))?
        }
        System::Reference => rest_of_line(&console, "BENCH-REF: switch_root uptime=")
            .trim()
            .parse()
            .context("the reference initramfs's switch_root line")?,
    };
    Ok(Sample {
        kernel_at: report_at.as_secs_f64() - uptime,
        init_at: run_init_timestamp(&console).context("no `Run /init` line on the console")?,
        switch_root,
        multi_user: number("multi-user-s")?,
        mem_kib: number("mem-used-kib")?,
        pcp_kib: number("mem-pcp-kib")?,
        modules: number("modules")?,
        time_line: rest_of_line(&console, "BASALT-REPORT-TIME: "),
        blame: rest_of_line(&console, "BASALT-REPORT-BLAME: "),
        mem_line: rest_of_line(&console, "BASALT-REPORT-MEM: "),
        chain: rest_of_line(&console, "BASALT-REPORT-CHAIN: "),
        cpu_line: rest_of_line(&console, "BASALT-REPORT-CPU: "),
    })
}

fn format_fields(line: &str) -> BTreeMap<&str, &str> {
    let mut out = BTreeMap::new();
    if let Some((v, rest)) = line.split_once(' ') {
        out.insert("system", v);
        for kv in rest.split_whitespace() {
            if let Some((k, v)) = kv.split_once('=') {
                out.insert(k, v);
            }
        }
    }
    out
}

/// The value of `key=` in a `BASALT-REPORT-CPU:` line.
fn cpu_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// The median of a `BASALT-REPORT-CPU:` figure over `samples` (`units`: the sum of its
/// list); `None` when no sample has it.
fn cpu_median(samples: &[Sample], key: &str) -> Option<f64> {
    let mut xs: Vec<f64> = samples
        .iter()
        .filter_map(|s| {
            let v = cpu_field(&s.cpu_line, key)?;
            if key == "units" {
                Some(units_total(v))
            } else {
                v.parse().ok()
            }
        })
        .collect();
    (!xs.is_empty()).then(|| median(&mut xs))
}

/// The sum of a `seconds=unit;seconds=unit` list.
fn units_total(list: &str) -> f64 {
    list.split(';')
        .filter_map(|e| e.split_once('=')?.0.parse::<f64>().ok())
        .sum()
}

/// The rest of the console line after `marker` (its first occurrence).
fn rest_of_line(console: &str, marker: &str) -> String {
    console
        .split_once(marker)
        .and_then(|(_, after)| after.lines().next())
        .unwrap_or_default()
        .trim_end_matches('\r')
        .to_owned()
}

/// The printk timestamp of `Run /init as init process` (`[    3.532586] Run /init …`).
fn run_init_timestamp(console: &str) -> Option<f64> {
    let line = console
        .lines()
        .find(|l| l.contains("Run /init as init process"))?;
    let open = line.rfind('[')?;
    let close = line[open..].find(']')? + open;
    line[open + 1..close].trim().parse().ok()
}

/// The reference system.
struct Reference {
    boot: Bootable,
    usr_files: u64,
    usr_blocks: u64,
    modules: usize,
}

/// Build the reference disk: GPT, ESP (systemd-boot + one entry), ext4 root with the stock
/// tree, Debian's whole module tree, the report hook; and its busybox initramfs.
fn build_reference(
    work: &Path,
    tree: &Path,
    kernel: &KernelTree,
    report_opts: &str,
) -> Result<Reference> {
    let stage = work.join("reference-root");
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    fs::create_dir_all(&stage)?;
    sh::run(
        Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", tree.display()))
            .arg(&stage),
    )?;
    let modules_to = stage.join("usr/lib/modules");
    fs::create_dir_all(&modules_to)?;
    sh::run(
        Command::new("cp")
            .arg("-a")
            .arg(&kernel.modules_dir)
            .arg(&modules_to),
    )?;
    let units = stage.join("etc/systemd/system");
    fs::create_dir_all(units.join("multi-user.target.wants"))?;
    fs::write(units.join("basalt-boot-report.service"), REPORT_UNIT)?;
    std::os::unix::fs::symlink(
        "../basalt-boot-report.service",
        units.join("multi-user.target.wants/basalt-boot-report.service"),
    )?;
    let getty = units.join("serial-getty@ttyS0.service.d");
    fs::create_dir_all(&getty)?;
    fs::write(getty.join("basalt-test-autologin.conf"), AUTOLOGIN_DROPIN)?;
    let _ = fs::remove_file(units.join("systemd-firstboot.service"));
    std::os::unix::fs::symlink("/dev/null", units.join("systemd-firstboot.service"))?;
    let script = stage.join("usr/lib/basalt/boot-report");
    fs::create_dir_all(script.parent().context("script folder")?)?;
    fs::write(&script, REPORT_SCRIPT)?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
    fs::write(stage.join("etc/hostname"), "reference\n")?;
    fs::write(
        stage.join("etc/fstab"),
        "/dev/vda2 / ext4 rw,relatime 0 1\n",
    )?;
    let (usr_files, usr_blocks) = usage(&stage.join("usr"))?;
    let modules = count_ko(&kernel.modules_dir)?;

    // Disk: GPT (sgdisk), ESP at 1 MiB, root after it.
    let disk = work.join("reference-disk.img");
    let _ = fs::remove_file(&disk);
    let esp_off = MIB;
    let root_off = esp_off + REF_ESP_MIB * MIB;
    let total = root_off + REF_ROOT_MIB * MIB + MIB;
    fs::File::create(&disk)?.set_len(total)?;
    sh::run(
        Command::new("sgdisk")
            .arg("-o")
            .arg(format!("-n=1:2048:+{REF_ESP_MIB}M"))
            .args(["-t=1:ef00", "-c=1:ESP"])
            .arg(format!("-n=2:{}:+{REF_ROOT_MIB}M", root_off / 512))
            .args(["-t=2:8304", "-c=2:root"])
            .arg(&disk),
    )?;
    sh::run(
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-L", "root", "-E"])
            .arg(format!("offset={root_off}"))
            .arg("-d")
            .arg(&stage)
            .arg(&disk)
            .arg((REF_ROOT_MIB * MIB / 4096).to_string()),
    )?;
    fs::remove_dir_all(&stage)?;

    // The busybox initramfs: disk modules, mount the root, switch_root.
    let initrd = work.join("reference-initrd.img");
    let init = format!(
        "{INIT_PRELUDE}\
         i=0; while [ ! -b /dev/vda2 ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done\n\
         mkdir -p /newroot\n\
         mount -t ext4 -o rw /dev/vda2 /newroot || {{ echo 'BENCH-REF: mount failed'; poweroff -f; }}\n\
         echo \"BENCH-REF: switch_root uptime=$(cut -d' ' -f1 /proc/uptime)\"\n\
         mount -o move /dev /newroot/dev; mount -o move /proc /newroot/proc; mount -o move /sys /newroot/sys\n\
         exec switch_root /newroot /sbin/init\n"
    );
    BusyboxInitramfs::new(init)
        .modules(
            kernel,
            &["virtio_pci", "virtio_blk", "crc32c_generic", "ext4"],
        )?
        .build(&initrd)?;

    // ESP: systemd-boot, loader.conf, the entry.
    let files = work.join("reference-esp");
    fs::create_dir_all(&files)?;
    fs::write(files.join("loader.conf"), "timeout 0\neditor no\n")?;
    let cmdline = format!("root=/dev/vda2 rw console=ttyS0 panic=-1 {report_opts}");
    fs::write(
        files.join("reference.conf"),
        format!(
            "title Debian reference\nlinux /ref/vmlinuz\ninitrd /ref/initrd\noptions {cmdline}\n"
        ),
    )?;
    basalt_disk_esp(
        &disk,
        esp_off,
        REF_ESP_MIB * MIB,
        &[
            (
                "EFI/BOOT/BOOTX64.EFI",
                Path::new(basalt_disk::esp::SYSTEMD_BOOT_EFI),
            ),
            ("loader/loader.conf", &files.join("loader.conf")),
            (
                "loader/entries/reference.conf",
                &files.join("reference.conf"),
            ),
            ("ref/vmlinuz", &kernel.vmlinuz),
            ("ref/initrd", &initrd),
        ],
    )?;
    Ok(Reference {
        boot: Bootable {
            disk,
            initrd,
            cmdline,
        },
        usr_files,
        usr_blocks,
        modules,
    })
}

/// The initramfs peer (module docs): busybox, the image's initramfs modules, and Debian's
/// `veritysetup` with the shared libraries `ldd` names, opening slot A of `ours`' disk.
struct DmBusybox {
    disk: PathBuf,
    initrd: PathBuf,
    cmdline: String,
}

fn build_dm_busybox(
    work: &Path,
    kernel: &KernelTree,
    ours: &Bootable,
    root_hash: &str,
) -> Result<DmBusybox> {
    let veritysetup = Path::new("/usr/sbin/veritysetup");
    ensure!(
        veritysetup.is_file(),
        "{} is missing (Debian package cryptsetup-bin)",
        veritysetup.display()
    );
    // Slot A and the root, by GPT partition name, as the image lays them out.
    let table = sh::output(Command::new("sgdisk").arg("-p").arg(&ours.disk))?;
    let part = |want: &dyn Fn(&str) -> bool| -> Result<u32> {
        table
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 7).then(|| (f[0].parse::<u32>().ok(), f[f.len() - 1]))
            })
            .find_map(|(n, name)| n.filter(|_| want(name)))
            .with_context(|| format!("partition not found in {}:\n{table}", ours.disk.display()))
    };
    let usr = part(&|n| n.starts_with("basalt_") && !n.ends_with("_verity"))?;
    let usr_verity = part(&|n| n.starts_with("basalt_") && n.ends_with("_verity"))?;
    let root = part(&|n| n == "root")?;
    let init = format!(
        "{INIT_PRELUDE}\
         i=0; while [ ! -b /dev/vda{root} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done\n\
         mkdir -p /run/cryptsetup\n\
         DM_DISABLE_UDEV=1 veritysetup open /dev/vda{usr} usr /dev/vda{usr_verity} {root_hash} \
           || {{ echo 'BENCH-DM: veritysetup failed'; poweroff -f; }}\n\
         mkdir -p /newroot\n\
         mount -t ext4 -o rw /dev/vda{root} /newroot || echo 'BENCH-DM: no ext4 on the root yet'\n\
         mkdir -p /newroot/usr\n\
         mount -t erofs -o ro /dev/dm-0 /newroot/usr || {{ echo 'BENCH-DM: erofs mount failed'; poweroff -f; }}\n\
         echo \"BENCH-DM: switch_root uptime=$(cut -d' ' -f1 /proc/uptime)\"\n\
         poweroff -f\n"
    );
    let mut fixture =
        BusyboxInitramfs::new(init).modules(kernel, &basalt_image::build::image::INITRD_MODULES)?;
    // veritysetup and what the dynamic linker loads for it.
    let ldd = sh::output(Command::new("ldd").arg(veritysetup))?;
    let mut libs: Vec<PathBuf> = ldd
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect();
    libs.sort();
    libs.dedup();
    ensure!(
        !libs.is_empty(),
        "ldd named no library of veritysetup: {ldd}"
    );
    fixture = fixture.file(
        "usr/sbin/veritysetup",
        basalt_tests::fixture::Source::Host(veritysetup.to_path_buf()),
        0o755,
    );
    for lib in libs {
        let real = fs::canonicalize(&lib).with_context(|| format!("{}", lib.display()))?;
        let rel = lib.to_string_lossy().trim_start_matches('/').to_owned();
        fixture = fixture.file(rel, basalt_tests::fixture::Source::Host(real), 0o755);
    }
    let initrd = work.join("dm-busybox-initrd.img");
    fixture.build(&initrd)?;
    Ok(DmBusybox {
        disk: ours.disk.clone(),
        initrd,
        cmdline: "console=ttyS0 panic=-1".into(),
    })
}

/// One boot of the initramfs peer: `/init` and its switch_root point after kernel start.
fn boot_dm_busybox(dir: &Path, kernel: &KernelTree, b: &DmBusybox) -> Result<Sample> {
    let disk = dir.join("disk.img");
    basalt_image::build::image::copy_sparse(&b.disk, &disk)?;
    let config = VmConfig::direct(
        dir,
        &kernel.vmlinux,
        Some(b.initrd.clone()),
        b.cmdline.clone(),
    )
    .disk(&disk)
    .memory_mib(MEMORY_MIB)
    .cpus(VCPUS)
    .cpu_model("qemu64,+rdrand")
    .no_reboot(true);
    let result = (|| -> Result<Sample> {
        let mut vm = config.spawn()?;
        vm.expect("BENCH-DM: switch_root uptime=", STEP)?;
        vm.expect_poweroff(STEP)?;
        let console = vm.console();
        ensure!(
            !console.contains("BENCH-DM: no ext4"),
            "the peer found no ext4 root on a fresh disk"
        );
        Ok(Sample {
            init_at: run_init_timestamp(&console).context("no `Run /init` line on the console")?,
            switch_root: rest_of_line(&console, "BENCH-DM: switch_root uptime=")
                .trim()
                .parse()
                .context("the peer's switch_root line")?,
            ..Sample::default()
        })
    })();
    fs::remove_file(&disk).ok();
    result
}

fn basalt_disk_esp(disk: &Path, offset: u64, len: u64, files: &[(&str, &Path)]) -> Result<()> {
    basalt_disk::esp::build_esp_image(disk, offset, len, files)
        .map(|_| ())
        .with_context(|| format!("writing the reference ESP into {}", disk.display()))
}

/// (bytes of regular files, bytes of allocated blocks) under `dir`, links not followed.
fn usage(dir: &Path) -> Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let (mut files, mut blocks) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let m = e.metadata()?;
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                files += m.len();
                blocks += m.blocks() * 512;
            }
        }
    }
    Ok((files, blocks))
}

fn count_ko(dir: &Path) -> Result<usize> {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            } else if e.path().extension().is_some_and(|x| x == "ko") {
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Bytes of `zstd -9 -T2` of `path` (what a download of it costs).
fn zstd_len(path: &Path) -> Result<u64> {
    let mut child = Command::new("zstd")
        .args(["-q", "-9", "-T2", "-c"])
        .arg(path)
        .stdout(Stdio::piped())
        .spawn()
        .context("zstd not found: install the Debian package zstd")?;
    let mut out = child.stdout.take().context("zstd stdout")?;
    let n = std::io::copy(&mut out, &mut std::io::sink())?;
    let status = child.wait()?;
    if !status.success() {
        bail!("zstd {} failed: {status}", path.display());
    }
    Ok(n)
}

struct Sizes {
    ours_usr_files: u64,
    ours_usr_disk: u64,
    ours_verity: u64,
    ours_update: u64,
    ours_disk: u64,
    ref_usr_files: u64,
    ref_usr_disk: u64,
    ref_disk: u64,
    packages: usize,
    ours_modules: usize,
    ref_modules: usize,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// (median, best) of one figure over the samples.
fn stat(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> (f64, f64) {
    let mut v: Vec<f64> = samples.iter().map(&f).collect();
    let best = v.iter().copied().fold(f64::INFINITY, f64::min);
    (median(&mut v), best)
}

/// The smallest and the largest of `f` over the rounds.
fn range(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> (f64, f64) {
    samples
        .iter()
        .map(f)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        })
}

/// The four stages of a boot, as medians: firmware, kernel, initramfs, userspace.
fn stages(samples: &[Sample]) -> [f64; 4] {
    let (fw, _) = stat(samples, |s| s.kernel_at);
    let (init, _) = stat(samples, |s| s.init_at);
    let (sr, _) = stat(samples, |s| s.switch_root);
    let (mu, _) = stat(samples, |s| s.multi_user);
    [fw, init, sr - init, mu - sr]
}

fn mib(b: u64) -> f64 {
    b as f64 / MIB as f64
}

fn render(
    samples: &BTreeMap<(BootPath, System), Vec<Sample>>,
    dm: &[Sample],
    s: &Sizes,
    rounds: u32,
    settle: u32,
    load: &str,
    kver: &str,
) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# Benchmarks: boot time, memory and size against a stock Debian host\n"
    );
    let _ = writeln!(
        o,
        "Generated by `cargo xtask bench --only boot --boot-rounds {rounds}`; do not edit the \
         figures by hand (the notes at the end are kept). Kernel {kver}; QEMU TCG, {VCPUS} vCPUs, \
         `-cpu qemu64,+rdrand`, {MEMORY_MIB} MiB, first boot of a fresh disk copy each time; \
         rounds interleaved (Basalt, reference, Basalt, …); medians, best in brackets. Load \
         average at the end of the run: {}(2 cores: another engineer's build moves every \
         absolute figure; compare the columns).\n",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
            + " "
    );
    let _ = writeln!(o, "![boot stages](benchmarks-boot.svg)\n");
    let _ = writeln!(o, "## Boot (seconds)\n");
    let _ = writeln!(
        o,
        "| boot path | system | QEMU start → kernel | kernel → /init | /init → switch_root | kernel start → multi-user.target | QEMU start → multi-user.target |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|");
    for ((path, system), v) in samples {
        let (fw, fw_b) = stat(v, |s| s.kernel_at);
        let (ia, ia_b) = stat(v, |s| s.init_at);
        let (ir, ir_b) = stat(v, |s| s.switch_root - s.init_at);
        let (mu, mu_b) = stat(v, |s| s.multi_user);
        let (tot, tot_b) = stat(v, |s| s.kernel_at + s.multi_user);
        let _ = writeln!(
            o,
            "| {} | {} | {fw:.1} ({fw_b:.1}) | {ia:.2} ({ia_b:.2}) | {ir:.2} ({ir_b:.2}) | {mu:.1} ({mu_b:.1}) | **{tot:.1}** ({tot_b:.1}) |",
            path.name(),
            system.name()
        );
    }
    let _ = writeln!(o, "\n## Targets\n");
    for path in [BootPath::Direct, BootPath::Uefi] {
        let (Some(b), Some(r)) = (
            samples.get(&(path, System::Basalt)),
            samples.get(&(path, System::Reference)),
        ) else {
            continue;
        };
        let (bt, _) = stat(b, |s| s.kernel_at + s.multi_user);
        let (rt, _) = stat(r, |s| s.kernel_at + s.multi_user);
        let target = if path == BootPath::Direct { 15.0 } else { 20.0 };
        let _ = writeln!(
            o,
            "- {}: QEMU start → multi-user.target {bt:.1} s (target ≤ {target:.0} s: {}), \
             reference {rt:.1} s: Basalt/reference = {:.2} ({}).",
            path.name(),
            if bt <= target { "met" } else { "not met" },
            bt / rt,
            if bt <= rt {
                "no slower: met"
            } else {
                "slower: not met"
            }
        );
        if let (Some(bb), Some(rb)) = (cpu_median(b, "busy-s"), cpu_median(r, "busy-s")) {
            // Both guests are close to CPU-bound while they boot under TCG, so extra CPU
            // seconds spread over the vCPUs are roughly the extra wall clock.
            let part = |k: &str| match (cpu_median(b, k), cpu_median(r, k)) {
                (Some(x), Some(y)) => format!("{:+.2}", x - y),
                _ => "—".to_owned(),
            };
            let _ = writeln!(
                o,
                "  CPU time from kernel start until the boot finished: Basalt {bb:.1} s, reference \
                 {rb:.1} s ({:+.1} s; ≈ {:+.1} s of wall clock on {VCPUS} busy vCPUs), of it \
                 kernel threads {} s (dm-verity's hashing among them), systemd and its busiest \
                 services {} s (\"Where the CPU goes\" below).",
                bb - rb,
                (bb - rb) / f64::from(VCPUS),
                part("kthreads-s"),
                part("units"),
            );
        }
        let (bi, _) = stat(b, |s| s.switch_root - s.init_at);
        let (ri, _) = stat(r, |s| s.switch_root - s.init_at);
        let _ = writeln!(
            o,
            "  initramfs (/init → switch_root): Basalt {bi:.2} s (module loading, signed usrhash, \
             dm-verity, erofs, root) vs the reference's busybox {ri:.2} s (modules, ext4 mount)."
        );
        if path == BootPath::Direct && !dm.is_empty() {
            let (bk, bk_b) = stat(b, |s| s.switch_root);
            let (dk, dk_b) = stat(dm, |s| s.switch_root);
            let (di, _) = stat(dm, |s| s.switch_root - s.init_at);
            // The issue's criterion is kernel start → switch_root (it includes unpacking each
            // initramfs); /init → switch_root is the DM setup alone, shown with its own word.
            let _ = writeln!(
                o,
                "  initramfs against a busybox initramfs doing the same DM setup on Basalt's disk \
                 (insmod, `veritysetup open`, erofs + ext4 mounts): kernel start → switch_root \
                 Basalt {bk:.2} s ({bk_b:.2}) vs {dk:.2} s ({dk_b:.2}) ({}); of it /init → \
                 switch_root {bi:.2} s vs {di:.2} s ({}).",
                if bk <= dk {
                    "no slower: met"
                } else {
                    "slower: not met"
                },
                if bi <= di { "no slower" } else { "slower" }
            );
        }
        let (bm, _) = stat(b, |s| s.mem_kib);
        let (rm, _) = stat(r, |s| s.mem_kib);
        // The rounds' spread beside the medians: a few MiB move between boots of the same
        // image (free pages held in per-CPU lists are not in MemFree), so a verdict on a
        // smaller difference says little; the reader sees both.
        let (b_lo, b_hi) = range(b, |s| s.mem_kib / 1024.0);
        let (r_lo, r_hi) = range(r, |s| s.mem_kib / 1024.0);
        let overlap = b_lo <= r_hi && r_lo <= b_hi;
        let _ = writeln!(
            o,
            "  memory in use after the boot settled ({settle} s): Basalt {:.0} MiB (rounds \
             {b_lo:.0}–{b_hi:.0}), reference {:.0} MiB (rounds {r_lo:.0}–{r_hi:.0}) ({}{}).",
            bm / 1024.0,
            rm / 1024.0,
            if bm < rm {
                "below: met"
            } else {
                "not below: not met"
            },
            if overlap { "; the rounds overlap" } else { "" }
        );
        // The same figure less the free pages the kernel held in per-CPU lists at that moment:
        // they are free memory that `MemAvailable` does not count, and the part of the figure
        // that moves most between boots (none to tens of MiB on 6.1).
        let net = |s: &Sample| (s.mem_kib - s.pcp_kib) / 1024.0;
        let (bn, _) = stat(b, net);
        let (rn, _) = stat(r, net);
        let (bn_lo, bn_hi) = range(b, net);
        let (rn_lo, rn_hi) = range(r, net);
        let (bp, _) = stat(b, |s| s.pcp_kib / 1024.0);
        let (rp, _) = stat(r, |s| s.pcp_kib / 1024.0);
        let _ = writeln!(
            o,
            "  the same less the free pages held in per-CPU lists (`count:` in /proc/zoneinfo; \
             medians {bp:.0} and {rp:.0} MiB): Basalt {bn:.0} MiB (rounds {bn_lo:.0}–{bn_hi:.0}), \
             reference {rn:.0} MiB (rounds {rn_lo:.0}–{rn_hi:.0}) ({}).",
            if bn < rn {
                "below: met"
            } else {
                "not below: not met"
            },
        );
    }
    let _ = writeln!(o, "\n## Size\n");
    let _ = writeln!(o, "| | Basalt container-host | Debian reference |");
    let _ = writeln!(o, "|---|---|---|");
    let _ = writeln!(
        o,
        "| Debian packages | {} | {} (the same staging) |",
        s.packages, s.packages
    );
    let _ = writeln!(
        o,
        "| kernel modules in /usr | {} | {} |",
        s.ours_modules, s.ref_modules
    );
    let _ = writeln!(
        o,
        "| /usr, files | {:.1} MiB | {:.1} MiB |",
        mib(s.ours_usr_files),
        mib(s.ref_usr_files)
    );
    let _ = writeln!(
        o,
        "| /usr, on disk | {:.1} MiB erofs (lz4hc) + {:.1} MiB verity tree | {:.1} MiB ext4 blocks |",
        mib(s.ours_usr_disk),
        mib(s.ours_verity),
        mib(s.ref_usr_disk)
    );
    let _ = writeln!(
        o,
        "| disk image download (zstd -9) | {:.1} MiB | {:.1} MiB |",
        mib(s.ours_disk),
        mib(s.ref_disk)
    );
    let _ = writeln!(
        o,
        "| update download (usr.img + kernel + initrd, zstd -9) | {:.1} MiB | — (apt upgrades package by package) |",
        mib(s.ours_update)
    );
    let _ = writeln!(
        o,
        "\n## Where the seconds go (first round, `systemd-analyze` in the guest)\n"
    );
    for ((path, system), v) in samples {
        if let Some(first) = v.first() {
            let _ = writeln!(
                o,
                "- {} / {}: {}\n  - slowest units: {}\n  - critical chain: {}\n  - modules loaded: {:.0}",
                system.name(),
                path.name(),
                first.time_line.trim(),
                first.blame.replace(';', ", "),
                first.chain.replace(';', " ← "),
                first.modules
            );
        }
    }
    let _ = writeln!(
        o,
        "\n## Where the CPU goes (seconds of CPU time from kernel start until the boot finished, \
         all {VCPUS} vCPUs; medians, first round's lists)\n\n\
         | boot path | system | guest busy | kernel threads | systemd + its 10 busiest running services | \
         read from `/usr`'s device |\n|---|---|---|---|---|---|"
    );
    for ((path, system), v) in samples {
        let field =
            |k: &str| cpu_median(v, k).map_or_else(|| "—".to_owned(), |x| format!("{x:.2}"));
        let units = field("units");
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {units} | {} MiB ({}) |",
            path.name(),
            system.name(),
            field("busy-s"),
            field("kthreads-s"),
            field("usr-read-mib"),
            v.first()
                .and_then(|s| cpu_field(&s.cpu_line, "usr-dev"))
                .unwrap_or("—")
        );
    }
    let _ = writeln!(o);
    for ((path, system), v) in samples {
        if let Some(first) = v.first() {
            let _ = writeln!(
                o,
                "- {} / {}: kernel threads {}; services {}",
                system.name(),
                path.name(),
                cpu_field(&first.cpu_line, "kthreads-top")
                    .unwrap_or("—")
                    .replace(';', ", "),
                cpu_field(&first.cpu_line, "units")
                    .unwrap_or("—")
                    .replace(';', ", ")
            );
        }
    }
    let _ = writeln!(
        o,
        "\n## Where the memory goes (first round, `/proc/meminfo` in kB and the largest \
         processes' VmRSS in kB, read with the memory figure)\n"
    );
    for ((path, system), v) in samples {
        if let Some(first) = v.first() {
            let (fields, top) = first
                .mem_line
                .split_once("top-rss=")
                .unwrap_or((first.mem_line.as_str(), ""));
            let _ = writeln!(
                o,
                "- {} / {}: used {:.0} MiB, of it {:.0} MiB free in per-CPU lists; {}\n  - \
                 largest processes: {}",
                system.name(),
                path.name(),
                first.mem_kib / 1024.0,
                first.pcp_kib / 1024.0,
                fields.trim(),
                top.replace(';', ", ")
            );
        }
    }
    o
}

/// A stacked horizontal bar per (boot path, system): firmware, kernel, initramfs, userspace.
fn chart(samples: &BTreeMap<(BootPath, System), Vec<Sample>>) -> String {
    let colors = ["#9e9e9e", "#5c6bc0", "#ef6c00", "#43a047"];
    let labels = [
        "firmware + loader",
        "kernel",
        "initramfs",
        "userspace → multi-user",
    ];
    let rows: Vec<(String, [f64; 4])> = samples
        .iter()
        .map(|((p, s), v)| (format!("{} — {}", s.name(), p.name()), stages(v)))
        .collect();
    let max = rows
        .iter()
        .map(|(_, st)| st.iter().filter(|x| x.is_finite()).sum::<f64>())
        .fold(1.0, f64::max);
    let (left, width, row_h) = (300.0, 560.0, 34.0);
    let height = 70.0 + row_h * rows.len() as f64 + 40.0;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">",
        left + width + 40.0
    );
    let _ = writeln!(
        o,
        "<text x=\"10\" y=\"20\" font-size=\"14\">Boot stages, median seconds (QEMU TCG, {VCPUS} vCPUs)</text>"
    );
    for (i, (name, st)) in rows.iter().enumerate() {
        let y = 40.0 + row_h * i as f64;
        let _ = writeln!(o, "<text x=\"10\" y=\"{}\">{name}</text>", y + 17.0);
        let mut x = left;
        for (k, secs) in st.iter().enumerate() {
            if !secs.is_finite() || *secs <= 0.0 {
                continue;
            }
            let w = secs / max * width;
            let _ = writeln!(
                o,
                "<rect x=\"{x:.1}\" y=\"{y}\" width=\"{w:.1}\" height=\"24\" fill=\"{}\"><title>{}: {secs:.2} s</title></rect>",
                colors[k], labels[k]
            );
            x += w;
        }
        let total: f64 = st.iter().filter(|v| v.is_finite()).sum();
        let _ = writeln!(
            o,
            "<text x=\"{:.1}\" y=\"{}\">{total:.1} s</text>",
            x + 4.0,
            y + 17.0
        );
    }
    let ly = 50.0 + row_h * rows.len() as f64;
    for (k, label) in labels.iter().enumerate() {
        let x = 10.0 + 200.0 * k as f64;
        let _ = writeln!(
            o,
            "<rect x=\"{x}\" y=\"{ly}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{label}</text>",
            colors[k],
            x + 16.0,
            ly + 11.0
        );
    }
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_init_timestamp_is_read_from_printk() {
        let console = "[    0.1] x\r\n[    3.532586] Run /init as init process\r\n";
        assert_eq!(run_init_timestamp(console), Some(3.532586));
        assert_eq!(run_init_timestamp("no such line"), None);
    }

    #[test]
    fn cpu_line_parses() {
        let line = "busy-s=14.20 usr-dev=dm-0 usr-read-mib=37.1 kthreads-s=1.91 \
                    kthreads-top=0.88=kworker-kverityd;0.38=migration \
                    units=1.34=containerd.service;0.49=basalt-updated.service";
        assert_eq!(cpu_field(line, "busy-s"), Some("14.20"));
        assert_eq!(cpu_field(line, "kthreads-s"), Some("1.91"));
        assert_eq!(cpu_field(line, "usr-dev"), Some("dm-0"));
        assert_eq!(cpu_field(line, "usr"), None);
        assert_eq!(cpu_field(line, "missing"), None);
        let units = cpu_field(line, "units").unwrap();
        assert!((units_total(units) - 1.83).abs() < 1e-9);
        assert_eq!(units_total("none"), 0.0);
    }

    #[test]
    fn cpu_medians_over_samples() {
        let sample = |line: &str| Sample {
            cpu_line: line.to_owned(),
            ..Sample::default()
        };
        let v = [
            sample("busy-s=10.0 units=1.0=a.service;2.0=b.service"),
            sample("busy-s=14.0 units=3.0=a.service"),
            sample("busy-s=12.0"),
        ];
        assert_eq!(cpu_median(&v, "busy-s"), Some(12.0));
        assert_eq!(cpu_median(&v, "units"), Some(3.0));
        assert_eq!(cpu_median(&v, "kthreads-s"), None);
        assert_eq!(cpu_median(&[], "busy-s"), None);
    }

    #[test]
    fn range_is_the_smallest_and_largest_round() {
        let sample = |mem_kib: f64| Sample {
            mem_kib,
            ..Sample::default()
        };
        let v = [sample(200.0), sample(190.0), sample(206.0)];
        assert_eq!(range(&v, |s| s.mem_kib), (190.0, 206.0));
        assert_eq!(range(&v[..1], |s| s.mem_kib), (200.0, 200.0));
    }

    #[test]
    fn report_fields_parse() {
        let f = format_fields("running containerd=active uptime-s=12.5");
        assert_eq!(f["system"], "running");
        assert_eq!(f["uptime-s"], "12.5");
    }

    #[test]
    fn medians_and_notes() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        let doc = format!("head\n{NOTES_BEGIN}\nmine\n{NOTES_END}\ntail");
        assert_eq!(
            keep_notes(&doc).unwrap(),
            format!("{NOTES_BEGIN}\nmine\n{NOTES_END}\n")
        );
    }
}
