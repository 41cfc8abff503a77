//! Tokenizers built from GGUF metadata that reproduce llama.cpp's tokenization exactly.
//!
//! [`Tokenizer::from_gguf`] reads `tokenizer.ggml.*` and builds one of:
//!
//! * **SPM** (`tokenizer.ggml.model = "llama"`): SentencePiece with byte fallback
//!   (module `spm`);
//! * **BPE** (`"gpt2"`, and `"gemma4"`, which llama.cpp runs as BPE on raw UTF-8 with `▁`
//!   for spaces): byte-level BPE behind the pre-tokenizer named by `tokenizer.ggml.pre`
//!   (modules `bpe`, `pretokenize`, `split_custom`);
//! * **WPM** (`"bert"`): WordPiece (module `wpm`);
//! * **UGM** (`"t5"`): Unigram with SentencePiece's precompiled normalization map (module
//!   `ugm`).
//!
//! Other models (`"rwkv"`, `"plamo2"`, `"hybriddna"`, ...) are refused with
//! [`TokenizerError::UnsupportedModel`], and an unknown `tokenizer.ggml.pre` with
//! [`TokenizerError::UnknownPreTokenizer`], as llama.cpp refuses it.
//!
//! Encoding first cuts out special tokens (module `special`): user-defined tokens always,
//! control tokens only with `parse_special`. Decoding uses llama.cpp's `token_to_piece`
//! rules and clean-up passes (module `decode`); [`StreamDecoder`] does it incrementally.
//! The vocabulary, special ids, flags and end-of-generation set come from module `vocab`,
//! code point classes from module `unicode`.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let model = engine_gguf::GgufModel::open("model.gguf", true)?;
//! let tok = engine_tokenizer::Tokenizer::from_gguf(&model)?;
//! let ids = tok.encode("Hello world", true, false)?;
//! println!("{ids:?} -> {:?}", tok.decode(&ids, false));
//! let mut text = String::new();
//! let mut stream = engine_tokenizer::StreamDecoder::new(false);
//! for &id in &ids {
//!     stream.push(&tok, id, &mut text);
//! }
//! stream.finish(&mut text);
//! # Ok(())
//! # }
//! ```
//!
//! # Conformance
//!
//! The tests run llama.cpp's `ggml-vocab-*.gguf` vectors for every vocabulary that has them
//! (`add_special = false`, `parse_special = false`, as `test-tokenizer-0` runs them), and
//! the Gemma 3 270M fixtures. `ggml-vocab-gemma-4` uses `tokenizer.ggml.model = "gemma4"`,
//! which llama.cpp maps to BPE, so it is covered by the vectors. `ggml-vocab-nomic-bert-moe`
//! (`"t5"`, Unigram) has no vectors; it is checked against known XLM-RoBERTa ids instead.
//! `ggml-vocab-aquila`, `-baichuan` and `-gpt-neox` have no vectors and are only loaded.
//! No vocabulary in llama.cpp's set is skipped.
//!
//! Code point classes (category, whitespace, lowercase, first code point of the NFD form)
//! come from the `unicode-general-category`, standard library and `unicode-normalization`
//! tables, with the code points added after Unicode 15.1 treated as unassigned, so that
//! they agree with llama.cpp's generated tables for every code point; a unit test checks
//! this against llama.cpp's `unicode-data.cpp`.
//!
//! Known, deliberate differences from llama.cpp:
//!
//! * Where llama.cpp picks among several candidate tokens in hash-map order (EOT/EOM/FIM
//!   detection by text when the vocabulary has more than one candidate name), the first
//!   name in llama.cpp's candidate list wins; where it sorts special tokens of equal length
//!   unstably, the lower id goes first. Neither affects the tokenization of the test
//!   vectors. The first changes which id [`Tokenizer::eot`] reports (every EOT candidate
//!   ends generation either way) and, for a vocabulary with several FIM padding, repository
//!   or file-separator candidates, which one of them ends generation.
//! * Inputs on which llama.cpp aborts (a missing byte-fallback token, a BOS that must be
//!   added but does not exist, a WordPiece word with no unknown token to fall back to)
//!   return an error instead.
//! * Text is `&str`, so llama.cpp's reading of invalid UTF-8 input (each bad byte as
//!   U+FFFD) never comes into play.
//! * The `"hybriddna"` and `"whitespace"` tokenizer models (llama.cpp special cases of
//!   BPE) are refused, as are `"rwkv"` and `"plamo2"`.

#![warn(missing_docs)]

mod bpe;
mod decode;
mod error;
mod pretokenize;
mod special;
mod split_custom;
mod spm;
mod stream;
mod strtab;
mod ugm;
mod unicode;
mod vocab;
mod wpm;

use engine_gguf::GgufModel;

pub use error::TokenizerError;
pub use stream::StreamDecoder;
pub use vocab::SpecialIds;

use bpe::Bpe;
use decode::Pieces;
use special::{Fragment, SpecialTokens};
use ugm::Ugm;
use vocab::{attr, Vocab};

/// The tokenization algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenizerKind {
    /// SentencePiece with byte fallback (`tokenizer.ggml.model = "llama"`).
    Spm,
    /// Byte-pair encoding with a pre-tokenizer (`"gpt2"`, `"gemma4"`).
    Bpe,
    /// WordPiece (`"bert"`).
    Wpm,
    /// Unigram (`"t5"`).
    Ugm,
}

enum Engine {
    Spm,
    Bpe(Box<Bpe>),
    Wpm,
    Ugm(Box<Ugm>),
}

/// A tokenizer built from GGUF metadata. Immutable, `Send + Sync`; share it with `Arc`.
pub struct Tokenizer {
    vocab: Vocab,
    pre: Option<String>,
    engine: Engine,
    special: SpecialTokens,
    pieces: Pieces,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.vocab.kind)
            .field("model", &self.vocab.model)
            .field("pre", &self.pre)
            .field("n_vocab", &self.vocab.len())
            .field("special_ids", &self.vocab.ids)
            .field("eog", &self.vocab.eog)
            .finish()
    }
}

const SPACE_ESCAPE: &str = "\u{2581}";

impl Tokenizer {
    /// Builds the tokenizer described by a model's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(model: &GgufModel) -> Result<Tokenizer, TokenizerError> {
        let mut setup = vocab::model_setup(model)?;
        let vocab = Vocab::load(model, &mut setup)?;
        let engine = match setup.kind {
            TokenizerKind::Spm => Engine::Spm,
            TokenizerKind::Wpm => Engine::Wpm,
            TokenizerKind::Ugm => Engine::Ugm(Box::new(Ugm::load(model, &vocab)?)),
            TokenizerKind::Bpe => {
                let settings = setup.pre_settings.as_ref().ok_or_else(|| {
                    TokenizerError::Metadata("BPE tokenizer without pre-tokenizer settings".into())
                })?;
                Engine::Bpe(Box::new(Bpe::load(
                    model,
                    settings,
                    vocab.flags.ignore_merges,
                )?))
            }
        };
        let special = SpecialTokens::new(&vocab)?;
        let pieces = Pieces::build(&vocab);
        Ok(Tokenizer {
            vocab,
            pre: setup.pre,
            engine,
            special,
            pieces,
        })
    }

    /// Tokenizes `text`. `add_special` adds BOS/EOS as the metadata says (llama.cpp's
    /// `add_special`; for WordPiece it adds CLS and SEP); `parse_special` lets control-token
    /// text in `text` become control tokens (user-defined tokens are always recognised).
    ///
    /// # Errors
    ///
    /// Only where llama.cpp would abort: a special token that must be added is missing,
    /// SentencePiece byte fallback finds no token for a byte, or a pre-tokenizer regex
    /// exceeds its backtracking limit.
    pub fn encode(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        let v = &self.vocab;
        let frags = self.special.partition(v, text, parse_special);
        let mut out = Vec::with_capacity(text.len() / 3 + 4);
        let need = |id: Option<u32>, what| id.ok_or(TokenizerError::MissingSpecialToken(what));
        match &self.engine {
            Engine::Spm => {
                if add_special && v.flags.add_bos {
                    out.push(need(v.ids.bos, "BOS")?);
                }
                let mut prev_special = true;
                let mut buf = String::new();
                for f in &frags {
                    match f {
                        Fragment::Text(r) => {
                            buf.clear();
                            if v.flags.add_space_prefix && prev_special {
                                buf.push_str(SPACE_ESCAPE);
                            }
                            escape_spaces(&text[r.clone()], &mut buf);
                            spm::tokenize(v, &buf, &mut out)?;
                            prev_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(*id);
                            prev_special = true;
                        }
                    }
                }
                if add_special && v.flags.add_eos {
                    out.push(need(v.ids.eos, "EOS")?);
                }
            }
            Engine::Bpe(bpe) => {
                if add_special && v.flags.add_bos {
                    out.push(need(v.ids.bos, "BOS")?);
                }
                let mut buf = String::new();
                for f in &frags {
                    match f {
                        Fragment::Text(r) => {
                            let piece = &text[r.clone()];
                            if v.flags.escape_whitespaces {
                                buf.clear();
                                escape_spaces(piece, &mut buf);
                                bpe.tokenize(v, &buf, &mut out)?;
                            } else {
                                bpe.tokenize(v, piece, &mut out)?;
                            }
                        }
                        Fragment::Token(id) => out.push(*id),
                    }
                }
                if add_special && v.flags.add_eos {
                    out.push(need(v.ids.eos, "EOS")?);
                }
            }
            Engine::Ugm(ugm) => {
                if add_special && v.flags.add_bos {
                    out.push(need(v.ids.bos, "BOS")?);
                }
                for f in &frags {
                    match f {
                        Fragment::Text(r) => ugm.tokenize(v, &text[r.clone()], &mut out)?,
                        Fragment::Token(id) => out.push(*id),
                    }
                }
                if add_special && v.flags.add_eos {
                    out.push(need(v.ids.eos, "EOS")?);
                }
            }
            Engine::Wpm => {
                if add_special {
                    out.push(need(v.ids.bos, "BOS")?);
                }
                for f in &frags {
                    match f {
                        Fragment::Text(r) => wpm::tokenize(v, &text[r.clone()], &mut out)?,
                        Fragment::Token(id) => out.push(*id),
                    }
                }
                if add_special {
                    out.push(need(v.ids.sep, "SEP")?);
                }
            }
        }
        Ok(out)
    }

    /// Detokenizes `ids` like llama.cpp's `common_detokenize`: the pieces joined, the
    /// leading space of the first piece removed when the vocabulary adds a space prefix,
    /// and (for vocabularies that ask for it) the clean-up of spaces before punctuation.
    /// Control tokens are rendered as their text only with `render_special`; unknown ids
    /// render as nothing. Bytes that do not form valid UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32], render_special: bool) -> String {
        match String::from_utf8(self.decode_bytes(ids, render_special)) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    /// As [`Tokenizer::decode`], without the UTF-8 conversion.
    pub fn decode_bytes(&self, ids: &[u32], render_special: bool) -> Vec<u8> {
        decode::detokenize(&self.vocab, &self.pieces, ids, render_special)
    }

    /// The raw bytes of one token (llama.cpp's `llama_token_to_piece` with `lstrip = 0`).
    /// Control and unknown tokens are empty unless `render_special`; so are ids out of range.
    pub fn token_to_piece(&self, id: u32, render_special: bool) -> &[u8] {
        self.pieces.get(&self.vocab, id, render_special)
    }

    /// Number of tokens in the vocabulary.
    pub fn n_vocab(&self) -> usize {
        self.vocab.len()
    }

    /// The stored text of a token (`▁` for spaces in SPM vocabularies, GPT-2 byte encoding
    /// in BPE ones).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.vocab.try_text(id)
    }

    /// The id whose stored text is exactly `text` (the last one, if several share it).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.vocab.token_id(text)
    }

    /// Score of a token (SentencePiece log-probability; 0 where the vocabulary has none).
    pub fn token_score(&self, id: u32) -> Option<f32> {
        self.vocab.scores.get(id as usize).copied()
    }

    /// Beginning-of-sequence token.
    pub fn bos(&self) -> Option<u32> {
        self.vocab.ids.bos
    }

    /// End-of-sequence token.
    pub fn eos(&self) -> Option<u32> {
        self.vocab.ids.eos
    }

    /// End-of-turn token.
    pub fn eot(&self) -> Option<u32> {
        self.vocab.ids.eot
    }

    /// All special token ids.
    pub fn special_ids(&self) -> &SpecialIds {
        &self.vocab.ids
    }

    /// Whether generation stops at `id` (llama.cpp's `llama_vocab_is_eog`).
    pub fn is_eog(&self, id: u32) -> bool {
        self.vocab.eog.binary_search(&id).is_ok()
    }

    /// The end-of-generation set, ascending.
    pub fn eog_ids(&self) -> &[u32] {
        &self.vocab.eog
    }

    /// Whether `id` is a control token (after llama.cpp's re-classification).
    pub fn is_control(&self, id: u32) -> bool {
        self.vocab.attr(id) & attr::CONTROL != 0
    }

    /// Whether `id` is a user-defined token.
    pub fn is_user_defined(&self, id: u32) -> bool {
        self.vocab.attr(id) & attr::USER_DEFINED != 0
    }

    /// Whether `id` is a byte-fallback token (`<0xAB>`).
    pub fn is_byte(&self, id: u32) -> bool {
        self.vocab.attr(id) & attr::BYTE != 0
    }

    /// The algorithm in use.
    pub fn kind(&self) -> TokenizerKind {
        self.vocab.kind
    }

    /// `tokenizer.ggml.model` as found in the file.
    pub fn model(&self) -> &str {
        &self.vocab.model
    }

    /// The pre-tokenizer name in effect (BPE only; empty when the file names none).
    pub fn pre(&self) -> Option<&str> {
        self.pre.as_deref()
    }

    /// Whether `encode(.., add_special = true, ..)` adds BOS (always true for WordPiece,
    /// which adds CLS).
    pub fn add_bos(&self) -> bool {
        self.vocab.kind == TokenizerKind::Wpm || self.vocab.flags.add_bos
    }

    /// Whether `encode(.., add_special = true, ..)` adds EOS.
    pub fn add_eos(&self) -> bool {
        self.vocab.kind != TokenizerKind::Wpm && self.vocab.flags.add_eos
    }

    /// Whether a space is put in front of text that starts a fragment (SPM).
    pub fn add_space_prefix(&self) -> bool {
        self.vocab.flags.add_space_prefix
    }
}

/// Appends `text` with every space replaced by `▁`.
fn escape_spaces(text: &str, out: &mut String) {
    let mut rest = text;
    while let Some(p) = rest.find(' ') {
        out.push_str(&rest[..p]);
        out.push_str(SPACE_ESCAPE);
        rest = &rest[p + 1..];
    }
    out.push_str(rest);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Tokenizer>();
    }

    #[test]
    fn escape() {
        let mut s = String::new();
        escape_spaces(" a  b", &mut s);
        assert_eq!(s, "▁a▁▁b");
    }
}
