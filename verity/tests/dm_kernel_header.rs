//! Peer check of `basalt_verity::dm` against the real kernel UAPI header: compile a C program
//! that includes `<linux/dm-ioctl.h>` and prints sizes, offsets and ioctl numbers, then compare.

use std::process::Command;

use basalt_verity::dm::{self, Cmd};

const PROBE: &str = r#"
#include <stdio.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <linux/dm-ioctl.h>
#define P(name, v) printf("%s %llu\n", name, (unsigned long long)(v))
int main(void) {
    P("sizeof_dm_ioctl", sizeof(struct dm_ioctl));
    P("sizeof_dm_target_spec", sizeof(struct dm_target_spec));
    P("off_version", offsetof(struct dm_ioctl, version));
    P("off_data_size", offsetof(struct dm_ioctl, data_size));
    P("off_data_start", offsetof(struct dm_ioctl, data_start));
    P("off_target_count", offsetof(struct dm_ioctl, target_count));
    P("off_open_count", offsetof(struct dm_ioctl, open_count));
    P("off_flags", offsetof(struct dm_ioctl, flags));
    P("off_event_nr", offsetof(struct dm_ioctl, event_nr));
    P("off_dev", offsetof(struct dm_ioctl, dev));
    P("off_name", offsetof(struct dm_ioctl, name));
    P("off_uuid", offsetof(struct dm_ioctl, uuid));
    P("spec_sector_start", offsetof(struct dm_target_spec, sector_start));
    P("spec_length", offsetof(struct dm_target_spec, length));
    P("spec_status", offsetof(struct dm_target_spec, status));
    P("spec_next", offsetof(struct dm_target_spec, next));
    P("spec_target_type", offsetof(struct dm_target_spec, target_type));
    P("DM_NAME_LEN", DM_NAME_LEN);
    P("DM_UUID_LEN", DM_UUID_LEN);
    P("DM_MAX_TYPE_NAME", DM_MAX_TYPE_NAME);
    P("DM_VERSION", DM_VERSION);
    P("DM_DEV_CREATE", DM_DEV_CREATE);
    P("DM_DEV_REMOVE", DM_DEV_REMOVE);
    P("DM_DEV_SUSPEND", DM_DEV_SUSPEND);
    P("DM_TABLE_LOAD", DM_TABLE_LOAD);
    P("DM_TABLE_STATUS", DM_TABLE_STATUS);
    P("DM_READONLY_FLAG", DM_READONLY_FLAG);
    P("DM_SUSPEND_FLAG", DM_SUSPEND_FLAG);
    P("DM_PERSISTENT_DEV_FLAG", DM_PERSISTENT_DEV_FLAG);
    P("DM_STATUS_TABLE_FLAG", DM_STATUS_TABLE_FLAG);
    P("DM_ACTIVE_PRESENT_FLAG", DM_ACTIVE_PRESENT_FLAG);
    P("DM_INACTIVE_PRESENT_FLAG", DM_INACTIVE_PRESENT_FLAG);
    P("DM_BUFFER_FULL_FLAG", DM_BUFFER_FULL_FLAG);
    P("DM_UUID_FLAG", DM_UUID_FLAG);
    P("DM_DATA_OUT_FLAG", DM_DATA_OUT_FLAG);
    return 0;
}
"#;

fn kernel_facts() -> std::collections::HashMap<String, u64> {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("probe.c");
    let bin = dir.path().join("probe");
    std::fs::write(&src, PROBE).expect("write probe");
    let out = Command::new("gcc")
        .arg(&src)
        .arg("-o")
        .arg(&bin)
        .output()
        .expect("gcc not found: install the Debian package `gcc` (and `linux-libc-dev`)");
    assert!(
        out.status.success(),
        "gcc failed (is `linux-libc-dev` installed? it provides <linux/dm-ioctl.h>):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&bin).output().expect("run probe");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .expect("utf8")
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').expect("pair");
            (k.to_string(), v.parse().expect("number"))
        })
        .collect()
}

#[test]
fn layout_and_codes_match_linux_dm_ioctl_h() {
    let k = kernel_facts();
    let get = |name: &str| *k.get(name).unwrap_or_else(|| panic!("{name} missing"));

    assert_eq!(get("sizeof_dm_ioctl"), dm::DM_IOCTL_SIZE as u64);
    assert_eq!(get("sizeof_dm_target_spec"), dm::DM_TARGET_SPEC_SIZE as u64);
    assert_eq!(get("DM_NAME_LEN"), dm::DM_NAME_LEN as u64);
    assert_eq!(get("DM_UUID_LEN"), dm::DM_UUID_LEN as u64);
    assert_eq!(get("DM_MAX_TYPE_NAME"), dm::DM_MAX_TYPE_NAME as u64);

    for (name, cmd) in [
        ("DM_VERSION", Cmd::Version),
        ("DM_DEV_CREATE", Cmd::DevCreate),
        ("DM_DEV_REMOVE", Cmd::DevRemove),
        ("DM_DEV_SUSPEND", Cmd::DevSuspend),
        ("DM_TABLE_LOAD", Cmd::TableLoad),
        ("DM_TABLE_STATUS", Cmd::TableStatus),
    ] {
        assert_eq!(get(name), dm::request_code(cmd), "{name}");
    }
    for (name, v) in [
        ("DM_READONLY_FLAG", dm::DM_READONLY_FLAG),
        ("DM_SUSPEND_FLAG", dm::DM_SUSPEND_FLAG),
        ("DM_PERSISTENT_DEV_FLAG", dm::DM_PERSISTENT_DEV_FLAG),
        ("DM_STATUS_TABLE_FLAG", dm::DM_STATUS_TABLE_FLAG),
        ("DM_ACTIVE_PRESENT_FLAG", dm::DM_ACTIVE_PRESENT_FLAG),
        ("DM_INACTIVE_PRESENT_FLAG", dm::DM_INACTIVE_PRESENT_FLAG),
        ("DM_BUFFER_FULL_FLAG", dm::DM_BUFFER_FULL_FLAG),
        ("DM_UUID_FLAG", dm::DM_UUID_FLAG),
        ("DM_DATA_OUT_FLAG", dm::DM_DATA_OUT_FLAG),
    ] {
        assert_eq!(get(name), u64::from(v), "{name}");
    }

    // Field offsets: encode a header with a distinct value in every field and find each value
    // at the kernel's offset.
    let h = dm::DmHeader {
        version: [0x0101_0101, 0x0202_0202, 0x0303_0303],
        data_size: 0x0404_0404,
        data_start: 0x0505_0505,
        target_count: 0x0606_0606,
        open_count: 0x0707_0707,
        flags: 0x0808_0808,
        event_nr: 0x0909_0909,
        dev: 0x0a0a_0a0a_0a0a_0a0a,
        name: "N".repeat(127),
        uuid: "U".repeat(128),
    };
    let b = h.encode().expect("encode");
    let u32_at = |off: u64| {
        let o = off as usize;
        u32::from_ne_bytes(b[o..o + 4].try_into().expect("4 bytes"))
    };
    assert_eq!(u32_at(get("off_version")), 0x0101_0101);
    assert_eq!(u32_at(get("off_version") + 8), 0x0303_0303);
    assert_eq!(u32_at(get("off_data_size")), 0x0404_0404);
    assert_eq!(u32_at(get("off_data_start")), 0x0505_0505);
    assert_eq!(u32_at(get("off_target_count")), 0x0606_0606);
    assert_eq!(u32_at(get("off_open_count")), 0x0707_0707);
    assert_eq!(u32_at(get("off_flags")), 0x0808_0808);
    assert_eq!(u32_at(get("off_event_nr")), 0x0909_0909);
    let dev = get("off_dev") as usize;
    assert_eq!(&b[dev..dev + 8], &[0x0a; 8]);
    let name = get("off_name") as usize;
    assert_eq!(&b[name..name + 127], "N".repeat(127).as_bytes());
    assert_eq!(b[name + 127], 0);
    let uuid = get("off_uuid") as usize;
    assert_eq!(&b[uuid..uuid + 128], "U".repeat(128).as_bytes());
    assert_eq!(b[uuid + 128], 0);

    // Target spec offsets, through a TABLE_LOAD request.
    let t = dm::Target {
        sector_start: 0x1111_1111_1111_1111,
        length: 0x2222_2222_2222_2222,
        target_type: "verity".into(),
        params: "p".into(),
    };
    let req = dm::encode_request(Cmd::TableLoad, "x", 0, &[t], 0).expect("encode");
    let spec = &req[dm::DM_IOCTL_SIZE..];
    let s = |name: &str| get(name) as usize;
    assert_eq!(
        &spec[s("spec_sector_start")..s("spec_sector_start") + 8],
        &[0x11; 8]
    );
    assert_eq!(&spec[s("spec_length")..s("spec_length") + 8], &[0x22; 8]);
    assert_eq!(&spec[s("spec_status")..s("spec_status") + 4], &[0; 4]);
    assert_eq!(
        u32::from_ne_bytes(
            spec[s("spec_next")..s("spec_next") + 4]
                .try_into()
                .expect("4")
        ),
        48
    );
    assert_eq!(
        &spec[s("spec_target_type")..s("spec_target_type") + 7],
        b"verity\0"
    );
    assert_eq!(&spec[get("sizeof_dm_target_spec") as usize..][..2], b"p\0");
}
