//! SentencePiece (SPM) tokenization as llama.cpp does it: start from single UTF-8
//! characters and repeatedly merge the adjacent pair whose concatenation is the vocabulary
//! token with the highest score (leftmost first on ties); characters that end up in no
//! token fall back to byte tokens (`<0xAB>`).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::error::TokenizerError;
use crate::vocab::Vocab;

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
    score: f32,
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
    /// Higher score first, then the leftmost pair. Scores that compare equal with `<`
    /// (including 0.0 and -0.0) tie, as in llama.cpp's comparator.
    fn cmp(&self, other: &Self) -> Ordering {
        if self.score < other.score {
            Ordering::Less
        } else if self.score > other.score {
            Ordering::Greater
        } else {
            other.left.cmp(&self.left)
        }
    }
}

/// Tokenizes one fragment (already whitespace-escaped) and appends the ids to `out`.
pub(crate) fn tokenize(
    vocab: &Vocab,
    text: &str,
    out: &mut Vec<u32>,
) -> Result<(), TokenizerError> {
    let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
    for (i, (start, c)) in text.char_indices().enumerate() {
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
    let mut heap = BinaryHeap::new();
    let try_add = |heap: &mut BinaryHeap<Bigram>,
                   symbols: &[Symbol],
                   left: Option<usize>,
                   right: Option<usize>| {
        let (Some(l), Some(r)) = (left, right) else {
            return;
        };
        let (a, b) = (&symbols[l], &symbols[r]);
        let piece = &text[a.start..b.start + b.len];
        if let Some(id) = vocab.token_id(piece) {
            heap.push(Bigram {
                left: l,
                right: r,
                score: vocab.scores[id as usize],
                size: piece.len(),
            });
        }
    };
    for i in 1..n {
        try_add(&mut heap, &symbols, Some(i - 1), Some(i));
    }
    while let Some(bg) = heap.pop() {
        let (l, r) = (symbols[bg.left], symbols[bg.right]);
        // Skip pairs whose symbols changed since the pair was queued.
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
        try_add(&mut heap, &symbols, left.prev, Some(bg.left));
        try_add(&mut heap, &symbols, Some(bg.left), left.next);
    }
    // Every merged symbol is a vocabulary token by construction; single characters that are
    // not become byte tokens.
    let mut i = if n > 0 { Some(0) } else { None };
    while let Some(k) = i {
        let s = symbols[k];
        let piece = &text[s.start..s.start + s.len];
        match vocab.token_id(piece) {
            Some(id) => out.push(id),
            None => {
                for &b in piece.as_bytes() {
                    out.push(
                        vocab
                            .spm_byte_token(b)
                            .ok_or(TokenizerError::MissingByteToken(b))?,
                    );
                }
            }
        }
        i = s.next;
    }
    Ok(())
}
