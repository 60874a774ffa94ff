//! The serial console without the kernel's own lines: the view the harness searches for
//! userspace markers and takes shell output from.
//!
//! The kernel writes its messages (`[   31.584931] ata6: SATA link down`) straight to the
//! serial port whenever they come, also in the middle of a line a userspace program is
//! printing — seen in CI: `BASALT-SH-2[   48.103720] ata6: SATA link down …\r\n5-BEGIN`, a
//! marker the raw console no longer contains. [`UserView`] keeps, beside the raw bytes, the
//! console with every such line (from its `[seconds.micros]` stamp through its `\n`) taken out
//! and, for each byte kept, where it was in the raw console, so a match in the view maps back
//! to raw offsets (the cursor). Kernel markers (`reboot: Restarting system`) are still searched
//! in the raw bytes; see `vm::find_marker`.
//!
//! A line of userspace output that itself looks like a kernel line (`dmesg` printed by a shell
//! command) is taken out of the view too: read such output from the raw console.

/// Where the filter is inside a possible kernel line stamp `[ ␣* digits . digits ]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Stamp {
    /// Not in a stamp: bytes go to the view.
    #[default]
    Text,
    /// After `[` (and maybe spaces): spaces or the first digit.
    Open,
    /// In the seconds.
    Seconds,
    /// After the `.`, before any digit of the fraction.
    Dot,
    /// In the fraction.
    Fraction,
    /// After `]`: the rest of a kernel line, dropped through its `\n`.
    Line,
}

/// The console as userspace printed it (kernel lines removed), built as bytes arrive.
#[derive(Debug, Default)]
pub struct UserView {
    /// The kept bytes.
    bytes: Vec<u8>,
    /// For each kept byte, its offset in the raw console.
    raw: Vec<usize>,
    /// Raw bytes seen so far.
    seen: usize,
    state: Stamp,
    /// Raw offset of the `[` of a possible stamp not yet decided (it may still be text).
    pending_from: usize,
    /// The bytes of that possible stamp.
    pending: Vec<u8>,
}

impl UserView {
    /// Feed the next raw bytes (in console order).
    pub fn push(&mut self, chunk: &[u8]) {
        for &b in chunk {
            let at = self.seen;
            self.seen += 1;
            self.step(b, at);
        }
    }

    fn step(&mut self, b: u8, at: usize) {
        use Stamp::*;
        let next = match (self.state, b) {
            (Line, b'\n') => {
                self.state = Text;
                return;
            }
            (Line, _) => return,
            (Text, b'[') => {
                self.pending_from = at;
                self.pending.clear();
                self.pending.push(b);
                self.state = Open;
                return;
            }
            (Text, _) => {
                self.keep(b, at);
                return;
            }
            (Open, b' ') => Open,
            (Open | Seconds, b'0'..=b'9') => Seconds,
            (Seconds, b'.') => Dot,
            (Dot | Fraction, b'0'..=b'9') => Fraction,
            (Fraction, b']') => {
                self.pending.clear();
                self.state = Line;
                return;
            }
            _ => {
                // Not a stamp after all: what was held back is text, and `b` starts over
                // (it may be the `[` of a real stamp).
                let held = std::mem::take(&mut self.pending);
                for (i, &h) in held.iter().enumerate() {
                    self.keep(h, self.pending_from + i);
                }
                self.state = Text;
                self.step(b, at);
                return;
            }
        };
        self.pending.push(b);
        self.state = next;
    }

    fn keep(&mut self, b: u8, at: usize) {
        self.bytes.push(b);
        self.raw.push(at);
    }

    /// The kept bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The index in [`UserView::bytes`] of the first kept byte at raw offset `raw` or later.
    pub fn index_of_raw(&self, raw: usize) -> usize {
        self.raw.partition_point(|&r| r < raw)
    }

    /// The raw offset of kept byte `index`.
    pub fn raw_of(&self, index: usize) -> usize {
        self.raw[index]
    }

    /// The kept bytes whose raw offsets are in `from..to`.
    pub fn between(&self, from: usize, to: usize) -> &[u8] {
        &self.bytes[self.index_of_raw(from)..self.index_of_raw(to)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(raw: &[u8]) -> UserView {
        let mut v = UserView::default();
        v.push(raw);
        v
    }

    #[test]
    fn a_kernel_line_inside_a_marker_is_taken_out() {
        let raw = b"BASALT-SH-2[   48.103720] ata6: SATA link down (SStatus 0)\r\n5-BEGIN\r\n";
        let v = view(raw);
        assert_eq!(v.bytes(), b"BASALT-SH-25-BEGIN\r\n");
        // `5` is mapped back to its raw place, after the kernel line.
        let five = v.bytes().iter().position(|&b| b == b'5').unwrap();
        assert_eq!(raw[v.raw_of(five)], b'5');
        assert_eq!(v.raw_of(five), raw.iter().position(|&b| b == b'5').unwrap());
    }

    #[test]
    fn text_in_brackets_is_kept() {
        for text in [
            &b"[  OK  ] Started basalt-updated.service\r\n"[..],
            b"[1.x] [12] [3.] [ ] a[b]",
            b"arr[0.5x]",
        ] {
            assert_eq!(
                view(text).bytes(),
                text,
                "{}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn a_stamp_split_across_chunks_is_still_recognised() {
        let raw = b"ab[    1.000001] kernel says hi\r\ncd[ 2.5]\n";
        for cut in 0..raw.len() {
            let mut v = UserView::default();
            v.push(&raw[..cut]);
            v.push(&raw[cut..]);
            assert_eq!(v.bytes(), b"abcd", "cut at {cut}");
        }
    }

    #[test]
    fn between_maps_raw_ranges() {
        let raw = b"one [ 0.000000] k\ntwo";
        let v = view(raw);
        assert_eq!(v.bytes(), b"one two");
        assert_eq!(v.between(0, raw.len()), b"one two");
        assert_eq!(v.between(4, raw.len()), b"two");
        assert_eq!(v.index_of_raw(raw.len()), v.bytes().len());
    }

    proptest::proptest! {
        /// Every kept byte maps to an equal raw byte, in increasing raw order, and text with
        /// no `[` is kept whole.
        #[test]
        fn kept_bytes_map_back(raw in proptest::collection::vec(proptest::sample::select(
            b"[] .0123456789ab\r\n".to_vec()), 0..120)) {
            let v = view(&raw);
            for i in 0..v.bytes().len() {
                proptest::prop_assert_eq!(raw[v.raw_of(i)], v.bytes()[i]);
                if i > 0 {
                    proptest::prop_assert!(v.raw_of(i) > v.raw_of(i - 1));
                }
            }
            if !raw.contains(&b'[') {
                proptest::prop_assert_eq!(v.bytes(), &raw[..]);
            }
        }
    }
}
