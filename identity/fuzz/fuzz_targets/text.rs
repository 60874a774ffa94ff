//! Text parsers: the kernel command line splitter and `usrhash=`, root hashes, GUIDs, hex,
//! EFI variable values, os-release files, PE section tables (a UKI's `.cmdline`). No panic; whatever parses prints back as what parses the same.
#![no_main]

use basalt_identity::{cmdline, efivar, hex, osrelease, pe, Guid, RootHash};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = efivar::decode(data);
    let _ = efivar::utf16_string(data);
    // A UKI nobody vouched for: bounded, never panics; a hash it returns is on its line.
    if let Ok((h, line)) = pe::uki_usrhash(&mut std::io::Cursor::new(data), "fuzz") {
        assert_eq!(cmdline::usrhash(&line).expect("present").expect("valid"), h);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let release = osrelease::Release::parse(text);
    assert!(release.pairs().iter().all(|(k, _)| !k.is_empty() && !k.contains('=')));
    let args = cmdline::split_args(text);
    // A lone `--` ends the list (`--=x` is an ordinary option, as in the kernel).
    assert!(args.iter().all(|(k, v)| !(k == "--" && v.is_none())));
    if let Some(Ok(h)) = cmdline::usrhash(text) {
        let again = cmdline::usrhash(&format!("usrhash={h}")).expect("present");
        assert_eq!(again.expect("round trip"), h);
    }
    if let Ok(h) = RootHash::parse(text) {
        assert_eq!(h.to_hex(), text.to_ascii_lowercase());
        let ids = h.partition_uuids();
        assert_eq!(RootHash::from_uuids(ids.data, ids.verity), h);
    }
    if let Ok(g) = Guid::parse(text) {
        assert_eq!(g.to_string(), text.to_ascii_lowercase());
        assert_eq!(Guid::from_gpt_bytes(g.to_gpt_bytes()), g);
    }
    let mut out = vec![0u8; text.len() / 2];
    if hex::decode_into(text, &mut out).is_ok() {
        assert_eq!(hex::encode(&out), text.to_ascii_lowercase());
    }
});
