//! `os-release(5)` and `extension-release` files: `KEY=value` lines, the one reader for the
//! node (the system extension checks against the booted OS; the updater's boot.env and
//! os-release reads are meant to move here too).
//!
//! Rules (os-release(5), which systemd's own reader follows): blank lines and lines starting
//! with `#` are skipped, so are lines without `=` and keys that are not
//! `[A-Za-z_][A-Za-z0-9_]*`; a value may be wrapped in one pair of double or single quotes;
//! inside double quotes `\"`, `\\`, `` \` `` and `\$` are escapes; a later line for the same
//! key wins. An empty value is treated as absent ([`Release::get`]), as systemd does when it
//! compares `ID=`/`VERSION_ID=`/`SYSEXT_LEVEL=`.

/// Largest os-release / extension-release text [`Release::parse`] looks at (64 KiB): these
/// files are a few hundred bytes; the cap bounds what a hostile image can make us hold.
pub const MAX_RELEASE_BYTES: usize = 64 * 1024;

/// A parsed release file: its `KEY=value` pairs in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Release {
    pairs: Vec<(String, String)>,
}

impl Release {
    /// Parses the text of a release file (at most [`MAX_RELEASE_BYTES`] are read; the rest
    /// is ignored).
    pub fn parse(text: &str) -> Self {
        let mut end = text.len().min(MAX_RELEASE_BYTES);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let pairs = text[..end]
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| valid_key(k.trim()))
            .map(|(k, v)| (k.trim().to_owned(), unquote(v.trim())))
            .collect();
        Self { pairs }
    }

    /// The pairs, in file order (repeats included).
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    /// The last value of `key`, `None` when absent or empty.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
}

fn valid_key(key: &str) -> bool {
    key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn unquote(v: &str) -> String {
    if let Some(inner) = v.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        return inner.to_owned();
    }
    let Some(inner) = v
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .filter(|_| v.len() >= 2)
    else {
        return v.to_owned();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(e @ ('"' | '\\' | '`' | '$')) => out.push(e),
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn quotes_escapes_comments_and_repeats() {
        let r = Release::parse(
            "# c\nID=basalt\nNAME=\"Basalt \\\"OS\\\" \\$x\"\nC='z y'\n\nbroken\nID=other\nE=\n \
             D = d \n9X=no\nA-B=no\n",
        );
        assert_eq!(r.get("ID"), Some("other"));
        assert_eq!(r.get("NAME"), Some("Basalt \"OS\" $x"));
        assert_eq!(r.get("C"), Some("z y"));
        assert_eq!(r.get("D"), Some("d"));
        assert_eq!(r.get("E"), None);
        assert_eq!(r.get("broken"), None);
        assert_eq!(r.get("9X"), None);
        assert_eq!(r.get("A-B"), None);
        assert_eq!(Release::parse("Q=\"open\n").get("Q"), Some("\"open"));
        assert_eq!(Release::parse("Q=\"\n").get("Q"), Some("\""));
    }

    #[test]
    fn reads_at_most_the_cap() {
        let mut text = "A=1\n".to_owned();
        text.push_str(&"#".repeat(MAX_RELEASE_BYTES));
        text.push_str("\nB=2\n");
        let r = Release::parse(&text);
        assert_eq!(r.get("A"), Some("1"));
        assert_eq!(r.get("B"), None);
    }

    proptest! {
        #[test]
        fn never_panics(text in "\\PC{0,200}") {
            let _ = Release::parse(&text);
        }

        #[test]
        fn plain_values_round_trip(key in "[A-Z_][A-Z0-9_]{0,10}", value in "[a-z0-9.]{1,20}") {
            let r = Release::parse(&format!("{key}=\"{value}\"\n"));
            prop_assert_eq!(r.get(&key), Some(value.as_str()));
        }
    }
}
