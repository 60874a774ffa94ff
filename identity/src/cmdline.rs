//! The kernel command line: split as the kernel splits it, and the `usrhash=` it carries.
//!
//! One reader for both sides of the boot: `basalt-init` takes the `/usr` root hash from
//! `/proc/cmdline` to find and verify the slot; `basalt-disk` (for the updater) takes it
//! from the same file to know which slot is booted and must never be written. They must
//! read the same hash from the same line, quotes included.

use crate::error::Error;
use crate::roothash::RootHash;

/// The options naming the `/usr` root hash: systemd's `usrhash=` and Flatcar's
/// `verity.usrhash=`. When both appear, the last occurrence of either wins.
pub const USRHASH_OPTIONS: [&str; 2] = ["usrhash", "verity.usrhash"];

/// Split a command line into `(key, value)` pairs the way the kernel's `next_arg()` does:
/// whitespace separates, double quotes group (and are removed, wherever they are), a lone
/// `--` ends the list (the rest belongs to init).
pub fn split_args(text: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut word = String::new();
        let mut in_quote = false;
        while let Some(c) = chars.next_if(|c| in_quote || !c.is_whitespace()) {
            if c == '"' {
                in_quote = !in_quote;
            } else {
                word.push(c);
            }
        }
        if word == "--" {
            break;
        }
        match word.split_once('=') {
            Some((k, v)) => out.push((k.to_owned(), Some(v.to_owned()))),
            None => out.push((word, None)),
        }
    }
    out
}

/// The `/usr` root hash the command line names (the last `usrhash=` or `verity.usrhash=`):
/// `None` when there is none, `Some(Err)` when the last one is malformed (a caller that
/// guessed instead could boot, or write to, the wrong slot).
pub fn usrhash(text: &str) -> Option<Result<RootHash, Error>> {
    let (_, value) = split_args(text)
        .into_iter()
        .rfind(|(k, _)| USRHASH_OPTIONS.contains(&k.as_str()))?;
    Some(match value {
        Some(v) => RootHash::parse(&v),
        None => Err(Error::ParseRootHash {
            value: String::new(),
            reason: "the option has no value".into(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "4b2f0c3ff1b7d7c6a1d7c0bb53a0f1c2e3d4c5b6a79888776655443322110000";

    #[test]
    fn split_follows_kernel_quoting() {
        assert_eq!(
            split_args("  a=1\tb \"c=x y\" d=\"p q\" --  e=2"),
            vec![
                ("a".into(), Some("1".into())),
                ("b".into(), None),
                ("c".into(), Some("x y".into())),
                ("d".into(), Some("p q".into())),
            ]
        );
        assert!(split_args("").is_empty());
        assert_eq!(
            split_args("x=\"\""),
            vec![("x".into(), Some(String::new()))]
        );
        // An unterminated quote runs to the end of the line.
        assert_eq!(
            split_args("x=\"a b"),
            vec![("x".into(), Some("a b".into()))]
        );
    }

    #[test]
    fn usrhash_last_wins_either_spelling_quotes_removed() {
        let other = "ab".repeat(32);
        let line = format!("console=ttyS0 verity.usrhash={other} usrhash=\"{H}\" quiet\n");
        assert_eq!(usrhash(&line).unwrap().unwrap().to_hex(), H);
        let line = format!("usrhash={H} \"verity.usrhash={other}\"");
        assert_eq!(usrhash(&line).unwrap().unwrap().to_hex(), other);
        assert_eq!(
            usrhash(&format!("usrhash={}", H.to_uppercase()))
                .unwrap()
                .unwrap()
                .to_hex(),
            H
        );
    }

    #[test]
    fn usrhash_absent_malformed_or_after_dashes() {
        assert!(usrhash("console=ttyS0 root=/dev/vda").is_none());
        assert!(usrhash(&format!("myusrhash={H} usrhash.x={H}")).is_none());
        assert!(usrhash(&format!("quiet -- usrhash={H}")).is_none());
        assert!(usrhash("usrhash=xyz").unwrap().is_err());
        assert!(usrhash("usrhash").unwrap().is_err());
        assert!(usrhash(&format!("usrhash={}", "0".repeat(64)))
            .unwrap()
            .is_err());
        // The last one decides, even when an earlier one was fine.
        assert!(usrhash(&format!("usrhash={H} usrhash=zz"))
            .unwrap()
            .is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_line_splits_and_reads_without_panic(line in "\\PC{0,200}") {
            let _ = split_args(&line);
            let _ = usrhash(&line);
        }

        /// A hash anywhere among unrelated options, quoted or not, is read back.
        #[test]
        fn embedded_hash_is_found(
            bytes in proptest::array::uniform32(1u8..),
            before in "[a-z.=_0-9 ]{0,40}",
            after in "[a-z.=_0-9 ]{0,40}",
            quoted in proptest::bool::ANY,
        ) {
            let h = RootHash(bytes);
            let opt = if quoted { format!("\"usrhash={h}\"") } else { format!("usrhash={h}") };
            let after = after.replace("usrhash", "x");
            let line = format!("{before} {opt} {after}");
            proptest::prop_assert_eq!(usrhash(&line).unwrap().unwrap(), h);
        }
    }
}
