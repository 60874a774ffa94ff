//! The kernel command line as `basalt-init` reads it: a pure parser, no I/O.
//!
//! Options (unknown ones are ignored, the last occurrence of an option wins, as in the kernel):
//!
//! | option | meaning | default |
//! |---|---|---|
//! | `usrhash=<64 hex>` (or Flatcar's `verity.usrhash=`) | dm-verity root hash (sha256) of the `/usr` slot to boot | required |
//! | `basalt.verity=restart\|panic\|eio\|logging` | what dm-verity does on a corrupted block; `eio` and `logging` only in test images (see [`crate::policy`]) | `restart` |
//! | `basalt.root=PARTUUID=<uuid>\|PARTLABEL=<label>` | the writable root partition | by type GUID |
//! | `init=<absolute path>` | the init of the real root; must resolve to a file on the verified `/usr` (checked after mounting it) | `/usr/lib/systemd/systemd` |
//! | `basalt.debug[=0\|1]` | verbose logging | off |
//! | `basalt.wait=<seconds>` | how long to wait for the boot disk (1–600) | 10 |
//! | `basalt.bootdisk=PARTUUID=<uuid>` | the boot disk is the one holding this partition (the ESP); for direct kernel boot — systemd-boot's `LoaderDevicePartUUID` wins | the only disk holding the slot |
//!
//! `restart` (`restart_on_corruption`) is the default because a reboot lets systemd-boot's boot
//! counter move towards the other slot; `eio` is the kernel's own default (reads fail with
//! EIO), `logging` maps to `ignore_corruption` (debugging only). This parser accepts all four;
//! the initramfs's boot policy decides which are honoured.
//! Quoting follows the kernel's `next_arg()` (`basalt_identity::cmdline::split_args`, the one
//! splitter `basalt-disk` uses too): double quotes group spaces and are removed.
//! Everything after a lone `--` belongs to init and is not parsed.

use std::fmt;

pub use basalt_identity::cmdline::split_args;
use basalt_identity::Guid;
pub use basalt_identity::RootHash;

use crate::error::{Error, Result};

/// The default init of the real root.
pub const DEFAULT_INIT: &str = "/usr/lib/systemd/systemd";
/// Default seconds to wait for the boot disk.
pub const DEFAULT_WAIT_SECS: u32 = 10;

/// What dm-verity does when a block does not match the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerityErrorMode {
    /// `restart_on_corruption`: the kernel reboots (boot counting then falls back).
    #[default]
    Restart,
    /// `panic_on_corruption`.
    Panic,
    /// No option: the read fails with EIO.
    Eio,
    /// `ignore_corruption`: log and return the data anyway. Debugging only.
    Logging,
}

impl VerityErrorMode {
    /// The option's value on the command line (`basalt.verity=<name>`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Restart => "restart",
            Self::Panic => "panic",
            Self::Eio => "eio",
            Self::Logging => "logging",
        }
    }

    /// Whether the mode weakens the boot: `logging` returns corrupted data, `eio` keeps a
    /// corrupted slot running (no restart, so boot counting never falls back). Honoured only
    /// in test images ([`crate::policy::BootPolicy::verity_mode`]).
    pub fn weakens(self) -> bool {
        matches!(self, Self::Eio | Self::Logging)
    }

    /// The optional argument for the dm-verity table, if any.
    pub fn table_option(self) -> Option<&'static str> {
        match self {
            Self::Restart => Some("restart_on_corruption"),
            Self::Panic => Some("panic_on_corruption"),
            Self::Eio => None,
            Self::Logging => Some("ignore_corruption"),
        }
    }
}

/// How the writable root partition is found on the boot disk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RootSpec {
    /// The partition whose type GUID is the DPS root type (`basalt_identity::types::ROOT_X86_64`).
    #[default]
    ByType,
    /// `basalt.root=PARTUUID=…`.
    PartUuid(Guid),
    /// `basalt.root=PARTLABEL=…`.
    PartLabel(String),
}

impl fmt::Display for RootSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ByType => write!(f, "with type GUID {}", basalt_identity::types::ROOT_X86_64),
            Self::PartUuid(u) => write!(f, "PARTUUID={u}"),
            Self::PartLabel(l) => write!(f, "PARTLABEL={l}"),
        }
    }
}

/// What `basalt-init` takes from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline {
    /// The root hash of the `/usr` slot to boot.
    pub usrhash: RootHash,
    /// dm-verity's reaction to corruption.
    pub verity_mode: VerityErrorMode,
    /// How to find the root partition.
    pub root: RootSpec,
    /// The init to execute in the real root.
    pub init: String,
    /// Verbose logging.
    pub debug: bool,
    /// Seconds to wait for the boot disk.
    pub wait_secs: u32,
    /// `basalt.bootdisk=PARTUUID=<uuid>`: the disk holding this partition is the boot disk
    /// (for direct kernel boot; systemd-boot's `LoaderDevicePartUUID` takes precedence).
    pub boot_disk: Option<Guid>,
}

impl Cmdline {
    /// Parse the contents of `/proc/cmdline`.
    pub fn parse(text: &str) -> Result<Self> {
        let mut usrhash = None;
        let mut verity_mode = VerityErrorMode::default();
        let mut root = RootSpec::default();
        let mut init = DEFAULT_INIT.to_owned();
        let mut debug = false;
        let mut wait_secs = DEFAULT_WAIT_SECS;
        let mut boot_disk = None;
        for (key, value) in split_args(text) {
            match (key.as_str(), value) {
                ("usrhash" | "verity.usrhash", Some(v)) => {
                    usrhash = Some(RootHash::parse(&v).map_err(|e| Error::UsrhashInvalid {
                        value: v.clone(),
                        reason: match e {
                            basalt_identity::Error::ParseRootHash { reason, .. } => reason,
                            other => other.to_string(),
                        },
                    })?)
                }
                ("usrhash" | "verity.usrhash", None) => {
                    return Err(Error::UsrhashInvalid {
                        value: String::new(),
                        reason: "no value".into(),
                    })
                }
                ("basalt.verity", v) => {
                    let v = v.unwrap_or_default();
                    verity_mode = match v.as_str() {
                        "restart" => VerityErrorMode::Restart,
                        "panic" => VerityErrorMode::Panic,
                        "eio" => VerityErrorMode::Eio,
                        "logging" => VerityErrorMode::Logging,
                        _ => return Err(invalid(&key, v, "restart, panic, eio or logging")),
                    }
                }
                ("basalt.root", v) => root = parse_root(&key, v.unwrap_or_default())?,
                ("init", v) => {
                    let v = v.unwrap_or_default();
                    if !v.starts_with('/') || v.contains('\0') {
                        return Err(invalid(&key, v, "an absolute path"));
                    }
                    init = v;
                }
                ("basalt.debug", None) => debug = true,
                ("basalt.debug", Some(v)) => {
                    debug = match v.as_str() {
                        "1" | "yes" | "true" | "on" => true,
                        "0" | "no" | "false" | "off" => false,
                        _ => return Err(invalid(&key, v, "nothing, 0 or 1")),
                    }
                }
                ("basalt.bootdisk", v) => {
                    let v = v.unwrap_or_default();
                    let uuid = v
                        .strip_prefix("PARTUUID=")
                        .and_then(|u| Guid::parse(u).ok());
                    match uuid {
                        Some(u) => boot_disk = Some(u),
                        None => return Err(invalid(&key, v, "PARTUUID=<uuid> of the ESP")),
                    }
                }
                ("basalt.wait", v) => {
                    let v = v.unwrap_or_default();
                    wait_secs = match v.parse::<u32>() {
                        Ok(n) if (1..=600).contains(&n) => n,
                        _ => return Err(invalid(&key, v, "whole seconds from 1 to 600")),
                    }
                }
                _ => {}
            }
        }
        Ok(Self {
            usrhash: usrhash.ok_or(Error::UsrhashMissing)?,
            verity_mode,
            root,
            init,
            debug,
            wait_secs,
            boot_disk,
        })
    }
}

fn invalid(option: &str, value: String, expected: &'static str) -> Error {
    Error::CmdlineOptionInvalid {
        option: option.to_owned(),
        value,
        expected,
    }
}

fn parse_root(key: &str, value: String) -> Result<RootSpec> {
    const EXPECTED: &str = "PARTUUID=<uuid> or PARTLABEL=<label>";
    if let Some(u) = value.strip_prefix("PARTUUID=") {
        match Guid::parse(u) {
            Ok(uuid) => Ok(RootSpec::PartUuid(uuid)),
            Err(_) => Err(invalid(key, value, EXPECTED)),
        }
    } else if let Some(l) = value.strip_prefix("PARTLABEL=") {
        // A GPT name holds at most 36 UTF-16 code units.
        if l.is_empty() || l.encode_utf16().count() > 36 {
            Err(invalid(key, value, EXPECTED))
        } else {
            Ok(RootSpec::PartLabel(l.to_owned()))
        }
    } else {
        Err(invalid(key, value, EXPECTED))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "4b2f0c3ff1b7d7c6a1d7c0bb53a0f1c2e3d4c5b6a79888776655443322110000";

    fn parse(s: &str) -> Result<Cmdline> {
        Cmdline::parse(s)
    }

    #[test]
    fn minimal_gives_defaults() {
        let c = parse(&format!("console=ttyS0 usrhash={H} quiet\n")).unwrap();
        assert_eq!(c.usrhash.to_string(), H);
        assert_eq!(c.verity_mode, VerityErrorMode::Restart);
        assert_eq!(c.verity_mode.table_option(), Some("restart_on_corruption"));
        assert_eq!(c.root, RootSpec::ByType);
        assert_eq!(c.init, DEFAULT_INIT);
        assert!(!c.debug);
        assert_eq!(c.wait_secs, DEFAULT_WAIT_SECS);
    }

    #[test]
    fn usrhash_missing() {
        assert!(matches!(
            parse("console=ttyS0 root=/dev/vda"),
            Err(Error::UsrhashMissing)
        ));
        // After `--` the option belongs to init.
        assert!(matches!(
            parse(&format!("quiet -- usrhash={H}")),
            Err(Error::UsrhashMissing)
        ));
    }

    #[test]
    fn usrhash_bad_hex_and_length() {
        let bad_hex = format!("{}zz", &H[..62]);
        for v in [&H[..63], &format!("{H}0"), bad_hex.as_str(), ""] {
            let err = parse(&format!("usrhash={v}")).unwrap_err();
            assert!(matches!(err, Error::UsrhashInvalid { .. }), "{v}: {err}");
        }
        assert!(matches!(
            parse("usrhash"),
            Err(Error::UsrhashInvalid { .. })
        ));
    }

    #[test]
    fn all_zero_usrhash_is_refused() {
        let err = parse(&format!("usrhash={}", "0".repeat(64))).unwrap_err();
        assert!(
            matches!(&err, Error::UsrhashInvalid { reason, .. } if reason == "all zero"),
            "{err}"
        );
    }

    #[test]
    fn flatcar_spelling_is_accepted() {
        let c = parse(&format!("verity.usrhash={H}")).unwrap();
        assert_eq!(c.usrhash.to_string(), H);
    }

    #[test]
    fn usrhash_uppercase_and_last_wins() {
        let other = "11".repeat(32);
        let c = parse(&format!("usrhash={other} usrhash={}", H.to_uppercase())).unwrap();
        assert_eq!(c.usrhash.to_string(), H);
    }

    #[test]
    fn verity_modes() {
        for (v, mode, opt) in [
            (
                "restart",
                VerityErrorMode::Restart,
                Some("restart_on_corruption"),
            ),
            ("panic", VerityErrorMode::Panic, Some("panic_on_corruption")),
            ("eio", VerityErrorMode::Eio, None),
            (
                "logging",
                VerityErrorMode::Logging,
                Some("ignore_corruption"),
            ),
        ] {
            let c = parse(&format!("usrhash={H} basalt.verity={v}")).unwrap();
            assert_eq!(c.verity_mode, mode);
            assert_eq!(c.verity_mode.table_option(), opt);
        }
        for bad in ["basalt.verity=reboot", "basalt.verity", "basalt.verity="] {
            let err = parse(&format!("usrhash={H} {bad}")).unwrap_err();
            assert!(
                matches!(&err, Error::CmdlineOptionInvalid { option, .. } if option == "basalt.verity"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn root_specs() {
        let u = "0fc63daf-8483-4772-8e79-3d69d8477de4";
        let c = parse(&format!("usrhash={H} basalt.root=PARTUUID={u}")).unwrap();
        assert_eq!(c.root, RootSpec::PartUuid(Guid::parse(u).unwrap()));
        let c = parse(&format!("usrhash={H} basalt.root=PARTLABEL=root")).unwrap();
        assert_eq!(c.root, RootSpec::PartLabel("root".into()));
        let c = parse(&format!("usrhash={H} \"basalt.root=PARTLABEL=my root\"")).unwrap();
        assert_eq!(c.root, RootSpec::PartLabel("my root".into()));
        for bad in [
            "basalt.root=/dev/vda9",
            "basalt.root=PARTUUID=nope",
            "basalt.root=PARTLABEL=",
            "basalt.root",
        ] {
            let err = parse(&format!("usrhash={H} {bad}")).unwrap_err();
            assert!(
                matches!(&err, Error::CmdlineOptionInvalid { option, .. } if option == "basalt.root"),
                "{bad}: {err}"
            );
        }
        let long = format!("basalt.root=PARTLABEL={}", "x".repeat(37));
        assert!(parse(&format!("usrhash={H} {long}")).is_err());
    }

    #[test]
    fn init_option() {
        let c = parse(&format!("usrhash={H} init=/sbin/init")).unwrap();
        assert_eq!(c.init, "/sbin/init");
        let c = parse(&format!("usrhash={H} init=\"/usr/bin/my init\"")).unwrap();
        assert_eq!(c.init, "/usr/bin/my init");
        for bad in ["init=sbin/init", "init=", "init"] {
            let err = parse(&format!("usrhash={H} {bad}")).unwrap_err();
            assert!(
                matches!(&err, Error::CmdlineOptionInvalid { option, .. } if option == "init"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn debug_flag() {
        assert!(parse(&format!("usrhash={H} basalt.debug")).unwrap().debug);
        assert!(parse(&format!("usrhash={H} basalt.debug=1")).unwrap().debug);
        assert!(
            !parse(&format!("basalt.debug usrhash={H} basalt.debug=0"))
                .unwrap()
                .debug
        );
        assert!(parse(&format!("usrhash={H} basalt.debug=maybe")).is_err());
        // A different option with the same prefix is not the flag.
        assert!(
            !parse(&format!("usrhash={H} basalt.debugger"))
                .unwrap()
                .debug
        );
    }

    #[test]
    fn boot_disk_option() {
        let u = "c0ffee00-1234-4321-8888-0123456789ab";
        assert_eq!(parse(&format!("usrhash={H}")).unwrap().boot_disk, None);
        let c = parse(&format!(
            "usrhash={H} basalt.bootdisk=PARTUUID={}",
            u.to_uppercase()
        ))
        .unwrap();
        assert_eq!(c.boot_disk, Some(Guid::parse(u).unwrap()));
        for bad in [
            "basalt.bootdisk",
            "basalt.bootdisk=",
            "basalt.bootdisk=/dev/vda",
            "basalt.bootdisk=PARTUUID=nope",
            "basalt.bootdisk=PARTLABEL=esp",
        ] {
            let err = parse(&format!("usrhash={H} {bad}")).unwrap_err();
            assert!(
                matches!(&err, Error::CmdlineOptionInvalid { option, .. } if option == "basalt.bootdisk"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn wait_option() {
        assert_eq!(
            parse(&format!("usrhash={H} basalt.wait=30"))
                .unwrap()
                .wait_secs,
            30
        );
        for bad in [
            "basalt.wait=0",
            "basalt.wait=601",
            "basalt.wait=ten",
            "basalt.wait",
        ] {
            assert!(parse(&format!("usrhash={H} {bad}")).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        #[test]
        fn parse_never_panics(s in "\\PC{0,200}") {
            let _ = Cmdline::parse(&s);
        }

        #[test]
        fn any_hash_round_trips(bytes in proptest::array::uniform32(0u8..)) {
            let h = basalt_identity::hex::encode(&bytes);
            let c = Cmdline::parse(&format!("ro usrhash={h} rw")).unwrap();
            proptest::prop_assert_eq!(c.usrhash.0, bytes);
        }
    }
}
