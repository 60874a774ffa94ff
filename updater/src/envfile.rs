//! `KEY=value` files: basalt-init's `/run/basalt/boot.env` (systemd `EnvironmentFile=`
//! syntax) and `/usr/lib/os-release` (os-release(5)). One reader for the daemon, the engine
//! and `agent`.
//!
//! The syntax is os-release(5)'s for both files, so the parsing is
//! `basalt_identity::osrelease`'s (the one reader, also used by the system extension checks);
//! this module only names the boot.env keys and reads the files. A later line for the same
//! key wins, as a shell would have it.

use std::path::Path;

/// The boot.env key basalt-init writes the booted `/usr` root hash under.
pub const BASALT_USRHASH: &str = "BASALT_USRHASH";
/// The boot.env key of the boot disk.
pub const BASALT_DISK: &str = "BASALT_DISK";

/// The pairs of the file, in order; `None` when it cannot be read.
pub fn read(path: &Path) -> Option<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(parse(&text))
}

/// The pairs of a file's text, in order (`basalt_identity::osrelease` rules).
pub fn parse(text: &str) -> Vec<(String, String)> {
    basalt_identity::osrelease::Release::parse(text)
        .pairs()
        .to_vec()
}

/// The last non-empty value of `key`.
pub fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_comments_and_repeats() {
        let kv = parse("# c\nA=1\nB=\"x y\"\nC='z'\n\nbroken\nA=2\nE=\n D = d \n");
        assert_eq!(get(&kv, "A"), Some("2"));
        assert_eq!(get(&kv, "B"), Some("x y"));
        assert_eq!(get(&kv, "C"), Some("z"));
        assert_eq!(get(&kv, "D"), Some("d"));
        assert_eq!(get(&kv, "E"), None);
        assert_eq!(get(&kv, "broken"), None);
        assert_eq!(
            parse("Q=\"unterminated\n"),
            [("Q".into(), "\"unterminated".into())]
        );
    }
}
