//! A compact string table: many short strings in one buffer with an open-addressing index,
//! for the vocabulary (text to id) and the BPE merges (merge text to rank). Building it makes
//! no allocation per string, which keeps loading a 262K-token vocabulary fast.

use std::hash::Hasher;

use rustc_hash::FxHasher;

use crate::error::TokenizerError;

fn hash_bytes(s: &[u8]) -> u64 {
    let mut h = FxHasher::default();
    h.write(s);
    // Multiply-fold so that the top bits, used for the slot, depend on every input bit.
    (h.finish() ^ (s.len() as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Which entry a lookup finds when several strings are equal.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keep {
    /// The first one pushed.
    First,
    /// The last one pushed.
    Last,
}

/// Collects the strings of a [`StrTable`].
pub(crate) struct StrTableBuilder {
    buf: String,
    offs: Vec<u32>,
}

impl StrTableBuilder {
    /// A builder for about `n` strings of `bytes` bytes in total.
    pub(crate) fn with_capacity(n: usize, bytes: usize) -> Self {
        let mut offs = Vec::with_capacity(n + 1);
        offs.push(0);
        StrTableBuilder {
            buf: String::with_capacity(bytes),
            offs,
        }
    }

    /// Appends a string; its index is the number of strings pushed before it.
    pub(crate) fn push(&mut self, s: &str) -> Result<(), TokenizerError> {
        self.buf.push_str(s);
        let end = u32::try_from(self.buf.len())
            .map_err(|_| TokenizerError::Metadata("strings exceed 4 GiB".into()))?;
        self.offs.push(end);
        Ok(())
    }

    /// Indexes the strings.
    pub(crate) fn finish(self, keep: Keep) -> StrTable {
        let n = self.offs.len() - 1;
        let size = (n * 2).next_power_of_two().max(16);
        let mut t = StrTable {
            buf: self.buf,
            offs: self.offs,
            slots: vec![(0, 0); size],
            shift: 64 - size.trailing_zeros(),
            mask: size - 1,
        };
        for i in 0..n as u32 {
            t.insert(i, keep);
        }
        t
    }
}

/// Strings with their index.
pub(crate) struct StrTable {
    buf: String,
    /// Start of each string in `buf`, plus the end of the last one.
    offs: Vec<u32>,
    /// `(hash tag, index + 1)`; 0 marks an empty slot.
    slots: Vec<(u32, u32)>,
    shift: u32,
    mask: usize,
}

impl StrTable {
    /// Number of strings.
    pub(crate) fn len(&self) -> usize {
        self.offs.len() - 1
    }

    /// String `i` (`i < len()`).
    pub(crate) fn get(&self, i: u32) -> &str {
        let i = i as usize;
        &self.buf[self.offs[i] as usize..self.offs[i + 1] as usize]
    }

    fn bytes(&self, i: u32) -> &[u8] {
        let i = i as usize;
        &self.buf.as_bytes()[self.offs[i] as usize..self.offs[i + 1] as usize]
    }

    fn start(&self, h: u64) -> (usize, u32) {
        ((h >> self.shift) as usize, h as u32)
    }

    fn insert(&mut self, i: u32, keep: Keep) {
        let (mut pos, tag) = self.start(hash_bytes(self.bytes(i)));
        loop {
            let (t, slot) = self.slots[pos];
            if slot == 0 {
                self.slots[pos] = (tag, i + 1);
                return;
            }
            if t == tag && self.bytes(slot - 1) == self.bytes(i) {
                if keep == Keep::Last {
                    self.slots[pos] = (tag, i + 1);
                }
                return;
            }
            pos = (pos + 1) & self.mask;
        }
    }

    /// Index of the string equal to `s`.
    pub(crate) fn find(&self, s: &str) -> Option<u32> {
        self.find_bytes(s.as_bytes())
    }

    /// Index of the string whose bytes are `s`.
    pub(crate) fn find_bytes(&self, s: &[u8]) -> Option<u32> {
        let (mut pos, tag) = self.start(hash_bytes(s));
        loop {
            let (t, slot) = self.slots[pos];
            if slot == 0 {
                return None;
            }
            if t == tag && self.bytes(slot - 1) == s {
                return Some(slot - 1);
            }
            pos = (pos + 1) & self.mask;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_follow_the_keep_rule() {
        for (keep, want) in [(Keep::First, 0), (Keep::Last, 2)] {
            let mut b = StrTableBuilder::with_capacity(3, 8);
            for s in ["ab", "c", "ab", ""] {
                b.push(s).unwrap();
            }
            let t = b.finish(keep);
            assert_eq!(t.len(), 4);
            assert_eq!(t.find("ab"), Some(want));
            assert_eq!(t.find("c"), Some(1));
            assert_eq!(t.find(""), Some(3));
            assert_eq!(t.find("x"), None);
            assert_eq!(t.get(1), "c");
        }
    }
}
