//! The veritysetup superblock parser must never panic; whatever it accepts must re-encode
//! to bytes that parse back to the same value.
#![no_main]

use basalt_verity::Superblock;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(sb) = Superblock::parse(data) {
        let bytes = sb.to_bytes().expect("a parsed superblock re-encodes");
        assert_eq!(Superblock::parse(&bytes).expect("re-encoded parses"), sb);
    }
});
