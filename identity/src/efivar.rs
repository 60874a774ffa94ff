//! EFI variables as the kernel's efivarfs shows them: `<Name>-<vendor GUID>` files whose
//! first 4 bytes are the attributes (little-endian) and the rest the value.
//!
//! Two are read at boot:
//! - `LoaderDevicePartUUID` (systemd-boot's vendor GUID): the partition UUID of the ESP the
//!   boot loader was started from — how `basalt-init` knows which disk it booted from
//!   (systemd's own gpt-auto generator does the same). systemd-boot sets it volatile on
//!   every boot; a non-volatile one was not written by the loader (someone with root could
//!   have planted it to survive reboots) and is refused.
//! - `BasaltUsrFloor` (Basalt's vendor GUID): the lowest `/usr` version this machine may
//!   boot, raised by the updater once a newer release is blessed; `basalt-init` refuses a
//!   `/usr` whose signed version is below it. Stored in the machine's NVRAM, not on the disk,
//!   so an offline edit of the disk, a re-attached old disk or a USB stick cannot lower it.
//!   (Root on a running node can: efivarfs is writable by root. Closing that needs a TPM
//!   NV counter; see SECURITY.md.)
//!
//! Reading only, std only: writing needs the `FS_IOC_SETFLAGS` ioctl (efivarfs marks
//! variables immutable) and lives in `basalt-initramfs` (`floor`, `failrec`), which the
//! updater links for the same reason.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::guid::{guid, Guid};

/// Where efivarfs is mounted.
pub const EFIVARS_DIR: &str = "/sys/firmware/efi/efivars";
/// systemd-boot's vendor GUID (`LoaderInfo`, `LoaderDevicePartUUID`, …).
pub const LOADER_VENDOR: Guid = guid("4a67b082-0a4c-41cf-b6c7-440b29bb8c4f");
/// The ESP partition UUID the boot loader was started from.
pub const LOADER_DEVICE_PART_UUID: &str = "LoaderDevicePartUUID";
/// Basalt's vendor GUID for its own variables.
pub const BASALT_VENDOR: Guid = guid("009957d3-23b2-474e-b6a0-3215a257ae44");
/// The `/usr` version floor.
pub const USR_FLOOR: &str = "BasaltUsrFloor";
/// Attribute: kept across resets.
pub const NON_VOLATILE: u32 = 0x1;
/// Attribute: readable by boot services.
pub const BOOTSERVICE_ACCESS: u32 = 0x2;
/// Attribute: readable by the OS.
pub const RUNTIME_ACCESS: u32 = 0x4;
/// The attributes the floor is written with.
pub const FLOOR_ATTRIBUTES: u32 = NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS;
/// Largest variable read (value and attributes); both of ours are far smaller.
pub const MAX_VARIABLE_BYTES: u64 = 4096;
/// Longest floor value accepted (a semver version).
pub const MAX_FLOOR_BYTES: usize = 64;

/// A variable's attributes and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    /// The attribute bits.
    pub attributes: u32,
    /// The value.
    pub data: Vec<u8>,
}

/// The efivarfs file of variable `name` of `vendor` under `dir`.
pub fn path(dir: &Path, name: &str, vendor: Guid) -> PathBuf {
    dir.join(format!("{name}-{vendor}"))
}

/// Read variable `name` of `vendor` from efivarfs mounted at `dir`: `Ok(None)` when it does
/// not exist. At most [`MAX_VARIABLE_BYTES`] are read.
pub fn read(dir: &Path, name: &str, vendor: Guid) -> Result<Option<Variable>, Error> {
    let path = path(dir, name, vendor);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(Error::ReadEfiVariable { path, source }),
    };
    let mut bytes = Vec::new();
    file.take(MAX_VARIABLE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| Error::ReadEfiVariable {
            path: path.clone(),
            source,
        })?;
    decode(&bytes)
        .map(Some)
        .map_err(|reason| Error::EfiVariableInvalid { path, reason })
}

/// Split an efivarfs file's bytes into attributes and value.
pub fn decode(bytes: &[u8]) -> Result<Variable, String> {
    if bytes.len() as u64 > MAX_VARIABLE_BYTES {
        return Err(format!("longer than {MAX_VARIABLE_BYTES} bytes"));
    }
    let Some((attrs, data)) = bytes.split_first_chunk::<4>() else {
        return Err(format!(
            "{} bytes, shorter than its attributes",
            bytes.len()
        ));
    };
    Ok(Variable {
        attributes: u32::from_le_bytes(*attrs),
        data: data.to_vec(),
    })
}

/// The efivarfs file content for a variable: attributes then value.
pub fn encode(attributes: u32, data: &[u8]) -> Vec<u8> {
    let mut out = attributes.to_le_bytes().to_vec();
    out.extend_from_slice(data);
    out
}

/// A UTF-16LE string value (as systemd-boot writes them), without its trailing NUL.
pub fn utf16_string(data: &[u8]) -> Result<String, String> {
    if data.len() % 2 != 0 {
        return Err(format!("odd length {} for UTF-16", data.len()));
    }
    let mut units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    if units.last() == Some(&0) {
        units.pop();
    }
    String::from_utf16(&units).map_err(|_| "not valid UTF-16".to_owned())
}

/// The partition UUID of the ESP the boot loader was started from, from
/// `LoaderDevicePartUUID` under `dir`; `Ok(None)` when the loader did not set it (direct
/// kernel boot, another loader). A non-volatile variable is refused (see the module docs).
pub fn loader_device_part_uuid(dir: &Path) -> Result<Option<Guid>, Error> {
    let Some(var) = read(dir, LOADER_DEVICE_PART_UUID, LOADER_VENDOR)? else {
        return Ok(None);
    };
    let invalid = |reason: String| Error::EfiVariableInvalid {
        path: path(dir, LOADER_DEVICE_PART_UUID, LOADER_VENDOR),
        reason,
    };
    if var.attributes & NON_VOLATILE != 0 {
        return Err(invalid(format!(
            "attributes {:#x} include NON_VOLATILE: the boot loader sets it volatile on every boot",
            var.attributes
        )));
    }
    let text = utf16_string(&var.data).map_err(invalid)?;
    Guid::parse(text.trim())
        .map(Some)
        .map_err(|e| invalid(e.to_string()))
}

/// The `/usr` version floor under `dir`, as text (the caller parses the version);
/// `Ok(None)` when none was ever set. Printable ASCII, at most [`MAX_FLOOR_BYTES`].
pub fn usr_floor(dir: &Path) -> Result<Option<String>, Error> {
    let Some(var) = read(dir, USR_FLOOR, BASALT_VENDOR)? else {
        return Ok(None);
    };
    let invalid = |reason: String| Error::EfiVariableInvalid {
        path: path(dir, USR_FLOOR, BASALT_VENDOR),
        reason,
    };
    if var.data.is_empty()
        || var.data.len() > MAX_FLOOR_BYTES
        || !var.data.iter().all(|b| b.is_ascii_graphic())
    {
        return Err(invalid(format!(
            "value of {} bytes is not a version (1 to {MAX_FLOOR_BYTES} printable ASCII characters)",
            var.data.len()
        )));
    }
    Ok(Some(String::from_utf8_lossy(&var.data).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf16(text: &str) -> Vec<u8> {
        text.encode_utf16()
            .chain([0])
            .flat_map(u16::to_le_bytes)
            .collect()
    }

    fn dir_with(files: &[(String, Vec<u8>)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "basalt-identity-efivar-{}-{}",
            std::process::id(),
            files.len() + files.first().map_or(0, |f| f.1.len() * 7 + f.0.len())
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in files {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        dir
    }

    #[test]
    fn loader_part_uuid_as_systemd_boot_writes_it() {
        let name = format!("{LOADER_DEVICE_PART_UUID}-{LOADER_VENDOR}");
        let uuid = "C0FFEE00-1234-4321-8888-0123456789AB";
        let dir = dir_with(&[(name.clone(), encode(6, &utf16(uuid)))]);
        assert_eq!(
            loader_device_part_uuid(&dir).unwrap(),
            Some(Guid::parse(uuid).unwrap())
        );
        // Planted non-volatile: refused.
        std::fs::write(dir.join(&name), encode(7, &utf16(uuid))).unwrap();
        let err = loader_device_part_uuid(&dir).unwrap_err().to_string();
        assert!(err.contains("NON_VOLATILE"), "{err}");
        for bad in [encode(6, b"x"), encode(6, &utf16("not-a-guid")), vec![6, 0]] {
            std::fs::write(dir.join(&name), bad).unwrap();
            assert!(loader_device_part_uuid(&dir).is_err());
        }
        std::fs::remove_file(dir.join(&name)).unwrap();
        assert_eq!(loader_device_part_uuid(&dir).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn floor_values() {
        let name = format!("{USR_FLOOR}-{BASALT_VENDOR}");
        let dir = dir_with(&[(name.clone(), encode(FLOOR_ATTRIBUTES, b"2.0.0"))]);
        assert_eq!(usr_floor(&dir).unwrap().as_deref(), Some("2.0.0"));
        for bad in [
            encode(7, b""),
            encode(7, b"2.0.0 "),
            encode(7, &[b'1'; 65]),
            encode(7, b"2.0\n"),
        ] {
            std::fs::write(dir.join(&name), bad).unwrap();
            assert!(usr_floor(&dir).is_err());
        }
        std::fs::write(dir.join(&name), vec![b'1'; 5000]).unwrap();
        assert!(usr_floor(&dir).unwrap_err().to_string().contains("longer"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(usr_floor(&dir).unwrap(), None);
    }

    #[test]
    fn utf16_strings() {
        assert_eq!(utf16_string(&utf16("abc")).unwrap(), "abc");
        assert_eq!(utf16_string(b"a\0b\0").unwrap(), "ab");
        assert!(utf16_string(b"abc").is_err());
        assert!(utf16_string(&[0x00, 0xd8]).is_err());
    }
}
