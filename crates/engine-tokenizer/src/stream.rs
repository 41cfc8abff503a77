//! Incremental detokenization for streaming output.

use crate::Tokenizer;

/// Turns a stream of token ids into text that is always valid UTF-8.
///
/// Each token's piece (as [`Tokenizer::token_to_piece`] gives it) is appended to a byte
/// buffer; complete characters are released at once, an incomplete multi-byte sequence at
/// the end is held back until a later token completes it, and bytes that can never form a
/// character become U+FFFD. [`StreamDecoder::finish`] flushes what is left, lossily. The
/// concatenated output equals `String::from_utf8_lossy` of all the pieces joined, which is
/// how llama.cpp's server streams (no leading-space removal or clean-up passes, unlike
/// [`Tokenizer::decode`]).
#[derive(Clone, Debug, Default)]
pub struct StreamDecoder {
    render_special: bool,
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// A decoder; `render_special` renders control tokens as their text.
    pub fn new(render_special: bool) -> Self {
        StreamDecoder {
            render_special,
            // room for any ordinary token piece, so streaming does not allocate per token
            pending: Vec::with_capacity(64),
        }
    }

    /// Adds one token and appends whatever text is now complete to `out`.
    pub fn push(&mut self, tok: &Tokenizer, id: u32, out: &mut String) {
        self.pending
            .extend_from_slice(tok.token_to_piece(id, self.render_special));
        self.drain(out);
    }

    /// Appends the held-back bytes (lossily) to `out` and resets the decoder.
    pub fn finish(&mut self, out: &mut String) {
        out.push_str(&String::from_utf8_lossy(&self.pending));
        self.pending.clear();
    }

    /// Number of bytes held back waiting for the rest of a character.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    fn drain(&mut self, out: &mut String) {
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The prefix was just validated.
                    out.push_str(
                        std::str::from_utf8(&self.pending[start..start + valid])
                            .unwrap_or_default(),
                    );
                    start += valid;
                    match e.error_len() {
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            start += bad;
                        }
                        None => break,
                    }
                }
            }
        }
        self.pending.drain(..start);
    }
}
