//! The vocabulary: token texts, scores and attributes read from GGUF, the text-to-id index,
//! the special token ids, the tokenizer flags, and the end-of-generation set.
//!
//! Loading follows llama.cpp's `llama_vocab::load`: per-model defaults, metadata overrides,
//! the text-based detection of EOT/EOM/FIM tokens (which also promotes them to control
//! tokens), unused-token detection, the end-of-generation heuristics and the per-model token
//! attribute fix-ups (lstrip/rstrip).

use engine_gguf::{Array, GgufModel};

use crate::error::TokenizerError;
use crate::pretokenize::PreSettings;
use crate::strtab::{Keep, StrTable, StrTableBuilder};
use crate::TokenizerKind;

/// Token attribute bits (llama.cpp's `llama_token_attr`).
pub(crate) mod attr {
    pub const UNKNOWN: u16 = 1 << 0;
    pub const UNUSED: u16 = 1 << 1;
    pub const NORMAL: u16 = 1 << 2;
    pub const CONTROL: u16 = 1 << 3;
    pub const USER_DEFINED: u16 = 1 << 4;
    pub const BYTE: u16 = 1 << 5;
    pub const LSTRIP: u16 = 1 << 7;
    pub const RSTRIP: u16 = 1 << 8;
}

/// GGUF `tokenizer.ggml.token_type` to attribute bits.
fn attr_from_type(t: i64) -> u16 {
    match t {
        1 => attr::NORMAL,
        2 => attr::UNKNOWN,
        3 => attr::CONTROL,
        4 => attr::USER_DEFINED,
        5 => attr::UNUSED,
        6 => attr::BYTE,
        _ => 0,
    }
}

/// Token ids with a special role; `None` where the vocabulary has none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpecialIds {
    /// Beginning of sequence.
    pub bos: Option<u32>,
    /// End of sequence.
    pub eos: Option<u32>,
    /// End of turn.
    pub eot: Option<u32>,
    /// End of message.
    pub eom: Option<u32>,
    /// Unknown token.
    pub unk: Option<u32>,
    /// Separator.
    pub sep: Option<u32>,
    /// Padding.
    pub pad: Option<u32>,
    /// Mask.
    pub mask: Option<u32>,
    /// Fill-in-the-middle prefix.
    pub fim_pre: Option<u32>,
    /// Fill-in-the-middle suffix.
    pub fim_suf: Option<u32>,
    /// Fill-in-the-middle middle.
    pub fim_mid: Option<u32>,
    /// Fill-in-the-middle padding.
    pub fim_pad: Option<u32>,
    /// Fill-in-the-middle repository marker.
    pub fim_rep: Option<u32>,
    /// Fill-in-the-middle file separator.
    pub fim_sep: Option<u32>,
}

/// Selects one field of [`SpecialIds`].
type IdSlot = fn(&mut SpecialIds) -> &mut Option<u32>;

/// Behaviour switches of the tokenizer (llama.cpp's tokenizer flags).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Flags {
    pub add_space_prefix: bool,
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_sep: bool,
    pub ignore_merges: bool,
    pub clean_spaces: bool,
    pub remove_extra_whitespaces: bool,
    pub escape_whitespaces: bool,
    pub lowercase: bool,
    pub strip_accents: bool,
}

/// What `tokenizer.ggml.model` selects, before the token list is read.
pub(crate) struct ModelSetup {
    pub kind: TokenizerKind,
    /// The pre-tokenizer name in effect (BPE only).
    pub pre: Option<String>,
    pub ids: SpecialIds,
    pub flags: Flags,
    pub pre_settings: Option<PreSettings>,
}

/// The vocabulary and everything derived from its metadata.
pub(crate) struct Vocab {
    pub kind: TokenizerKind,
    /// `tokenizer.ggml.model`.
    pub model: String,
    /// Token texts, indexed by text (a later id wins over an earlier one with the same
    /// text, as llama.cpp's `token_to_id[text] = id` does).
    texts: StrTable,
    pub scores: Vec<f32>,
    pub attrs: Vec<u16>,
    /// Attributes as the token types give them, before llama.cpp's fix-ups.
    type_attrs: Vec<u16>,
    pub max_token_len: usize,
    pub ids: SpecialIds,
    pub flags: Flags,
    /// End-of-generation ids, ascending.
    pub eog: Vec<u32>,
}

fn unsupported(model: &str, reason: &str) -> TokenizerError {
    TokenizerError::UnsupportedModel {
        model: model.to_string(),
        reason: reason.to_string(),
    }
}

/// Per-model defaults, as llama.cpp sets them before reading the rest of the metadata.
pub(crate) fn model_setup(gguf: &GgufModel) -> Result<ModelSetup, TokenizerError> {
    let model = gguf
        .get_str("tokenizer.ggml.model")?
        .ok_or_else(|| TokenizerError::Metadata("tokenizer.ggml.model is missing".into()))?;
    let pre = gguf.get_str("tokenizer.ggml.pre")?.map(str::to_string);
    let mut flags = Flags {
        add_space_prefix: false,
        add_bos: false,
        add_eos: false,
        add_sep: false,
        ignore_merges: false,
        clean_spaces: false,
        remove_extra_whitespaces: false,
        escape_whitespaces: true,
        lowercase: true,
        strip_accents: true,
    };
    let mut ids = SpecialIds::default();
    let (kind, pre) = match model {
        "llama" => {
            ids.bos = Some(1);
            ids.eos = Some(2);
            ids.unk = Some(0);
            flags.add_space_prefix = true;
            flags.clean_spaces = false;
            flags.add_bos = true;
            flags.add_eos = false;
            (TokenizerKind::Spm, None)
        }
        "bert" => {
            ids.bos = Some(101);
            ids.unk = Some(100);
            ids.sep = Some(102);
            ids.pad = Some(0);
            ids.mask = Some(103);
            flags.add_space_prefix = false;
            flags.clean_spaces = true;
            flags.add_bos = true;
            flags.add_eos = false;
            flags.add_sep = true;
            (TokenizerKind::Wpm, None)
        }
        "gpt2" => {
            ids.bos = Some(11);
            ids.eos = Some(11);
            (TokenizerKind::Bpe, Some(pre.unwrap_or_default()))
        }
        "gemma4" => (TokenizerKind::Bpe, Some("gemma4".to_string())),
        "t5" => {
            ids.eos = Some(1);
            ids.unk = Some(2);
            ids.pad = Some(0);
            flags.add_bos = false;
            flags.add_eos = true;
            (TokenizerKind::Ugm, None)
        }
        "rwkv" | "plamo2" | "hybriddna" | "whitespace" | "test" => {
            return Err(unsupported(
                model,
                "only SPM ('llama'), BPE ('gpt2', 'gemma4'), WPM ('bert') and UGM ('t5') tokenizers are implemented",
            ))
        }
        "none" | "no_vocab" => return Err(unsupported(model, "the model has no vocabulary")),
        _ => return Err(unsupported(model, "llama.cpp does not know this tokenizer either")),
    };
    let mut pre_settings = None;
    if kind == TokenizerKind::Bpe {
        flags.add_space_prefix = false;
        flags.escape_whitespaces = false;
        flags.clean_spaces = true;
        let name = pre.as_deref().unwrap_or("");
        let s = PreSettings::for_name(name)?;
        s.apply(&mut flags);
        if s.null_bos {
            ids.bos = None;
        }
        pre_settings = Some(s);
    }
    if let Some(v) = gguf.get_bool("tokenizer.ggml.add_space_prefix")? {
        flags.add_space_prefix = v;
    }
    if let Some(v) = gguf.get_bool("tokenizer.ggml.remove_extra_whitespaces")? {
        flags.remove_extra_whitespaces = v;
    }
    Ok(ModelSetup {
        kind,
        pre,
        ids,
        flags,
        pre_settings,
    })
}

/// Token names llama.cpp treats as end-of-turn when no `eot_token_id` is given.
const EOT_NAMES: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_NAMES: &[&str] = &["<|eom_id|>"];
const FIM_PRE_NAMES: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_NAMES: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_NAMES: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_NAMES: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_NAMES: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_NAMES: &[&str] = &["<|file_sep|>"];
/// Token names that end generation.
const EOG_NAMES: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];
/// Tokens gpt-oss needs rendered as text.
const ALWAYS_RENDERED: &[&str] = &["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"];

fn read_special_id(
    gguf: &GgufModel,
    key: &str,
    n: usize,
    slot: &mut Option<u32>,
) -> Result<(), TokenizerError> {
    if let Some(v) = gguf.get_int(key)? {
        // llama.cpp keeps the default when the id is out of range.
        if v >= 0 && (v as u64) < n as u64 {
            *slot = Some(v as u32);
        }
    }
    Ok(())
}

impl Vocab {
    /// Reads the token list and finishes the vocabulary set-up.
    pub(crate) fn load(gguf: &GgufModel, setup: &mut ModelSetup) -> Result<Vocab, TokenizerError> {
        let tokens = match gguf.get_array("tokenizer.ggml.tokens")? {
            Some(Array::String(v)) => v,
            Some(_) => {
                return Err(TokenizerError::Metadata(
                    "tokenizer.ggml.tokens is not a string array".into(),
                ))
            }
            None => {
                return Err(TokenizerError::Metadata(
                    "tokenizer.ggml.tokens is missing".into(),
                ))
            }
        };
        let n = tokens.len();
        if n == 0 || n > i32::MAX as usize {
            return Err(TokenizerError::Metadata(format!(
                "vocabulary size {n} is not usable"
            )));
        }

        let scores_arr = gguf.get_array("tokenizer.ggml.scores")?;
        if let Some(a) = scores_arr {
            if a.len() < n {
                return Err(TokenizerError::Metadata(format!(
                    "tokenizer.ggml.scores has {} entries for {n} tokens",
                    a.len()
                )));
            }
        }
        let types_arr = gguf.get_array("tokenizer.ggml.token_type")?;
        if let Some(a) = types_arr {
            if a.len() < n {
                return Err(TokenizerError::Metadata(format!(
                    "tokenizer.ggml.token_type has {} entries for {n} tokens",
                    a.len()
                )));
            }
        }

        let total: usize = tokens.iter().map(|t| t.len()).sum();
        let mut texts = StrTableBuilder::with_capacity(n, total);
        let mut scores = Vec::with_capacity(n);
        let mut attrs = Vec::with_capacity(n);
        let mut max_token_len = 0;
        for (i, t) in tokens.iter().enumerate() {
            if t.is_empty() {
                let name = format!("[EMPTY_{i}]");
                max_token_len = max_token_len.max(name.len());
                texts.push(&name)?;
            } else {
                max_token_len = max_token_len.max(t.len());
                texts.push(t)?;
            }
            scores.push(scores_arr.and_then(|a| a.float_at(i)).unwrap_or(0.0) as f32);
            attrs.push(match types_arr {
                Some(a) => attr_from_type(a.int_at(i).unwrap_or(0)),
                None => attr::NORMAL,
            });
        }
        let texts = texts.finish(Keep::Last);

        let mut ids = setup.ids;
        // Defaults that do not fit the vocabulary are disabled.
        for slot in ids_mut(&mut ids) {
            if matches!(*slot, Some(id) if id as usize >= n) {
                *slot = None;
            }
        }
        let keys: [(&str, IdSlot); 17] = [
            ("tokenizer.ggml.bos_token_id", |s| &mut s.bos),
            ("tokenizer.ggml.eos_token_id", |s| &mut s.eos),
            ("tokenizer.ggml.eot_token_id", |s| &mut s.eot),
            ("tokenizer.ggml.eom_token_id", |s| &mut s.eom),
            ("tokenizer.ggml.unknown_token_id", |s| &mut s.unk),
            ("tokenizer.ggml.seperator_token_id", |s| &mut s.sep),
            ("tokenizer.ggml.padding_token_id", |s| &mut s.pad),
            ("tokenizer.ggml.mask_token_id", |s| &mut s.mask),
            ("tokenizer.ggml.fim_pre_token_id", |s| &mut s.fim_pre),
            ("tokenizer.ggml.fim_suf_token_id", |s| &mut s.fim_suf),
            ("tokenizer.ggml.fim_mid_token_id", |s| &mut s.fim_mid),
            ("tokenizer.ggml.fim_pad_token_id", |s| &mut s.fim_pad),
            ("tokenizer.ggml.fim_rep_token_id", |s| &mut s.fim_rep),
            ("tokenizer.ggml.fim_sep_token_id", |s| &mut s.fim_sep),
            ("tokenizer.ggml.prefix_token_id", |s| &mut s.fim_pre),
            ("tokenizer.ggml.suffix_token_id", |s| &mut s.fim_suf),
            ("tokenizer.ggml.middle_token_id", |s| &mut s.fim_mid),
        ];
        for (key, slot) in keys {
            read_special_id(gguf, key, n, slot(&mut ids))?;
        }

        let flags = &mut setup.flags;
        if let Some(v) = gguf.get_bool("tokenizer.ggml.add_bos_token")? {
            flags.add_bos = v;
        }
        if let Some(v) = gguf.get_bool("tokenizer.ggml.add_eos_token")? {
            flags.add_eos = v;
        }
        if let Some(v) = gguf.get_bool("tokenizer.ggml.add_sep_token")? {
            flags.add_sep = v;
        }
        if setup
            .pre_settings
            .as_ref()
            .is_some_and(|p| p.forces_add_bos)
        {
            flags.add_bos = true;
        }
        if let Some(v) = gguf.get_bool("tokenizer.ggml.normalizer.lowercase")? {
            flags.lowercase = v;
        }
        flags.strip_accents = flags.lowercase;
        if let Some(v) = gguf.get_bool("tokenizer.ggml.normalizer.strip_accents")? {
            flags.strip_accents = v;
        }

        let mut vocab = Vocab {
            kind: setup.kind,
            model: String::new(),
            texts,
            scores,
            type_attrs: attrs.clone(),
            attrs,
            max_token_len,
            ids,
            flags: setup.flags,
            eog: Vec::new(),
        };
        vocab.detect_special_tokens();
        vocab.compute_eog();
        vocab.apply_model_attrs(gguf)?;
        vocab.model = gguf
            .get_str("tokenizer.ggml.model")?
            .unwrap_or_default()
            .to_string();
        Ok(vocab)
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    /// Text of a token (`id` must be in range).
    pub fn text(&self, id: u32) -> &str {
        self.texts.get(id)
    }

    /// Text of a token, if `id` is in range.
    pub fn try_text(&self, id: u32) -> Option<&str> {
        ((id as usize) < self.len()).then(|| self.texts.get(id))
    }

    /// The id of a token text (llama.cpp's `text_to_token`).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.texts.find(text)
    }

    /// Attribute bits a token had before the special-token fix-ups (0 when out of range).
    pub fn type_attr(&self, id: u32) -> u16 {
        self.type_attrs.get(id as usize).copied().unwrap_or(0)
    }

    /// Attribute bits of a token (0 when out of range).
    pub fn attr(&self, id: u32) -> u16 {
        self.attrs.get(id as usize).copied().unwrap_or(0)
    }

    fn find_named(&self, names: &[&str]) -> Option<u32> {
        // llama.cpp takes the first match in its hash map's iteration order, which is not
        // reproducible; the first name of the candidate list that exists is used here (for
        // Llama 3 and Qwen 2 this gives `<|eot_id|>` and `<|im_end|>`, as llama.cpp reports).
        names.iter().find_map(|name| self.token_id(name))
    }

    fn mark_control(&mut self, id: u32) {
        self.attrs[id as usize] |= attr::CONTROL;
    }

    /// EOT/EOM/FIM detection by text, and unused-token detection.
    fn detect_special_tokens(&mut self) {
        let table: [(&[&str], IdSlot); 8] = [
            (EOT_NAMES, |s| &mut s.eot),
            (EOM_NAMES, |s| &mut s.eom),
            (FIM_PRE_NAMES, |s| &mut s.fim_pre),
            (FIM_SUF_NAMES, |s| &mut s.fim_suf),
            (FIM_MID_NAMES, |s| &mut s.fim_mid),
            (FIM_PAD_NAMES, |s| &mut s.fim_pad),
            (FIM_REP_NAMES, |s| &mut s.fim_rep),
            (FIM_SEP_NAMES, |s| &mut s.fim_sep),
        ];
        for (names, slot) in table {
            if slot(&mut self.ids).is_none() {
                if let Some(id) = self.find_named(names) {
                    *slot(&mut self.ids) = Some(id);
                    self.mark_control(id);
                }
            }
        }
        // Only ids that their text maps back to take part, as in llama.cpp's loops over
        // its text-to-id map.
        for id in 0..self.len() as u32 {
            let a = self.attrs[id as usize];
            if a & attr::CONTROL != 0
                && a & attr::UNUSED == 0
                && self.text(id).contains("unused")
                && self.token_id(self.text(id)) == Some(id)
            {
                self.attrs[id as usize] |= attr::UNUSED;
            }
        }
    }

    /// The end-of-generation set and the attribute changes that come with it.
    fn compute_eog(&mut self) {
        let mut eog: Vec<u32> = Vec::new();
        for id in [self.ids.fim_pad, self.ids.fim_rep, self.ids.fim_sep]
            .into_iter()
            .flatten()
        {
            eog.push(id);
        }
        for name in EOG_NAMES {
            if let Some(id) = self.token_id(name) {
                eog.push(id);
                self.mark_control(id);
            }
        }
        for name in ALWAYS_RENDERED {
            if let Some(id) = self.token_id(name) {
                self.attrs[id as usize] = attr::USER_DEFINED;
            }
        }
        for id in [self.ids.eos, self.ids.eot, self.ids.eom]
            .into_iter()
            .flatten()
        {
            eog.push(id);
        }
        eog.sort_unstable();
        eog.dedup();
        eog.retain(|&id| (id as usize) < self.len());

        // o200k_harmony / solar-open: "<|end|>" is not an end of generation there.
        let has = |v: &Vocab, eog: &[u32], name: &str| eog.iter().any(|&id| v.text(id) == name);
        let has_return = has(self, &eog, "<|return|>");
        let has_call = has(self, &eog, "<|call|>") || has(self, &eog, "<|calls|>");
        let has_flush = has(self, &eog, "<|flush|>");
        let end_id = eog.iter().copied().find(|&id| self.text(id) == "<|end|>");
        if let Some(end_id) = end_id {
            if has_call && (has_return || has_flush) {
                eog.retain(|&id| id != end_id);
                self.attrs[end_id as usize] = attr::USER_DEFINED;
            }
        }
        // gemma4 and plamo have an ordinary "</s>".
        let normal_s_marker =
            has(self, &eog, "<|tool_response>") || has(self, &eog, "<|plamo:eos|>");
        if normal_s_marker {
            if let Some(s_id) = eog.iter().copied().find(|&id| self.text(id) == "</s>") {
                eog.retain(|&id| id != s_id);
                self.attrs[s_id as usize] = attr::NORMAL;
            }
        }
        self.eog = eog;
    }

    /// lstrip/rstrip attributes llama.cpp sets from the model or tokenizer name.
    fn apply_model_attrs(&mut self, gguf: &GgufModel) -> Result<(), TokenizerError> {
        let name = gguf
            .get_str("general.name")?
            .unwrap_or_default()
            .to_ascii_lowercase();
        let pre = gguf.get_str("tokenizer.ggml.pre")?.unwrap_or_default();
        let arch = gguf.get_str("general.architecture")?.unwrap_or_default();
        let set = |v: &mut Vocab, text: &str, bit: u16, on: bool| {
            if let Some(id) = v.token_id(text) {
                if on {
                    v.attrs[id as usize] |= bit;
                } else {
                    v.attrs[id as usize] &= !bit;
                }
            }
        };
        let any = |s: &str, subs: &[&str]| subs.iter().any(|x| s.contains(x));
        if any(pre, &["jina-v2-de", "jina-v2-es", "jina-v2-code"])
            || any(arch, &["nomic-bert-moe", "jina-bert-v3"])
        {
            set(self, "<mask>", attr::LSTRIP, true);
        } else if any(&name, &["phi-3", "phi3"]) {
            for a in self.attrs.iter_mut() {
                if *a & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0 {
                    *a |= attr::RSTRIP;
                }
            }
            set(self, "</s>", attr::RSTRIP, true);
            for t in ["<unk>", "<s>", "<|endoftext|>"] {
                set(self, t, attr::RSTRIP, false);
            }
        } else if name.contains("modern-bert") {
            set(self, "[MASK]", attr::LSTRIP, true);
        }
        Ok(())
    }

    /// The token for one byte in byte-fallback form (`<0xAB>`, or the byte itself),
    /// for SentencePiece vocabularies.
    pub fn spm_byte_token(&self, b: u8) -> Option<u32> {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let name = [
            b'<',
            b'0',
            b'x',
            HEX[(b >> 4) as usize],
            HEX[(b & 15) as usize],
            b'>',
        ];
        // The name is ASCII, so this cannot fail.
        let name = std::str::from_utf8(&name).unwrap_or_default();
        self.token_id(name).or_else(|| {
            let single = [b];
            std::str::from_utf8(&single)
                .ok()
                .and_then(|s| self.token_id(s))
        })
    }
}

fn ids_mut(ids: &mut SpecialIds) -> [&mut Option<u32>; 14] {
    [
        &mut ids.bos,
        &mut ids.eos,
        &mut ids.eot,
        &mut ids.eom,
        &mut ids.unk,
        &mut ids.sep,
        &mut ids.pad,
        &mut ids.mask,
        &mut ids.fim_pre,
        &mut ids.fim_suf,
        &mut ids.fim_mid,
        &mut ids.fim_pad,
        &mut ids.fim_rep,
        &mut ids.fim_sep,
    ]
}
