//! Secure Boot keys for a Basalt fleet: the platform key (PK), the key-exchange key (KEK)
//! and the signature database key (db) that signs systemd-boot and every release's UKI —
//! with the files firmware and systemd-boot need to enrol them.
//!
//! Made with the real tools (package `openssl`: RSA-2048 self-signed X.509 certificates,
//! SHA-256; package `efitools`: EFI signature lists and the time-based authenticated variable
//! updates): `PK.auth` is signed by PK itself, `KEK.auth` by PK, `db.auth` by KEK, as UEFI
//! requires to enrol them in that order while the machine is in setup mode.
//!
//! ```text
//! OUT/PK.key PK.crt PK.esl PK.auth   KEK.…   db.key db.crt db.esl db.auth   owner.guid
//! OUT/loader/keys/<name>/PK.auth KEK.auth db.auth   (copy to the ESP's loader/keys/)
//! ```
//!
//! The production path (systemd-boot 252): put `loader/keys/auto/*.auth` on the ESP and
//! `secure-boot-enroll force` in `loader/loader.conf`; on a machine in setup mode systemd-boot
//! enrols them (on bare metal after a 15 s countdown a key press aborts; in a VM at once) and
//! resets, and from then on only binaries signed by `db.key` run. Only a key set named `auto`
//! ([`AUTO_ENROL`]) is enrolled unattended: any other name just becomes a menu entry
//! ("Enroll Secure Boot keys: NAME") someone at the console must pick — systemd-boot's rule
//! (`secure_boot_discover_keys` in `src/boot/efi/boot.c`), found the hard way when a set named
//! `basalt` was silently skipped in the VM scenario. Sign systemd-boot and UKIs with `db.key`/`db.crt` (`uki::sign`). Keep
//! `PK.key` and `KEK.key` offline: they only sign future key updates (e.g. a new db).

use std::path::{Path, PathBuf};

use crate::tool::{Tool, ToolError};

/// `openssl` (package `openssl`).
pub const OPENSSL: Tool = Tool::new("openssl", "openssl");
/// `cert-to-efi-sig-list` (package `efitools`).
pub const CERT_TO_EFI_SIG_LIST: Tool = Tool::new("cert-to-efi-sig-list", "efitools");
/// `sign-efi-sig-list` (package `efitools`).
pub const SIGN_EFI_SIG_LIST: Tool = Tool::new("sign-efi-sig-list", "efitools");

/// Making the keys failed.
#[derive(Debug, thiserror::Error)]
pub enum SbKeysError {
    /// A tool is missing or failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The output folder already holds keys: never overwrite keys.
    #[error("{path} already exists: refusing to overwrite Secure Boot keys")]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// The key set name cannot be a directory name on the ESP.
    #[error("key set name {name:?}: use 1-32 characters of a-z, A-Z, 0-9, '-' and '_'")]
    Name {
        /// The name.
        name: String,
    },
}

/// The key set name systemd-boot enrols without anyone at the console
/// (`secure-boot-enroll force`).
pub const AUTO_ENROL: &str = "auto";

/// The three keys, in enrolment order.
pub const KEYS: [&str; 3] = ["PK", "KEK", "db"];

/// What [`generate`] wrote.
#[derive(Debug, Clone)]
pub struct KeySet {
    /// The output folder.
    pub dir: PathBuf,
    /// The signature owner GUID written into the lists.
    pub owner: String,
    /// `loader/keys/<name>` under `dir`, ready to copy to the ESP.
    pub loader_keys: PathBuf,
}

impl KeySet {
    /// `<dir>/<key>.<ext>`.
    pub fn file(&self, key: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{key}.{ext}"))
    }
}

/// Create PK, KEK and db under `dir` (created; refuses to overwrite existing key files),
/// certificates named `<common_name> PK` …, signature lists owned by `owner` (a GUID
/// string), and `loader/keys/<name>/{PK,KEK,db}.auth` for systemd-boot's enrolment.
pub fn generate(
    dir: &Path,
    common_name: &str,
    name: &str,
    owner: &str,
) -> Result<KeySet, SbKeysError> {
    let name_ok = (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !name_ok {
        return Err(SbKeysError::Name {
            name: name.to_owned(),
        });
    }
    let io = |op, path: &Path| {
        let path = path.to_owned();
        move |source| SbKeysError::Io { op, path, source }
    };
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    for key in KEYS {
        for ext in ["key", "crt", "esl", "auth"] {
            let p = dir.join(format!("{key}.{ext}"));
            if p.exists() {
                return Err(SbKeysError::Exists { path: p });
            }
        }
    }
    let set = KeySet {
        dir: dir.to_owned(),
        owner: owner.to_owned(),
        loader_keys: dir.join("loader").join("keys").join(name),
    };
    for key in KEYS {
        let mut req = OPENSSL.command()?;
        req.args([
            "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
        ])
        .args(["-days", "3650", "-subj"])
        .arg(format!("/CN={common_name} {key}/"))
        .arg("-keyout")
        .arg(set.file(key, "key"))
        .arg("-out")
        .arg(set.file(key, "crt"));
        OPENSSL.run(&mut req)?;
        let mut esl = CERT_TO_EFI_SIG_LIST.command()?;
        esl.args(["-g", owner])
            .arg(set.file(key, "crt"))
            .arg(set.file(key, "esl"));
        CERT_TO_EFI_SIG_LIST.run(&mut esl)?;
    }
    // PK signs itself and KEK; KEK signs db.
    for (key, signer) in [("PK", "PK"), ("KEK", "PK"), ("db", "KEK")] {
        let mut auth = SIGN_EFI_SIG_LIST.command()?;
        auth.args(["-g", owner, "-k"])
            .arg(set.file(signer, "key"))
            .arg("-c")
            .arg(set.file(signer, "crt"))
            .arg(key)
            .arg(set.file(key, "esl"))
            .arg(set.file(key, "auth"));
        SIGN_EFI_SIG_LIST.run(&mut auth)?;
    }
    let atomic = |e: basalt_fsutil::Error| SbKeysError::Io {
        op: e.op,
        path: e.path,
        source: e.source,
    };
    std::fs::create_dir_all(&set.loader_keys).map_err(io("create", &set.loader_keys))?;
    for key in KEYS {
        let from = set.file(key, "auth");
        let auth = std::fs::read(&from).map_err(io("read", &from))?;
        basalt_fsutil::write_atomic(&set.loader_keys.join(format!("{key}.auth")), &auth, 0o644)
            .map_err(atomic)?;
    }
    basalt_fsutil::write_atomic(
        &dir.join("owner.guid"),
        format!("{owner}\n").as_bytes(),
        0o644,
    )
    .map_err(atomic)?;
    for key in KEYS {
        use std::os::unix::fs::PermissionsExt;
        let p = set.file(key, "key");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
            .map_err(io("chmod", &p))?;
    }
    Ok(set)
}
