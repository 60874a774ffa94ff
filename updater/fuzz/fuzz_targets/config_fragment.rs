//! Fuzzes `basalt-updated`'s configuration: a drop-in's text is parsed into a fragment, merged
//! over the shipped defaults and validated. Never panics; whatever validates has values inside
//! the documented ranges.
//!
//! `cargo +nightly fuzz run config_fragment corpus/config_fragment seeds/config_fragment`.

#![no_main]

use std::path::Path;

use basalt_updater::config::{Fragment, Merged};
use libfuzzer_sys::fuzz_target;

const DEFAULTS: &str = include_str!("../../../dist/updater.d/00-defaults.toml");

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/etc/basalt/updater.d/50-fuzz.toml");
    let Ok(fragment) = Fragment::parse(text, path) else {
        return;
    };
    let mut merged = Merged::default();
    let defaults = Fragment::parse(DEFAULTS, Path::new("00-defaults.toml")).expect("defaults parse");
    merged.apply(defaults, Path::new("/usr/lib/basalt/updater.d/00-defaults.toml"));
    merged.apply(fragment, path);
    if let Ok(s) = merged.validate() {
        assert!((1..=15).contains(&s.update.tries));
        assert!(s.check.jitter_secs <= s.check.interval_secs);
        assert!(s.health.interval_secs >= 1 && s.health.interval_secs <= s.health.deadline_secs);
        assert!(!s.update.auto_apply || s.update.auto_download);
    }
});
