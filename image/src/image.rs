//! `basalt image …` subcommands: glue over `basalt_image::build`.

use std::path::PathBuf;

use basalt_image::build::image::{default_cache_dir, issue_time_from_env};
use basalt_image::build::{build, BuildRequest};
use basalt_image::kernel::KernelTree;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a release (usr.img, vmlinuz, initrd.img, release.json, release.signed) and a
    /// bootable disk.img from an image definition; cached by the hash of the inputs.
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
        /// The statically linked basalt-init (default: `basalt-init` next to this binary).
        #[arg(long)]
        init: Option<PathBuf>,
        /// Image cache folder (default: <workspace>/build/cache/images).
        #[arg(long)]
        cache: Option<PathBuf>,
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
            cache,
        } => {
            let init = match init {
                Some(p) => p,
                None => std::env::current_exe()?.with_file_name("basalt-init"),
            };
            let req = BuildRequest {
                config,
                keys,
                trust,
                init,
                out,
                cache: cache.unwrap_or_else(default_cache_dir),
                kernel_cache: KernelTree::default_cache_dir(),
                issued_at: issue_time_from_env(),
            };
            let report = build(&req)?;
            let f = &report.facts;
            println!(
                "built {} {} ({}) into {}{}",
                f.os,
                f.version,
                f.profile,
                req.out.display(),
                if report.from_cache {
                    " (from cache)"
                } else {
                    ""
                }
            );
            println!("root hash {}", f.root_hash);
            println!(
                "usr.img {} bytes (erofs {}), initrd {} bytes, kernel {} ({} bytes)",
                f.usr_img_bytes, f.hash_offset, f.initrd_bytes, f.kernel_version, f.vmlinuz_bytes
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
