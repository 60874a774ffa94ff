//! `basalt initramfs …` subcommands: glue over `basalt_initramfs::builder`.

use std::path::PathBuf;

use anyhow::Context;
use basalt_initramfs::builder::{build_with, BootPolicy, BuildSpec, Compression, Extras};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a reproducible initramfs: basalt-init as /init, kernel modules with their
    /// dependencies (from modules.dep), the module list and the trust root.
    Build {
        /// The statically linked basalt-init binary.
        #[arg(long)]
        init: PathBuf,
        /// Root of the kernel tree (holds lib/modules/<kver>/modules.dep).
        #[arg(long)]
        kernel_dir: PathBuf,
        /// Kernel version (directory name under lib/modules).
        #[arg(long)]
        kver: String,
        /// Modules that must load, comma-separated (e.g. virtio_blk,dm-verity,erofs).
        #[arg(long, value_delimiter = ',')]
        modules: Vec<String>,
        /// Modules whose absence or load failure is tolerated, comma-separated.
        #[arg(long, value_delimiter = ',')]
        optional_modules: Vec<String>,
        /// Trust root (JSON envelope) to install as /etc/basalt/trust.json.
        #[arg(long)]
        trust: Option<PathBuf>,
        /// Boot policy: the OS name usr-hash statements must carry.
        #[arg(long)]
        os: Option<String>,
        /// Boot policy: the lowest /usr version this initramfs boots (semver).
        #[arg(long)]
        min_usr_version: Option<String>,
        /// Boot policy: honour basalt.verity=eio|logging (test images only).
        #[arg(long)]
        test_options: bool,
        /// Compression: zstd, gzip or none.
        #[arg(long, default_value = "zstd")]
        compress: Compression,
        /// A host executable to include at the same path, with its ELF interpreter and shared
        /// libraries (repeatable), e.g. /sbin/mke2fs for first boot on a blank root partition.
        #[arg(long = "with-binary")]
        with_binary: Vec<PathBuf>,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Put a signed usr-hash statement (from `basalt manifest sign-usr-hash`) into a verity
    /// hash image, in the block after the tree, where basalt-init looks for it.
    AttachUsrHash {
        /// The verity hash image (`basalt verity format` / `veritysetup format` output).
        #[arg(long)]
        hash_image: PathBuf,
        /// The DSSE envelope of the statement.
        #[arg(long)]
        statement: PathBuf,
    },
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Build {
            init,
            kernel_dir,
            kver,
            modules,
            optional_modules,
            trust,
            os,
            min_usr_version,
            test_options,
            compress,
            with_binary,
            out,
        } => {
            let spec = BuildSpec {
                init,
                kernel_dir,
                kver,
                modules,
                optional_modules,
                trust,
                compression: compress,
            };
            // Any policy flag writes the policy file; none leaves it out (nothing checked,
            // test options refused).
            let min_usr_version = min_usr_version
                .map(|v| {
                    basalt_manifest::semver::Version::parse(&v)
                        .with_context(|| format!("--min-usr-version {v:?}"))
                })
                .transpose()?;
            let policy =
                (os.is_some() || min_usr_version.is_some() || test_options).then(|| BootPolicy {
                    os,
                    min_usr_version,
                    test_options,
                });
            let extras = Extras {
                binaries: with_binary,
                binary_root: None,
                policy,
            };
            let built = build_with(&spec, &extras)?;
            std::fs::write(&out, &built.bytes)
                .with_context(|| format!("writing {}", out.display()))?;
            for m in &built.resolution.modules {
                let tag = if m.optional { " (optional)" } else { "" };
                println!("module {}{tag}", m.path);
            }
            for b in &built.resolution.builtin {
                println!("built-in {b}");
            }
            for m in &built.resolution.missing_optional {
                println!("skipped optional {m} (not in the kernel tree)");
            }
            for (f, len) in &built.binaries {
                println!("{:?} {} ({len} bytes)", f.role, f.path.display());
            }
            println!(
                "wrote {} ({} bytes {}, cpio {} bytes, {} modules = {} bytes)",
                out.display(),
                built.bytes.len(),
                spec.compression,
                built.cpio_len,
                built.resolution.modules.len(),
                built.module_bytes
            );
            Ok(())
        }
        Command::AttachUsrHash {
            hash_image,
            statement,
        } => {
            let envelope = std::fs::read(&statement)
                .with_context(|| format!("reading {}", statement.display()))?;
            let offset = basalt_initramfs::usrsig::write_to_hash_image(&hash_image, &envelope)?;
            println!(
                "wrote the usr-hash statement into {} at byte {offset}",
                hash_image.display()
            );
            Ok(())
        }
    }
}
