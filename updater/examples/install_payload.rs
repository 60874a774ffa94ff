//! The install benchmark's agent side (driven by `cargo xtask bench-install`): install a
//! large release from a folder repository into slot B of a disk image file, exactly as the
//! engine does on a node (stream, check every frame, decode, write, fdatasync, drop the page
//! cache, re-read and verify the verity tree and the usr-hash statement, name the slot), and
//! print the wall time and this process's peak RSS as JSON.
//!
//! ```text
//! install_payload prepare WORK SIZE_MIB        # repository + pristine node disk (once)
//! install_payload prepare-patch WORK SIZE_MIB  # the same for a patch release (below)
//! install_payload install WORK                 # fresh copy of the disk, then check + download
//! ```
//!
//! `prepare-patch`: slot A holds a `SIZE_MIB` 1.0.0 that is published first; 2.0.0 is its
//! data with a 4 MiB run "rebuilt" (shifted by one byte, as a recompiled binary changes
//! every block) in every 64 MiB and 1 MiB of new blocks at the end, so the agent installs it
//! adaptively: block reuse, binary deltas against slot A, a few frames.
//!
//! `prepare` also writes `WORK/usr-blob.path`, the compressed usr blob the peer pipeline
//! (`zstd -dc | tee >(openssl dgst -sha256) > slot`) decodes.
//! ```text
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use basalt_disk::{BlsBackend, BootControl, BootTarget, DirEsp, LayoutSpec, Slot};
use basalt_image::release::synthetic::{synthetic_release, SyntheticSpec};
use basalt_image::release::{default_compress_options, publish, publish_root, PublishRequest};
use basalt_manifest::chrono::{TimeDelta, Utc};
use basalt_manifest::{sign_trust_root, SigningKey, TrustRootDocument};
use basalt_updater::engine::{CancelFlag, CheckOutcome, CheckRequest, Engine};
use basalt_updater::pipeline::{EngineConfig, EspLocation, NodeEngine};
use basalt_updater::source::FileSource;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const MIB: u64 = 1 << 20;

fn key() -> Result<SigningKey> {
    Ok(SigningKey::from_seed(&[0x42; 32])?)
}

fn prepare(work: &Path, size_mib: u64, patch: bool) -> Result<()> {
    std::fs::create_dir_all(work)?;
    let k = key()?;
    let root = sign_trust_root(
        &TrustRootDocument::new(1, 1, &[k.public_key()], None),
        &[&k],
    )?;
    let anchor = work.join("trust.json");
    std::fs::write(&anchor, &root)?;
    let repo = work.join("repo");
    publish_root(&repo, &anchor, &root)?;
    let publish_one = |dir: &Path| {
        publish(&PublishRequest {
            release_dir: dir,
            repo: &repo,
            channel: "stable",
            keys: std::slice::from_ref(&k),
            sequence: None,
            allow_downgrade: false,
            now: Utc::now(),
            valid_for: Some(TimeDelta::days(30)),
            compress: default_compress_options(),
        })
    };
    let sized = |version: &str, usr_mib: u64| -> Result<SyntheticSpec> {
        let mut spec = SyntheticSpec::small(version, Utc::now())?;
        spec.usr_len = usr_mib * MIB;
        spec.kernel_len = 8 * MIB;
        spec.initrd_len = 2 * MIB;
        Ok(spec)
    };
    // The node's 1.0.0: small for a full install, the payload's size for a patch.
    let v1 = if patch {
        let v1 = synthetic_release(&work.join("release-1"), &sized("1.0.0", size_mib)?, &[&k])?;
        publish_one(&v1.dir)?;
        v1
    } else {
        synthetic_release(
            &work.join("release-1"),
            &SyntheticSpec::small("1.0.0", Utc::now())?,
            &[&k],
        )?
    };
    let v2 = if patch {
        let old = std::fs::read(v1.dir.join("usr.img"))?;
        let mut data = old[..v1.hash_offset as usize].to_vec();
        let run = 4 * MIB as usize;
        let mut at = 32 * MIB as usize;
        while at + run <= data.len() {
            data[at] ^= 0x5a;
            data.copy_within(at..at + run - 1, at + 1);
            at += 64 * MIB as usize;
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        data.extend((0..MIB).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        }));
        basalt_image::release::synthetic::synthetic_release_with_data(
            &work.join("release-2"),
            &sized("2.0.0", size_mib)?,
            &data,
            &[&k],
        )?
    } else {
        synthetic_release(&work.join("release-2"), &sized("2.0.0", size_mib)?, &[&k])?
    };
    let report = publish_one(&v2.dir)?;
    // For the peer pipeline: the compressed usr blob.
    let blob = repo.join(basalt_manifest::repo::blob_path(&report.artifacts[0].blob));
    std::fs::write(work.join("usr-blob.path"), blob.display().to_string())?;
    // For the patch bench: the usr image's adaptive blobs (block index, frame store).
    if let Some(a) = &report.artifacts[0].adaptive {
        std::fs::write(
            work.join("usr-adaptive.names"),
            format!("{}\n{}\n", a.block_index.to_hex(), a.frame_store.to_hex()),
        )?;
    }
    // The node: slot A holds 1.0.0, blessed; slot B is big enough for the payload.
    let usr = size_mib * MIB + 64 * MIB;
    let layout = LayoutSpec {
        disk_size: 2 * usr + 2 * 64 * MIB + 64 * MIB,
        esp_size: 32 * MIB,
        usr_size: usr,
        verity_size: usr / 64,
        slot_reserve: MIB,
        root_size: None,
        align: MIB,
    };
    let disk = work.join("pristine.img");
    basalt_disk::create_image(&disk, &layout)?;
    let v1_usr = v1.dir.join("usr.img");
    basalt_image::build::image::write_usr_slot(
        &disk,
        Slot::A,
        &v1_usr,
        v1.hash_offset,
        std::fs::metadata(&v1_usr)?.len(),
        &v1.root_hash,
        "basalt",
        "1.0.0",
    )?;
    let esp = work.join("esp-pristine");
    std::fs::create_dir_all(&esp)?;
    let mut bls = BlsBackend::new(DirEsp::new(&esp));
    bls.stage(
        Slot::A,
        &BootTarget {
            version: "1.0.0".into(),
            usr_hash: v1.root_hash.to_hex(),
            kernel: Some(v1.dir.join("vmlinuz")),
            initrd: Some(v1.dir.join("initrd.img")),
            options: String::new(),
        },
        1,
    )?;
    bls.mark_good(Slot::A)?;
    std::fs::write(work.join("cmdline"), format!("usrhash={}", v1.root_hash))?;
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to)?;
    }
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()))?;
        } else {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

fn install(work: &Path) -> Result<()> {
    let disk = work.join("disk.img");
    basalt_image::build::image::copy_sparse(&work.join("pristine.img"), &disk)?;
    copy_dir(&work.join("esp-pristine"), &work.join("esp"))?;
    let state = work.join("state");
    if state.exists() {
        std::fs::remove_dir_all(&state)?;
    }
    let mut config = EngineConfig::new(&disk, "basalt", "x86_64", "stable");
    config.esp = EspLocation::Mounted(work.join("esp"));
    config.state_dir = state;
    config.trust_root = work.join("trust.json");
    config.cmdline = work.join("cmdline");
    config.boot_env = work.join("boot.env");
    if let Some(mib) = std::env::var("BASALT_BENCH_CHECKPOINT_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        config.checkpoint_bytes = mib * MIB;
    }
    let mut engine = NodeEngine::new(config, Box::new(FileSource::new(work.join("repo"))));
    let started = Instant::now();
    let req = CheckRequest {
        now: Utc::now(),
        installed_version: Some("1.0.0".parse()?),
        last_seen: None,
        allow_downgrade: false,
    };
    let CheckOutcome::Available(c) = engine.check(&req)? else {
        return Err("no update in the repository".into());
    };
    let bytes: u64 = c.release.manifest.artifacts.iter().map(|a| a.size).sum();
    let mut verify_started = None;
    let d = engine.download(
        &c,
        &mut |p| {
            if p.phase == basalt_updater::engine::Phase::Verifying && verify_started.is_none() {
                verify_started = Some(Instant::now());
            }
        },
        &CancelFlag::new(),
    )?;
    let seconds = started.elapsed().as_secs_f64();
    let verify = verify_started.map_or(0.0, |t| t.elapsed().as_secs_f64());
    // SAFETY: getrusage fills the zeroed struct we own.
    let maxrss_kib = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru.ru_maxrss
    };
    println!(
        "{{\"seconds\":{seconds:.3},\"verify_seconds\":{verify:.3},\"bytes\":{bytes},\"fetched\":{},\"peak_rss_kib\":{maxrss_kib}}}",
        d.fetched
    );
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("prepare") if args.len() == 4 => {
            prepare(&PathBuf::from(&args[2]), args[3].parse()?, false)
        }
        Some("prepare-patch") if args.len() == 4 => {
            prepare(&PathBuf::from(&args[2]), args[3].parse()?, true)
        }
        Some("install") if args.len() == 3 => install(&PathBuf::from(&args[2])),
        _ => {
            Err("usage: install_payload prepare|prepare-patch WORK SIZE_MIB | install WORK".into())
        }
    }
}
