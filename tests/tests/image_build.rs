//! Host tests of `basalt image build`, checked by peers. The `minimal` profile: the `basalt`
//! CLI (disk inspect, manifest verify), `veritysetup verify` on slot A's partitions, mtools on
//! the ESP, `sgdisk -v` on the GPT; reproducibility (byte-identical `usr.img`, `initrd.img`,
//! `disk.img` from an empty cache), a cache hit signed again, a definition's files, binaries
//! and trust root, refusals of bad inputs. The `container-host` profile (one Debian staging
//! shared by every build here): the SBOM against what `dpkg-query` reports inside the built
//! `/usr` (extracted with `fsck.erofs`), validated by the SPDX project's own validator; no test
//! hook in the product, the hooks in the test variant; only the definition's kernel modules;
//! `basalt release inspect`; a package list or module that does not match is refused. No QEMU
//! here (see boot_minimal.rs, boot_container_host.rs).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use basalt_image::build::sbom::{summarize, SpdxDocument, SBOM_FILE};
use basalt_image::build::{build, BuildError, Variant};
use basalt_manifest::chrono::{Duration as Days, TimeZone, Utc};
use basalt_tests::artifacts::{self, container_host, minimal_image, minimal_request};
use basalt_tests::tool::{Tool, MDIR, SGDISK, VERITYSETUP};
use serde_json::Value;

/// `fsck.erofs` (package `erofs-utils`): extracts a built `/usr` to look inside it.
const FSCK_EROFS: Tool = Tool::new("fsck.erofs", "erofs-utils");
/// `dpkg-query` (package `dpkg`).
const DPKG_QUERY: Tool = Tool::new("dpkg-query", "dpkg");

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
        out.status.success() && stdout.contains("(from cache, signed now)"),
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
    // Every unsigned artifact, the disk image included (derived GPT and ext4 identities).
    for name in ["usr.img", "initrd.img", "vmlinuz", "disk.img"] {
        let (a, b) = (first.file(name), tmp.path().join("fresh").join(name));
        ensure!(
            sha256(&a)? == sha256(&b)?,
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

fn sha256(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| path.display().to_string())?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(hex_string(ctx.finish().as_ref()));
        }
        ctx.update(&buf[..n]);
    }
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The signed manifest of a release directory, verified with its trust root at `at`.
fn verified_manifest(image: &artifacts::MinimalImage, at: &str) -> Result<Value> {
    let out = basalt(&[
        os("manifest"),
        os("verify"),
        image.file("release.signed").as_os_str(),
        os("--trust"),
        image.keys.trust.as_os_str(),
        os("--now"),
        os(at),
    ])?;
    ensure!(
        out.status.success(),
        "manifest verify at {at}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// A cache hit hands back the cached artifacts and a manifest signed for this request: issued
/// now, expiring `valid_days` after now (not after the first build), the SBOM made now.
#[test]
fn a_cache_hit_is_signed_again() -> Result<()> {
    let first = minimal_image("1.0.0")?;
    let tmp = tempfile::tempdir()?;
    let mut req = minimal_request(&semver::Version::new(1, 0, 0), &tmp.path().join("late"))?;
    req.cache = first
        .report
        .cache_dir
        .parent()
        .context("cache")?
        .to_path_buf();
    // Two years after the first build: its manifest would have expired long ago.
    let later = Utc
        .timestamp_opt((Utc::now() + Days::days(730)).timestamp(), 0)
        .single()
        .context("time")?;
    req.issued_at = later;
    let report = build(&req)?;
    ensure!(report.from_cache, "expected a cache hit: {report:?}");
    let late = artifacts::MinimalImage {
        dir: tmp.path().join("late"),
        definition: req.config.clone(),
        report,
        keys: first.keys.clone(),
    };
    let stamp = |t: basalt_manifest::chrono::DateTime<Utc>| {
        t.to_rfc3339_opts(basalt_manifest::chrono::SecondsFormat::Secs, true)
    };
    // Valid right up to its own expiry, 365 days after the request.
    let m = verified_manifest(&late, &stamp(later + Days::days(364)))?;
    ensure!(m["issued_at"] == stamp(later), "{m}");
    ensure!(m["expires_at"] == stamp(later + Days::days(365)), "{m}");
    // The same bytes of /usr, a different signed manifest.
    ensure!(sha256(&late.file("usr.img"))? == sha256(&first.file("usr.img"))?);
    ensure!(
        std::fs::read(late.file("release.signed"))? != std::fs::read(first.file("release.signed"))?
    );
    let sbom: SpdxDocument = serde_json::from_slice(&std::fs::read(late.file(SBOM_FILE))?)?;
    ensure!(
        sbom.creation_info.created == stamp(later),
        "{:?}",
        sbom.creation_info
    );
    // The SBOM is covered by the signatures: it is an artifact of the verified manifest.
    let listed = m["artifacts"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["kind"] == "sbom"))
        .context("no sbom artifact")?;
    ensure!(
        listed["sha256"] == sha256(&late.file(SBOM_FILE))?,
        "{listed}"
    );
    Ok(())
}

/// Extract the erofs `/usr` of a release directory into `to` (fsck.erofs, the peer).
fn extract_usr(image: &artifacts::MinimalImage, to: &Path) -> Result<()> {
    let erofs = to.with_extension("erofs");
    extract(
        &image.file("usr.img"),
        0,
        image.report.facts.hash_offset,
        &erofs,
    )?;
    run(
        &FSCK_EROFS,
        &[
            os(&format!("--extract={}", to.display())),
            erofs.as_os_str(),
        ],
    )?;
    std::fs::remove_file(&erofs)?;
    Ok(())
}

/// A definition's `[[files]]`, `[[binaries]]` (built by cargo, static for the minimal
/// profile's busybox `/usr`) and `[trust] install` land in `/usr`, and the SBOM lists the
/// binary with the git revision it was built from.
#[test]
fn definition_files_binaries_and_trust_root_are_installed() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let version = semver::Version::new(3, 1, 0);
    let mut req = minimal_request(&version, &tmp.path().join("out"))?;
    std::fs::write(tmp.path().join("motd"), "hello from the definition\n")?;
    let def = tmp.path().join("IMAGE.toml");
    let text = std::fs::read_to_string(&req.config)?
        + "\n[[files]]\nsource = \"motd\"\ndest = \"/usr/share/basalt/motd\"\nmode = 0o640\n\
           [[binaries]]\npackage = \"basalt-initramfs\"\nbin = \"basalt-init\"\n\
           dest = \"/usr/lib/basalt/basalt-init-copy\"\nstatic = true\n\
           [trust]\ninstall = \"/usr/share/basalt/trust-root.json\"\n";
    std::fs::write(&def, text)?;
    req.config = def;
    let report = build(&req)?;
    let image = artifacts::MinimalImage {
        dir: tmp.path().join("out"),
        definition: req.config.clone(),
        report,
        keys: artifacts::test_keys()?,
    };
    let usr = tmp.path().join("usr");
    extract_usr(&image, &usr)?;
    use std::os::unix::fs::PermissionsExt;
    let motd = usr.join("share/basalt/motd");
    ensure!(std::fs::read_to_string(&motd)? == "hello from the definition\n");
    ensure!(std::fs::metadata(&motd)?.permissions().mode() & 0o7777 == 0o640);
    let copy = usr.join("lib/basalt/basalt-init-copy");
    ensure!(std::fs::read(&copy)? == std::fs::read(&req.init)?);
    ensure!(std::fs::metadata(&copy)?.permissions().mode() & 0o111 != 0);
    ensure!(
        std::fs::read(usr.join("share/basalt/trust-root.json"))?
            == std::fs::read(&image.keys.trust)?
    );
    let sbom: SpdxDocument = serde_json::from_slice(&std::fs::read(image.file(SBOM_FILE))?)?;
    let summary = summarize(&sbom);
    let names: Vec<&str> = summary.basalt.iter().map(|b| b.0.as_str()).collect();
    ensure!(names == ["basalt-init", "basalt-init"], "{summary:?}");
    let revision = basalt_image::build::workspace::git_revision(&basalt_tests::workspace_root())
        .context("this checkout has no git revision")?;
    ensure!(
        summary.basalt.iter().all(|b| b.1 == revision),
        "{:?} vs {revision}",
        summary.basalt
    );
    ensure!(
        summary.basalt[1].2 == "/usr/lib/basalt/basalt-init-copy",
        "{:?}",
        summary.basalt
    );
    // busybox comes from the build host: listed with its Debian package.
    ensure!(
        summary
            .other_debian
            .iter()
            .any(|(n, _)| n == "busybox-static"),
        "{:?}",
        summary.other_debian
    );
    Ok(())
}

/// (name, version, arch) of every package dpkg reports in the dpkg database `admin`.
fn dpkg_packages(admin: &Path) -> Result<Vec<(String, String, String)>> {
    let out = run(
        &DPKG_QUERY,
        &[
            os(&format!("--admindir={}", admin.display())),
            os("-W"),
            os("-f=${db:Status-Status} ${Package} ${Version} ${Architecture}\n"),
        ],
    )?;
    let mut list: Vec<(String, String, String)> = out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4 && f[0] == "installed")
                .then(|| (f[1].to_owned(), f[2].to_owned(), f[3].to_owned()))
        })
        .collect();
    list.sort();
    Ok(list)
}

/// The product container-host image: its SBOM lists exactly the packages dpkg reports inside
/// the built `/usr` (the image's own dpkg database, extracted from usr.img), each with a
/// `.deb` SHA-256, a download URI and its source package; the SPDX validator accepts it; no
/// test hook is in `/usr`; only the definition's kernel modules are; `basalt release inspect`
/// shows it and refuses a changed SBOM.
#[test]
fn container_host_product_sbom_matches_the_image_and_has_no_test_hooks() -> Result<()> {
    let image = container_host(Variant::Product, "1.0.0")?;
    let facts = &image.report.facts;
    println!(
        "container-host product: usr.img {} B, /usr files {} B, {} packages, {} modules, \
         trimmed {} B, steps {:?}",
        facts.usr_img_bytes,
        facts.usr_tree_bytes,
        facts.packages.len(),
        facts.usr_modules.len(),
        facts.trimmed_bytes,
        facts.durations_ms
    );
    let tmp = tempfile::tempdir()?;
    let usr = tmp.path().join("usr");
    extract_usr(&image, &usr)?;

    // 1. The SBOM against dpkg in the image.
    // The database lives with the /usr it describes; the factory /var links to it.
    let link = std::fs::read_link(usr.join("share/factory/var/lib/dpkg"))?;
    ensure!(
        link == Path::new("/usr/lib/sysimage/dpkg"),
        "/var/lib/dpkg links to {}",
        link.display()
    );
    let in_image = dpkg_packages(&usr.join("lib/sysimage/dpkg"))?;
    ensure!(
        in_image.len() > 50,
        "dpkg lists {} packages",
        in_image.len()
    );
    let sbom_path = image.file(SBOM_FILE);
    let raw: Value = serde_json::from_slice(&std::fs::read(&sbom_path)?)?;
    ensure!(raw["spdxVersion"] == "SPDX-2.3", "{}", raw["spdxVersion"]);
    let doc: SpdxDocument = serde_json::from_value(raw.clone())?;
    let mut listed: Vec<(String, String, String)> = summarize(&doc)
        .debian
        .into_iter()
        .map(|(n, v, a, _)| (n, v, a))
        .collect();
    listed.sort();
    ensure!(
        listed == in_image,
        "SBOM and dpkg differ:\n only in the SBOM: {:?}\n only in the image: {:?}",
        listed
            .iter()
            .filter(|p| !in_image.contains(p))
            .collect::<Vec<_>>(),
        in_image
            .iter()
            .filter(|p| !listed.contains(p))
            .collect::<Vec<_>>()
    );
    for p in raw["packages"].as_array().context("packages")? {
        let id = p["SPDXID"].as_str().unwrap_or_default();
        if !id.starts_with("SPDXRef-deb-") {
            continue;
        }
        let sum = p["checksums"][0]["checksumValue"]
            .as_str()
            .unwrap_or_default();
        ensure!(
            p["checksums"][0]["algorithm"] == "SHA256"
                && sum.len() == 64
                && sum.bytes().all(|b| b.is_ascii_hexdigit()),
            "{p}"
        );
        ensure!(
            p["sourceInfo"]
                .as_str()
                .is_some_and(|s| s.contains("source package")),
            "{p}"
        );
        let purl = p["externalRefs"][0]["referenceLocator"]
            .as_str()
            .unwrap_or_default();
        ensure!(purl.starts_with("pkg:deb/debian/"), "{p}");
        let has_source = raw["relationships"].as_array().is_some_and(|rs| {
            rs.iter()
                .any(|r| r["spdxElementId"] == id && r["relationshipType"] == "GENERATED_FROM")
        });
        ensure!(has_source, "no source package for {id}");
    }
    let verdict = artifacts::spdx_validate(&sbom_path)?;
    println!("pyspdxtools: {}", verdict.trim());

    // 2. No test hook in the product /usr (searched in the image, not in the builder's list).
    let mut offenders = Vec::new();
    for dir in ["lib/systemd", "share/factory/etc/systemd", "lib/basalt"] {
        let root = usr.join(dir);
        if !root.exists() {
            continue;
        }
        for path in walk(&root)? {
            let text = std::fs::read(&path).unwrap_or_default();
            let text = String::from_utf8_lossy(&text);
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            if text.contains("basalt.test")
                || text.contains("--autologin")
                || name.as_deref().is_some_and(|n| n.contains("boot-report"))
            {
                offenders.push(path.display().to_string());
            }
        }
    }
    ensure!(
        offenders.is_empty(),
        "test hooks in the product /usr: {offenders:?}"
    );
    let os_release = std::fs::read_to_string(usr.join("lib/os-release"))?;
    ensure!(!os_release.contains("VARIANT_ID"), "{os_release}");

    // 3. Only the definition's kernel modules, with depmod's index.
    let kver = &facts.kernel_version;
    let modules = usr.join("lib/modules").join(kver);
    let ko: Vec<String> = walk(&modules)?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "ko"))
        .map(|p| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    ensure!(
        ko.iter().any(|m| m == "overlay.ko") && ko.iter().any(|m| m == "nvme.ko"),
        "{ko:?}"
    );
    ensure!(
        !ko.iter().any(|m| m.starts_with("snd-")),
        "sound modules shipped"
    );
    ensure!(
        ko.len() == facts.usr_modules.len() && ko.len() < 400,
        "{} modules",
        ko.len()
    );
    let dep = std::fs::read_to_string(modules.join("modules.dep"))?;
    ensure!(
        dep.lines().count() == ko.len(),
        "modules.dep has {} lines",
        dep.lines().count()
    );

    // 4. basalt release inspect: verified, the SBOM counted; a changed SBOM is refused.
    let out = basalt(&[
        os("release"),
        os("inspect"),
        image.dir.as_os_str(),
        os("--trust"),
        image.keys.trust.as_os_str(),
    ])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "inspect: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(text.contains("signatures: verified"), "{text}");
    ensure!(
        text.contains(&format!("{} Debian packages in /usr", in_image.len())),
        "{text}"
    );
    let copy = tmp.path().join("release");
    std::fs::create_dir(&copy)?;
    for name in ["release.signed", SBOM_FILE] {
        std::fs::copy(image.file(name), copy.join(name))?;
    }
    let mut changed = std::fs::read(copy.join(SBOM_FILE))?;
    let at = changed.len() / 2;
    changed[at] ^= 0x01;
    std::fs::write(copy.join(SBOM_FILE), changed)?;
    let out = basalt(&[
        os("release"),
        os("inspect"),
        copy.as_os_str(),
        os("--trust"),
        image.keys.trust.as_os_str(),
    ])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(3) && err.contains(SBOM_FILE),
        "{err}"
    );
    Ok(())
}

/// The root partition of a built container-host `disk.img` carries `/etc` and `/var` exactly
/// as the image's factory trees (`/usr/share/factory/{etc,var}` in the erofs `/usr`), so a
/// node's first boot has nothing to copy: GNU `diff -r --no-dereference` (bytes and link
/// targets) and a walk for modes and owners, on the trees `debugfs rdump` reads back, in a
/// file system `e2fsck` finds clean.
#[test]
fn container_host_root_partition_holds_the_factory_etc_and_var() -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let image = container_host(Variant::Product, "1.0.0")?;
    let tmp = tempfile::tempdir()?;
    let usr = tmp.path().join("usr");
    extract_usr(&image, &usr)?;
    let fs = root_partition(&image.file("disk.img"), &tmp.path().join("root.ext4"))?;
    let mut cmd = E2FSCK.command()?;
    cmd.args(["-f", "-n"]).arg(&fs);
    let check = cmd.output()?;
    ensure!(
        check.status.success(),
        "e2fsck -fn on the root partition: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let back = tmp.path().join("back");
    std::fs::create_dir(&back)?;
    for dir in ["etc", "var"] {
        let factory = usr.join("share/factory").join(dir);
        ensure!(factory.is_dir(), "no factory /{dir} in the image");
        debugfs(&fs, &format!("rdump /{dir} {}", back.display()))?;
        let got = back.join(dir);
        let diff = std::process::Command::new("diff")
            .args(["-r", "--no-dereference"])
            .arg(&factory)
            .arg(&got)
            .output()?;
        ensure!(
            diff.status.success(),
            "/{dir} on the root partition differs from the factory tree:\n{}{}",
            String::from_utf8_lossy(&diff.stdout),
            String::from_utf8_lossy(&diff.stderr)
        );
        let mut stack = vec![factory.clone()];
        let mut entries = 0;
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d)? {
                let path = e?.path();
                let want = std::fs::symlink_metadata(&path)?;
                let there = got.join(path.strip_prefix(&factory)?);
                let have = std::fs::symlink_metadata(&there)?;
                ensure!(
                    have.uid() == 0 && have.gid() == 0,
                    "{} is owned by {}:{}",
                    there.display(),
                    have.uid(),
                    have.gid()
                );
                if !want.file_type().is_symlink() {
                    // rdump drops the set-ID and sticky bits: those from the inode.
                    let have_mode = if want.mode() & 0o7000 != 0 {
                        let rel = path.strip_prefix(usr.join("share/factory"))?;
                        let stat = debugfs(&fs, &format!("stat /{}", rel.display()))?;
                        let mode = stat
                            .split_once("Mode:")
                            .and_then(|(_, r)| r.split_whitespace().next())
                            .and_then(|m| u32::from_str_radix(m, 8).ok())
                            .with_context(|| format!("no mode in {stat}"))?;
                        (have.mode() & !0o7777) | mode
                    } else {
                        have.mode()
                    };
                    ensure!(
                        want.mode() == have_mode,
                        "{}: mode {:o}, the factory's {:o}",
                        there.display(),
                        have_mode,
                        want.mode()
                    );
                }
                if want.is_dir() {
                    stack.push(path);
                }
                entries += 1;
            }
        }
        println!("/{dir}: {entries} entries as in the factory tree");
        ensure!(entries > 10, "/{dir} has only {entries} entries");
    }
    Ok(())
}

/// The test variant of the same definition has the hooks the product lacks (so the search
/// above can fail), marks itself in os-release, and shares the product's Debian staging.
#[test]
fn container_host_test_variant_has_the_hooks() -> Result<()> {
    let test = container_host(Variant::Test, "1.0.0")?;
    let product = container_host(Variant::Product, "1.0.0")?;
    ensure!(
        test.report.facts.staging_key == product.report.facts.staging_key,
        "two stagings for one definition"
    );
    ensure!(test.report.facts.root_hash != product.report.facts.root_hash);
    let tmp = tempfile::tempdir()?;
    let usr = tmp.path().join("usr");
    extract_usr(&test, &usr)?;
    let unit = std::fs::read_to_string(usr.join("lib/systemd/system/basalt-boot-report.service"))?;
    ensure!(
        unit.contains("ConditionKernelCommandLine=basalt.test=report"),
        "{unit}"
    );
    ensure!(usr
        .join("lib/systemd/system/multi-user.target.wants/basalt-boot-report.service")
        .exists());
    let dropin = std::fs::read_to_string(
        usr.join("lib/systemd/system/serial-getty@ttyS0.service.d/basalt-test-autologin.conf"),
    )?;
    ensure!(dropin.contains("--autologin root"), "{dropin}");
    ensure!(std::fs::read_to_string(usr.join("lib/os-release"))?.contains("VARIANT_ID=test"));
    Ok(())
}

/// A package list that is not what the archive resolves to, and a kernel module the kernel
/// does not have, are refused before anything is staged, naming the difference.
#[test]
fn a_package_list_or_module_that_does_not_match_is_refused() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let definition = artifacts::container_host_definition();
    let dir = definition.parent().context("definitions folder")?;
    let list = std::fs::read_to_string(dir.join("container-host.packages"))?;
    // One package dropped from the list, one that no resolution gives added.
    let mut lines: Vec<&str> = list.lines().filter(|l| *l != "iproute2").collect();
    lines.push("cowsay");
    std::fs::write(tmp.path().join("container-host.packages"), lines.join("\n"))?;
    // The copy keeps its own package list (relative) but finds the definition's files.
    let definition_text = basalt_tests::story::with_absolute_paths(&definition, &["source"])?;
    std::fs::write(tmp.path().join("IMAGE.toml"), &definition_text)?;
    let mut req = artifacts::container_host_request(
        Variant::Product,
        &semver::Version::new(1, 0, 0),
        &tmp.path().join("out"),
    )?;
    req.config = tmp.path().join("IMAGE.toml");
    let err = expect_err(&req)?;
    let text = chain(&err);
    ensure!(
        matches!(err, BuildError::PackageListDiffers { .. }),
        "{text}"
    );
    ensure!(
        text.contains("+iproute2") && text.contains("-cowsay"),
        "{text}"
    );
    ensure!(!tmp.path().join("out").exists(), "an output was written");

    std::fs::copy(
        dir.join("container-host.packages"),
        tmp.path().join("container-host.packages"),
    )?;
    let text = definition_text.replace("\"nvme\",", "\"nvme\", \"no_such_module\",");
    std::fs::write(tmp.path().join("IMAGE.toml"), text)?;
    let err = expect_err(&req)?;
    let text = chain(&err);
    ensure!(text.contains("no_such_module"), "{text}");
    Ok(())
}

/// Every file (not symlink) below `dir`.
fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    Ok(out)
}

/// `debugfs` and `e2fsck` (package `e2fsprogs`): the peers that read the root partition.
const DEBUGFS: Tool = Tool::new("debugfs", "e2fsprogs");
const E2FSCK: Tool = Tool::new("e2fsck", "e2fsprogs");

/// `debugfs -R REQUEST` on the ext4 filesystem file `fs`.
fn debugfs(fs: &Path, request: &str) -> Result<String> {
    let mut cmd = DEBUGFS.command()?;
    cmd.arg("-R").arg(request).arg(fs);
    let out = cmd.output()?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// The root partition of `disk` copied into `to`.
fn root_partition(disk: &Path, to: &Path) -> Result<PathBuf> {
    let inv = inspect(disk)?;
    let root = partition(&inv, "root")?;
    let (offset, size) = (
        root["offset"].as_u64().context("offset")?,
        root["size"].as_u64().context("size")?,
    );
    extract(disk, offset, size, to)?;
    Ok(to.to_path_buf())
}

/// A release with `[[extensions]]` carries its set on the root partition of its `disk.img`
/// (`/.basalt-extensions/<version>/NAME.raw`, adopted by the node at its first boot): the
/// same bytes as the release's `NAME.raw`, root-owned, 0644, in a filesystem `e2fsck` finds
/// clean. The cache entry's disk (the set is written into the output copy only) and a
/// release without extensions carry none.
#[test]
fn a_release_with_extensions_carries_its_set_on_the_root_partition() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let plain = minimal_image("1.0.0")?;
    let tmp = tempfile::tempdir()?;
    let tree = tmp.path().join("tools-tree");
    std::fs::create_dir_all(tree.join("usr/bin"))?;
    let script = tree.join("usr/bin/tools-version");
    std::fs::write(&script, "#!/bin/sh\necho tools 1.0.0\n")?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    let tools = tmp.path().join("tools.toml");
    std::fs::write(
        &tools,
        format!(
            "name = \"tools\"\nversion = \"1.0.0\"\ntree = {:?}\narchitecture = \"x86-64\"\n",
            tree.display().to_string()
        ),
    )?;
    let definition = tmp.path().join("IMAGE.toml");
    std::fs::write(
        &definition,
        format!(
            "{}\n[[extensions]]\ndefinition = {:?}\n",
            artifacts::minimal_definition(&semver::Version::new(1, 0, 0)),
            tools.display().to_string()
        ),
    )?;
    let out = tmp.path().join("out");
    let mut req = minimal_request(&semver::Version::new(1, 0, 0), &out)?;
    req.config = definition;
    req.cache = plain
        .report
        .cache_dir
        .parent()
        .context("cache")?
        .to_path_buf();
    // A cache miss (the definition's text is part of the key), the same /usr bytes.
    let report = build(&req)?;
    ensure!(sha256(&out.join("usr.img"))? == sha256(&plain.file("usr.img"))?);

    let fs = root_partition(&out.join("disk.img"), &tmp.path().join("root.ext4"))?;
    let mut cmd = E2FSCK.command()?;
    cmd.args(["-f", "-n"]).arg(&fs);
    let check = cmd.output()?;
    ensure!(
        check.status.success(),
        "e2fsck -fn on the root partition: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let stat = debugfs(&fs, "stat /.basalt-extensions/1.0.0/tools.raw")?;
    ensure!(
        stat.contains("Mode:  0644")
            && stat.contains("User:     0")
            && stat.contains("Group:     0"),
        "owner and mode of the seeded image:\n{stat}"
    );
    let back = tmp.path().join("tools.back");
    debugfs(
        &fs,
        &format!(
            "dump /.basalt-extensions/1.0.0/tools.raw {}",
            back.display()
        ),
    )?;
    ensure!(
        sha256(&back)? == sha256(&out.join("tools.raw"))?,
        "the seeded image is not the release's tools.raw"
    );
    let listing = debugfs(&fs, "ls -l /.basalt-extensions")?;
    ensure!(
        listing.contains("40755") && listing.contains("1.0.0"),
        "{listing}"
    );

    // Neither the cache entry's disk nor a release without extensions has a seed.
    for disk in [report.cache_dir.join("disk.img"), plain.file("disk.img")] {
        let fs = root_partition(&disk, &tmp.path().join("other.ext4"))?;
        let listing = debugfs(&fs, "ls /")?;
        ensure!(
            !listing.contains(".basalt-extensions"),
            "{}: unexpected seed: {listing}",
            disk.display()
        );
    }
    Ok(())
}
