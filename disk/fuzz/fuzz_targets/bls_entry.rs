//! Fuzz the BLS entry readers: the file-name counter parser (lenient, as systemd-boot reads
//! it, and strict, as Basalt accepts it), the entry content parsers, and the EFI variable
//! decoder. None may panic; what parses must round-trip.
#![no_main]

use basalt_disk::bls::entry::{BasaltEntry, EntryFile, EntryName};
use basalt_disk::bls::{booted_entry_file, order};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Content readers take any bytes.
    let lenient = EntryFile::parse(data);
    if let Ok(e) = BasaltEntry::parse("fuzz.conf", data) {
        // A valid Basalt entry reads the same in systemd-boot's reading.
        assert_eq!(lenient.version.as_deref(), Some(e.entry_version.as_str()));
        assert_eq!(lenient.sort_key, e.sort_key);
        assert_eq!(BasaltEntry::parse("fuzz.conf", e.render().as_bytes()).ok(), Some(e));
    }
    let _ = booted_entry_file(Some(data), None);

    // Names are text: split the input into a name and a second string.
    let text = String::from_utf8_lossy(data);
    let (name, other) = text.split_once('\n').unwrap_or((&text, ""));
    if let Some(n) = EntryName::parse_lenient(name) {
        if let Some(bumped) = n.bumped_file_name() {
            let b = EntryName::parse_lenient(&bumped).expect("a bumped name is a .conf name");
            let (c, d) = (n.counter.expect("counting"), b.counter.expect("still counting"));
            assert_eq!(b.base, n.base);
            assert_eq!(d.left, c.left.saturating_sub(1));
        }
    }
    if let Ok(n) = EntryName::parse(name) {
        assert_eq!(EntryName::parse(&n.file_name()).ok(), Some(n));
    }
    // Version order: antisymmetric and total on any input.
    let ab = order::strverscmp_improved(name, other);
    assert_eq!(ab.reverse(), order::strverscmp_improved(other, name));
});
