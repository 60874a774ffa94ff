//! `basalt image …` subcommands: glue over `basalt_image::build`.

use std::path::PathBuf;

use anyhow::Context;
use basalt_image::build::image::{default_cache_dir, issue_time_from_env, SecureBootSigner};
use basalt_image::build::workspace::find_or_build_init;
use basalt_image::build::{build_with_progress, BuildRequest, Variant};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a release (usr.img, vmlinuz, initrd.img, sbom.spdx.json, release.json,
    /// release.signed) and a bootable disk.img from an image definition. The unsigned
    /// artifacts are cached by the hash of the inputs (Debian package versions included); the
    /// manifest and SBOM are made and signed on every run.
    Build {
        /// The image definition (IMAGE.toml).
        #[arg(long)]
        config: PathBuf,
        /// Private key file (NAME.key) to sign with; repeat for each signer.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// The trust root (initial, self-signed) the image's initramfs trusts.
        #[arg(long)]
        trust: PathBuf,
        /// Output folder (created; existing release files are replaced).
        #[arg(long)]
        out: PathBuf,
        /// A static basalt-init to use. Default: built from this source checkout with cargo
        /// (into build/target-init), else `basalt-init` next to this program.
        #[arg(long)]
        init: Option<PathBuf>,
        /// `product` (default) or `test` (adds the test hooks: boot report, root shell on
        /// ttyS0; never for production).
        #[arg(long, default_value = "product")]
        variant: Variant,
        /// Build this version instead of the definition's `os.version`.
        #[arg(long = "set-version")]
        version: Option<basalt_manifest::semver::Version>,
        /// Sign with this release sequence instead of the definition's.
        #[arg(long)]
        sequence: Option<u64>,
        /// Resolve Debian packages against the archive index fetched last time (no network).
        #[arg(long)]
        offline: bool,
        /// Image cache folder (default: <workspace>/build/cache/images).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Secure Boot db private key (PEM, e.g. from `basalt secure-boot keys`): the release
        /// then ships its signed unified kernel image (`<os>-<version>.efi`, artifact kind
        /// `uki`), and disk.img boots it through a signed systemd-boot. With
        /// --secure-boot-cert.
        #[arg(long, requires = "secure_boot_cert")]
        secure_boot_key: Option<PathBuf>,
        /// The db certificate (PEM) matching --secure-boot-key.
        #[arg(long, requires = "secure_boot_key")]
        secure_boot_cert: Option<PathBuf>,
    },
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Build {
            config,
            keys,
            trust,
            out,
            init,
            variant,
            version,
            sequence,
            offline,
            cache,
            secure_boot_key,
            secure_boot_cert,
        } => {
            let mut say = |msg: &str| eprintln!("basalt: {msg}");
            let exe = std::env::current_exe().context("locating this program")?;
            let init = find_or_build_init(
                init.as_deref(),
                &basalt_image::workspace_root(),
                &exe,
                &mut say,
            )?;
            say(&format!("basalt-init: {}", init.how));
            let mut req = BuildRequest::new(config, keys, trust, init.path, out);
            req.init_revision = init.revision;
            req.variant = variant;
            req.version = version;
            req.sequence = sequence;
            req.offline = offline;
            req.cache = cache.unwrap_or_else(default_cache_dir);
            req.issued_at = issue_time_from_env();
            req.secure_boot = secure_boot_key
                .zip(secure_boot_cert)
                .map(|(key, cert)| SecureBootSigner { key, cert });
            let report = build_with_progress(&req, &mut say)?;
            let f = &report.facts;
            println!(
                "built {} {} ({}, {} variant) into {}{}",
                f.os,
                f.version,
                f.profile,
                f.variant.as_str(),
                req.out.display(),
                if report.from_cache {
                    " (from cache, signed now)"
                } else {
                    ""
                }
            );
            println!("root hash {}", f.root_hash);
            println!(
                "usr.img {} bytes (erofs {}, /usr files {} bytes), initrd {} bytes, kernel {} ({} bytes)",
                f.usr_img_bytes,
                f.hash_offset,
                f.usr_tree_bytes,
                f.initrd_bytes,
                f.kernel_version,
                f.vmlinuz_bytes
            );
            println!(
                "contents: {} Debian packages in /usr, {} kernel modules, {} Basalt programs (sbom.spdx.json)",
                f.packages.len(),
                f.usr_modules.len(),
                f.basalt_files.len()
            );
            println!(
                "cache {} ; {:.2} s",
                report.cache_dir.display(),
                report.elapsed.as_secs_f64()
            );
            Ok(())
        }
    }
}
