//! Host tests of `basalt image build` for the `minimal` profile, checked by peers: the
//! `basalt` CLI (disk inspect, manifest verify), `veritysetup verify` on slot A's partitions,
//! mtools on the ESP, `sgdisk -v` on the GPT; plus reproducibility, the cache, and refusals of
//! bad inputs. No QEMU here (see boot_minimal.rs).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use basalt_image::build::{build, BuildError};
use basalt_tests::artifacts::{self, minimal_image, minimal_request};
use basalt_tests::tool::{Tool, MDIR, SGDISK, VERITYSETUP};
use serde_json::Value;

/// `mtype` (package `mtools`).
const MTYPE: Tool = Tool::new("mtype", "mtools");

fn run(tool: &Tool, args: &[&std::ffi::OsStr]) -> Result<String> {
    let mut cmd = tool.command()?;
    cmd.args(args).env("MTOOLS_SKIP_CHECK", "1");
    let out = tool.run(&mut cmd)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

fn basalt(args: &[&std::ffi::OsStr]) -> Result<std::process::Output> {
    let cli = artifacts::basalt_cli()?;
    Ok(Command::new(&cli).args(args).output()?)
}

fn inspect(disk: &Path) -> Result<Value> {
    let out = basalt(&[os("disk"), os("inspect"), os("--json"), disk.as_os_str()])?;
    ensure!(
        out.status.success(),
        "basalt disk inspect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn partition<'a>(inv: &'a Value, role: &str) -> Result<&'a Value> {
    inv["partitions"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["role"] == role))
        .with_context(|| format!("no {role} partition in {inv}"))
}

/// Copies `len` bytes at `offset` of `from` into a new file `to`.
fn extract(from: &Path, offset: u64, len: u64, to: &Path) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(from)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut out = std::fs::File::create(to)?;
    std::io::copy(&mut f.take(len), &mut out)?;
    Ok(())
}

fn check_image(version: &str) -> Result<()> {
    let image = minimal_image(version)?;
    let facts = &image.report.facts;
    println!(
        "minimal {version}: root hash {}, usr.img {} B, initrd {} B, {} (from cache: {}, {:.2} s), steps {:?}",
        facts.root_hash,
        facts.usr_img_bytes,
        facts.initrd_bytes,
        image.report.cache_dir.display(),
        image.report.from_cache,
        image.report.elapsed.as_secs_f64(),
        facts.durations_ms
    );
    let disk = image.file("disk.img");

    // The CLI's inventory: slot A holds the version with the build's root hash, B is empty.
    let inv = inspect(&disk)?;
    let slots = inv["slots"].as_array().context("slots")?;
    ensure!(slots[0]["slot"] == "a" || slots[0]["slot"] == "A", "{inv}");
    ensure!(slots[0]["version"] == version, "slot A: {}", slots[0]);
    ensure!(
        slots[0]["root_hash"] == facts.root_hash.as_str(),
        "slot A: {}",
        slots[0]
    );
    ensure!(slots[1]["state"] == "empty", "slot B: {}", slots[1]);
    ensure!(partition(&inv, "usr-b")?["label"] == "_empty", "{inv}");

    // veritysetup (the peer) verifies slot A's partitions against the root hash.
    let tmp = tempfile::tempdir()?;
    let (data, hash) = (tmp.path().join("data"), tmp.path().join("hash"));
    for (role, file) in [("usr-a", &data), ("usr-a-verity", &hash)] {
        let p = partition(&inv, role)?;
        let (offset, size) = (
            p["offset"].as_u64().context("offset")?,
            p["size"].as_u64().context("size")?,
        );
        extract(&disk, offset, size, file)?;
    }
    run(
        &VERITYSETUP,
        &[
            os("verify"),
            data.as_os_str(),
            hash.as_os_str(),
            os(&facts.root_hash),
        ],
    )?;
    // …and the artifact itself, with the tree at hash_offset.
    let usr = image.file("usr.img");
    run(
        &VERITYSETUP,
        &[
            os("verify"),
            os(&format!("--hash-offset={}", facts.hash_offset)),
            usr.as_os_str(),
            usr.as_os_str(),
            os(&facts.root_hash),
        ],
    )?;

    // The signed release verifies with the trust root.
    let out = basalt(&[
        os("manifest"),
        os("verify"),
        image.file("release.signed").as_os_str(),
        os("--trust"),
        image.keys.trust.as_os_str(),
    ])?;
    ensure!(
        out.status.success(),
        "manifest verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stdout).into_owned())?;
    ensure!(manifest["version"] == version, "{manifest}");
    let usr_artifact = manifest["artifacts"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["kind"] == "usr"))
        .context("usr artifact")?;
    ensure!(
        usr_artifact["verity"]["root_hash"] == facts.root_hash.as_str()
            && usr_artifact["verity"]["hash_offset"] == facts.hash_offset
            && usr_artifact["size"] == facts.usr_img_bytes,
        "{usr_artifact}"
    );

    // The ESP, read by mtools: systemd-boot, the blessed slot-A entry, kernel and initrd.
    let esp_offset = partition(&inv, "esp")?["offset"].as_u64().context("esp")?;
    let esp = format!("{}@@{esp_offset}", disk.display());
    let boot = run(&MDIR, &[os("-b"), os("-i"), os(&esp), os("::/EFI/BOOT")])?;
    ensure!(boot.to_uppercase().contains("BOOTX64.EFI"), "{boot}");
    let entries = run(
        &MDIR,
        &[os("-b"), os("-i"), os(&esp), os("::/loader/entries")],
    )?;
    let entry_name = format!("basalt-{version}.conf");
    ensure!(entries.contains(&entry_name), "{entries}");
    let kernels = run(
        &MDIR,
        &[
            os("-b"),
            os("-i"),
            os(&esp),
            os(&format!("::/basalt/{version}")),
        ],
    )?;
    ensure!(
        kernels.contains("vmlinuz") && kernels.contains("initrd"),
        "{kernels}"
    );
    let entry = run(
        &MTYPE,
        &[
            os("-i"),
            os(&esp),
            os(&format!("::/loader/entries/{entry_name}")),
        ],
    )?;
    for needle in [
        format!("usrhash={}", facts.root_hash),
        "basalt.slot=a".into(),
        "console=ttyS0 panic=-1".into(),
        "init=/usr/lib/basalt/init-minimal".into(),
    ] {
        ensure!(entry.contains(&needle), "{needle} not in entry:\n{entry}");
    }
    let loader = run(&MTYPE, &[os("-i"), os(&esp), os("::/loader/loader.conf")])?;
    ensure!(loader.contains("timeout 0"), "{loader}");

    // sgdisk (the peer) finds the table consistent.
    let verify = run(&SGDISK, &[os("-v"), disk.as_os_str()])?;
    ensure!(verify.contains("No problems found"), "{verify}");
    Ok(())
}

#[test]
fn minimal_1_0_0_is_consistent_for_every_peer() -> Result<()> {
    check_image("1.0.0")
}

#[test]
fn minimal_2_0_0_is_consistent_for_every_peer() -> Result<()> {
    check_image("2.0.0")
}

/// A second build with the same inputs comes from the cache; a build in an empty cache gives
/// byte-identical usr.img and initrd.img (reproducible).
#[test]
fn builds_are_cached_and_reproducible() -> Result<()> {
    let first = minimal_image("1.0.0")?;
    let tmp = tempfile::tempdir()?;
    let version = semver::Version::new(1, 0, 0);

    let mut again = minimal_request(&version, &tmp.path().join("again"))?;
    again.cache = first
        .report
        .cache_dir
        .parent()
        .context("cache dir")?
        .to_path_buf();
    let started = Instant::now();
    let report = build(&again)?;
    println!(
        "cached build: {:.3} s (from cache: {})",
        started.elapsed().as_secs_f64(),
        report.from_cache
    );
    ensure!(report.from_cache, "{report:?}");
    ensure!(report.facts == first.report.facts);

    // The same through the CLI (thin glue over the same library call).
    let cli_out = tmp.path().join("cli");
    let out = basalt(&[
        os("image"),
        os("build"),
        os("--config"),
        again.config.as_os_str(),
        os("--key"),
        again.keys[0].as_os_str(),
        os("--trust"),
        again.trust.as_os_str(),
        os("--init"),
        again.init.as_os_str(),
        os("--cache"),
        again.cache.as_os_str(),
        os("--out"),
        cli_out.as_os_str(),
    ])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.contains("(from cache)"),
        "basalt image build: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(std::fs::read(cli_out.join("usr.img"))? == std::fs::read(first.file("usr.img"))?);

    let mut fresh = minimal_request(&version, &tmp.path().join("fresh"))?;
    fresh.cache = tmp.path().join("cache");
    let started = Instant::now();
    let report = build(&fresh)?;
    println!(
        "uncached build: {:.1} s, steps {:?}",
        started.elapsed().as_secs_f64(),
        report.facts.durations_ms
    );
    ensure!(!report.from_cache);
    for name in ["usr.img", "initrd.img", "vmlinuz"] {
        let (a, b) = (first.file(name), tmp.path().join("fresh").join(name));
        ensure!(
            std::fs::read(&a)? == std::fs::read(&b)?,
            "{name} differs between two builds: {} vs {}",
            a.display(),
            b.display()
        );
    }
    ensure!(report.facts.root_hash == first.report.facts.root_hash);
    Ok(())
}

fn bad_request(tmp: &Path) -> Result<basalt_image::build::BuildRequest> {
    Ok(minimal_request(
        &semver::Version::new(1, 0, 0),
        &tmp.join("out"),
    )?)
}

fn expect_err(req: &basalt_image::build::BuildRequest) -> Result<BuildError> {
    match build(req) {
        Ok(r) => bail!("build unexpectedly succeeded: {r:?}"),
        Err(e) => Ok(e),
    }
}

fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut src = err.source();
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    text
}

#[test]
fn a_bad_definition_field_is_named() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut req = bad_request(tmp.path())?;
    let def = tmp.path().join("IMAGE.toml");
    let text = std::fs::read_to_string(&req.config)?.replace("tries = 3", "tries = 99");
    std::fs::write(&def, text)?;
    req.config = def.clone();
    let err = expect_err(&req)?;
    let text = chain(&err);
    ensure!(
        matches!(err, BuildError::Config(_)) && text.contains("boot.tries"),
        "{text}"
    );
    ensure!(text.contains(&def.display().to_string()), "{text}");
    Ok(())
}

#[test]
fn a_missing_key_file_is_named() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut req = bad_request(tmp.path())?;
    let missing = tmp.path().join("nobody.key");
    req.keys = vec![missing.clone()];
    let err = expect_err(&req)?;
    let text = chain(&err);
    ensure!(matches!(err, BuildError::Key { .. }), "{text}");
    ensure!(text.contains(&missing.display().to_string()), "{text}");
    Ok(())
}

#[test]
fn a_missing_or_dynamic_init_is_named() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut req = bad_request(tmp.path())?;
    let missing: PathBuf = tmp.path().join("no-such-basalt-init");
    req.init = missing.clone();
    let err = expect_err(&req)?;
    let text = chain(&err);
    ensure!(matches!(err, BuildError::InitMissing { .. }), "{text}");
    ensure!(text.contains(&missing.display().to_string()), "{text}");

    // A dynamically linked program cannot be PID 1 of the initramfs.
    req.init = PathBuf::from("/usr/bin/env");
    let err = expect_err(&req)?;
    ensure!(
        matches!(err, BuildError::InitNotStatic { .. }),
        "{}",
        chain(&err)
    );
    Ok(())
}

/// `install_release` puts the 2.0.0 release into slot B of a 1.0.0 disk, staged with three
/// tries: the inventory and the ESP (read by mtools) show it, slot A is untouched.
#[test]
fn a_second_release_installs_into_slot_b() -> Result<()> {
    let (one, two) = (minimal_image("1.0.0")?, minimal_image("2.0.0")?);
    let tmp = tempfile::tempdir()?;
    let disk = tmp.path().join("disk.img");
    one.copy_disk(&disk)?;
    basalt_image::build::install_release(&disk, basalt_disk::Slot::B, &two.dir, 3)?;
    let inv = inspect(&disk)?;
    let slots = inv["slots"].as_array().context("slots")?;
    ensure!(
        slots[0]["version"] == "1.0.0"
            && slots[0]["root_hash"] == one.report.facts.root_hash.as_str(),
        "{inv}"
    );
    ensure!(
        slots[1]["version"] == "2.0.0"
            && slots[1]["root_hash"] == two.report.facts.root_hash.as_str(),
        "{inv}"
    );
    let esp_offset = partition(&inv, "esp")?["offset"].as_u64().context("esp")?;
    let esp = format!("{}@@{esp_offset}", disk.display());
    let entries = run(
        &MDIR,
        &[os("-b"), os("-i"), os(&esp), os("::/loader/entries")],
    )?;
    ensure!(
        entries.contains("basalt-1.0.0.conf") && entries.contains("basalt-2.0.0+3.conf"),
        "{entries}"
    );
    // `basalt disk inspect` reads the same ESP: the staged v2 entry (counting) sorts first,
    // so it is what systemd-boot boots next; v1's blessed entry is the fallback.
    let esp_entries = inv["esp"]["entries"].as_array().context("esp entries")?;
    let files: Vec<&str> = esp_entries
        .iter()
        .filter_map(|e| e["file"].as_str())
        .collect();
    ensure!(
        files == ["basalt-2.0.0+3.conf", "basalt-1.0.0.conf"],
        "{inv}"
    );
    ensure!(
        esp_entries[0]["status"] == "trying"
            && esp_entries[0]["slot"] == "B"
            && esp_entries[0]["tries_left"] == 3
            && esp_entries[1]["status"] == "good"
            && esp_entries[1]["slot"] == "A",
        "{inv}"
    );
    ensure!(inv["next_boot"]["bls"] == "basalt-2.0.0+3.conf", "{inv}");
    let verify = run(&SGDISK, &[os("-v"), disk.as_os_str()])?;
    ensure!(verify.contains("No problems found"), "{verify}");
    Ok(())
}
