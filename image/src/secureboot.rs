//! `basalt secure-boot keys|sign|release-uki|uki`: glue over
//! `basalt_image::build::{sbkeys, uki}`.

use std::path::PathBuf;

use anyhow::Context;
use basalt_image::build::{sbkeys, uki};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the PK, KEK and db keys, their signature lists and authenticated updates, and
    /// loader/keys/NAME/*.auth for systemd-boot's enrolment (secure-boot-enroll).
    Keys {
        /// Output folder (created; existing key files are never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// Certificate common names: "<COMMON_NAME> PK", "… KEK", "… db".
        #[arg(long, default_value = "Basalt")]
        common_name: String,
        /// The key set's folder name under loader/keys/ on the ESP: systemd-boot enrols only
        /// `auto` unattended (`secure-boot-enroll force`); any other name is a menu entry.
        #[arg(long, default_value = sbkeys::AUTO_ENROL)]
        name: String,
        /// Signature owner GUID (default: a random one).
        #[arg(long)]
        owner: Option<String>,
    },
    /// Sign an EFI binary (systemd-boot, a UKI) with the db key (sbsign).
    Sign {
        /// The db private key (PEM).
        #[arg(long)]
        key: PathBuf,
        /// The db certificate (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// The signed output.
        #[arg(long)]
        out: PathBuf,
        /// The EFI binary.
        input: PathBuf,
    },
    /// Build a release's unified kernel image from a `basalt image build` output folder
    /// (vmlinuz, initrd.img, build.json: its command line plus usrhash=, os-release from its
    /// OS and version) into RELEASE/<os>-<version>.efi, signed when --key/--cert are given.
    ReleaseUki {
        /// The db private key (PEM); with --cert.
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
        /// The db certificate (PEM); with --key.
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// systemd-stub.
        #[arg(long, default_value = uki::STUB)]
        stub: PathBuf,
        /// The release folder.
        release: PathBuf,
    },
    /// Build a unified kernel image: systemd-stub + kernel + initrd + command line + os-release.
    Uki {
        /// The kernel (bzImage with EFI stub).
        #[arg(long)]
        kernel: PathBuf,
        /// The initramfs.
        #[arg(long)]
        initrd: PathBuf,
        /// The whole kernel command line (with usrhash=).
        #[arg(long)]
        cmdline: String,
        /// os-release file for the .osrel section.
        #[arg(long)]
        os_release: PathBuf,
        /// systemd-stub.
        #[arg(long, default_value = uki::STUB)]
        stub: PathBuf,
        /// Output (unsigned; sign it with `basalt secure-boot sign`).
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Keys {
            out,
            common_name,
            name,
            owner,
        } => {
            let owner = match owner {
                Some(o) => basalt_disk::gpt::Guid::parse(&o)
                    .with_context(|| format!("--owner {o:?}"))?
                    .to_string(),
                None => basalt_disk::gpt::random_guid()?.to_string(),
            };
            let set = sbkeys::generate(&out, &common_name, &name, &owner)?;
            println!(
                "wrote PK, KEK, db (owner {}) into {}; copy {} to the ESP's loader/keys/ and set `secure-boot-enroll force` in loader/loader.conf",
                set.owner,
                set.dir.display(),
                set.loader_keys.display()
            );
            Ok(())
        }
        Command::Sign {
            key,
            cert,
            out,
            input,
        } => {
            uki::sign(&input, &key, &cert, &out)?;
            println!("signed {} → {}", input.display(), out.display());
            Ok(())
        }
        Command::ReleaseUki {
            key,
            cert,
            stub,
            release,
        } => {
            let signer = key.as_deref().zip(cert.as_deref());
            let out = uki::build_release(&release, &stub, signer)?;
            let how = if signer.is_some() {
                "signed"
            } else {
                "unsigned"
            };
            println!("wrote {} ({how})", out.display());
            Ok(())
        }
        Command::Uki {
            kernel,
            initrd,
            cmdline,
            os_release,
            stub,
            out,
        } => {
            let os_release = std::fs::read_to_string(&os_release)
                .with_context(|| format!("reading {}", os_release.display()))?;
            uki::build(
                &stub,
                &uki::UkiInputs {
                    kernel: &kernel,
                    initrd: &initrd,
                    cmdline: &cmdline,
                    os_release: &os_release,
                },
                &out,
            )?;
            println!("wrote {}", out.display());
            Ok(())
        }
    }
}
