//! Every tiny model under `shared/fixtures/arch/` must yield a working tokenizer: synthetic
//! BPE vocabularies with the llama-bpe, qwen2, glm4, gpt-4o, tekken and default
//! pre-tokenizers, and SPM vocabularies in the Gemma and Llama layouts.

use std::collections::BTreeMap;

use engine_gguf::GgufModel;
use engine_tokenizer::{StreamDecoder, Tokenizer, TokenizerKind};

#[test]
fn every_arch_fixture_builds_a_tokenizer() {
    let root = engine_testdata::fixtures_dir().join("arch");
    let mut files = Vec::new();
    for dir in std::fs::read_dir(&root).expect("arch fixtures").flatten() {
        if let Ok(entries) = std::fs::read_dir(dir.path()) {
            files.extend(
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "gguf")),
            );
        }
    }
    files.sort();
    assert!(
        files.len() >= 10,
        "expected the arch fixtures in {}",
        root.display()
    );

    let mut pres: BTreeMap<String, usize> = BTreeMap::new();
    for path in &files {
        let name = path
            .strip_prefix(&root)
            .unwrap_or(path)
            .display()
            .to_string();
        let model = GgufModel::open(path, true).expect("open fixture");
        let tok = Tokenizer::from_gguf(&model).unwrap_or_else(|e| panic!("{name}: {e}"));
        let expected_kind = match tok.model() {
            "llama" => TokenizerKind::Spm,
            "gpt2" => TokenizerKind::Bpe,
            other => panic!("{name}: unexpected tokenizer model {other}"),
        };
        assert_eq!(tok.kind(), expected_kind, "{name}");
        *pres
            .entry(format!("{:?}/{}", tok.kind(), tok.pre().unwrap_or("-")))
            .or_default() += 1;

        // The vocabularies are tiny, so text may lose characters, but encoding must work and
        // honour add_bos, and every id must be in range and decodable.
        let text = "Hello world! 123 <|im_end|> ünïcödé\n\tend";
        for (add_special, parse_special) in [(false, false), (true, false), (true, true)] {
            let ids = tok
                .encode(text, add_special, parse_special)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                ids.iter().all(|&id| (id as usize) < tok.n_vocab()),
                "{name}"
            );
            if add_special && tok.add_bos() {
                assert_eq!(ids.first().copied(), tok.bos(), "{name}: BOS first");
            }
            if !add_special {
                assert!(
                    tok.bos().is_none_or(|b| ids.first() != Some(&b)),
                    "{name}: no BOS without add_special"
                );
            }
            let decoded = tok.decode(&ids, true);
            let mut streamed = String::new();
            let mut dec = StreamDecoder::new(true);
            for &id in &ids {
                dec.push(&tok, id, &mut streamed);
            }
            dec.finish(&mut streamed);
            assert!(!decoded.is_empty() && !streamed.is_empty(), "{name}");
        }
        // Long runs must not trip the regex engines' backtracking limits.
        for long in [
            " ".repeat(10_000),
            "\n".repeat(3000),
            "x".repeat(20_000),
            "日本".repeat(5000),
            "Ab1 ".repeat(3000),
        ] {
            tok.encode(&long, true, true)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        if let Some(eos) = tok.eos() {
            assert!(tok.is_eog(eos), "{name}: EOS ends generation");
        }
        // The fixtures' token streams stay in range of the vocabulary.
        let tokens = path.with_file_name("tokens.json");
        if let Ok(json) = std::fs::read_to_string(&tokens) {
            let v: serde_json::Value = serde_json::from_str(&json).expect("tokens.json");
            for id in v["tokens"].as_array().expect("tokens") {
                let id = id.as_u64().expect("id") as u32;
                assert!(tok.token_text(id).is_some(), "{name}: token {id}");
            }
        }
    }
    println!("tokenizers built: {pres:?}");
    for want in [
        "Bpe/llama-bpe",
        "Bpe/qwen2",
        "Bpe/glm4",
        "Bpe/gpt-4o",
        "Bpe/tekken",
        "Bpe/default",
        "Spm/-",
    ] {
        assert!(
            pres.contains_key(want),
            "no fixture exercised {want}: {pres:?}"
        );
    }
}
