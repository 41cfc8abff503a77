//! Unigram (UGM, `tokenizer.ggml.model = "t5"`) tokenization as llama.cpp does it:
//! SentencePiece normalization through the precompiled character map (an XOR-compressed
//! double array of replacement rules), whitespace escaping, then a Viterbi search for the
//! segmentation with the highest total score, unknown characters costing the lowest score
//! minus 10 and consecutive unknowns merging into one unknown token.

use engine_gguf::{Array, GgufModel};
use rustc_hash::FxHashSet;

use crate::error::TokenizerError;
use crate::strtab::{Keep, StrTable, StrTableBuilder};
use crate::vocab::{attr, Vocab};

/// Penalty below the lowest normal-token score for an unknown character.
const UNKNOWN_PENALTY: f32 = 10.0;

/// The precompiled character map: XCDA trie entries and the replacement strings.
struct CharsMap {
    xcda: Vec<u32>,
    replacements: Vec<u8>,
}

fn xcda_error() -> TokenizerError {
    TokenizerError::Metadata("tokenizer.ggml.precompiled_charsmap: index out of bounds".into())
}

impl CharsMap {
    fn parse(raw: &[u8]) -> Result<CharsMap, TokenizerError> {
        if raw.len() < 4 {
            return Err(TokenizerError::Metadata(
                "tokenizer.ggml.precompiled_charsmap is too small".into(),
            ));
        }
        let blob = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
        if blob + 4 >= raw.len() {
            return Err(xcda_error());
        }
        let xcda = raw[4..4 + blob]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(CharsMap {
            xcda,
            replacements: raw[4 + blob..].to_vec(),
        })
    }

    fn node(&self, i: usize) -> Result<u32, TokenizerError> {
        self.xcda.get(i).copied().ok_or_else(xcda_error)
    }
    fn base(&self, i: usize) -> Result<usize, TokenizerError> {
        let n = self.node(i)?;
        Ok(((n >> 10) << ((n & (1 << 9)) >> 6)) as usize)
    }
    fn lcheck(&self, i: usize) -> Result<u32, TokenizerError> {
        Ok(self.node(i)? & ((1 << 31) | 0xFF))
    }
    fn leaf(&self, i: usize) -> Result<bool, TokenizerError> {
        Ok((self.node(i)? >> 8) & 1 == 1)
    }
    fn value(&self, i: usize) -> Result<usize, TokenizerError> {
        Ok((self.node(i)? & ((1 << 31) - 1)) as usize)
    }

    /// The longest rule matching a prefix of `input`: (replacement, bytes consumed).
    fn longest(&self, input: &[u8]) -> Result<Option<(&[u8], usize)>, TokenizerError> {
        if self.xcda.is_empty() {
            return Ok(None);
        }
        let mut best = None;
        let mut node = self.base(0)?;
        for (k, &c) in input.iter().enumerate() {
            if c == 0 {
                break;
            }
            node ^= c as usize;
            if self.lcheck(node)? != c as u32 {
                break;
            }
            let is_leaf = self.leaf(node)?;
            node ^= self.base(node)?;
            if is_leaf {
                best = Some((k + 1, self.value(node)?));
            }
        }
        let Some((len, off)) = best else {
            return Ok(None);
        };
        let rest = self
            .replacements
            .get(off..)
            .filter(|r| !r.is_empty())
            .ok_or_else(xcda_error)?;
        let end = rest.iter().position(|&b| b == 0).ok_or_else(|| {
            TokenizerError::Metadata(
                "tokenizer.ggml.precompiled_charsmap: unterminated replacement".into(),
            )
        })?;
        Ok(Some((&rest[..end], len)))
    }
}

/// Unigram model data built at load time.
pub(crate) struct Ugm {
    charsmap: CharsMap,
    /// Normal, user-defined and unused tokens, by text.
    pieces: StrTable,
    piece_ids: Vec<u32>,
    max_piece_len: usize,
    /// Every byte prefix of every user-defined token (llama.cpp keeps whatever stretch of
    /// input follows a path of its user-defined-token trie unnormalized).
    user_prefixes: FxHashSet<Box<[u8]>>,
    unknown_score: f64,
}

struct Best {
    id: u32,
    start: usize,
    score: f64,
}

impl Ugm {
    /// Builds the matchers from the attributes the token types give (llama.cpp builds them
    /// before its special-token fix-ups) and reads the character map.
    pub(crate) fn load(gguf: &GgufModel, vocab: &Vocab) -> Result<Ugm, TokenizerError> {
        let raw: Vec<u8> = match gguf.get_array("tokenizer.ggml.precompiled_charsmap")? {
            None => Vec::new(),
            Some(Array::U8(v)) => v.clone(),
            Some(Array::I8(v)) => v.iter().map(|&b| b as u8).collect(),
            Some(_) => {
                return Err(TokenizerError::Metadata(
                    "tokenizer.ggml.precompiled_charsmap is not a byte array".into(),
                ))
            }
        };
        let charsmap = if raw.is_empty() {
            CharsMap {
                xcda: Vec::new(),
                replacements: Vec::new(),
            }
        } else {
            CharsMap::parse(&raw)?
        };
        let n = vocab.len();
        let mut min_score = f32::MAX;
        let mut table = StrTableBuilder::with_capacity(n, 0);
        let mut piece_ids = Vec::new();
        let mut max_piece_len = 0;
        let mut user_prefixes = FxHashSet::default();
        for id in 0..n as u32 {
            let a = vocab.type_attr(id);
            let text = vocab.text(id);
            if a & attr::NORMAL != 0 {
                min_score = min_score.min(vocab.scores[id as usize]);
            }
            if a & (attr::NORMAL | attr::USER_DEFINED | attr::UNUSED) != 0 {
                table.push(text)?;
                piece_ids.push(id);
                max_piece_len = max_piece_len.max(text.len());
            }
            if a & attr::USER_DEFINED != 0 {
                for k in 1..=text.len() {
                    user_prefixes.insert(text.as_bytes()[..k].into());
                }
            }
        }
        Ok(Ugm {
            charsmap,
            pieces: table.finish(Keep::Last),
            piece_ids,
            max_piece_len,
            user_prefixes,
            unknown_score: (min_score - UNKNOWN_PENALTY) as f64,
        })
    }

    /// Normalizes one prefix of `input`: (replacement bytes, bytes consumed).
    fn normalize_prefix<'a>(
        &'a self,
        input: &'a [u8],
    ) -> Result<(&'a [u8], usize), TokenizerError> {
        let mut user = 0;
        while user < input.len() && self.user_prefixes.contains(&input[..user + 1]) {
            user += 1;
        }
        if user > 0 {
            return Ok((&input[..user], user));
        }
        if let Some(hit) = self.charsmap.longest(input)? {
            return Ok(hit);
        }
        // One character passes unchanged; a malformed one (possible after a user-defined
        // prefix that ends inside a character) becomes U+FFFD, consuming one byte. The checks
        // are llama.cpp's: the lead byte and the continuation bytes only.
        let len = match input[0] {
            b if b < 0x80 => 1,
            b if b >> 5 == 0b110 => 2,
            b if b >> 4 == 0b1110 => 3,
            b if b >> 3 == 0b11110 => 4,
            _ => 0,
        };
        let valid =
            len > 0 && len <= input.len() && input[1..len].iter().all(|&b| b & 0xC0 == 0x80);
        if valid {
            Ok((&input[..len], len))
        } else {
            Ok(("\u{FFFD}".as_bytes(), 1))
        }
    }

    fn normalize(&self, vocab: &Vocab, input: &str) -> Result<Vec<u8>, TokenizerError> {
        let f = &vocab.flags;
        let space: &[u8] = if f.escape_whitespaces {
            "\u{2581}".as_bytes()
        } else {
            b" "
        };
        // llama.cpp never sets treat_whitespace_as_suffix, so the prefix form applies.
        let prepend = f.add_space_prefix;
        let merge = f.remove_extra_whitespaces;
        let input = input.as_bytes();
        let mut out = Vec::with_capacity(input.len() * 3);
        let mut space_prepended = false;
        let mut in_word = false;
        let mut off = 0;
        while off < input.len() {
            let (norm, used) = self.normalize_prefix(&input[off..])?;
            for &c in norm {
                if c != b' ' {
                    if !in_word {
                        in_word = true;
                        if (prepend && !space_prepended) || merge {
                            out.extend_from_slice(space);
                            space_prepended = true;
                        }
                    }
                    out.push(c);
                } else {
                    in_word = false;
                    if !merge {
                        out.extend_from_slice(space);
                    }
                }
            }
            off += used.max(1);
        }
        Ok(out)
    }

    /// Tokenizes one raw-text fragment and appends the ids to `out`.
    pub(crate) fn tokenize(
        &self,
        vocab: &Vocab,
        text: &str,
        out: &mut Vec<u32>,
    ) -> Result<(), TokenizerError> {
        let norm = self.normalize(vocab, text)?;
        let n = norm.len();
        if n == 0 {
            return Ok(());
        }
        let unk = vocab
            .ids
            .unk
            .ok_or(TokenizerError::MissingSpecialToken("UNK"))?;
        let mut best: Vec<Best> = (0..=n)
            .map(|_| Best {
                id: unk,
                start: 0,
                score: -f64::MAX,
            })
            .collect();
        best[0].score = 0.0;
        // When the normalized text is valid UTF-8, pieces (whole characters) can only end on
        // character boundaries, which saves most lookups.
        let boundaries_only = std::str::from_utf8(&norm).is_ok();
        let mut off = 0;
        while off < n {
            let char_len = match norm[off] >> 4 {
                0xC | 0xD => 2,
                0xE => 3,
                0xF => 4,
                _ => 1,
            }
            .min(n - off);
            let base = best[off].score;
            let mut single = false;
            for len in 1..=self.max_piece_len.min(n - off) {
                // Pieces are whole UTF-8 characters: only try ends on character boundaries.
                if boundaries_only && norm.get(off + len).is_some_and(|&b| b & 0xC0 == 0x80) {
                    continue;
                }
                let Some(i) = self.pieces.find_bytes(&norm[off..off + len]) else {
                    continue;
                };
                if len == char_len {
                    single = true;
                }
                let id = self.piece_ids[i as usize];
                let score = if vocab.attr(id) & attr::USER_DEFINED != 0 {
                    0.0
                } else {
                    vocab.scores[id as usize] as f64
                };
                let end = &mut best[off + len];
                if base + score > end.score {
                    *end = Best {
                        id,
                        start: off,
                        score: base + score,
                    };
                }
            }
            if !single {
                let end = &mut best[off + char_len];
                if base + self.unknown_score > end.score {
                    *end = Best {
                        id: unk,
                        start: off,
                        score: base + self.unknown_score,
                    };
                }
            }
            off += char_len;
        }
        let first = out.len();
        let mut at = n;
        let mut prev_unknown = false;
        loop {
            let b = &best[at];
            let unknown = b.id == unk;
            if !(prev_unknown && unknown) {
                out.push(b.id);
            }
            if b.start == 0 {
                break;
            }
            prev_unknown = unknown;
            at = b.start;
        }
        out[first..].reverse();
        Ok(())
    }
}
