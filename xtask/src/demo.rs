//! `cargo xtask demo`: the newcomer's tour of what Basalt does today.
//!
//! Every step runs the real `basalt` binary (and real peers where they prove a point) in a
//! scratch directory and says, in plain words, what just happened. It grows with the project:
//! the end goal is two releases, v1 booted in QEMU, a live update to v2 and a rollback.
//! Today: the building blocks (erofs, verity, keys, manifests), then the product image
//! (`image/definitions/container-host.toml`) built — the first run takes minutes (mmdebstrap),
//! later runs come from the image cache — and booted in QEMU to a running containerd.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

use basalt_image::build::erofs;

use crate::sh;

#[derive(Debug, Parser)]
pub struct Args {
    /// Keep the scratch directory (printed at the end) instead of deleting it.
    #[arg(long)]
    keep: bool,
    /// Skip the apt-get step (packages already installed by hand).
    #[arg(long)]
    no_install: bool,
}

struct Demo {
    basalt: PathBuf,
    dir: PathBuf,
    step: u32,
}

impl Demo {
    fn say(&mut self, title: &str, what: &str) {
        self.step += 1;
        println!("\n=== {}. {title}", self.step);
        for line in what.lines() {
            println!("    {line}");
        }
    }

    fn basalt(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.basalt)
            .current_dir(&self.dir)
            .args(args)
            .output()
            .with_context(|| format!("cannot run basalt {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "basalt {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Run basalt expecting a refusal (exit 3); return its error message.
    fn basalt_refused(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.basalt)
            .current_dir(&self.dir)
            .args(args)
            .output()
            .with_context(|| format!("cannot run basalt {}", args.join(" ")))?;
        if out.status.code() != Some(3) {
            bail!(
                "basalt {} should have refused (exit 3), got {}: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("      | {l}\n"))
        .collect::<String>()
}

pub fn run(args: Args) -> Result<()> {
    if !args.no_install {
        crate::test::install_packages()?;
    }
    let root = sh::root();
    println!("Basalt demo: building the basalt tool (release build) …");
    sh::run(Command::new("cargo").current_dir(&root).args([
        "build",
        "--quiet",
        "--release",
        "--package",
        "basalt-image",
        "--bin",
        "basalt",
    ]))?;
    let basalt = root.join("target/release/basalt");
    let scratch = tempfile::Builder::new().prefix("basalt-demo.").tempdir()?;
    let mut demo = Demo {
        basalt,
        dir: scratch.path().to_path_buf(),
        step: 0,
    };
    let result = tour(&mut demo).and_then(|()| {
        let image = product_image(&mut demo)?;
        boot_product_image(&mut demo, &image)
    });
    if args.keep {
        let kept = scratch.keep();
        println!("\nScratch directory kept: {}", kept.display());
    }
    result?;
    println!(
        "\nThat is what Basalt does today: a signed, verity-protected image that boots to a\n\
         container host. Still to come (open issues): the on-node updater — fetching release 2,\n\
         writing it to the empty slot B, booting it with a try counter and falling back to A\n\
         when it fails (a live A/B update and a rollback) — then sysexts and fleet rollouts."
    );
    Ok(())
}

fn tour(d: &mut Demo) -> Result<()> {
    // 1. A /usr image.
    d.say(
        "A read-only /usr image",
        "Basalt's OS lives in a read-only /usr partition. Here we pack a small /usr tree\n\
         into an erofs image with mkfs.erofs, the way the image builder does.",
    );
    let tree = d.path("usr-tree");
    std::fs::create_dir_all(tree.join("lib/os-release.d"))?;
    std::fs::create_dir_all(tree.join("bin"))?;
    std::fs::write(
        tree.join("lib/os-release"),
        "NAME=Basalt\nID=basalt\nVERSION_ID=1.0.0\n",
    )?;
    for i in 0..64 {
        std::fs::write(
            tree.join(format!("bin/tool-{i}")),
            format!("tool {i}\n").repeat(2000),
        )?;
    }
    let usr = d.path("usr-1.0.0.erofs");
    erofs::pack(
        &tree,
        &usr,
        &erofs::derived_uuid("basalt 1.0.0"),
        erofs::Compression::Lz4hc,
    )?;
    let size = std::fs::metadata(&usr)?.len();
    println!("      usr image: {} ({} KiB)", usr.display(), size / 1024);

    // 2. Verity.
    d.say(
        "dm-verity hash tree",
        "dm-verity makes every read of /usr checked against one root hash. `basalt verity\n\
         format` writes the hash tree; the peer tool veritysetup must agree byte for byte.",
    );
    let salt = "5a17".repeat(16);
    let uuid = "2d6b5ed2-4b6e-4f8b-9f5f-6a3b1f1e9c01";
    let offset = size.to_string();
    // The shipped artifact is the erofs image with its hash tree appended (one download);
    // the updater splits it into the usr and usr-verity partitions.
    std::fs::copy(&usr, d.path("usr.img"))?;
    std::fs::copy(&usr, d.path("peer.img"))?;
    let ours = d.basalt(&[
        "verity",
        "format",
        "usr.img",
        "usr.img",
        "--hash-offset",
        &offset,
        "--salt",
        &salt,
        "--uuid",
        uuid,
        "--json",
    ])?;
    let info: serde_json::Value = serde_json::from_str(&ours).context("basalt verity --json")?;
    let root_hash = info["root_hash"]
        .as_str()
        .context("root_hash in basalt verity --json")?
        .to_owned();
    println!("      basalt root hash:      {root_hash}");
    let peer = sh::output(Command::new("veritysetup").current_dir(&d.dir).args([
        "format",
        "peer.img",
        "peer.img",
        "--hash-offset",
        &offset,
        "--salt",
        &salt,
        "--uuid",
        uuid,
    ]))?;
    let peer_root = peer
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(str::trim)
        .unwrap_or_default()
        .to_owned();
    println!("      veritysetup root hash: {peer_root}");
    let same = std::fs::read(d.path("usr.img"))? == std::fs::read(d.path("peer.img"))?;
    println!(
        "      image + appended hash tree byte-identical: {}",
        if same { "yes" } else { "NO" }
    );
    if !same || peer_root != root_hash {
        bail!("basalt and veritysetup disagree: this is a bug");
    }

    // 3. Corruption is caught.
    d.say(
        "Corruption is caught",
        "Flip one byte of a copy of the image: verification names the bad block.",
    );
    let bad = d.path("usr-corrupt.img");
    std::fs::copy(d.path("usr.img"), &bad)?;
    flip_byte(&bad, 3 * 4096 + 17)?;
    let msg = d.basalt_refused(&[
        "verity",
        "verify",
        "usr-corrupt.img",
        "usr-corrupt.img",
        &root_hash,
        "--hash-offset",
        &offset,
    ])?;
    print!("{}", indent(&msg));

    // 4. Keys and trust root.
    d.say(
        "Release keys and a trust root",
        "Releases are signed by a threshold of ed25519 keys. Here: three keys, any two sign.\n\
         The trust root (the list of keys + threshold) is itself signed and ships in the image.",
    );
    for k in ["alice", "bob", "carol"] {
        d.basalt(&["key", "generate", k])?;
    }
    d.basalt(&[
        "trust",
        "init",
        "--key",
        "alice.pub",
        "--key",
        "bob.pub",
        "--key",
        "carol.pub",
        "--threshold",
        "2",
        "--sign-key",
        "alice.key",
        "--sign-key",
        "bob.key",
        "--out",
        "trust.json",
    ])?;
    println!("      wrote alice/bob/carol .key (mode 0600) + .pub, and trust.json (2 of 3)");

    // 5. A signed manifest.
    d.say(
        "A signed release manifest",
        "The manifest names the release and every artifact with its size, sha256 and verity\n\
         root hash. It is wrapped in a DSSE envelope signed by two of the three keys.",
    );
    let manifest = serde_json::json!({
        "schema_version": 1,
        "os": "basalt",
        "version": "1.0.0",
        "channel": "stable",
        "arch": "x86_64",
        "sequence": 1,
        "issued_at": "2026-11-01T00:00:00Z",
        "expires_at": "2027-11-01T00:00:00Z",
        "artifacts": [{
            "kind": "usr",
            "name": "usr.img",
            "size": std::fs::metadata(d.path("usr.img"))?.len(),
            "sha256": sha256_hex(&d.path("usr.img"))?,
            "verity": {
                "root_hash": root_hash,
                "salt": salt,
                "data_blocks": info["data_blocks"],
                "hash_offset": size,
                "hash_algorithm": "sha256",
                "data_block_size": 4096,
                "hash_block_size": 4096
            }
        }]
    });
    std::fs::write(
        d.path("release.json"),
        serde_json::to_vec_pretty(&manifest)?,
    )?;
    d.basalt(&[
        "manifest",
        "sign",
        "release.json",
        "--key",
        "alice.key",
        "--key",
        "carol.key",
        "--out",
        "release.signed",
    ])?;
    let verified = d.basalt(&[
        "manifest",
        "verify",
        "release.signed",
        "--trust",
        "trust.json",
        "--now",
        "2026-11-29T12:00:00Z",
    ])?;
    println!(
        "      verified: {} lines of manifest JSON",
        verified.lines().count()
    );

    // 6. Refusals.
    d.say(
        "What a node refuses",
        "A node passes its installed version, the highest sequence it has seen and the time.\n\
         Each refusal has its own reason:",
    );
    let cases: [(&str, Vec<&str>); 3] = [
        (
            "replayed (sequence 1 already seen)",
            vec!["--last-sequence", "1", "--now", "2026-11-29T12:00:00Z"],
        ),
        (
            "downgrade (node runs 2.0.0)",
            vec![
                "--installed-version",
                "2.0.0",
                "--now",
                "2026-11-29T12:00:00Z",
            ],
        ),
        (
            "expired (clock in 2028)",
            vec!["--now", "2028-01-01T00:00:00Z"],
        ),
    ];
    for (what, extra) in cases {
        let mut argv = vec![
            "manifest",
            "verify",
            "release.signed",
            "--trust",
            "trust.json",
        ];
        argv.extend(extra);
        let msg = d.basalt_refused(&argv)?;
        println!("      {what}:");
        print!("{}", indent(&msg));
    }
    d.basalt(&[
        "manifest",
        "sign",
        "release.json",
        "--key",
        "alice.key",
        "--out",
        "one-key.signed",
    ])?;
    let msg = d.basalt_refused(&[
        "manifest",
        "verify",
        "one-key.signed",
        "--trust",
        "trust.json",
        "--now",
        "2026-11-29T12:00:00Z",
    ])?;
    println!("      signed by one key only:");
    print!("{}", indent(&msg));
    Ok(())
}

fn flip_byte(path: &Path, offset: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset)?;
    b[0] ^= 0xff;
    f.write_all_at(&b, offset)?;
    Ok(())
}

fn sha256_hex(path: &Path) -> Result<String> {
    let out = sh::output(Command::new("sha256sum").arg(path))?;
    out.split_whitespace()
        .next()
        .map(str::to_owned)
        .context("sha256sum output")
}

/// The product image as built by `basalt image build`.
struct ProductImage {
    /// The release directory (`basalt image build --out`).
    out: PathBuf,
}

/// Build (or fetch from the cache) the `container-host` image with the real CLI and show what
/// came out.
fn product_image(d: &mut Demo) -> Result<ProductImage> {
    let root = sh::root();
    let definition = root.join("image/definitions/container-host.toml");
    d.say(
        "Build the product image",
        "The real thing: image/definitions/container-host.toml describes a Debian 12 userspace\n\
         with systemd and containerd. `basalt image build` runs mmdebstrap, packs /usr as erofs,\n\
         appends its dm-verity tree and a signed statement of the root hash, fetches the Debian\n\
         kernel, builds the initramfs (basalt-init), signs the release manifest and writes a\n\
         bootable GPT disk. The first build takes a few minutes; it is cached by the hash of\n\
         its inputs, so later runs only copy files (and sign again). Signed with the fixed TEST\n\
         key of the test suite (shared cache), never a real release key. We build the *test*\n\
         variant: the product plus a boot-report hook the demo uses to show the boot.",
    );
    let init = basalt_tests::artifacts::basalt_init()?;
    let keys = basalt_tests::artifacts::test_keys()?;
    let out = d.path("container-host");
    let out_s = out.display().to_string();
    let (def_s, key_s, trust_s, init_s) = (
        definition.display().to_string(),
        keys.key.display().to_string(),
        keys.trust.display().to_string(),
        init.display().to_string(),
    );
    println!("      $ basalt image build --config {def_s} --key <test key> --trust <test trust.json> --out {out_s} --variant test");
    let started = Instant::now();
    let said = d.basalt(&[
        "image",
        "build",
        "--config",
        &def_s,
        "--key",
        &key_s,
        "--trust",
        &trust_s,
        "--out",
        &out_s,
        "--init",
        &init_s,
        "--variant",
        "test",
    ])?;
    print!("{}", indent(&said));
    let cached = said.contains("(from cache)");
    println!(
        "      {} in {:.1} s",
        if cached {
            "taken from the image cache (inputs unchanged)"
        } else {
            "built from scratch (first run; cached for the next one)"
        },
        started.elapsed().as_secs_f64()
    );
    let facts: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("build.json"))?).context("build.json")?;
    if let Some(steps) = facts["durations_ms"].as_array() {
        let line = steps
            .iter()
            .filter_map(|s| {
                Some(format!(
                    "{} {:.1} s",
                    s[0].as_str()?,
                    s[1].as_f64()? / 1000.0
                ))
            })
            .collect::<Vec<_>>()
            .join(", ");
        println!("      build steps (when it was built): {line}");
    }

    d.say(
        "What was built",
        "A release is a few files plus a signed manifest naming each one by size and sha256;\n\
         the disk image is what a machine boots on day one.",
    );
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let hash_offset = facts["hash_offset"].as_u64().unwrap_or(0);
    let usr_bytes = facts["usr_img_bytes"].as_u64().unwrap_or(0);
    println!(
        "      usr.img    {:7.1} MiB = erofs /usr {:.1} MiB + verity tree and signed statement {:.1} MiB",
        mib(usr_bytes),
        mib(hash_offset),
        mib(usr_bytes.saturating_sub(hash_offset))
    );
    println!(
        "      vmlinuz    {:7.1} MiB  (Debian kernel {})",
        mib(facts["vmlinuz_bytes"].as_u64().unwrap_or(0)),
        facts["kernel_version"].as_str().unwrap_or("?")
    );
    println!(
        "      initrd.img {:7.1} MiB  (basalt-init + {} kernel modules + the trust root)",
        mib(facts["initrd_bytes"].as_u64().unwrap_or(0)),
        facts["initrd_modules"].as_array().map_or(0, Vec::len)
    );
    let disk = out.join("disk.img");
    let meta = std::fs::metadata(&disk)?;
    use std::os::unix::fs::MetadataExt;
    println!(
        "      disk.img   {:7.1} MiB  ({:.0} MiB allocated: the file is sparse)",
        mib(meta.len()),
        mib(meta.blocks() * 512)
    );
    println!(
        "      /usr root hash (dm-verity): {}",
        facts["root_hash"].as_str().unwrap_or("?")
    );
    let verified = d.basalt(&[
        "manifest",
        "verify",
        &out.join("release.signed").display().to_string(),
        "--trust",
        &trust_s,
    ])?;
    let manifest: serde_json::Value =
        serde_json::from_str(&verified).context("basalt manifest verify output")?;
    println!(
        "      signed manifest (verified against trust.json): {} {} channel {} sequence {}",
        manifest["os"].as_str().unwrap_or("?"),
        manifest["version"].as_str().unwrap_or("?"),
        manifest["channel"].as_str().unwrap_or("?"),
        manifest["sequence"]
    );
    for a in manifest["artifacts"].as_array().into_iter().flatten() {
        println!(
            "        {:7} {:11} {:>10} bytes  sha256 {}…{}",
            a["kind"].as_str().unwrap_or("?"),
            a["name"].as_str().unwrap_or("?"),
            a["size"],
            &a["sha256"].as_str().unwrap_or("?")
                [..12.min(a["sha256"].as_str().unwrap_or("?").len())],
            if a["verity"].is_object() {
                "  + verity root hash"
            } else {
                ""
            }
        );
    }
    println!(
        "      $ basalt disk inspect disk.img   (partitions, slots, GPT attributes, ESP boot entries)"
    );
    let inspect = d.basalt(&["disk", "inspect", &disk.display().to_string()])?;
    print!("{}", indent(&inspect));
    println!(
        "      (the gptprio lines are the ChromeOS/Flatcar-style backend, unused by this image:\n\
         \x20      it boots with systemd-boot, whose entries on the ESP decide)"
    );
    Ok(ProductImage { out })
}

/// One stage of the boot as the console shows it: the marker, and what it means.
const BOOT_STAGES: [(&str, &str); 7] = [
    (
        "BdsDxe: starting Boot",
        "firmware (OVMF, UEFI) found the EFI system partition and started systemd-boot",
    ),
    (
        "Linux version",
        "systemd-boot picked the newest entry and started the Debian kernel with its initramfs",
    ),
    (
        "basalt-init: usrhash is signed",
        "basalt-init (initramfs) checked the release key's signature over the /usr root hash",
    ),
    (
        "basalt-init: dm-verity usr status V",
        "basalt-init set up dm-verity: every /usr block is now checked against that hash",
    ),
    (
        "basalt-init: switching root to /sysroot",
        "/usr mounted read-only (erofs), root ext4 read-write, /etc from the factory copy;\n\
         switch_root to systemd",
    ),
    (
        "BASALT-REPORT: system=",
        "systemd finished the boot (multi-user.target, containerd up); the test hook reports",
    ),
    ("BASALT-REPORT: done, powering off", "powering off"),
];

/// Boot the product image in QEMU (OVMF → systemd-boot → kernel → basalt-init → systemd) and
/// narrate each stage with its time since QEMU started.
fn boot_product_image(d: &mut Demo, image: &ProductImage) -> Result<()> {
    use basalt_tests::vm::VmConfig;
    d.say(
        "Boot it in QEMU",
        "A private copy of disk.img boots in QEMU (software emulation, 2 vCPUs: slow, so\n\
         expect 40-90 s). We switch on the image's test hook (kernel option basalt.test=report,\n\
         inert otherwise): once the system is up it prints one report line and powers off.",
    );
    let vm_dir = d.path("vm");
    std::fs::create_dir_all(&vm_dir)?;
    let disk = vm_dir.join("disk.img");
    let mut last_err = None;
    for attempt in 1..=2 {
        basalt_image::build::image::copy_sparse(&image.out.join("disk.img"), &disk)?;
        let entries = basalt_tests::artifacts::add_kernel_option(
            &disk,
            basalt_image::build::variant::REPORT_OPTION,
        )?;
        if attempt == 1 {
            println!("      boot entries on the ESP: {}", entries.join(", "));
        }
        let config = VmConfig::uefi(&vm_dir)
            .disk(&disk)
            .memory_mib(1536)
            .cpus(2)
            .cpu_model("qemu64,+rdrand")
            .no_reboot(true);
        match narrate_boot(&config) {
            Ok(()) => return Ok(()),
            Err(e) => {
                println!("      boot attempt {attempt} failed: {e:#}");
                last_err = Some(e);
            }
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("boot failed"))).context(
        "the product image did not boot (twice); serial logs are in the scratch dir (--keep)",
    )
}

fn narrate_boot(config: &basalt_tests::vm::VmConfig) -> Result<()> {
    const STEP: Duration = Duration::from_secs(180);
    let mut vm = config.spawn()?;
    let mut kernel_at = None;
    for (marker, meaning) in BOOT_STAGES {
        let at = vm.expect(marker, STEP)?;
        let mut lines = meaning.lines();
        println!(
            "      {:5.1} s  {}",
            at.as_secs_f64(),
            lines.next().unwrap_or_default()
        );
        for more in lines {
            println!("               {more}");
        }
        if marker == "Linux version" {
            kernel_at = Some(at);
        }
    }
    vm.expect_poweroff(STEP)?;
    // Read whole lines only now: right after a marker the rest of its line may still be
    // on its way.
    let console = vm.console();
    let rest_of_line = |marker: &str| {
        console
            .split_once(marker)
            .and_then(|(_, after)| after.lines().next())
            .unwrap_or_default()
            .trim_end()
            .to_owned()
    };
    let switch_root = rest_of_line("basalt-init: switching root to /sysroot");
    let report = format!("system={}", rest_of_line("BASALT-REPORT: system="));
    let total = vm.elapsed();
    let fields: std::collections::HashMap<&str, &str> = report
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let f = |k: &str| fields.get(k).copied().unwrap_or("?");
    println!(
        "      the boot entry's kernel command line: {}",
        rest_of_line("Command line: ")
    );
    println!("      what the guest reported:");
    println!("        systemd state:      {}", f("system"));
    println!(
        "        containerd:         {} (version {})",
        f("containerd"),
        f("containerd-version")
    );
    println!("        /usr:               {}", f("usr"));
    println!("        / (state):          {}", f("root"));
    println!("        os-release version: {}", f("version"));
    println!("        booted entry:       {}", f("entry"));
    println!(
        "        machine-id:         {} (generated on this first boot)",
        f("machine-id")
    );
    println!("        failed units:       {}", f("failed"));
    let init_secs = switch_root
        .split('(')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or("?");
    println!("      timings:");
    println!("        kernel start → switch_root (basalt-init's figure): {init_secs} s");
    println!(
        "        kernel start → multi-user.target (systemd's figure): {} s",
        f("multi-user-s")
    );
    if let (Some(kernel), Ok(mu)) = (kernel_at, f("multi-user-s").parse::<f64>()) {
        println!(
            "        QEMU start → multi-user.target: ≈ {:.1} s (QEMU start → kernel {:.1} s + that)",
            kernel.as_secs_f64() + mu,
            kernel.as_secs_f64()
        );
    }
    println!(
        "        QEMU start → power-off: {:.1} s (firmware and systemd-boot included)",
        total.as_secs_f64()
    );
    if f("containerd") != "active" || !f("usr").starts_with("erofs,ro") {
        bail!("the guest did not come up as expected: {report}");
    }
    if f("system") != "running" {
        println!(
            "      NOTE: systemd says {:?}, not \"running\"; failed units: {}",
            f("system"),
            f("failed")
        );
    }
    Ok(())
}
