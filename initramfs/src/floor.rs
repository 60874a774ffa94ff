//! The machine's `/usr` version floor, as the updater raises it: the EFI variable
//! `BasaltUsrFloor` (`basalt_identity::efivar`), which basalt-init reads before mounting
//! anything and against which it checks the signed version of the `/usr` it is asked to
//! boot (below the floor: refused, `usr-below-floor`).
//!
//! When to raise it (the updater's contract): after a release is **blessed** (its health
//! checks passed and its boot entry lost the `+tries` counter), raise the floor to that
//! release's version — or to the release manifest's own floor if it names a lower one the
//! operator still wants to be able to roll back to. Never before blessing: the floor must not
//! make the previous, known-good slot unbootable while the new one is still on trial.
//!
//! Why an EFI variable: it lives in the machine's NVRAM, so a disk edited offline, a
//! re-attached old disk or a USB stick carrying an old signed release cannot lower it; and
//! basalt-init can read it before any disk is trusted. What it does not stop: root on the
//! running node can write efivarfs (see SECURITY.md; a TPM NV counter would close that).
//! On a BIOS or direct kernel boot there are no EFI variables: only the initramfs's own
//! `min-usr-version` applies.
//!
//! Only raising is offered: a lower or equal version leaves the variable untouched.
//!
//! Here, next to `failrec`, because both write Basalt's EFI variables through efivarfs (the
//! immutable flag: `sys::set_immutable`) and the updater links this crate for `failrec`'s
//! reader already; basalt-init itself only reads the floor (`basalt_identity::efivar`).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use basalt_identity::efivar;
use basalt_manifest::semver::Version;

use crate::error::Error;

/// What [`raise_usr_floor`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FloorChange {
    /// The floor was already at or above the version; nothing written.
    Unchanged {
        /// The floor in place.
        floor: Version,
    },
    /// The floor was raised (from nothing, an unreadable value, or a lower version).
    Raised {
        /// The previous floor, when there was a readable one.
        from: Option<Version>,
        /// The new floor.
        to: Version,
    },
}

/// The floor currently set under efivarfs mounted at `efivars` (normally
/// `basalt_identity::efivar::EFIVARS_DIR`); `None` when unset. An unparseable value reads as
/// unset (basalt-init ignores it the same way).
pub fn usr_floor(efivars: &Path) -> Result<Option<Version>, Error> {
    match efivar::usr_floor(efivars) {
        Ok(text) => Ok(text.and_then(|t| Version::parse(&t).ok())),
        Err(basalt_identity::Error::EfiVariableInvalid { .. }) => Ok(None),
        Err(e) => Err(Error::UsrFloor {
            path: efivar::path(efivars, efivar::USR_FLOOR, efivar::BASALT_VENDOR),
            reason: e.to_string(),
        }),
    }
}

/// Raise the floor to `version` if it is higher than the current one (see the module docs
/// for when). Touches the variable only when raising.
pub fn raise_usr_floor(efivars: &Path, version: &Version) -> Result<FloorChange, Error> {
    // Garbage reads as unset and is replaced: basalt-init ignores it the same way.
    let current = usr_floor(efivars)?;
    if let Some(floor) = current.as_ref().filter(|f| *f >= version) {
        return Ok(FloorChange::Unchanged {
            floor: floor.clone(),
        });
    }
    let path = efivar::path(efivars, efivar::USR_FLOOR, efivar::BASALT_VENDOR);
    let io = |operation| {
        let path = path.clone();
        move |source| Error::Fs {
            operation,
            path,
            source,
        }
    };
    if path.exists() {
        crate::sys::set_immutable(&path, false).map_err(io("making writable (chattr -i)"))?;
    }
    // efivarfs takes the attributes and the whole value in one write(2), which replaces the
    // variable; it has no use for O_TRUNC. Any other file system (tests) needs it.
    let bytes = efivar::encode(efivar::FLOOR_ATTRIBUTES, version.to_string().as_bytes());
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(!is_efivarfs(efivars))
        .open(&path)
        .map_err(io("opening EFI variable"))?;
    let n = f.write(&bytes).map_err(io("writing EFI variable"))?;
    if n != bytes.len() {
        return Err(Error::UsrFloor {
            path,
            reason: format!("short write: {n} of {} bytes", bytes.len()),
        });
    }
    Ok(FloorChange::Raised {
        from: current,
        to: version.clone(),
    })
}

/// Whether `dir` is an efivarfs mount (`EFIVARFS_MAGIC`).
fn is_efivarfs(dir: &Path) -> bool {
    const EFIVARFS_MAGIC: i64 = 0xde5e_81e4;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we pass; `c` is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == EFIVARFS_MAGIC }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn raises_only_upwards_and_writes_what_basalt_init_reads() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        assert_eq!(usr_floor(dir).unwrap(), None);
        assert_eq!(
            raise_usr_floor(dir, &v("2.0.0")).unwrap(),
            FloorChange::Raised {
                from: None,
                to: v("2.0.0")
            }
        );
        let file = efivar::path(dir, efivar::USR_FLOOR, efivar::BASALT_VENDOR);
        let raw = std::fs::read(&file).unwrap();
        assert_eq!(raw, efivar::encode(7, b"2.0.0"));
        // What basalt-init reads (basalt-identity's reader).
        assert_eq!(efivar::usr_floor(dir).unwrap().as_deref(), Some("2.0.0"));
        for lower in ["1.9.9", "2.0.0", "2.0.0-rc.1"] {
            assert_eq!(
                raise_usr_floor(dir, &v(lower)).unwrap(),
                FloorChange::Unchanged { floor: v("2.0.0") }
            );
        }
        assert_eq!(std::fs::read(&file).unwrap(), raw);
        assert_eq!(
            raise_usr_floor(dir, &v("10.0.0")).unwrap(),
            FloorChange::Raised {
                from: Some(v("2.0.0")),
                to: v("10.0.0")
            }
        );
        assert_eq!(usr_floor(dir).unwrap(), Some(v("10.0.0")));
    }

    #[test]
    fn garbage_is_replaced() {
        let t = tempfile::tempdir().unwrap();
        let file = efivar::path(t.path(), efivar::USR_FLOOR, efivar::BASALT_VENDOR);
        std::fs::write(&file, efivar::encode(7, b"not a version")).unwrap();
        assert_eq!(usr_floor(t.path()).unwrap(), None);
        std::fs::write(&file, vec![7u8; 5000]).unwrap();
        assert!(matches!(
            raise_usr_floor(t.path(), &v("1.0.0")).unwrap(),
            FloorChange::Raised { from: None, .. }
        ));
        assert_eq!(usr_floor(t.path()).unwrap(), Some(v("1.0.0")));
    }
}
