//! Everything basalt-init and the builder parse from bytes they do not control: the kernel
//! command line, the module list, modules.dep, cpio archives and the usr-hash statement
//! block. None may panic; whatever parses must survive a round trip.
#![no_main]

use std::path::Path;

use basalt_initramfs::cmdline::Cmdline;
use basalt_initramfs::{cpio, modules, usrsig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(c) = Cmdline::parse(text) {
            // The hash we parsed prints back as what parses to the same hash.
            let again = Cmdline::parse(&format!("usrhash={}", c.usrhash)).expect("round trip");
            assert_eq!(again.usrhash, c.usrhash);
        }
        if let Ok(list) = modules::parse_module_list(text) {
            let rendered = modules::render_module_list(&list);
            assert_eq!(
                modules::parse_module_list(&rendered).expect("round trip"),
                list
            );
        }
        if let Ok(dep) = modules::ModulesDep::parse(text, "", Path::new("fuzz")) {
            let names: Vec<String> = text
                .lines()
                .filter_map(|l| l.split(':').next())
                .map(modules::module_name)
                .take(8)
                .collect();
            let _ = dep.resolve(&names, &[]);
        }
    }
    if let Ok(a) = cpio::parse(data) {
        assert_eq!(cpio::parse(&a.to_bytes()).expect("round trip"), a);
    }
    let _ = usrsig::decode_block(data);
});
