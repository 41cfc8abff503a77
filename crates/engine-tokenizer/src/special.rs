//! Special-token partitioning: cutting the input into raw-text fragments and special tokens
//! before the model's tokenizer runs, as llama.cpp's `tokenizer_st_partition` does.
//!
//! The special tokens are the control, user-defined and unknown tokens. They are tried
//! longest first; each one splits every remaining raw fragment at its leftmost
//! non-overlapping occurrences. With `parse_special == false` only the tokens that are
//! neither control nor unknown take part (user-defined tokens are always matched). Tokens
//! with the lstrip/rstrip attribute swallow the whitespace beside them.
//!
//! llama.cpp loops over every special token for every call; here an Aho-Corasick scan first
//! finds which special tokens occur in the text at all, so the work per call depends on the
//! text, not on the vocabulary.

use std::ops::Range;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use memchr::memmem;

use crate::error::TokenizerError;
use crate::unicode::is_c_space;
use crate::vocab::{attr, Vocab};

/// A piece of the partitioned input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fragment {
    /// A byte range of the input still to be tokenized.
    Text(Range<usize>),
    /// A special token matched literally.
    Token(u32),
}

/// One automaton over a set of special tokens.
struct Matcher {
    ac: Option<AhoCorasick>,
    /// Token id of each pattern.
    ids: Vec<u32>,
}

impl Matcher {
    fn new(vocab: &Vocab, ids: Vec<u32>) -> Result<Matcher, TokenizerError> {
        if ids.is_empty() {
            return Ok(Matcher { ac: None, ids });
        }
        let ac = AhoCorasickBuilder::new()
            .match_kind(MatchKind::Standard)
            .build(ids.iter().map(|&id| vocab.text(id).as_bytes()))
            .map_err(|e| {
                TokenizerError::Metadata(format!("cannot index the special tokens: {e}"))
            })?;
        Ok(Matcher { ac: Some(ac), ids })
    }

    /// Ids of the tokens occurring anywhere in `text`.
    fn present(&self, text: &str, seen: &mut [bool], out: &mut Vec<u32>) {
        let Some(ac) = &self.ac else { return };
        for m in ac.find_overlapping_iter(text) {
            let p = m.pattern().as_usize();
            if !seen[p] {
                seen[p] = true;
                out.push(self.ids[p]);
            }
        }
    }
}

/// The special tokens of a vocabulary, ready for partitioning.
pub(crate) struct SpecialTokens {
    /// Priority of each special token id: its position in llama.cpp's length-sorted list.
    rank: Vec<u32>,
    all: Matcher,
    user: Matcher,
}

impl SpecialTokens {
    pub(crate) fn new(vocab: &Vocab) -> Result<SpecialTokens, TokenizerError> {
        let mut order: Vec<u32> = (0..vocab.len() as u32)
            .filter(|&id| {
                vocab.attr(id) & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
            })
            .collect();
        // Longest first. llama.cpp's sort is not stable; ties are ordered by id here.
        order.sort_by_key(|&id| std::cmp::Reverse(vocab.text(id).len()));
        let mut rank = vec![u32::MAX; vocab.len()];
        for (i, &id) in order.iter().enumerate() {
            rank[id as usize] = i as u32;
        }
        let user: Vec<u32> = order
            .iter()
            .copied()
            .filter(|&id| vocab.attr(id) & (attr::CONTROL | attr::UNKNOWN) == 0)
            .collect();
        Ok(SpecialTokens {
            rank,
            all: Matcher::new(vocab, order)?,
            user: Matcher::new(vocab, user)?,
        })
    }

    /// Splits `text` into fragments. An empty text gives no fragments.
    pub(crate) fn partition(
        &self,
        vocab: &Vocab,
        text: &str,
        parse_special: bool,
    ) -> Vec<Fragment> {
        if text.is_empty() {
            return Vec::new();
        }
        let matcher = if parse_special { &self.all } else { &self.user };
        let mut present = Vec::new();
        let mut seen = vec![false; matcher.ids.len()];
        matcher.present(text, &mut seen, &mut present);
        let mut frags = vec![Fragment::Text(0..text.len())];
        if present.is_empty() {
            return frags;
        }
        present.sort_by_key(|&id| self.rank[id as usize]);
        let bytes = text.as_bytes();
        for id in present {
            let needle = vocab.text(id).as_bytes();
            let finder = memmem::Finder::new(needle);
            let a = vocab.attr(id);
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                let Fragment::Text(r) = f else {
                    next.push(f);
                    continue;
                };
                let (mut base, end) = (r.start, r.end);
                loop {
                    let Some(pos) = finder.find(&bytes[base..end]) else {
                        if end > base {
                            next.push(Fragment::Text(base..end));
                        }
                        break;
                    };
                    let m = base + pos;
                    if m > base {
                        let mut left_end = m;
                        if a & attr::LSTRIP != 0 {
                            while left_end > base && is_c_space(bytes[left_end - 1]) {
                                left_end -= 1;
                            }
                        }
                        if left_end > base {
                            next.push(Fragment::Text(base..left_end));
                        }
                    }
                    next.push(Fragment::Token(id));
                    let mut right = m + needle.len();
                    if right < end && a & attr::RSTRIP != 0 {
                        while right < end && is_c_space(bytes[right]) {
                            right += 1;
                        }
                    }
                    base = right;
                    if base >= end {
                        break;
                    }
                }
            }
            frags = next;
        }
        frags
    }
}
