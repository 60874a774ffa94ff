//! Fuzzes the status file parser (`basalt_updater::status::StatusFile::parse`): never panics;
//! whatever parses serialises and parses back to the same value (a node that restarts twice
//! reads what it wrote).
//!
//! `cargo +nightly fuzz run status_file corpus/status_file seeds/status_file`.

#![no_main]

use std::path::Path;

use basalt_updater::status::StatusFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("/var/lib/basalt/updater/status.json");
    if let Ok(file) = StatusFile::parse(data, path) {
        let bytes = file.to_bytes().expect("serialise");
        let again = StatusFile::parse(&bytes, path).expect("what we write parses");
        assert_eq!(again, file);
        let _ = file.envelope();
    }
});
