//! The Gemma 3 270M fixtures (`shared/fixtures/gemma3-270m/tokenize.jsonl`): token ids
//! produced by llama.cpp for the real model file, with and without BOS and special-token
//! parsing, plus the properties its README pins down.

use std::sync::OnceLock;
use std::time::Instant;

use engine_gguf::GgufModel;
use engine_tokenizer::{StreamDecoder, Tokenizer, TokenizerKind};
use serde_json::Value;

fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = engine_testdata::gemma3_model()
            .expect("the Gemma 3 270M model is needed for this test");
        let model = GgufModel::open(&path, true).expect("open gemma3");
        Tokenizer::from_gguf(&model).expect("gemma3 tokenizer")
    })
}

struct Record {
    text: String,
    add_bos: bool,
    parse_special: bool,
    ids: Vec<u32>,
}

fn records() -> Vec<Record> {
    let path = engine_testdata::fixtures_dir().join("gemma3-270m/tokenize.jsonl");
    let data = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    data.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("json record");
            Record {
                text: v["text"].as_str().expect("text").to_string(),
                add_bos: v["add_bos"].as_bool().expect("add_bos"),
                parse_special: v["parse_special"].as_bool().expect("parse_special"),
                ids: v["ids"]
                    .as_array()
                    .expect("ids")
                    .iter()
                    .map(|x| x.as_u64().expect("id") as u32)
                    .collect(),
            }
        })
        .collect()
}

#[test]
fn all_records_encode_exactly() {
    let tok = tokenizer();
    let recs = records();
    assert_eq!(recs.len(), 60);
    let mut failures = Vec::new();
    for r in &recs {
        let got = tok
            .encode(&r.text, r.add_bos, r.parse_special)
            .expect("encode");
        if got != r.ids {
            failures.push(format!(
                "{:?} (bos {}, special {})\n  want {:?}\n  got  {:?}",
                r.text, r.add_bos, r.parse_special, r.ids, got
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 60 differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn all_records_decode_back() {
    let tok = tokenizer();
    for r in records() {
        let body = if r.add_bos {
            assert_eq!(r.ids.first(), Some(&2), "{:?}", r.text);
            &r.ids[1..]
        } else {
            &r.ids[..]
        };
        assert_eq!(tok.decode(body, true), r.text, "decode of {:?}", r.ids);

        let mut streamed = String::new();
        let mut dec = StreamDecoder::new(true);
        for &id in body {
            dec.push(tok, id, &mut streamed);
        }
        dec.finish(&mut streamed);
        assert_eq!(streamed, r.text, "streamed decode of {:?}", r.ids);
    }
}

#[test]
fn metadata_and_special_tokens() {
    let tok = tokenizer();
    assert_eq!(tok.kind(), TokenizerKind::Spm);
    assert_eq!(tok.n_vocab(), 262_144);
    assert_eq!(tok.bos(), Some(2));
    assert_eq!(tok.eos(), Some(1));
    assert_eq!(tok.eot(), Some(106));
    assert!(tok.add_bos());
    assert!(!tok.add_eos());
    assert!(!tok.add_space_prefix());
    assert_eq!(tok.eog_ids(), &[1, 106, 212]);
    for id in [1, 106, 212] {
        assert!(tok.is_eog(id));
    }
    assert!(!tok.is_eog(2));
    // `</s>` is user-defined in the file and re-classified as control; `<s>` stays user-defined.
    assert!(tok.is_control(212));
    assert!(tok.is_user_defined(203));
    assert!(!tok.is_control(203));
    assert_eq!(tok.token_id("</s>"), Some(212));
    assert_eq!(tok.token_text(106), Some("<end_of_turn>"));
    assert_eq!(tok.token_text(u32::MAX), None);

    assert_eq!(tok.encode("</s>", false, true).unwrap(), [212]);
    assert_eq!(
        tok.encode("</s>", false, false).unwrap(),
        [954, 236751, 236813]
    );
    assert_eq!(tok.encode("<s>", false, false).unwrap(), [203]);
    assert_eq!(
        tok.encode("<bos>", false, false).unwrap(),
        [236820, 46757, 236813]
    );
    assert_eq!(tok.encode("<bos>", false, true).unwrap(), [2]);
    assert_eq!(
        tok.encode(&" ".repeat(40), true, false).unwrap(),
        [2, 167, 145]
    );
    assert_eq!(
        tok.encode("  hello world  ", true, false).unwrap(),
        [2, 138, 23391, 1902, 138]
    );
    // `\r` falls back to its byte token.
    assert_eq!(tok.encode("\r", false, false).unwrap(), [251]);
}

#[test]
fn pieces() {
    let tok = tokenizer();
    assert_eq!(tok.token_to_piece(1902, false), b" world");
    assert_eq!(tok.token_to_piece(251, false), b"\r");
    assert_eq!(tok.token_to_piece(106, false), b"");
    assert_eq!(tok.token_to_piece(106, true), b"<end_of_turn>");
    assert_eq!(tok.token_to_piece(212, false), b"");
    assert_eq!(tok.token_to_piece(203, false), b"<s>");
    assert_eq!(tok.token_to_piece(999_999, true), b"");
    assert_eq!(tok.decode(&[2, 23391, 1902, 1], false), "hello world");
    assert_eq!(
        tok.decode(&[2, 23391, 1902, 1], true),
        "<bos>hello world<eos>"
    );
}

#[test]
fn speed() {
    let path =
        engine_testdata::gemma3_model().expect("the Gemma 3 270M model is needed for this test");
    let model = GgufModel::open(&path, true).expect("open gemma3");
    let t0 = Instant::now();
    let tok = Tokenizer::from_gguf(&model).expect("gemma3 tokenizer");
    let load = t0.elapsed();

    let paragraph = "The quick brown fox jumps over the lazy dog. In 2024, researchers measured \
        3.14159 units of something remarkable; they wrote: \"Ça marche très bien!\" — and then \
        went home. Tokenizers must be fast, correct, and never panic on odd input like 😀🇫🇷 or \
        日本語のテキスト.\n\nSecond paragraph with    extra   spaces\tand tabs.";
    let text = paragraph.repeat(20);
    let runs = 20;
    let t1 = Instant::now();
    let mut n = 0;
    for _ in 0..runs {
        n += tok.encode(&text, true, true).unwrap().len();
    }
    let per_100_chars = t1.elapsed() / runs / (text.chars().count() as u32 / 100);
    println!(
        "load {load:?}; encode {per_100_chars:?} per 100 chars ({} tokens per run)",
        n / runs as usize
    );
    // Generous bounds: the test profile is optimized, but the machine is shared.
    assert!(
        per_100_chars.as_micros() < 1000,
        "encode too slow: {per_100_chars:?} per 100 chars"
    );
    assert!(load.as_millis() < 2000, "load too slow: {load:?}");
}
