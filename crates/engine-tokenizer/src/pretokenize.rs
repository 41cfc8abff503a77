//! BPE pre-tokenization: which word-splitting rules each `tokenizer.ggml.pre` name selects,
//! and running them the way llama.cpp does.
//!
//! A pre-tokenizer is a list of steps applied in turn; each step splits every current word
//! further. Some steps are hand-written splitters (see [`crate::split_custom`]) that
//! reproduce llama.cpp's own C++ splitters, quirks included. The others are regular
//! expressions, which llama.cpp runs with `std::regex` on a transformed text:
//!
//! * when the pattern uses Unicode categories (`\p{L}`, `\p{N}`, ...), every non-ASCII code
//!   point is first "collapsed" to one stand-in character per category (and non-ASCII
//!   whitespace to `\v`), and each `\p{..}` in the pattern becomes a class of that stand-in
//!   plus the ASCII members of the category;
//! * otherwise the pattern runs on the code points themselves, with non-ASCII whitespace
//!   replaced by `\v` (ASCII-only `\s`).
//!
//! The same transformation is done here and the translated pattern runs on `fancy-regex`,
//! whose leftmost-first backtracking semantics agree with ECMAScript `std::regex`.

use std::ops::Range;

use fancy_regex::Regex;

use crate::error::TokenizerError;
use crate::split_custom::{self, Custom};
use crate::unicode::{self, CpFlags};
use crate::vocab::Flags;

/// The regex families of llama.cpp's BPE pre-tokenizers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PreKind {
    Default,
    Llama3,
    Jais2,
    DeepseekLlm,
    DeepseekCoder,
    Deepseek3,
    Spark25,
    Youtu,
    Falcon,
    Starcoder,
    Gpt2,
    Qwen2,
    Qwen35,
    Poro,
    Viking,
    Tekken,
    Chameleon,
    Gpt4o,
    GraniteEmbMulti,
    TinyAya,
    KimiK2,
    SuperBpe,
    BailingMoe,
    SeedCoder,
    Ufakzeka,
    Afmoe,
    Laguna,
    ExaoneMoe,
    Gemma4,
    SarvamMoe,
    Minicpm5,
    Whitespace,
}

/// What a pre-tokenizer name implies beyond its splitting rules.
#[derive(Clone, Debug)]
pub(crate) struct PreSettings {
    pub kind: PreKind,
    clean_spaces: Option<bool>,
    ignore_merges: bool,
    default_add_bos: bool,
    add_sep: bool,
    escape_whitespaces: bool,
    /// The BOS id is cleared before the metadata is read.
    pub null_bos: bool,
    /// `add_bos` is forced on after the metadata is read (Gemma 4).
    pub forces_add_bos: bool,
}

impl PreSettings {
    /// Settings for a `tokenizer.ggml.pre` value (empty: none given). Unknown names are an
    /// error, as in llama.cpp.
    pub(crate) fn for_name(name: &str) -> Result<PreSettings, TokenizerError> {
        use PreKind::*;
        let mut s = PreSettings {
            kind: Default,
            clean_spaces: None,
            ignore_merges: false,
            default_add_bos: false,
            add_sep: false,
            escape_whitespaces: false,
            null_bos: false,
            forces_add_bos: false,
        };
        let no_clean = Some(false);
        match name {
            "" | "default" => {}
            "minicpm5" => {
                s.kind = Minicpm5;
                s.ignore_merges = true;
            }
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" | "jina-v5-nano" => {
                s.kind = Llama3;
                s.ignore_merges = true;
                s.default_add_bos = true;
            }
            "deepseek-llm" => (s.kind, s.clean_spaces) = (DeepseekLlm, no_clean),
            "deepseek-coder" => (s.kind, s.clean_spaces) = (DeepseekCoder, no_clean),
            "deepseek-v3" | "hunyuan-dense" | "hy_v4" | "joyai-llm" => {
                (s.kind, s.clean_spaces) = (Deepseek3, no_clean)
            }
            "spark2_5" => (s.kind, s.clean_spaces) = (Spark25, no_clean),
            "youtu" => {
                (s.kind, s.clean_spaces) = (Youtu, no_clean);
                s.ignore_merges = true;
            }
            "falcon" => s.kind = Falcon,
            "mpt" | "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
            | "jina-v2-de" | "a.x-4.0" | "mellum" | "modern-bert" | "olmo" | "jais" | "exaone4" => {
                s.kind = Gpt2
            }
            "trillion" | "granite-docling" => (s.kind, s.clean_spaces) = (Gpt2, no_clean),
            "jina-v1-en" | "jina-v2-code" | "roberta-bpe" => {
                s.kind = Gpt2;
                s.add_sep = true;
            }
            "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => {
                s.kind = Starcoder
            }
            "command-r" | "smollm" => (s.kind, s.clean_spaces) = (Starcoder, no_clean),
            "jais-2" => s.kind = Jais2,
            "gemma4" | "granite-embed-multi-311m" => {
                s.kind = Gemma4;
                s.escape_whitespaces = true;
                s.forces_add_bos = true;
            }
            "sarvam-moe" => {
                (s.kind, s.clean_spaces) = (SarvamMoe, no_clean);
                s.escape_whitespaces = true;
            }
            "whitespace" => s.kind = Whitespace,
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "hunyuan" | "solar-open" => {
                (s.kind, s.clean_spaces) = (Qwen2, no_clean)
            }
            "stablelm2" | "megrez" => s.kind = Qwen2,
            "qwen35" => (s.kind, s.clean_spaces) = (Qwen35, no_clean),
            "dbrx" | "smaug-bpe" => s.kind = Llama3,
            "poro-chat" => (s.kind, s.clean_spaces) = (Poro, no_clean),
            "bloom" | "gpt3-finnish" => s.kind = Poro,
            "chatglm-bpe" => {
                s.kind = Llama3;
                s.null_bos = true;
            }
            "glm4" | "glm5" => {
                s.kind = Llama3;
                s.null_bos = true;
                s.ignore_merges = true;
            }
            "viking" => (s.kind, s.clean_spaces) = (Viking, no_clean),
            "tekken" => {
                (s.kind, s.clean_spaces) = (Tekken, no_clean);
                s.ignore_merges = true;
                s.default_add_bos = true;
            }
            "chameleon" => {
                (s.kind, s.clean_spaces) = (Chameleon, no_clean);
                s.default_add_bos = true;
            }
            "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => {
                (s.kind, s.clean_spaces) = (Gpt4o, no_clean)
            }
            "granite-embed-multi-97m" => {
                (s.kind, s.clean_spaces) = (GraniteEmbMulti, no_clean);
                s.ignore_merges = true;
            }
            "tiny_aya" | "cohere2moe" => (s.kind, s.clean_spaces) = (TinyAya, no_clean),
            "superbpe" => (s.kind, s.clean_spaces) = (SuperBpe, no_clean),
            "bailingmoe" | "bailingmoe2" | "llada-moe" => {
                (s.kind, s.clean_spaces) = (BailingMoe, no_clean)
            }
            "seed-coder" => (s.kind, s.clean_spaces) = (SeedCoder, no_clean),
            "kimi-k2" => (s.kind, s.clean_spaces) = (KimiK2, no_clean),
            "ufakzeka" => (s.kind, s.clean_spaces) = (Ufakzeka, no_clean),
            "grok-2" => (s.kind, s.clean_spaces) = (Qwen2, no_clean),
            "afmoe" => (s.kind, s.clean_spaces) = (Afmoe, no_clean),
            "laguna" => (s.kind, s.clean_spaces) = (Laguna, no_clean),
            "exaone-moe" => s.kind = ExaoneMoe,
            _ => return Err(TokenizerError::UnknownPreTokenizer(name.to_string())),
        }
        Ok(s)
    }

    /// Applies the defaults this pre-tokenizer sets before the metadata is read.
    pub(crate) fn apply(&self, flags: &mut Flags) {
        if let Some(c) = self.clean_spaces {
            flags.clean_spaces = c;
        }
        flags.ignore_merges |= self.ignore_merges;
        flags.add_bos |= self.default_add_bos;
        flags.add_sep |= self.add_sep;
        flags.escape_whitespaces |= self.escape_whitespaces;
    }

    /// Whether words are GPT-2 byte-encoded before the merges run.
    pub(crate) fn byte_encode(&self) -> bool {
        !matches!(
            self.kind,
            PreKind::Gemma4 | PreKind::SarvamMoe | PreKind::Whitespace
        )
    }
}

/// One splitting step, as written in the tokenizer's regex list.
enum StepSpec {
    Custom(Custom),
    Regex(&'static str),
}

const GPT2: StepSpec = StepSpec::Custom(Custom::Gpt2);
const LLAMA3: StepSpec = StepSpec::Custom(Custom::Llama3);
const QWEN2: StepSpec = StepSpec::Custom(Custom::Qwen2);

fn steps_for(kind: PreKind) -> Vec<StepSpec> {
    use PreKind::*;
    use StepSpec::Regex as R;
    match kind {
        Llama3 => vec![LLAMA3],
        Jais2 => vec![R(
            r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}",
        )],
        DeepseekLlm => vec![
            R("[\r\n]"),
            R(concat!(
                "\\s?[A-Za-z\u{B5}\u{C0}-\u{D6}\u{D8}-\u{F6}\u{F8}-\u{1BA}\u{1BC}-\u{1BF}\u{1C4}-\u{293}",
                "\u{295}-\u{2AF}\u{370}-\u{373}\u{376}\u{377}\u{37B}-\u{37D}\u{37F}\u{386}\u{388}-\u{38A}",
                "\u{38C}\u{38E}-\u{3A1}\u{3A3}-\u{3F5}\u{3F7}-\u{481}\u{48A}-\u{52F}\u{531}-\u{556}",
                "\u{10A0}-\u{10C5}\u{13A0}-\u{13F5}\u{13F8}-\u{13FD}\u{1C90}-\u{1CBA}\u{1CBD}-\u{1CBF}",
                "\u{1D00}-\u{1D2B}\u{1D6B}-\u{1D77}\u{1D79}-\u{1D9A}\u{1E00}-\u{1F15}\u{1F18}-\u{1F1D}",
                "\u{1F20}-\u{1F45}\u{1F48}-\u{1F4D}\u{1F50}-\u{1F57}\u{1F59}\u{1F5B}\u{1F5D}\u{1F5F}-",
                "\u{1F7D}\u{1F80}-\u{1FB4}\u{1FB6}-\u{1FBC}\u{1FBE}\u{1FC2}-\u{1FC4}\u{1FC6}-\u{1FCC}",
                "\u{1FD0}-\u{1FD3}\u{1FD6}-\u{1FDB}\u{1FE0}-\u{1FEC}\u{1FF2}-\u{1FF4}\u{1FF6}-\u{1FFC}",
                "\u{2102}\u{2107}\u{210A}-\u{2113}\u{2115}\u{2119}-\u{211D}\u{2124}\u{2126}\u{2128}",
                "\u{212A}-\u{212D}\u{212F}-\u{2134}\u{2139}\u{213C}-\u{213F}\u{2145}-\u{2149}\u{214E}",
                "\u{2183}\u{2184}\u{2C00}-\u{2C7B}\u{2C7E}-\u{2CE4}\u{2CEB}-\u{2CEE}\u{2CF2}\u{2CF3}",
                "\u{A640}-\u{A66D}\u{A680}-\u{A69B}\u{A722}-\u{A76F}\u{A771}-\u{A787}\u{A78B}-\u{A78E}",
                "\u{AB70}-\u{ABBF}\u{FB00}-\u{FB06}\u{FB13}-\u{FB17}\u{FF21}-\u{FF3A}\u{FF41}-\u{FF5A}",
                "\u{10400}-\u{1044F}\u{104B0}-\u{104D3}\u{104D8}-\u{104FB}\u{10C80}-\u{10CB2}\u{10CC0}-",
                "\u{10CF2}\u{118A0}-\u{118DF}\u{1E900}-\u{1E943}]+",
            )),
            R("\\s?[!-/:-~！-／：-～‘-‟　-。]+"),
            R("\\s+$"),
            R("[一-龥ࠀ-一가-퟿]+"),
            R(r"\p{N}+"),
        ],
        Deepseek3 => vec![
            R(r"\p{N}{1,3}"),
            R("[一-龥぀-ゟ゠-ヿ]+"),
            R(r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##),
        ],
        Spark25 => vec![
            R(r"\p{N}{1,3}"),
            R("[一-龥぀-ゟ゠-ヿ]+"),
            R(r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+"##),
            R(r"\p{N}"),
        ],
        Youtu => vec![
            R("[가-힣ㄱ-ㆎ]+|[！…“”‘’—：；，、-〿︰-﹏]+|[ㄅ-ㄯ]+|[一-龥぀-ゟ゠-ヿ]+"),
            R(r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
        ],
        DeepseekCoder => vec![
            R("[\r\n]"),
            R(r"\s?\p{L}+"),
            R(r"\s?\p{P}+"),
            R("[一-龥ࠀ-一가-퟿]+"),
            R(r"\p{N}"),
        ],
        Falcon => vec![R(r"[\p{P}\$\+<=>\^~\|`]+"), GPT2, R("[0-9][0-9][0-9]")],
        Starcoder => vec![R(r"\p{N}"), GPT2],
        Gpt2 => vec![GPT2],
        Qwen2 => vec![QWEN2],
        Qwen35 => vec![StepSpec::Custom(Custom::Qwen35)],
        Poro => vec![R(r" ?[^(\s|.,!?…。，、।۔،)]+")],
        Viking => vec![R(r" ?[^(\s|.,!?…。，、।۔،)]+"), R(r"\p{N}")],
        Tekken => vec![R(
            r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        )],
        Chameleon => vec![
            R("<sentinel:[0-9]+>"),
            R("(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z"),
            R("([\\t\\n]|    |  )"),
            R(r"\p{N}"),
            R(r"[\p{P}!-/:-@\[-`{-~]"),
            GPT2,
        ],
        Gpt4o => vec![R(
            r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        )],
        GraniteEmbMulti => vec![R(
            r"[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))*((?=[\p{L}\p{M}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))+((?=[\p{L}\p{M}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        )],
        TinyAya => vec![
            StepSpec::Custom(Custom::DigitGroups),
            R(r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
        ],
        KimiK2 => vec![StepSpec::Custom(Custom::KimiK2)],
        SuperBpe => vec![R(r"\p{N}+"), R(r"(?=(\d{3})+(?!\d))")],
        BailingMoe => vec![R(
            r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",
        )],
        SeedCoder => vec![R(
            r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+",
        )],
        Ufakzeka => vec![R(
            r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        )],
        Afmoe => vec![
            StepSpec::Custom(Custom::DigitGroups),
            R("[一-鿿㐀-䶿豈-﫿぀-ゟ゠-ヿ･-ﾟ⼀-⿟เ-๿຀-໿ក-៿က-႟ꩠ-ꩿꧠ-꧿가-힯ᄀ-ᇿ]+"),
            R(r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##),
        ],
        Laguna => vec![StepSpec::Custom(Custom::Newlines), QWEN2],
        ExaoneMoe => vec![R(
            r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+",
        )],
        Gemma4 | SarvamMoe => vec![StepSpec::Custom(Custom::Newlines)],
        Minicpm5 => vec![
            R(r"\p{N}{1,3}"),
            R(r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
        ],
        Whitespace => vec![R(r"\S+")],
        Default => vec![R(r"[\p{P}\$\+<=>\^~\|]+"), GPT2, R(r"\p{N}+"), R("[0-9][0-9][0-9]")],
    }
}

/// The categories llama.cpp can collapse, with their stand-in character and ASCII members.
const CATEGORIES: &[(&str, char, &str)] = &[
    ("N", '\u{D1}', r"0-9"),
    ("L", '\u{D2}', r"A-Za-z"),
    ("Lu", '\u{D2}', r"A-Za-z"),
    ("Ll", '\u{D2}', r"A-Za-z"),
    ("Lt", '\u{D2}', r"A-Za-z"),
    ("Lm", '\u{D2}', r"A-Za-z"),
    ("Lo", '\u{D2}', r"A-Za-z"),
    (
        "P",
        '\u{D3}',
        r"\x21-\x23\x25-\x2A\x2C-\x2F\x3A-\x3B\x3F-\x40\x5B-\x5D\x5F\x7B\x7D",
    ),
    ("M", '\u{D4}', r""),
    ("S", '\u{D5}', r"\x24\x2B\x3C-\x3E\x5E\x60\x7C\x7E"),
];
/// Stand-in for a non-ASCII code point of any other category.
const OTHER_STAND_IN: char = '\u{D0}';
const ASCII_SPACE_CLASS: &str = r"\t\n\x0B\x0C\r ";

fn category_of(name: &str) -> Option<(char, &'static str)> {
    CATEGORIES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|&(_, c, a)| (c, a))
}

/// Whether llama.cpp would run `pattern` on the collapsed text.
fn uses_categories(pattern: &str) -> bool {
    CATEGORIES
        .iter()
        .any(|(n, _, _)| pattern.contains(&format!("\\p{{{n}}}")))
}

/// Rewrites a tokenizer regex (ECMAScript flavour, llama.cpp's conventions) into a
/// `fancy-regex` pattern with the same meaning on the transformed text.
fn translate(pattern: &str, collapsed: bool) -> Result<String, TokenizerError> {
    let bad = |what: &str| {
        TokenizerError::Regex(format!(
            "cannot translate pre-tokenizer regex {pattern:?}: {what}"
        ))
    };
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len() * 2);
    let mut inside = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' {
            let Some(&e) = chars.get(i + 1) else {
                return Err(bad("trailing backslash"));
            };
            i += 2;
            match e {
                'p' => {
                    let rest: String = chars[i..].iter().collect();
                    let close = rest.find('}').ok_or_else(|| bad("unterminated \\p{"))?;
                    let name = rest.get(1..close).unwrap_or("");
                    i += rest[..=close].chars().count();
                    if !collapsed {
                        return Err(bad("category outside collapsed mode"));
                    }
                    let (stand_in, ascii) =
                        category_of(name).ok_or_else(|| bad("unsupported category"))?;
                    if !inside {
                        out.push('[');
                    }
                    out.push_str(&format!("\\x{{{:X}}}{ascii}", stand_in as u32));
                    if !inside {
                        out.push(']');
                    }
                }
                's' => {
                    if inside {
                        out.push_str(ASCII_SPACE_CLASS);
                    } else {
                        out.push_str(&format!("[{ASCII_SPACE_CLASS}]"));
                    }
                }
                'S' => {
                    if inside {
                        return Err(bad("\\S inside a class"));
                    }
                    out.push_str(&format!("[^{ASCII_SPACE_CLASS}]"));
                }
                'd' => out.push_str(if inside { "0-9" } else { "[0-9]" }),
                'D' => {
                    if inside {
                        return Err(bad("\\D inside a class"));
                    }
                    out.push_str("[^0-9]");
                }
                _ => {
                    out.push('\\');
                    out.push(e);
                }
            }
            continue;
        }
        match c {
            '[' if inside => out.push_str(r"\["),
            '[' => {
                inside = true;
                out.push('[');
                if chars.get(i + 1) == Some(&'^') {
                    out.push('^');
                    i += 1;
                }
            }
            ']' if inside => {
                inside = false;
                out.push(']');
            }
            '&' | '~' if inside => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
        i += 1;
    }
    Ok(out)
}

enum Step {
    Custom(Custom),
    Regex { re: Regex, collapsed: bool },
}

/// A compiled pre-tokenizer.
pub(crate) struct PreTokenizer {
    steps: Vec<Step>,
    byte_encode: bool,
}

impl PreTokenizer {
    /// Compiles the steps of a pre-tokenizer family.
    pub(crate) fn new(settings: &PreSettings) -> Result<PreTokenizer, TokenizerError> {
        let mut steps = Vec::new();
        for spec in steps_for(settings.kind) {
            steps.push(match spec {
                StepSpec::Custom(c) => Step::Custom(c),
                StepSpec::Regex(p) => {
                    let collapsed = uses_categories(p);
                    let translated = translate(p, collapsed)?;
                    let re = fancy_regex::RegexBuilder::new(&translated)
                        .backtrack_limit(10_000_000)
                        .build()
                        .map_err(|e| {
                            TokenizerError::Regex(format!("{p:?} -> {translated:?}: {e}"))
                        })?;
                    Step::Regex { re, collapsed }
                }
            });
        }
        Ok(PreTokenizer {
            steps,
            byte_encode: settings.byte_encode(),
        })
    }

    /// Whether words are GPT-2 byte-encoded before BPE.
    pub(crate) fn byte_encode(&self) -> bool {
        self.byte_encode
    }

    /// Splits `text` into words, returned as byte ranges of `text` in order.
    pub(crate) fn split(&self, text: &str) -> Result<Vec<Range<usize>>, TokenizerError> {
        let cps: Vec<char> = text.chars().collect();
        if cps.is_empty() {
            return Ok(Vec::new());
        }
        let fl: Vec<CpFlags> = cps.iter().map(|&c| unicode::flags(c)).collect();
        let mut offsets = vec![cps.len()];
        let mut collapsed_text: Option<Transformed> = None;
        let mut wide_text: Option<Transformed> = None;
        for step in &self.steps {
            offsets = match step {
                Step::Custom(c) => split_custom::split(*c, &cps, &fl, &offsets),
                Step::Regex { re, collapsed } => {
                    let t = if *collapsed {
                        collapsed_text.get_or_insert_with(|| Transformed::new(&cps, &fl, true))
                    } else {
                        wide_text.get_or_insert_with(|| Transformed::new(&cps, &fl, false))
                    };
                    regex_split(re, t, &offsets)?
                }
            };
        }
        let mut byte_pos = Vec::with_capacity(cps.len() + 1);
        let mut b = 0;
        for c in &cps {
            byte_pos.push(b);
            b += c.len_utf8();
        }
        byte_pos.push(b);
        let mut words = Vec::with_capacity(offsets.len());
        let mut start = 0;
        for len in offsets {
            if len > 0 {
                words.push(byte_pos[start]..byte_pos[start + len]);
            }
            start += len;
        }
        Ok(words)
    }
}

/// The text a regex step runs on, one character per code point of the input.
struct Transformed {
    text: String,
    /// Byte offset of each code point in `text`, plus the total length.
    offs: Vec<usize>,
}

impl Transformed {
    fn new(cps: &[char], fl: &[CpFlags], collapsed: bool) -> Transformed {
        let mut text = String::with_capacity(cps.len() * 2);
        let mut offs = Vec::with_capacity(cps.len() + 1);
        for (&c, &f) in cps.iter().zip(fl) {
            offs.push(text.len());
            let t = if c.is_ascii() {
                c
            } else if f.is_whitespace() {
                '\u{0B}'
            } else if !collapsed {
                c
            } else {
                match f.category() {
                    CpFlags::NUMBER => '\u{D1}',
                    CpFlags::LETTER => '\u{D2}',
                    CpFlags::PUNCTUATION => '\u{D3}',
                    CpFlags::MARK => '\u{D4}',
                    CpFlags::SYMBOL => '\u{D5}',
                    _ => OTHER_STAND_IN,
                }
            };
            text.push(t);
        }
        offs.push(text.len());
        Transformed { text, offs }
    }

    fn cpt_at(&self, byte: usize) -> usize {
        self.offs.partition_point(|&b| b < byte)
    }
}

/// Splits each word at the matches of `re` (matches and the gaps between them become words).
fn regex_split(
    re: &Regex,
    t: &Transformed,
    offsets: &[usize],
) -> Result<Vec<usize>, TokenizerError> {
    let mut out = Vec::with_capacity(offsets.len());
    let mut start = 0;
    for &len in offsets {
        let b0 = t.offs[start];
        let b1 = t.offs[start + len];
        let slice = &t.text[b0..b1];
        let mut last = start;
        for m in re.find_iter(slice) {
            let m = m.map_err(|e| TokenizerError::Regex(e.to_string()))?;
            let ms = t.cpt_at(b0 + m.start());
            let me = t.cpt_at(b0 + m.end());
            if ms > last {
                out.push(ms - last);
            }
            if me > ms {
                out.push(me - ms);
            }
            last = me;
        }
        if start + len > last {
            out.push(start + len - last);
        }
        start += len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(pre: &str, text: &str) -> Vec<String> {
        let s = PreSettings::for_name(pre).unwrap();
        let p = PreTokenizer::new(&s).unwrap();
        p.split(text)
            .unwrap()
            .into_iter()
            .map(|r| text[r].to_string())
            .collect()
    }

    #[test]
    fn every_family_compiles() {
        use PreKind::*;
        for kind in [
            Default,
            Llama3,
            Jais2,
            DeepseekLlm,
            DeepseekCoder,
            Deepseek3,
            Spark25,
            Youtu,
            Falcon,
            Starcoder,
            Gpt2,
            Qwen2,
            Qwen35,
            Poro,
            Viking,
            Tekken,
            Chameleon,
            Gpt4o,
            GraniteEmbMulti,
            TinyAya,
            KimiK2,
            SuperBpe,
            BailingMoe,
            SeedCoder,
            Ufakzeka,
            Afmoe,
            Laguna,
            ExaoneMoe,
            Gemma4,
            SarvamMoe,
            Minicpm5,
            Whitespace,
        ] {
            let mut s = PreSettings::for_name("").unwrap();
            s.kind = kind;
            let p = PreTokenizer::new(&s).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            for text in ["Hello, world! 123456 ñandú 你好 \n\n  x", "", " ", "'s 'LL"] {
                let w = p.split(text).unwrap();
                let joined: String = w.iter().map(|r| &text[r.clone()]).collect();
                assert_eq!(joined, text, "{kind:?}");
            }
        }
    }

    #[test]
    fn gpt2_words() {
        assert_eq!(
            words("gpt-2", "Hello world  !"),
            ["Hello", " world", " ", " !"]
        );
    }

    #[test]
    fn default_splits_digits_in_threes() {
        assert_eq!(words("default", "x 12345"), ["x", " ", "123", "45"]);
    }

    #[test]
    fn tekken_case_runs() {
        assert_eq!(words("tekken", "HelloWorld"), ["Hello", "World"]);
    }

    #[test]
    fn unknown_name_is_an_error() {
        assert!(matches!(
            PreSettings::for_name("no-such-pre"),
            Err(TokenizerError::UnknownPreTokenizer(_))
        ));
    }
}
