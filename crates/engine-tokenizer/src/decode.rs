//! Turning ids back into text: the per-token pieces (llama.cpp's `token_to_piece`, cached
//! for the whole vocabulary at load time) and detokenization with its clean-up passes.

use crate::unicode::char_to_byte;
use crate::vocab::{attr, Vocab};
use crate::TokenizerKind;

/// Every token's piece, rendered as with `special = true`, in one buffer.
pub(crate) struct Pieces {
    buf: Vec<u8>,
    offs: Vec<u32>,
}

/// The byte a `<0xAB>` token stands for, parsed like llama.cpp's `strtol(text.substr(3, 2))`.
fn byte_token_value(text: &str) -> u8 {
    let digits = text.as_bytes().get(3..text.len().min(5)).unwrap_or(&[]);
    let mut v: u32 = 0;
    for &d in digits {
        match (d as char).to_digit(16) {
            Some(x) => v = v * 16 + x,
            None => break,
        }
    }
    v as u8
}

/// Appends `text` with every `▁` (U+2581, bytes E2 96 81) turned into a space.
fn push_unescaped(out: &mut Vec<u8>, text: &str) {
    let b = text.as_bytes();
    // Tokens are short: a plain scan beats a vectorised search here.
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == 0xE2 && b.get(i + 1) == Some(&0x96) && b.get(i + 2) == Some(&0x81) {
            out.extend_from_slice(&b[copied..i]);
            out.push(b' ');
            i += 3;
            copied = i;
        } else {
            i += 1;
        }
    }
    out.extend_from_slice(&b[copied..]);
}

/// Appends the bytes a GPT-2 byte-encoded token stands for; characters outside the byte map
/// are written as llama.cpp does (`[UNK_BYTE_0x..<token>]`).
fn push_byte_decoded(out: &mut Vec<u8>, text: &str) {
    for c in text.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut utf8 = [0u8; 4];
                for b in c.encode_utf8(&mut utf8).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
}

impl Pieces {
    pub(crate) fn build(vocab: &Vocab) -> Pieces {
        let n = vocab.len();
        let mut buf = Vec::with_capacity(n * 8);
        let mut offs = Vec::with_capacity(n + 1);
        for id in 0..n as u32 {
            offs.push(buf.len() as u32);
            let a = vocab.attr(id);
            let text = vocab.text(id);
            if a & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
                buf.extend_from_slice(text.as_bytes());
            } else if a & attr::NORMAL != 0 {
                if vocab.kind == TokenizerKind::Bpe && !vocab.flags.escape_whitespaces {
                    push_byte_decoded(&mut buf, text);
                } else {
                    push_unescaped(&mut buf, text);
                }
            } else if a & attr::BYTE != 0 {
                buf.push(byte_token_value(text));
            }
        }
        offs.push(buf.len() as u32);
        Pieces { buf, offs }
    }

    /// The piece of `id`; control and unknown tokens are empty unless `special`, and ids out
    /// of range are empty.
    pub(crate) fn get(&self, vocab: &Vocab, id: u32, special: bool) -> &[u8] {
        let i = id as usize;
        if i + 1 >= self.offs.len() {
            return &[];
        }
        if !special && vocab.attr(id) & (attr::UNKNOWN | attr::CONTROL) != 0 {
            return &[];
        }
        &self.buf[self.offs[i] as usize..self.offs[i + 1] as usize]
    }
}

/// Concatenates the pieces of `ids` (dropping one leading space of the first piece when the
/// vocabulary adds a space prefix) and applies llama.cpp's `clean_spaces` passes.
pub(crate) fn detokenize(vocab: &Vocab, pieces: &Pieces, ids: &[u32], special: bool) -> Vec<u8> {
    let mut text = Vec::new();
    let mut remove_space = vocab.flags.add_space_prefix;
    for &id in ids {
        let mut p = pieces.get(vocab, id, special);
        if remove_space && p.first() == Some(&b' ') {
            p = &p[1..];
        }
        remove_space = false;
        text.extend_from_slice(p);
    }
    if vocab.flags.clean_spaces {
        clean_spaces(&mut text);
    }
    text
}

/// llama.cpp's three in-place clean-up passes: no space before `?!.,`, no spaces around a
/// lone apostrophe, and no space before `'s`, `'m`, `'re` and `'ve`.
fn clean_spaces(text: &mut Vec<u8>) {
    let mut total = text.len();

    let total1 = total;
    total = usize::from(total > 0);
    for i in 1..total1 {
        let x = text[i];
        if text[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            total -= 1;
        }
        text[total] = x;
        total += 1;
    }

    let total2 = total;
    total = usize::from(total > 0);
    let mut i = 1;
    while i < total2 {
        let x = text[i];
        if x == b'\'' && i + 1 < total2 && text[i - 1] == b' ' && text[i + 1] == b' ' {
            total -= 1;
            i += 1;
            text[i] = 0;
        }
        text[total] = x;
        total += 1;
        i += 1;
    }

    let total3 = total;
    total = usize::from(total > 0);
    for i in 1..total3 {
        let x = text[i];
        if text[i - 1] == b' ' && x == b'\'' && i + 1 < total3 {
            let x1 = text[i + 1];
            if x1 == b's' || x1 == b'm' {
                total -= 1;
            } else if x1 != b't' && x1 != b'd' && i + 2 < total3 {
                let x2 = text[i + 2];
                if x2 == b'e' && (x1 == b'r' || x1 == b'v') {
                    total -= 1;
                }
            }
        }
        text[total] = x;
        total += 1;
    }
    text.truncate(total);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(s: &str) -> String {
        let mut v = s.as_bytes().to_vec();
        clean_spaces(&mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn clean_up_passes() {
        assert_eq!(clean("Hello , world !"), "Hello, world!");
        assert_eq!(clean("a ' b"), "a'b");
        assert_eq!(clean("it 's we 're I 'd"), "it's we're I 'd");
        assert_eq!(clean(""), "");
    }

    #[test]
    fn byte_tokens() {
        assert_eq!(byte_token_value("<0x0A>"), 10);
        assert_eq!(byte_token_value("<0xFF>"), 255);
        assert_eq!(byte_token_value("<0x"), 0);
    }
}
