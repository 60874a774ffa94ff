//! systemd-boot's entry order and default choice (systemd 252, `src/boot/efi/boot.c`:
//! `config_entry_compare`, `config_default_entry_select`), re-implemented from its behaviour:
//!
//! 1. entries with 0 tries left go after all others;
//! 2. entries with a `sort-key` go before entries without;
//! 3. both with a sort key: by sort key (code-unit order), then `machine-id`, then `version`
//!    *descending* by [`strverscmp_improved`];
//! 4. then by id (the lower-cased file name, counter included) descending by
//!    [`strverscmp_improved`];
//! 5. both counting: more tries left first, then fewer tries done first.
//!
//! With `timeout 0`, no `default` in loader.conf and no `LoaderEntryDefault`/
//! `LoaderEntryOneShot` EFI variables, the entry booted is the first in this order. Note the
//! consequence: when every entry has 0 tries left, systemd-boot still boots the first of them.

use std::cmp::Ordering;

use super::entry::Counter;

/// What the order needs to know of one loadable entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortItem {
    /// The file name, lower-cased as systemd-boot does for its id.
    pub id: String,
    pub sort_key: Option<String>,
    pub machine_id: Option<String>,
    pub version: Option<String>,
    pub counter: Option<Counter>,
}

impl SortItem {
    /// The sort item of entry file `file` with the given keys and counter.
    pub fn new(
        file: &str,
        sort_key: Option<&str>,
        machine_id: Option<&str>,
        version: Option<&str>,
        counter: Option<Counter>,
    ) -> SortItem {
        SortItem {
            id: file.to_ascii_lowercase(),
            sort_key: sort_key.map(str::to_string),
            machine_id: machine_id.map(str::to_string),
            version: version.map(str::to_string),
            counter,
        }
    }

    fn is_bad(&self) -> bool {
        matches!(self.counter, Some(Counter { left: 0, .. }))
    }
}

/// systemd-boot's comparison of two entries (`Less` = earlier = preferred).
pub fn compare(a: &SortItem, b: &SortItem) -> Ordering {
    let r = a.is_bad().cmp(&b.is_bad());
    if r != Ordering::Equal {
        return r;
    }
    let r = a.sort_key.is_none().cmp(&b.sort_key.is_none());
    if r != Ordering::Equal {
        return r;
    }
    if let (Some(ka), Some(kb)) = (&a.sort_key, &b.sort_key) {
        let r = utf16(ka).cmp(&utf16(kb));
        if r != Ordering::Equal {
            return r;
        }
        let r = opt_utf16(&a.machine_id).cmp(&opt_utf16(&b.machine_id));
        if r != Ordering::Equal {
            return r;
        }
        let r = strverscmp_opt(a.version.as_deref(), b.version.as_deref()).reverse();
        if r != Ordering::Equal {
            return r;
        }
    }
    let r = strverscmp_improved(&a.id, &b.id).reverse();
    if r != Ordering::Equal {
        return r;
    }
    match (a.counter, b.counter) {
        (Some(ca), Some(cb)) => cb.left.cmp(&ca.left).then(ca.done.cmp(&cb.done)),
        _ => Ordering::Equal,
    }
}

/// Sort `items` into systemd-boot's order (stable, like its insertion sort).
pub fn sort(items: &mut [SortItem]) {
    items.sort_by(compare);
}

fn utf16(s: &str) -> Vec<u16> {
    s.encode_utf16().collect()
}

// `strcmp16` treats a missing string as smaller than any string.
fn opt_utf16(s: &Option<String>) -> Option<Vec<u16>> {
    s.as_deref().map(utf16)
}

fn strverscmp_opt(a: Option<&str>, b: Option<&str>) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => strverscmp_improved(a, b),
        _ => a.is_some().cmp(&b.is_some()),
    }
}

/// systemd's version comparison (`strverscmp_improved`, systemd 252), on UTF-16 code units as
/// in the boot loader. Segments are numeric or alphabetic; `~` makes a segment older than
/// anything (pre-release), `-` older than `^` and `.`, a missing segment older than any
/// (except `~`); leading zeros are ignored; characters outside `a-zA-Z0-9~-^.` separate
/// segments.
pub fn strverscmp_improved(a: &str, b: &str) -> Ordering {
    let (a, b) = (utf16(a), utf16(b));
    if a.is_empty() || b.is_empty() {
        return a.cmp(&b);
    }
    let at = |s: &[u16], i: usize| s.get(i).copied().unwrap_or(0);
    let is_digit = |c: u16| (u16::from(b'0')..=u16::from(b'9')).contains(&c);
    let is_alpha = |c: u16| {
        (u16::from(b'a')..=u16::from(b'z')).contains(&c)
            || (u16::from(b'A')..=u16::from(b'Z')).contains(&c)
    };
    let is_valid =
        |c: u16| is_digit(c) || is_alpha(c) || b"~-^.".iter().any(|&x| u16::from(x) == c);
    let (mut i, mut j) = (0usize, 0usize);
    loop {
        while at(&a, i) != 0 && !is_valid(at(&a, i)) {
            i += 1;
        }
        while at(&b, j) != 0 && !is_valid(at(&b, j)) {
            j += 1;
        }
        for sep in [b'~', 0, b'-', b'^', b'.'] {
            if sep == 0 {
                // End of one string: the longer is newer (after the `~` rule on purpose).
                if at(&a, i) == 0 || at(&b, j) == 0 {
                    return at(&a, i).cmp(&at(&b, j));
                }
                continue;
            }
            let sep = u16::from(sep);
            if at(&a, i) == sep || at(&b, j) == sep {
                let r = (at(&a, i) != sep).cmp(&(at(&b, j) != sep));
                // `~` marks the older string, the others the newer one is without the prefix.
                if r != Ordering::Equal {
                    return r;
                }
                i += 1;
                j += 1;
            }
        }
        let (ii, jj);
        if is_digit(at(&a, i)) || is_digit(at(&b, j)) {
            while at(&a, i) == u16::from(b'0') {
                i += 1;
            }
            while at(&b, j) == u16::from(b'0') {
                j += 1;
            }
            let mut x = i;
            while is_digit(at(&a, x)) {
                x += 1;
            }
            let mut y = j;
            while is_digit(at(&b, y)) {
                y += 1;
            }
            let r = (x - i).cmp(&(y - j));
            if r != Ordering::Equal {
                return r;
            }
            let r = a[i..x].cmp(&b[j..y]);
            if r != Ordering::Equal {
                return r;
            }
            (ii, jj) = (x, y);
        } else {
            let mut x = i;
            while is_alpha(at(&a, x)) {
                x += 1;
            }
            let mut y = j;
            while is_alpha(at(&b, y)) {
                y += 1;
            }
            let n = (x - i).min(y - j);
            let r = a[i..i + n].cmp(&b[j..j + n]);
            if r != Ordering::Equal {
                return r;
            }
            let r = (x - i).cmp(&(y - j));
            if r != Ordering::Equal {
                return r;
            }
            (ii, jj) = (x, y);
        }
        i = ii;
        j = jj;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn version_order_from_systemds_documentation() {
        // The ordered list in the comment above strverscmp_improved (oldest first).
        let ordered = [
            "122.1",
            "123~rc1-1",
            "123",
            "123-a",
            "123-a.1",
            "123-1",
            "123-1.1",
            "123^post1",
            "123.a-1",
            "123.1-1",
            "123a-1",
            "124-1",
        ];
        for (i, a) in ordered.iter().enumerate() {
            for (j, b) in ordered.iter().enumerate() {
                assert_eq!(strverscmp_improved(a, b), i.cmp(&j), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn version_details() {
        assert_eq!(strverscmp_improved("1.10", "1.9"), Greater);
        assert_eq!(strverscmp_improved("001.2", "1.2"), Equal);
        // Unsupported characters are dropped: `123_a` equals `123a` (systemd's own example),
        // and a segment without prefix is newer than one with `.`.
        assert_eq!(strverscmp_improved("123_a", "123a"), Equal);
        assert_eq!(strverscmp_improved("1_2", "1.2"), Greater);
        assert_eq!(strverscmp_improved("", "1"), Less);
        assert_eq!(strverscmp_improved("1", ""), Greater);
        assert_eq!(strverscmp_improved("abc", "abcd"), Less);
        // Not semver: a `-` suffix makes a version *newer* ("123" < "123-a" in systemd's
        // list). Basalt writes pre-releases as `~` in the `version` line (see `version`).
        assert_eq!(strverscmp_improved("1.2.0", "1.2.0-rc.1"), Less);
        assert_eq!(strverscmp_improved("1.2.0~rc.1", "1.2.0"), Less);
    }

    fn item(file: &str, version: &str, counter: Option<(u64, u64)>) -> SortItem {
        SortItem::new(
            file,
            Some("basalt"),
            None,
            Some(version),
            counter.map(|(left, done)| Counter { left, done }),
        )
    }

    #[test]
    fn entry_order() {
        let mut v = vec![
            item("basalt-1.0.conf", "1.0", None),
            item("basalt-1.1+0-3.conf", "1.1", Some((0, 3))),
            item("basalt-1.2+2-1.conf", "1.2", Some((2, 1))),
            SortItem::new("zzz.conf", None, None, Some("9"), None),
        ];
        sort(&mut v);
        let ids: Vec<_> = v.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "basalt-1.2+2-1.conf",
                "basalt-1.0.conf",
                "zzz.conf",
                "basalt-1.1+0-3.conf"
            ]
        );
    }
}
