//! Guards the `sign` feature boundary at the source level: ring's signing and randomness APIs
//! may appear only in `src/sign.rs`, and that module must be compiled only with the feature
//! (or in this crate's own unit tests). `cargo tree -p basalt-manifest -e features` shows the
//! feature is off for node builds; this test makes sure turning it off removes all signing code.

use std::path::Path;

const SIGNING_APIS: &[&str] = &[
    "Ed25519KeyPair",
    "SystemRandom",
    "generate_pkcs8",
    "from_seed_unchecked",
    "ring::rand",
];

#[test]
fn signing_code_lives_only_in_the_gated_module() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut checked = 0;
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") || path.ends_with("sign.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // Unit tests (`tests.rs`, `#[cfg(test)]` modules) may use the signing module through
        // the crate API but must not reach for ring's signing APIs directly either.
        for api in SIGNING_APIS {
            assert!(!text.contains(api), "{} mentions {api}", path.display());
        }
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} source files checked");

    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let gated = |item: &str| {
        lib.lines().collect::<Vec<_>>().windows(2).any(|w| {
            w[0].trim() == "#[cfg(any(test, feature = \"sign\"))]" && w[1].trim().starts_with(item)
        })
    };
    assert!(gated("pub mod sign;"), "lib.rs must gate `pub mod sign;`");
    assert!(
        gated("pub use sign::"),
        "lib.rs must gate the re-export of sign::"
    );
    assert_eq!(
        lib.matches("sign::").count(),
        1,
        "sign:: is used only in the gated re-export"
    );
}
