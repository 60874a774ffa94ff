//! `cargo xtask demo`: the newcomer's tour of Basalt, told as a story.
//!
//! Every step runs the real thing (the `basalt` binary, real peers where they prove a point,
//! QEMU with UEFI firmware and systemd-boot) and says first, in plain words, what is about to
//! happen. Part one is the building blocks on the host: erofs, dm-verity, keys, signed
//! manifests. Part two is the update story on a real node: releases 1.0.0, 2.0.0 and 3.0.0 of
//! the product image (`image/definitions/container-host.toml`, test variant) built — the
//! first run takes minutes (mmdebstrap), later runs come from the image cache — and published
//! with `basalt release publish`; 1.0.0 booted in QEMU; a live update over HTTP to 2.0.0 with
//! its progress bar; the reboot into 2.0.0, blessed after its health gate; 3.0.0, whose health
//! check fails, rolled back automatically; `basaltctl history`.
//!
//! Part two is `basalt_tests::story::http_update`, the very steps the VM scenario
//! `tests/tests/vm_update_http.rs` runs and checks; the demo only narrates them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Parser;

use basalt_image::build::erofs;
use basalt_tests::artifacts::MinimalImage;
use basalt_tests::story::{self, Narrator};

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
    /// The current step's title (named when the step fails).
    title: String,
}

impl Demo {
    fn say(&mut self, title: &str, what: &str) {
        self.step += 1;
        self.title = title.to_owned();
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
        title: String::new(),
    };
    let started = std::time::Instant::now();
    let result = tour(&mut demo).and_then(|()| update_story(&mut demo));
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    if let Err(e) = result {
        // Keep what the failed step left (the VM's serial log, nginx's log, the disk image):
        // it is what a newcomer, or the bug report, needs.
        let kept = scratch.keep();
        println!(
            "\nThe demo stopped at step {} ({}) after {minutes:.1} min. What it left, \
             including the VM's serial log when a VM ran: {}",
            demo.step,
            demo.title,
            kept.display()
        );
        return Err(e.context(format!("demo step {} ({}) failed", demo.step, demo.title)));
    }
    if args.keep {
        let kept = scratch.keep();
        println!("\nScratch directory kept: {}", kept.display());
    }
    println!("\nThe demo took {minutes:.1} min.");
    println!(
        "\nThat is Basalt today: signed, verity-protected releases; a node that updates itself\n\
         from a repository into its other slot, boots the update on trial, keeps it only when\n\
         its health checks pass and otherwise goes back on its own, and says what happened.\n\
         Not shown here, tested elsewhere (tests/README.md): fleet rollouts across node pools
         (tests/tests/vm_fleet.rs), signed system extensions that move with the OS
         (vm_extensions.rs), Secure Boot with signed kernel images (vm_update_file.rs), and
         patch releases that fetch only the blocks a node lacks (updater/tests/pipeline_adaptive.rs)."
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

/// The story's narrator: a numbered step for each [`Narrator::say`], indented output, and
/// progress lines redrawn in place (like basaltctl's bar on the node's console).
struct DemoNarrator {
    step: u32,
    in_progress: bool,
    /// The current step's first words (named when the step fails).
    title: String,
}

impl DemoNarrator {
    fn end_progress(&mut self) {
        if self.in_progress {
            println!();
            self.in_progress = false;
        }
    }
}

impl Narrator for DemoNarrator {
    fn say(&mut self, text: &str) {
        self.end_progress();
        self.step += 1;
        self.title = first_words(text, 8);
        println!(
            "\n=== {}. {}",
            self.step,
            wrap(text, 88, "    ").trim_start()
        );
    }

    fn show(&mut self, output: &str) {
        self.end_progress();
        print!("{}", indent(output));
    }

    fn progress(&mut self, line: &str) {
        use std::io::Write;
        let mut cut: String = line.chars().take(100).collect();
        if cut.len() < line.len() {
            cut.push('…');
        }
        print!("\r      | {cut:<100}");
        let _ = std::io::stdout().flush();
        self.in_progress = true;
    }
}

/// The first `n` words of `text`, with `…` when there are more.
fn first_words(text: &str, n: usize) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut out = words.iter().take(n).copied().collect::<Vec<_>>().join(" ");
    if words.len() > n {
        out.push_str(" …");
    }
    out
}

/// `text` as lines of at most `width` characters, each after `prefix`.
fn wrap(text: &str, width: usize, prefix: &str) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            out.push_str(prefix);
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        out.push_str(prefix);
        out.push_str(&line);
    }
    out
}

/// Part two: the update story on a real node (see the module docs).
fn update_story(d: &mut Demo) -> Result<()> {
    d.say(
        "Part two: the update story",
        "Now a real node. Three releases of the product image, a repository, a VM booted from\n\
         1.0.0, a live update to 2.0.0, and an update to 3.0.0 that fails its health check and\n\
         is rolled back without anyone touching the node. QEMU emulates the machine in software\n\
         here (no KVM): each boot takes 30-90 s and the VM part 6-10 minutes. The releases\n\
         come from the image cache when their inputs were built before (1-4 minutes); the\n\
         very first run also compiles the node's programs and fetches and unpacks Debian\n\
         packages (mmdebstrap): count 30 minutes or more on a 2-core machine.",
    );
    let mut n = DemoNarrator {
        step: d.step,
        in_progress: false,
        title: d.title.clone(),
    };
    let result = story_steps(d, &mut n);
    n.end_progress();
    d.step = n.step;
    d.title = n.title;
    result
}

fn story_steps(d: &Demo, n: &mut DemoNarrator) -> Result<()> {
    let releases = story::build_releases(n)?;
    show_release(&releases.v1, n)?;
    let dir = d.path("node");
    std::fs::create_dir_all(&dir)?;
    let outcome = story::http_update(&releases, &dir, n)?;
    n.say(
        "The node is off. Its ESP, read on this machine: 2.0.0's boot entry has no try counter \
         left in its name (blessed by the agent after the health gate); 3.0.0's still has one \
         and no tries left, so systemd-boot never picks it again.",
    );
    let entries = basalt_tests::scenario::entry_files(&outcome.disk)?;
    n.show(&entries.join("\n"));
    n.show(&format!(
        "VM time: {:.0} s (2.0.0 committed {:.0} s after QEMU started); nginx served {} requests",
        outcome.vm_time.as_secs_f64(),
        outcome.committed_at.as_secs_f64(),
        outcome.requests
    ));
    Ok(())
}

/// What a release is: its files and signed manifest, in a few lines.
fn show_release(release: &MinimalImage, n: &mut DemoNarrator) -> Result<()> {
    n.say(
        "What a release is: a few files plus a signed manifest naming each one by size and \
         sha256; the disk image is what a machine boots on day one. Here is 1.0.0.",
    );
    let facts = &release.report.facts;
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let mut out = String::new();
    out.push_str(&format!(
        "usr.img    {:7.1} MiB = erofs /usr {:.1} MiB + verity tree and signed statement {:.1} MiB\n",
        mib(facts.usr_img_bytes),
        mib(facts.hash_offset),
        mib(facts.usr_img_bytes.saturating_sub(facts.hash_offset))
    ));
    out.push_str(&format!(
        "vmlinuz    {:7.1} MiB  (Debian kernel {})\n",
        mib(facts.vmlinuz_bytes),
        facts.kernel_version
    ));
    out.push_str(&format!(
        "initrd.img {:7.1} MiB  (basalt-init + {} kernel modules + the trust root)\n",
        mib(facts.initrd_bytes),
        facts.initrd_modules.len()
    ));
    out.push_str(&format!(
        "/usr root hash (dm-verity): {}\nkernel options: {}\n",
        facts.root_hash, facts.cmdline
    ));
    out.push_str("Basalt's own files in /usr (built from this checkout, listed in the SBOM):\n");
    for f in &facts.basalt_files {
        out.push_str(&format!("  {:<16} {}\n", f.name, f.location));
    }
    n.show(&out);
    Ok(())
}
