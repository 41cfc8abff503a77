//! Byte-pair encoding as llama.cpp does it: pre-tokenize into words, GPT-2 byte-encode each
//! word (unless the vocabulary uses raw UTF-8, as Gemma 4 does), then repeatedly merge the
//! adjacent pair with the lowest merge rank (leftmost first on ties). Pieces that are not
//! vocabulary tokens at the end fall back to single-byte tokens where the vocabulary has them
//! and are dropped otherwise.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use engine_gguf::{Array, GgufModel};

use crate::error::TokenizerError;
use crate::pretokenize::{PreKind, PreSettings, PreTokenizer};
use crate::strtab::{Keep, StrTable, StrTableBuilder};
use crate::unicode::byte_to_char;
use crate::vocab::Vocab;

/// Merge ranks and the pre-tokenizer of a BPE vocabulary.
pub(crate) struct Bpe {
    /// The merge lines (`"left right"`), looked up by the text of a candidate pair.
    merges: StrTable,
    /// Rank of each entry of `merges`.
    ranks: Vec<u32>,
    pre: PreTokenizer,
    ignore_merges: bool,
    /// Gemma 4 keeps runs of newlines whole when they are a token.
    whole_newline_runs: bool,
}

#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

struct Bigram {
    left: usize,
    right: usize,
    rank: u32,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// The max-heap pops the lowest rank first, then the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        other.rank.cmp(&self.rank).then(other.left.cmp(&self.left))
    }
}

impl Bpe {
    /// Reads the merges and compiles the pre-tokenizer.
    pub(crate) fn load(
        gguf: &GgufModel,
        settings: &PreSettings,
        ignore_merges: bool,
    ) -> Result<Bpe, TokenizerError> {
        let merges: &[String] = match gguf.get_array("tokenizer.ggml.merges")? {
            Some(Array::String(v)) => v,
            Some(_) => {
                return Err(TokenizerError::Metadata(
                    "tokenizer.ggml.merges is not a string array".into(),
                ))
            }
            None if settings.kind == PreKind::KimiK2 => &[],
            None => {
                return Err(TokenizerError::Metadata(
                    "tokenizer.ggml.merges is missing".into(),
                ))
            }
        };
        // llama.cpp splits each line at the first space after its first byte and keeps the
        // first rank of a repeated pair. A pair (left, right) then matches a line exactly when
        // "left right" equals it and `left` has no space after its first byte.
        let total: usize = merges.iter().map(|m| m.len()).sum();
        let mut table = StrTableBuilder::with_capacity(merges.len(), total);
        let mut ranks = Vec::with_capacity(merges.len());
        for (rank, m) in merges.iter().enumerate() {
            if m.as_bytes().iter().skip(1).any(|&b| b == b' ') {
                table.push(m)?;
                ranks.push(rank as u32);
            }
        }
        Ok(Bpe {
            merges: table.finish(Keep::First),
            ranks,
            pre: PreTokenizer::new(settings)?,
            ignore_merges,
            whole_newline_runs: settings.kind == PreKind::Gemma4,
        })
    }

    fn rank(&self, left: &str, right: &str) -> Option<u32> {
        if left.as_bytes().iter().skip(1).any(|&b| b == b' ') {
            return None;
        }
        let n = left.len() + 1 + right.len();
        let mut stack = [0u8; 256];
        let mut heap = Vec::new();
        let key: &mut [u8] = if n <= stack.len() {
            &mut stack[..n]
        } else {
            heap.resize(n, 0);
            &mut heap
        };
        key[..left.len()].copy_from_slice(left.as_bytes());
        key[left.len()] = b' ';
        key[left.len() + 1..].copy_from_slice(right.as_bytes());
        self.merges.find_bytes(key).map(|i| self.ranks[i as usize])
    }

    /// Tokenizes one raw-text fragment and appends the ids to `out`.
    pub(crate) fn tokenize(
        &self,
        vocab: &Vocab,
        text: &str,
        out: &mut Vec<u32>,
    ) -> Result<(), TokenizerError> {
        let words = self.pre.split(text)?;
        let mut encoded = String::new();
        for w in words {
            let word = if self.pre.byte_encode() {
                encoded.clear();
                encoded.extend(text[w].bytes().map(byte_to_char));
                encoded.as_str()
            } else {
                &text[w]
            };
            self.tokenize_word(vocab, word, out);
        }
        Ok(())
    }

    fn tokenize_word(&self, vocab: &Vocab, word: &str, out: &mut Vec<u32>) {
        let mut symbols: Vec<Symbol> = Vec::with_capacity(word.len());
        let whole = (self.ignore_merges && vocab.token_id(word).is_some())
            || (self.whole_newline_runs
                && word.bytes().all(|b| b == b'\n')
                && vocab.token_id(word).is_some());
        if whole {
            symbols.push(Symbol {
                start: 0,
                len: word.len(),
                prev: None,
                next: None,
            });
        } else {
            for (i, (start, c)) in word.char_indices().enumerate() {
                symbols.push(Symbol {
                    start,
                    len: c.len_utf8(),
                    prev: i.checked_sub(1),
                    next: None,
                });
            }
            let n = symbols.len();
            for (i, s) in symbols.iter_mut().enumerate().take(n.saturating_sub(1)) {
                s.next = Some(i + 1);
            }
        }
        let mut heap = BinaryHeap::new();
        let add = |heap: &mut BinaryHeap<Bigram>,
                   symbols: &[Symbol],
                   left: Option<usize>,
                   right: Option<usize>| {
            let (Some(l), Some(r)) = (left, right) else {
                return;
            };
            let (a, b) = (&symbols[l], &symbols[r]);
            let lt = &word[a.start..a.start + a.len];
            let rt = &word[b.start..b.start + b.len];
            if let Some(rank) = self.rank(lt, rt) {
                heap.push(Bigram {
                    left: l,
                    right: r,
                    rank,
                    size: a.len + b.len,
                });
            }
        };
        for i in 1..symbols.len() {
            add(&mut heap, &symbols, Some(i - 1), Some(i));
        }
        while let Some(bg) = heap.pop() {
            let (l, r) = (symbols[bg.left], symbols[bg.right]);
            // A pair is stale once either side changed since it was queued.
            if l.len == 0 || r.len == 0 || l.len + r.len != bg.size {
                continue;
            }
            symbols[bg.left].len += r.len;
            symbols[bg.right].len = 0;
            symbols[bg.left].next = r.next;
            if let Some(nx) = r.next {
                symbols[nx].prev = Some(bg.left);
            }
            let left = symbols[bg.left];
            add(&mut heap, &symbols, left.prev, Some(bg.left));
            add(&mut heap, &symbols, Some(bg.left), left.next);
        }
        for s in symbols.iter().filter(|s| s.len > 0) {
            let piece = &word[s.start..s.start + s.len];
            if let Some(id) = vocab.token_id(piece) {
                out.push(id);
                continue;
            }
            for &b in piece.as_bytes() {
                let id = if self.pre.byte_encode() {
                    // One byte of the encoded text: only ASCII bytes can be tokens.
                    let one = [b];
                    std::str::from_utf8(&one)
                        .ok()
                        .and_then(|s| vocab.token_id(s))
                } else {
                    vocab.token_id(&format!("<0x{b:02X}>"))
                };
                if let Some(id) = id {
                    out.push(id);
                }
            }
        }
    }
}
