//! Small hand-made vocabularies that pin down individual llama.cpp behaviours: SentencePiece
//! merge order and byte fallback, BPE merge ranks and dropped bytes, WordPiece greedy
//! matching, special-token partitioning with strip attributes, the end-of-generation
//! heuristics, and the errors for unsupported metadata.

use std::sync::Arc;

use engine_gguf::{Array, GgufFile, GgufModel, GgufWriter, Value};
use engine_tokenizer::{Tokenizer, TokenizerError, TokenizerKind};

fn model(kv: Vec<(&str, Value)>) -> GgufModel {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("test".into()));
    for (k, v) in kv {
        w.set(k, v);
    }
    let file = GgufFile::parse(Arc::new(w.to_bytes())).expect("parse");
    GgufModel::from_files(vec![file], vec![]).expect("model")
}

fn strings(v: &[&str]) -> Value {
    Value::Array(Array::String(v.iter().map(|s| s.to_string()).collect()))
}

/// An SPM vocabulary: `<unk> <s> </s>`, 256 byte tokens, then `extra` as (text, score, type).
fn spm(extra: &[(&str, f32, i32)], more: Vec<(&str, Value)>) -> Tokenizer {
    let mut toks: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut scores = vec![0.0f32; 3];
    let mut types = vec![2, 3, 3];
    for b in 0..=255u8 {
        toks.push(format!("<0x{b:02X}>"));
        scores.push(0.0);
        types.push(6);
    }
    for &(t, s, ty) in extra {
        toks.push(t.into());
        scores.push(s);
        types.push(ty);
    }
    let mut kv = vec![
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", Value::Array(Array::String(toks))),
        ("tokenizer.ggml.scores", Value::Array(Array::F32(scores))),
        ("tokenizer.ggml.token_type", Value::Array(Array::I32(types))),
    ];
    kv.extend(more);
    Tokenizer::from_gguf(&model(kv)).expect("spm tokenizer")
}

const BASE: u32 = 259;

#[test]
fn spm_merges_by_score_with_byte_fallback() {
    let tok = spm(
        &[
            ("▁", -1.0, 1),
            ("a", -2.0, 1),
            ("b", -2.0, 1),
            ("▁a", -0.5, 1),
            ("ab", -0.7, 1),
            ("▁ab", -0.1, 1),
            ("<user>", 0.0, 4),
            ("<ctl>", 0.0, 3),
        ],
        vec![],
    );
    let id = |t: &str| tok.token_id(t).unwrap();
    assert_eq!(tok.kind(), TokenizerKind::Spm);
    assert_eq!((tok.bos(), tok.eos()), (Some(1), Some(2)));
    assert!(tok.add_space_prefix());
    // "▁a" (-0.5) beats "ab" (-0.7), then "▁a"+"b" makes "▁ab".
    assert_eq!(tok.encode("ab", true, false).unwrap(), [1, id("▁ab")]);
    // 'c' is not a token: byte fallback.
    assert_eq!(
        tok.encode("ac", false, false).unwrap(),
        [id("▁a"), 3 + b'c' as u32]
    );
    // Multi-byte characters fall back byte by byte.
    assert_eq!(
        tok.encode("é", false, false).unwrap(),
        [id("▁"), 3 + 0xC3, 3 + 0xA9]
    );
    // User-defined tokens split the text; the text after a special token gets a space prefix.
    assert_eq!(
        tok.encode("a<user>a", false, false).unwrap(),
        [id("▁a"), id("<user>"), id("▁a")]
    );
    // Control tokens only with parse_special.
    assert_eq!(tok.encode("<ctl>", false, true).unwrap(), [id("<ctl>")]);
    assert_ne!(tok.encode("<ctl>", false, false).unwrap(), [id("<ctl>")]);
    // Decoding drops the prefix space of the first piece (BOS counts as the first piece).
    assert_eq!(tok.decode(&[id("▁ab")], false), "ab");
    assert_eq!(tok.decode(&[1, id("▁ab")], false), " ab");
    assert_eq!(tok.decode(&[1, id("▁ab")], true), "<s> ab");
    assert_eq!(tok.decode(&[3 + 0xC3, 3 + 0xA9], false), "é");
    assert_eq!(tok.decode(&[3 + 0xC3], false), "\u{FFFD}");
    assert_eq!(tok.token_to_piece(3 + 0xC3, false), [0xC3]);
    assert_eq!(tok.encode("", true, false).unwrap(), [1]);
    assert!(tok.encode("", false, false).unwrap().is_empty());
}

#[test]
fn spm_metadata_switches() {
    let tok = spm(
        &[("▁", -1.0, 1), ("a", -2.0, 1)],
        vec![
            ("tokenizer.ggml.add_space_prefix", Value::Bool(false)),
            ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
            ("tokenizer.ggml.add_eos_token", Value::Bool(true)),
        ],
    );
    assert_eq!(tok.encode("a", true, false).unwrap(), [BASE + 1, 2]);
    assert_eq!(tok.encode(" a", false, false).unwrap(), [BASE, BASE + 1]);
    assert!(!tok.add_bos() && tok.add_eos());
}

#[test]
fn phi3_rstrip_swallows_whitespace_after_special_tokens() {
    let extra = [
        ("▁", -1.0, 1),
        ("h", -2.0, 1),
        ("<|user|>", 0.0, 3),
        ("<|end|>", 0.0, 3),
    ];
    let plain = spm(&extra, vec![]);
    let phi3 = spm(
        &extra,
        vec![("general.name", Value::String("Phi3 mini".into()))],
    );
    let user = phi3.token_id("<|user|>").unwrap();
    let end = phi3.token_id("<|end|>").unwrap();
    let h = phi3.token_id("h").unwrap();
    let sp = phi3.token_id("▁").unwrap();
    assert_eq!(
        phi3.encode("<|user|>\n  h<|end|>", false, true).unwrap(),
        [user, sp, h, end]
    );
    let nl = 3 + b'\n' as u32;
    assert_eq!(
        plain.encode("<|user|>\n  h<|end|>", false, true).unwrap(),
        [user, sp, nl, sp, sp, h, end]
    );
    // "<|end|>" is an end-of-generation token by name.
    assert!(phi3.is_eog(end) && phi3.is_eog(2));
}

/// A byte-level BPE vocabulary over the GPT-2 byte alphabet plus `extra`, with `merges`.
fn bpe(pre: &str, extra: &[(&str, i32)], merges: &[&str], more: Vec<(&str, Value)>) -> Tokenizer {
    let mut toks: Vec<String> = ["h", "e", "l", "o", "Ġ", "w", "r", "d", "!"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut types = vec![1; toks.len()];
    for &(t, ty) in extra {
        toks.push(t.into());
        types.push(ty);
    }
    let mut kv = vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String(pre.into())),
        ("tokenizer.ggml.tokens", Value::Array(Array::String(toks))),
        ("tokenizer.ggml.token_type", Value::Array(Array::I32(types))),
        ("tokenizer.ggml.merges", strings(merges)),
    ];
    kv.extend(more);
    Tokenizer::from_gguf(&model(kv)).expect("bpe tokenizer")
}

#[test]
fn bpe_merges_by_rank_and_drops_unknown_bytes() {
    let tok = bpe(
        "gpt-2",
        &[
            ("he", 1),
            ("ll", 1),
            ("hell", 1),
            ("hello", 1),
            ("Ġw", 1),
            ("<|endoftext|>", 3),
        ],
        &["l l", "h e", "he ll", "hell o", "Ġ w"],
        vec![("tokenizer.ggml.eos_token_id", Value::U32(14))],
    );
    let id = |t: &str| tok.token_id(t).unwrap();
    assert_eq!(tok.kind(), TokenizerKind::Bpe);
    assert_eq!(
        tok.encode("hello world!", false, false).unwrap(),
        [
            id("hello"),
            id("Ġw"),
            id("o"),
            id("r"),
            id("l"),
            id("d"),
            id("!")
        ]
    );
    // Characters outside the vocabulary disappear (their encoded bytes are not ASCII).
    assert_eq!(tok.encode("hé", false, false).unwrap(), [id("h")]);
    assert_eq!(
        tok.decode(&[id("hello"), id("Ġw"), id("o")], false),
        "hello wo"
    );
    // Clean-up of spaces before punctuation applies to BPE vocabularies.
    assert_eq!(
        tok.decode(&[id("hello"), id("Ġ"), id("!")], false),
        "hello!"
    );
    assert!(tok.is_eog(14) && tok.is_control(14));
    // No BOS in the metadata: llama.cpp's default for gpt2 vocabularies is id 11.
    assert_eq!(tok.bos(), Some(11));
}

#[test]
fn bpe_special_tokens_and_eog_heuristics() {
    let tok = bpe(
        "llama-bpe",
        &[
            ("he", 1),
            ("<|im_end|>", 1),
            ("<|return|>", 3),
            ("<|call|>", 3),
            ("<|end|>", 3),
            ("<|channel|>", 3),
        ],
        &["h e"],
        vec![("tokenizer.ggml.bos_token_id", Value::U32(0))],
    );
    let id = |t: &str| tok.token_id(t).unwrap();
    // A normal token named like an end-of-turn marker becomes a control, end-of-generation token.
    assert!(tok.is_control(id("<|im_end|>")) && tok.is_eog(id("<|im_end|>")));
    assert_eq!(tok.eot(), Some(id("<|im_end|>")));
    // harmony: with <|return|> and <|call|>, <|end|> is not an end of generation and is text.
    assert!(!tok.is_eog(id("<|end|>")) && tok.is_user_defined(id("<|end|>")));
    assert!(tok.is_eog(id("<|return|>")) && tok.is_eog(id("<|call|>")));
    assert!(tok.is_user_defined(id("<|channel|>")));
    assert_eq!(tok.token_to_piece(id("<|channel|>"), false), b"<|channel|>");
    // llama-bpe adds BOS by default.
    assert!(tok.add_bos());
    assert_eq!(tok.encode("he", true, false).unwrap(), [0, id("he")]);
    assert_eq!(
        tok.encode("he<|im_end|>", false, true).unwrap(),
        [id("he"), id("<|im_end|>")]
    );
    // User-defined tokens are matched even without parse_special.
    assert_eq!(
        tok.encode("<|end|>", false, false).unwrap(),
        [id("<|end|>")]
    );
}

#[test]
fn wordpiece_greedy_longest_match() {
    let toks = [
        "[UNK]", "[CLS]", "[SEP]", "▁un", "aff", "able", "▁!", "▁hello", "▁a",
    ];
    let kv = vec![
        ("tokenizer.ggml.model", Value::String("bert".into())),
        ("tokenizer.ggml.tokens", strings(&toks)),
        (
            "tokenizer.ggml.token_type",
            Value::Array(Array::I32(vec![3, 3, 3, 1, 1, 1, 1, 1, 1])),
        ),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.seperator_token_id", Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
    ];
    let tok = Tokenizer::from_gguf(&model(kv)).expect("wpm");
    assert_eq!(tok.kind(), TokenizerKind::Wpm);
    assert_eq!(
        tok.encode("Unaffable!", true, false).unwrap(),
        [1, 3, 4, 5, 6, 2]
    );
    assert_eq!(tok.encode("HÉLLO  xyz", false, false).unwrap(), [7, 0]);
    // WordPiece adds no space prefix, so the word-start marker decodes to a space.
    assert_eq!(tok.decode(&[3, 4, 5], false), " unaffable");
}

#[test]
fn unsupported_metadata_gives_clear_errors() {
    let base = |model_name: &str, pre: Option<&str>| {
        let mut kv = vec![
            ("tokenizer.ggml.model", Value::String(model_name.into())),
            ("tokenizer.ggml.tokens", strings(&["a", "b"])),
            ("tokenizer.ggml.merges", strings(&["a b"])),
        ];
        if let Some(p) = pre {
            kv.push(("tokenizer.ggml.pre", Value::String(p.into())));
        }
        Tokenizer::from_gguf(&model(kv))
    };
    match base("gpt2", Some("no-such-pre")) {
        Err(e @ TokenizerError::UnknownPreTokenizer(_)) => {
            assert!(e.to_string().contains("no-such-pre"))
        }
        other => panic!("expected an unknown pre-tokenizer error, got {other:?}"),
    }
    for m in ["plamo2", "rwkv", "whatever"] {
        match base(m, None) {
            Err(e @ TokenizerError::UnsupportedModel { .. }) => {
                assert!(e.to_string().contains(m), "{e}")
            }
            other => panic!("expected unsupported model for {m}, got {other:?}"),
        }
    }
    // No pre-tokenizer name falls back to "default", as in llama.cpp.
    let tok = base("gpt2", None).expect("default pre-tokenizer");
    assert_eq!(tok.pre(), Some(""));
    assert_eq!(tok.encode("ab", false, false).unwrap(), [0, 1]);
    // gpt2 without merges is refused.
    let kv = vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens", strings(&["a"])),
    ];
    assert!(matches!(
        Tokenizer::from_gguf(&model(kv)),
        Err(TokenizerError::Metadata(_))
    ));
    assert!(matches!(
        Tokenizer::from_gguf(&model(vec![])),
        Err(TokenizerError::Metadata(_))
    ));
}
