//! System extensions moved with the OS (issue 10), on the container-host test image under
//! OVMF + systemd-boot, air-gapped (`-nic none`, `file://` repository disks):
//!
//! 1. v1 (1.0.0) boots from its release's `disk.img`, which carries its set — `tools` 1.0,
//!    the image its release lists — on the root partition (`/.basalt-extensions/1.0.0/`):
//!    at the first boot `basalt-extensions.service` adopts it into the store and activates
//!    it: `tools-version` runs from `/usr/bin` and says 1.0.0, nothing done by hand.
//! 2. A release 2.0.0 whose `tools.raw` has one altered byte (published by a publisher that
//!    skipped the extension checks: `basalt release publish` refuses it) is refused at
//!    staging: `basaltctl update` fails with `IntegrityMismatch` naming the extension, nothing
//!    is staged, the next boot is still slot A.
//! 3. The good 2.0.0 with `tools` 2.0 (second repository disk, higher sequence):
//!    `basaltctl update --reboot` → slot B boots, its set is activated: `tools-version` says
//!    2.0.0.
//! 4. `basaltctl rollback` + reboot → 1.0.0 boots from slot A and its set comes back:
//!    `tools-version` says 1.0.0.
//! 5. Node-image-only with a pin: `basaltctl extensions pin tools 1.0.0` (over D-Bus),
//!    `update.node_image_only = true`, and 2.0.0 published again (third repository disk, a
//!    higher sequence: the operator takes the rolled-back release explicitly). The update
//!    keeps the node's pinned tools 1.0 (2.0.0 keeps `SYSEXT_LEVEL=1`) instead of the
//!    release's tools 2.0: after the reboot 2.0.0 runs `tools 1.0.0`.
//!
//! Four boots (each its own QEMU run: see `Node`). The releases come from one Debian staging
//! (the story's), the extension from a small tree (a script naming its version): the
//! Debian-package example `tools` is built and checked by `image/tests/sysext_cli.rs`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use basalt_image::build::{build_with_progress, Variant};
use basalt_image::release::{
    default_compress_options, publish_without_extension_checks, PublishRequest,
};
use basalt_manifest::chrono::Utc;
use basalt_manifest::SigningKey;
use basalt_tests::artifacts::{container_host_definition, container_host_request, MinimalImage};
use basalt_tests::story::{
    booted_version, with_absolute_paths, Node, Repository, Stderr, GUEST_REPO_MOUNT,
};
use basalt_tests::vm::{data_disk_device, scenario_dir};

const SETTLE: Duration = Duration::from_secs(180);

/// The derived definition (the product's, relative paths made absolute, plus one
/// `[[extensions]]` entry) and the extension definition it names, under `dir`.
fn definitions(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let product = container_host_definition();
    let mut text = with_absolute_paths(&product, &["source", "list", "definition"])?;
    let tools = dir.join("tools.toml");
    text.push_str(&format!(
        "\n# Added by tests/tests/vm_extensions.rs.\n[[extensions]]\ndefinition = {:?}\n",
        tools.display().to_string()
    ));
    let definition = dir.join("container-host-tools.toml");
    std::fs::write(&definition, text)?;
    Ok((definition, tools))
}

/// Writes `tools` `version` (a tree with `/usr/bin/tools-version`) and builds release
/// `os_version` of `definition` with it.
fn release(
    definition: &Path,
    tools: &Path,
    os_version: &str,
    version: &str,
) -> Result<MinimalImage> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tools.parent().context("tools.toml has a folder")?;
    let tree = dir.join(format!("tools-{version}"));
    std::fs::create_dir_all(tree.join("usr/bin"))?;
    let script = tree.join("usr/bin/tools-version");
    std::fs::write(&script, format!("#!/bin/sh\necho \"tools {version}\"\n"))?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    std::fs::write(
        tools,
        format!(
            "name = \"tools\"\nversion = \"{version}\"\ntree = {:?}\narchitecture = \"x86-64\"\n",
            tree.display().to_string()
        ),
    )?;
    let parsed = semver::Version::parse(os_version)?;
    let out = basalt_tests::workspace_root()
        .join("build")
        .join("test-images")
        .join(format!("container-host-tools-{os_version}"))
        .join("out");
    let mut req = container_host_request(Variant::Test, &parsed, &out)?;
    req.config = definition.to_path_buf();
    let report = build_with_progress(&req, &mut |line| eprintln!("  {line}"))?;
    Ok(MinimalImage {
        dir: out,
        definition: req.config,
        report,
        keys: basalt_tests::artifacts::test_keys()?,
    })
}

/// A copy of `good` (hard links) whose `tools.raw` has one byte changed in its erofs part,
/// with `release.json` listing the altered file's own SHA-256: the build host is the attacker.
fn tampered(good: &MinimalImage, dir: &Path) -> Result<PathBuf> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(good.dir.join("release.json"))?)?;
    let mut manifest = manifest;
    for a in manifest["artifacts"].as_array_mut().context("artifacts")? {
        let name = a["name"].as_str().context("name")?.to_owned();
        if name == "tools.raw" {
            let mut bytes = std::fs::read(good.dir.join(&name))?;
            bytes[4096 + 100] ^= 0x01;
            let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
            a["sha256"] = serde_json::Value::String(hex::encode(digest.as_ref()));
            std::fs::write(dir.join(&name), bytes)?;
        } else {
            std::fs::hard_link(good.dir.join(&name), dir.join(&name))?;
        }
    }
    std::fs::write(dir.join("release.json"), serde_json::to_vec(&manifest)?)?;
    Ok(dir.to_path_buf())
}

fn tools_version(node: &mut Node) -> Result<String> {
    let out = node.run("systemctl is-active basalt-extensions; tools-version")?;
    Ok(out.trim().to_owned())
}

#[test]
fn extensions_move_with_the_os_through_update_rollback_and_a_tampered_release() -> Result<()> {
    let started = Instant::now();
    let n = &mut Stderr;
    let dir = scenario_dir("vm-extensions")?;
    let (definition, tools) = definitions(&dir.join("definitions"))?;
    let v1 = release(&definition, &tools, "1.0.0", "1.0.0")?;
    let v2 = release(&definition, &tools, "2.0.0", "2.0.0")?;
    let built = started.elapsed();

    // Repository disk 1: the tampered 2.0.0; disk 2: the same repository after the good 2.0.0 (a higher sequence).
    let repo = Repository::create(&dir.join("repo"), n)?;
    let bad = tampered(&v2, &dir.join("v2-tampered"))?;
    let key = SigningKey::from_pem(&std::fs::read_to_string(&v2.keys.key)?)?;
    publish_without_extension_checks(&PublishRequest {
        release_dir: &bad,
        repo: &repo.dir,
        channel: "stable",
        keys: &[key],
        sequence: None,
        allow_downgrade: false,
        now: Utc::now(),
        valid_for: None,
        compress: basalt_image::release::CompressOptions {
            level: 3,
            ..default_compress_options()
        },
    })?;
    let disk_bad = dir.join("repo-tampered.erofs");
    repo.to_disk(&disk_bad)?;
    repo.publish(&v2, n)?;
    let disk_good = dir.join("repo-good.erofs");
    repo.to_disk(&disk_good)?;
    // Disk 3: 2.0.0 again under a higher sequence, for the node-image-only step.
    repo.publish(&v2, n)?;
    let disk_again = dir.join("repo-again.erofs");
    repo.to_disk(&disk_again)?;

    let disk = dir.join("disk.img");
    v1.copy_disk(&disk)?;
    let config = Node::config(&dir, &disk)
        .data_disk(&disk_bad)
        .data_disk(&disk_good)
        .data_disk(&disk_again);
    let mut node = Node::boot(&config, &disk, n)?;

    // 1. v1 with tools 1.0 active from its first boot: the install-time set adopted.
    let t = tools_version(&mut node)?;
    ensure!(t.ends_with("tools 1.0.0"), "v1 should run tools 1.0.0: {t}");
    let adopted = node.run(
        "journalctl -b -u basalt-extensions --no-pager -o cat | grep adopted; \
         ls /var/lib/basalt/extensions/1.0.0; ls -d /.basalt-extensions 2>&1; true",
    )?;
    ensure!(
        adopted.contains("adopted the install-time extension set of 1.0.0")
            && adopted.contains("tools.raw")
            && adopted.contains("No such file"),
        "the install-time set must be adopted into the store, the seed gone: {adopted}"
    );
    node.mount_repository_disk(&data_disk_device(1))?;

    // 2. The tampered 2.0.0 is refused at staging; nothing is staged.
    node.set_repository(&format!("file://{GUEST_REPO_MOUNT}"), n)?;
    let out = node
        .vm()
        .shell("basaltctl update", Duration::from_secs(900))?;
    ensure!(
        out.status != 0,
        "the tampered release was accepted: {}",
        out.output
    );
    let status = node.status()?;
    ensure!(
        status["last_error"]["name"] == "org.basalt.Updater1.Error.Integrity"
            && status["last_error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("extension tools of release 2.0.0")),
        "{status:#}"
    );
    ensure!(
        status["staged_version"] == "" && status["next_boot_slot"] == "A",
        "nothing may be staged: {status:#}"
    );
    let listed = node.run("ls /var/lib/basalt/extensions")?;
    ensure!(!listed.contains("2.0.0"), "no set for 2.0.0: {listed}");

    // 3. The good 2.0.0 moves OS and tools together.
    node.mount_repository_disk(&data_disk_device(2))?;
    node.update_and_reboot(n)?;
    node.wait_up(n)?;
    node.wait_status("2.0.0 blessed", SETTLE, |s| {
        booted_version(s) == Some(("B".into(), "2.0.0".into(), "good".into()))
    })?;
    let t = tools_version(&mut node)?;
    ensure!(t.ends_with("tools 2.0.0"), "v2 should run tools 2.0.0: {t}");

    // 4. A forced rollback brings 1.0.0 and its tools back.
    node.run("basaltctl rollback")?;
    node.reboot()?;
    node.wait_up(n)?;
    let status = node.status()?;
    ensure!(status["current_version"] == "1.0.0", "{status:#}");
    let t = tools_version(&mut node)?;
    ensure!(t.ends_with("tools 1.0.0"), "after the rollback: {t}");

    // 5. Node-image-only keeps the pinned tools 1.0 on a compatible 2.0.0.
    let out = node.run(
        "basaltctl extensions pin tools 1.0.0 && \
         printf '[update]\\nnode_image_only = true\\n' > /etc/basalt/updater.d/60-node-image-only.toml && \
         systemctl restart basalt-updated && basaltctl extensions list",
    )?;
    ensure!(out.contains("pinned: tools 1.0.0"), "the pin: {out}");
    node.mount_repository_disk(&data_disk_device(3))?;
    node.update_and_reboot(n)?;
    node.wait_up(n)?;
    node.wait_status("2.0.0 (node-image-only) blessed", SETTLE, |s| {
        booted_version(s) == Some(("B".into(), "2.0.0".into(), "good".into()))
    })?;
    let t = tools_version(&mut node)?;
    ensure!(
        t.ends_with("tools 1.0.0"),
        "node-image-only must keep the pinned tools 1.0.0 on 2.0.0: {t}"
    );
    let elapsed = node.poweroff()?;
    println!(
        "vm_extensions: releases ready in {:.0} s; VM {:.0} s; total {:.0} s",
        built.as_secs_f64(),
        elapsed.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
