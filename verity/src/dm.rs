//! The pure half of the device-mapper ioctl interface: the bytes of `struct dm_ioctl`
//! requests (header + `struct dm_target_spec` payload), the parsing of replies, and the
//! dm-verity table line.
//!
//! This module never issues an ioctl: the caller (the initramfs) opens `/dev/mapper/control`,
//! passes [`encode_request`]'s buffer to `ioctl(fd, request_code(cmd), buf.as_mut_ptr())` and
//! hands the (kernel-rewritten) buffer back to [`DmHeader::decode`] or [`parse_table_status`].
//!
//! Layout (from `<linux/dm-ioctl.h>`, checked against the real header by
//! `tests/dm_kernel_header.rs`): `struct dm_ioctl` is 312 bytes, native endian (the kernel reads
//! it in the host's byte order; Basalt targets little-endian x86_64, and we encode with
//! `to_ne_bytes` so the bytes are right on any host).
//!
//! A typical activation, as the initramfs does it:
//!
//! ```text
//! VERSION → DEV_CREATE(name) → TABLE_LOAD(name, DM_READONLY_FLAG, [verity target])
//!         → DEV_SUSPEND(name, flags 0 = resume: activates the loaded table) → /dev/dm-N
//! ```

use crate::error::{Error, Result};

/// `sizeof(struct dm_ioctl)`; also the `data_start` of every request we build (it is already a
/// multiple of 8, as the kernel requires for the target specs that follow).
pub const DM_IOCTL_SIZE: usize = 312;
/// `sizeof(struct dm_target_spec)`.
pub const DM_TARGET_SPEC_SIZE: usize = 40;
/// `DM_NAME_LEN`: device names hold at most 127 bytes plus the NUL.
pub const DM_NAME_LEN: usize = 128;
/// `DM_UUID_LEN`: device UUIDs hold at most 128 bytes plus the NUL.
pub const DM_UUID_LEN: usize = 129;
/// `DM_MAX_TYPE_NAME`: target type names hold at most 15 bytes plus the NUL.
pub const DM_MAX_TYPE_NAME: usize = 16;
/// The ioctl "type" byte of device-mapper (`DM_IOCTL`).
pub const DM_IOCTL_TYPE: u8 = 0xfd;
/// The interface version we send: major 4 is the only one; minor 0 asks for nothing newer
/// than the first 4.x kernel offered (the kernel answers with its own, e.g. 4.47.0).
pub const DM_VERSION: [u32; 3] = [4, 0, 0];

/// `DM_READONLY_FLAG`: load the table / create the device read-only.
pub const DM_READONLY_FLAG: u32 = 1;
/// `DM_SUSPEND_FLAG`: with DEV_SUSPEND, suspend; without it, resume (activate the table).
pub const DM_SUSPEND_FLAG: u32 = 1 << 1;
/// `DM_PERSISTENT_DEV_FLAG`: use the `dev` field as the requested device number.
pub const DM_PERSISTENT_DEV_FLAG: u32 = 1 << 3;
/// `DM_STATUS_TABLE_FLAG`: TABLE_STATUS returns the table lines instead of the status.
pub const DM_STATUS_TABLE_FLAG: u32 = 1 << 4;
/// `DM_ACTIVE_PRESENT_FLAG` (out): the device has an active table.
pub const DM_ACTIVE_PRESENT_FLAG: u32 = 1 << 5;
/// `DM_INACTIVE_PRESENT_FLAG` (out): the device has a loaded, inactive table.
pub const DM_INACTIVE_PRESENT_FLAG: u32 = 1 << 6;
/// `DM_BUFFER_FULL_FLAG` (out): the reply did not fit; retry with a larger buffer.
pub const DM_BUFFER_FULL_FLAG: u32 = 1 << 8;
/// `DM_UUID_FLAG`: address the device by UUID instead of by name.
pub const DM_UUID_FLAG: u32 = 1 << 14;
/// `DM_DATA_OUT_FLAG` (out): the reply carries data after the header.
pub const DM_DATA_OUT_FLAG: u32 = 1 << 16;

/// The device-mapper commands Basalt issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    /// `DM_VERSION` (nr 0): exchange interface versions.
    Version,
    /// `DM_DEV_CREATE` (nr 3): create an empty device.
    DevCreate,
    /// `DM_DEV_REMOVE` (nr 4): remove a device.
    DevRemove,
    /// `DM_DEV_SUSPEND` (nr 6): suspend (with [`DM_SUSPEND_FLAG`]) or resume a device.
    DevSuspend,
    /// `DM_TABLE_LOAD` (nr 9): load a table into the inactive slot.
    TableLoad,
    /// `DM_TABLE_STATUS` (nr 12): the status (or table) of each target.
    TableStatus,
}

impl Cmd {
    /// The command number (the `nr` of the ioctl).
    pub fn nr(self) -> u8 {
        match self {
            Cmd::Version => 0,
            Cmd::DevCreate => 3,
            Cmd::DevRemove => 4,
            Cmd::DevSuspend => 6,
            Cmd::TableLoad => 9,
            Cmd::TableStatus => 12,
        }
    }
}

/// The ioctl request number of `cmd`: `_IOWR(0xfd, nr, struct dm_ioctl)` with the generic
/// Linux encoding (dir in bits 30–31, size in bits 16–29, type in 8–15, nr in 0–7).
pub fn request_code(cmd: Cmd) -> u64 {
    const IOC_READ_WRITE: u64 = 3;
    (IOC_READ_WRITE << 30)
        | ((DM_IOCTL_SIZE as u64) << 16)
        | (u64::from(DM_IOCTL_TYPE) << 8)
        | u64::from(cmd.nr())
}

/// `struct dm_ioctl`, decoded. `name` and `uuid` are the NUL-terminated strings of the C
/// struct (without the NUL).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DmHeader {
    /// Interface version (in: ours; out: the kernel's).
    pub version: [u32; 3],
    /// Total size of the buffer, header included.
    pub data_size: u32,
    /// Offset of the payload from the start of the header.
    pub data_start: u32,
    /// Number of targets in the payload.
    pub target_count: u32,
    /// Open count of the device (out).
    pub open_count: i32,
    /// `DM_*_FLAG` bits.
    pub flags: u32,
    /// Event number (or udev cookie).
    pub event_nr: u32,
    /// Device number, huge encoding (see [`decode_dev`]).
    pub dev: u64,
    /// Device name (at most 127 bytes).
    pub name: String,
    /// Device UUID (at most 128 bytes).
    pub uuid: String,
}

// Field offsets inside `struct dm_ioctl` (checked against the kernel header in tests).
const OFF_VERSION: usize = 0;
const OFF_DATA_SIZE: usize = 12;
const OFF_DATA_START: usize = 16;
const OFF_TARGET_COUNT: usize = 20;
const OFF_OPEN_COUNT: usize = 24;
const OFF_FLAGS: usize = 28;
const OFF_EVENT_NR: usize = 32;
const OFF_DEV: usize = 40;
const OFF_NAME: usize = 48;
const OFF_UUID: usize = 176;

fn put_u32(buf: &mut [u8], off: usize, v: u32) {
    buf[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

fn get_u32(buf: &[u8], off: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[off..off + 4]);
    u32::from_ne_bytes(b)
}

fn get_u64(buf: &[u8], off: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[off..off + 8]);
    u64::from_ne_bytes(b)
}

/// Copy `s` into a fixed C char array of `cap` bytes, leaving room for the NUL.
fn put_cstr(buf: &mut [u8], off: usize, cap: usize, s: &str, field: &'static str) -> Result<()> {
    let bytes = s.as_bytes();
    if bytes.contains(&0) {
        return Err(Error::DmEncode {
            field,
            reason: "contains a NUL byte".into(),
        });
    }
    if bytes.len() >= cap {
        return Err(Error::DmEncode {
            field,
            reason: format!("{} bytes, at most {} allowed", bytes.len(), cap - 1),
        });
    }
    buf[off..off + bytes.len()].copy_from_slice(bytes);
    Ok(())
}

/// Read a NUL-terminated string from a fixed C char array (a missing NUL is an error: the
/// kernel always terminates them).
fn get_cstr(buf: &[u8], field: &str) -> Result<String> {
    let end = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| Error::DmDecode {
            reason: format!("{field} is not NUL-terminated"),
        })?;
    String::from_utf8(buf[..end].to_vec()).map_err(|_| Error::DmDecode {
        reason: format!("{field} is not UTF-8"),
    })
}

impl DmHeader {
    /// The 312 bytes of this header. Fails if `name` or `uuid` do not fit or contain a NUL.
    pub fn encode(&self) -> Result<[u8; DM_IOCTL_SIZE]> {
        let mut buf = [0u8; DM_IOCTL_SIZE];
        for (i, v) in self.version.iter().enumerate() {
            put_u32(&mut buf, OFF_VERSION + 4 * i, *v);
        }
        put_u32(&mut buf, OFF_DATA_SIZE, self.data_size);
        put_u32(&mut buf, OFF_DATA_START, self.data_start);
        put_u32(&mut buf, OFF_TARGET_COUNT, self.target_count);
        buf[OFF_OPEN_COUNT..OFF_OPEN_COUNT + 4].copy_from_slice(&self.open_count.to_ne_bytes());
        put_u32(&mut buf, OFF_FLAGS, self.flags);
        put_u32(&mut buf, OFF_EVENT_NR, self.event_nr);
        buf[OFF_DEV..OFF_DEV + 8].copy_from_slice(&self.dev.to_ne_bytes());
        put_cstr(&mut buf, OFF_NAME, DM_NAME_LEN, &self.name, "name")?;
        put_cstr(&mut buf, OFF_UUID, DM_UUID_LEN, &self.uuid, "uuid")?;
        Ok(buf)
    }

    /// Decode the header at the start of `buf` (a reply buffer may be longer).
    pub fn decode(buf: &[u8]) -> Result<Self> {
        if buf.len() < DM_IOCTL_SIZE {
            return Err(Error::DmDecode {
                reason: format!("header needs {DM_IOCTL_SIZE} bytes, got {}", buf.len()),
            });
        }
        let mut open = [0u8; 4];
        open.copy_from_slice(&buf[OFF_OPEN_COUNT..OFF_OPEN_COUNT + 4]);
        Ok(DmHeader {
            version: [
                get_u32(buf, OFF_VERSION),
                get_u32(buf, OFF_VERSION + 4),
                get_u32(buf, OFF_VERSION + 8),
            ],
            data_size: get_u32(buf, OFF_DATA_SIZE),
            data_start: get_u32(buf, OFF_DATA_START),
            target_count: get_u32(buf, OFF_TARGET_COUNT),
            open_count: i32::from_ne_bytes(open),
            flags: get_u32(buf, OFF_FLAGS),
            event_nr: get_u32(buf, OFF_EVENT_NR),
            dev: get_u64(buf, OFF_DEV),
            name: get_cstr(&buf[OFF_NAME..OFF_NAME + DM_NAME_LEN], "name")?,
            uuid: get_cstr(&buf[OFF_UUID..OFF_UUID + DM_UUID_LEN], "uuid")?,
        })
    }
}

/// One line of a device-mapper table: `sector_start length target_type params`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// First sector (512 bytes) of the mapped device this target covers.
    pub sector_start: u64,
    /// Length in sectors.
    pub length: u64,
    /// Target type, e.g. `verity` (at most 15 bytes).
    pub target_type: String,
    /// Parameters (in a TABLE_LOAD), or the status string (in a TABLE_STATUS reply).
    pub params: String,
}

fn align8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

/// Build a request: header + target specs in one buffer of `max(needed, buffer_size)` bytes
/// (the extra room receives the kernel's reply). The header has `version` [`DM_VERSION`],
/// `data_size` = buffer length, `data_start` = 312, `target_count` = `targets.len()`.
///
/// Each `struct dm_target_spec` is followed by its NUL-terminated params padded to 8 bytes;
/// its `next` field is the distance to the next spec (the TABLE_LOAD convention).
pub fn encode_request(
    cmd: Cmd,
    name: &str,
    flags: u32,
    targets: &[Target],
    buffer_size: usize,
) -> Result<Vec<u8>> {
    // `cmd` selects nothing in the bytes (the request code carries it); it is part of the
    // signature so callers keep request and code together, and for the checks below.
    if !targets.is_empty() && cmd != Cmd::TableLoad {
        return Err(Error::DmEncode {
            field: "targets",
            reason: format!("{cmd:?} takes no targets"),
        });
    }
    let mut payload = Vec::new();
    for t in targets {
        let params = t.params.as_bytes();
        if params.contains(&0) {
            return Err(Error::DmEncode {
                field: "params",
                reason: "contains a NUL byte".into(),
            });
        }
        let spec_len = align8(DM_TARGET_SPEC_SIZE + params.len() + 1);
        let next = u32::try_from(spec_len).map_err(|_| Error::DmEncode {
            field: "params",
            reason: format!("{} bytes is too long", params.len()),
        })?;
        let start = payload.len();
        payload.resize(start + spec_len, 0);
        let spec = &mut payload[start..];
        spec[0..8].copy_from_slice(&t.sector_start.to_ne_bytes());
        spec[8..16].copy_from_slice(&t.length.to_ne_bytes());
        // status (i32) at 16 stays 0: it is only written by the kernel.
        put_u32(spec, 20, next);
        put_cstr(spec, 24, DM_MAX_TYPE_NAME, &t.target_type, "target_type")?;
        spec[DM_TARGET_SPEC_SIZE..DM_TARGET_SPEC_SIZE + params.len()].copy_from_slice(params);
    }
    let total = (DM_IOCTL_SIZE + payload.len()).max(buffer_size);
    let data_size = u32::try_from(total).map_err(|_| Error::DmEncode {
        field: "data_size",
        reason: format!("{total} bytes does not fit in 32 bits"),
    })?;
    let target_count = u32::try_from(targets.len()).map_err(|_| Error::DmEncode {
        field: "target_count",
        reason: "too many targets".into(),
    })?;
    let header = DmHeader {
        version: DM_VERSION,
        data_size,
        data_start: DM_IOCTL_SIZE as u32,
        target_count,
        flags,
        name: name.to_string(),
        ..DmHeader::default()
    };
    let mut buf = Vec::with_capacity(total);
    buf.extend_from_slice(&header.encode()?);
    buf.extend_from_slice(&payload);
    buf.resize(total, 0);
    Ok(buf)
}

/// Split a huge-encoded `dev_t` (as in the `dev` field of replies) into (major, minor).
pub fn decode_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32;
    (major, minor)
}

/// Parse the reply of a TABLE_STATUS (the whole buffer, header included). Each returned
/// target's `params` is its status string (for verity: `V` verified so far, `C` corruption
/// seen), or its table line when the request had [`DM_STATUS_TABLE_FLAG`].
///
/// In replies, each spec's `next` counts from the start of the *first* spec (the kernel's
/// `retrieve_status`), unlike requests.
pub fn parse_table_status(reply: &[u8]) -> Result<Vec<Target>> {
    let header = DmHeader::decode(reply)?;
    if header.flags & DM_BUFFER_FULL_FLAG != 0 {
        return Err(Error::DmDecode {
            reason: "the kernel set DM_BUFFER_FULL_FLAG: retry with a larger buffer".into(),
        });
    }
    let bad = |reason: String| Error::DmDecode { reason };
    let data_start = header.data_start as usize;
    let data_end = (header.data_size as usize).min(reply.len());
    if data_start < DM_IOCTL_SIZE || data_start > data_end {
        return Err(bad(format!(
            "data_start {data_start} outside the reply (data_size {data_end})"
        )));
    }
    let area = &reply[data_start..data_end];
    let mut targets = Vec::new();
    let mut offset = 0usize;
    for i in 0..header.target_count {
        let spec_end = offset
            .checked_add(DM_TARGET_SPEC_SIZE)
            .filter(|&e| e <= area.len())
            .ok_or_else(|| bad(format!("target {i} spec at {offset} past the end")))?;
        let spec = &area[offset..spec_end];
        let rest = &area[spec_end..];
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| bad(format!("target {i} status is not NUL-terminated")))?;
        let params = String::from_utf8(rest[..nul].to_vec())
            .map_err(|_| bad(format!("target {i} status is not UTF-8")))?;
        targets.push(Target {
            sector_start: get_u64(spec, 0),
            length: get_u64(spec, 8),
            target_type: get_cstr(&spec[24..40], "target_type")?,
            params,
        });
        let next = get_u32(spec, 20) as usize;
        if i + 1 < header.target_count && next <= offset {
            return Err(bad(format!(
                "target {i} next offset {next} does not advance"
            )));
        }
        offset = next;
    }
    Ok(targets)
}

/// A dm-verity table (format version 1), e.g. for `0 <data_blocks*8> verity 1 /dev/vda3
/// /dev/vda3 4096 4096 <data_blocks> <hash_start> sha256 <root> <salt>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityTable {
    /// The data device (path such as `/dev/vda3`, or `major:minor`).
    pub data_dev: String,
    /// The hash device (may equal `data_dev` when the tree is appended to the data).
    pub hash_dev: String,
    /// Data block size in bytes (4096 for Basalt).
    pub data_block_size: u32,
    /// Hash block size in bytes (4096 for Basalt).
    pub hash_block_size: u32,
    /// Number of data blocks covered.
    pub data_blocks: u64,
    /// Hash-block index (in `hash_block_size` units) on `hash_dev` where the tree's first
    /// block is: with veritysetup's superblock at byte offset H of the hash device this is
    /// `H / hash_block_size + 1`.
    pub hash_start_block: u64,
    /// Hash algorithm name as the kernel knows it (`sha256`).
    pub algorithm: String,
    /// The root hash.
    pub root_hash: Vec<u8>,
    /// The salt (empty = no salt, written as `-`).
    pub salt: Vec<u8>,
    /// Optional arguments, one word each (e.g. `restart_on_corruption`,
    /// `ignore_zero_blocks`); the count written before them is `options.len()`.
    pub options: Vec<String>,
}

impl VerityTable {
    /// The parameter string of the `verity` target.
    pub fn params(&self) -> String {
        let salt = if self.salt.is_empty() {
            "-".to_string()
        } else {
            hex::encode(&self.salt)
        };
        let mut s = format!(
            "1 {} {} {} {} {} {} {} {} {}",
            self.data_dev,
            self.hash_dev,
            self.data_block_size,
            self.hash_block_size,
            self.data_blocks,
            self.hash_start_block,
            self.algorithm,
            hex::encode(&self.root_hash),
            salt
        );
        if !self.options.is_empty() {
            s.push_str(&format!(" {}", self.options.len()));
            for o in &self.options {
                s.push(' ');
                s.push_str(o);
            }
        }
        s
    }

    /// The whole-device target: sector 0, `data_blocks * data_block_size / 512` sectors.
    pub fn target(&self) -> Target {
        Target {
            sector_start: 0,
            length: self.data_blocks * u64::from(self.data_block_size / 512),
            target_type: "verity".to_string(),
            params: self.params(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_codes_follow_iowr() {
        // _IOWR(0xfd, 9, 312) = 0xc000_0000 | 312 << 16 | 0xfd << 8 | 9.
        assert_eq!(request_code(Cmd::TableLoad), 0xc138_fd09);
        assert_eq!(request_code(Cmd::Version), 0xc138_fd00);
    }

    #[test]
    fn header_round_trips() {
        let h = DmHeader {
            version: [4, 47, 0],
            data_size: 16384,
            data_start: 312,
            target_count: 1,
            open_count: -1,
            flags: DM_READONLY_FLAG | DM_DATA_OUT_FLAG,
            event_nr: 7,
            dev: 0xfd00,
            name: "usr".into(),
            uuid: "BASALT-usr-a".into(),
        };
        let bytes = h.encode().expect("encode");
        assert_eq!(DmHeader::decode(&bytes).expect("decode"), h);
    }

    #[test]
    fn header_rejects_long_or_nul_names() {
        let mut h = DmHeader {
            name: "x".repeat(127),
            ..Default::default()
        };
        assert!(h.encode().is_ok());
        h.name = "x".repeat(128);
        assert!(h.encode().is_err());
        h.name = "a\0b".into();
        assert!(h.encode().is_err());
        h.name.clear();
        h.uuid = "u".repeat(129);
        assert!(h.encode().is_err());
    }

    #[test]
    fn decode_rejects_short_and_unterminated() {
        assert!(DmHeader::decode(&[0u8; 311]).is_err());
        let mut b = [0u8; DM_IOCTL_SIZE];
        b[OFF_NAME..OFF_NAME + DM_NAME_LEN].fill(b'a');
        assert!(DmHeader::decode(&b).is_err());
    }

    #[test]
    fn table_load_bytes() {
        let t = Target {
            sector_start: 0,
            length: 16,
            target_type: "verity".into(),
            params: "abc".into(),
        };
        let buf = encode_request(Cmd::TableLoad, "usr", DM_READONLY_FLAG, &[t], 0).expect("encode");
        // 312 header + 40 spec + "abc\0" padded to 8 = 360.
        assert_eq!(buf.len(), 360);
        let h = DmHeader::decode(&buf).expect("decode");
        assert_eq!(h.data_size, 360);
        assert_eq!(h.data_start, 312);
        assert_eq!(h.target_count, 1);
        assert_eq!(h.flags, 1);
        assert_eq!(h.version, [4, 0, 0]);
        assert_eq!(&buf[48..52], b"usr\0");
        let spec = &buf[312..];
        assert_eq!(&spec[0..8], &0u64.to_ne_bytes());
        assert_eq!(&spec[8..16], &16u64.to_ne_bytes());
        assert_eq!(&spec[16..20], &0i32.to_ne_bytes());
        assert_eq!(&spec[20..24], &48u32.to_ne_bytes());
        assert_eq!(&spec[24..40], b"verity\0\0\0\0\0\0\0\0\0\0");
        assert_eq!(&spec[40..48], b"abc\0\0\0\0\0");
    }

    #[test]
    fn request_buffer_is_padded_to_requested_size() {
        let buf = encode_request(Cmd::TableStatus, "usr", 0, &[], 16384).expect("encode");
        assert_eq!(buf.len(), 16384);
        assert_eq!(DmHeader::decode(&buf).expect("decode").data_size, 16384);
        assert!(encode_request(
            Cmd::DevCreate,
            "usr",
            0,
            &[Target {
                sector_start: 0,
                length: 1,
                target_type: "zero".into(),
                params: String::new()
            }],
            0
        )
        .is_err());
    }

    #[test]
    fn devs_decode_huge_encoding() {
        // new_encode_dev(MKDEV(253, 0)) = 0xfd00; MKDEV(259, 300): minor 300 = 0x12c.
        assert_eq!(decode_dev(0xfd00), (253, 0));
        let dev = (0x2c) | (259 << 8) | ((0x100u64) << 12);
        assert_eq!(decode_dev(dev), (259, 300));
    }

    /// Build a reply the way the kernel's `retrieve_status` lays it out.
    fn fake_status_reply(statuses: &[(&str, &str)], flags: u32) -> Vec<u8> {
        let mut area = Vec::new();
        for (i, (ty, st)) in statuses.iter().enumerate() {
            let start = area.len();
            area.resize(start + DM_TARGET_SPEC_SIZE, 0);
            area[start..start + 8].copy_from_slice(&(i as u64 * 8).to_ne_bytes());
            area[start + 8..start + 16].copy_from_slice(&8u64.to_ne_bytes());
            area[start + 24..start + 24 + ty.len()].copy_from_slice(ty.as_bytes());
            area.extend_from_slice(st.as_bytes());
            area.push(0);
            area.resize(align8(area.len()), 0);
            let next = area.len() as u32;
            area[start + 20..start + 24].copy_from_slice(&next.to_ne_bytes());
        }
        let h = DmHeader {
            version: [4, 47, 0],
            data_size: (DM_IOCTL_SIZE + area.len()) as u32,
            data_start: DM_IOCTL_SIZE as u32,
            target_count: statuses.len() as u32,
            flags,
            name: "usr".into(),
            ..Default::default()
        };
        let mut buf = h.encode().expect("encode").to_vec();
        buf.extend_from_slice(&area);
        buf.resize(buf.len() + 64, 0xaa); // unused tail of the buffer
        buf
    }

    #[test]
    fn table_status_parses_verity_status() {
        let reply = fake_status_reply(&[("verity", "V"), ("linear", "")], DM_DATA_OUT_FLAG);
        let t = parse_table_status(&reply).expect("parse");
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].target_type, "verity");
        assert_eq!(t[0].params, "V");
        assert_eq!(t[1].sector_start, 8);
        assert_eq!(t[1].target_type, "linear");
        assert_eq!(t[1].params, "");
    }

    #[test]
    fn table_status_rejects_bad_replies() {
        let reply = fake_status_reply(&[("verity", "C")], DM_BUFFER_FULL_FLAG);
        assert!(parse_table_status(&reply).is_err());
        let mut reply = fake_status_reply(&[("verity", "C")], 0);
        // Claim two targets: the second would start past the data.
        reply[OFF_TARGET_COUNT..OFF_TARGET_COUNT + 4].copy_from_slice(&2u32.to_ne_bytes());
        assert!(parse_table_status(&reply).is_err());
        // Truncated in the middle of the first spec.
        let reply = fake_status_reply(&[("verity", "C")], 0);
        assert!(parse_table_status(&reply[..DM_IOCTL_SIZE + 20]).is_err());
    }

    #[test]
    fn verity_table_line() {
        let t = VerityTable {
            data_dev: "/dev/vda3".into(),
            hash_dev: "/dev/vda3".into(),
            data_block_size: 4096,
            hash_block_size: 4096,
            data_blocks: 10,
            hash_start_block: 11,
            algorithm: "sha256".into(),
            root_hash: vec![0xab; 32],
            salt: vec![],
            options: vec!["restart_on_corruption".into()],
        };
        let target = t.target();
        assert_eq!(target.length, 80);
        assert_eq!(target.target_type, "verity");
        assert_eq!(
            target.params,
            format!(
                "1 /dev/vda3 /dev/vda3 4096 4096 10 11 sha256 {} - 1 restart_on_corruption",
                "ab".repeat(32)
            )
        );
        let salted = VerityTable {
            salt: vec![1, 2],
            options: vec![],
            ..t
        };
        assert!(salted.params().ends_with(" 0102"));
    }
}
