//! llama.cpp's tokenizer conformance vectors (`models/ggml-vocab-*.gguf` with `.inp`/`.out`),
//! run the way `tests/test-tokenizer-0.cpp` runs them: `add_special = false`,
//! `parse_special = false`, inputs split on `\n__ggml_vocab_test__\n`, expected ids one line
//! per input, duplicate inputs keeping the last expectation.

use std::collections::BTreeMap;
use std::path::Path;

use engine_gguf::GgufModel;
use engine_tokenizer::{Tokenizer, TokenizerError};

/// Reads the `.inp`/`.out` pair of a vocabulary.
fn read_cases(vocab: &Path) -> BTreeMap<String, Vec<u32>> {
    let inp = std::fs::read_to_string(format!("{}.inp", vocab.display())).expect("read .inp");
    let out = std::fs::read_to_string(format!("{}.out", vocab.display())).expect("read .out");
    // Split as test-tokenizer-0 does: a separator at the very end adds no empty input.
    let sep = "\n__ggml_vocab_test__\n";
    let mut inputs = Vec::new();
    let mut pos = 0;
    while pos < inp.len() {
        match inp[pos..].find(sep) {
            Some(k) => {
                inputs.push(&inp[pos..pos + k]);
                pos += k + sep.len();
            }
            None => {
                inputs.push(&inp[pos..]);
                break;
            }
        }
    }
    let outputs: Vec<&str> = out.lines().collect();
    assert_eq!(
        inputs.len(),
        outputs.len(),
        "{}: .inp and .out disagree",
        vocab.display()
    );
    let mut cases = BTreeMap::new();
    for (i, o) in inputs.iter().zip(outputs) {
        let ids = o
            .split_whitespace()
            .map(|t| t.parse::<u32>().expect("token id"))
            .collect();
        cases.insert(i.to_string(), ids);
    }
    cases
}

struct Outcome {
    name: String,
    load_ms: f64,
    passed: usize,
    total: usize,
    failures: Vec<String>,
}

fn run_vocab(path: &Path) -> Result<Outcome, TokenizerError> {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let model = GgufModel::open(path, true)?;
    let t0 = std::time::Instant::now();
    let tok = Tokenizer::from_gguf(&model)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let cases = read_cases(path);
    let mut passed = 0;
    let mut failures = Vec::new();
    for (text, want) in &cases {
        let got = tok.encode(text, false, false)?;
        if &got == want {
            passed += 1;
        } else if failures.len() < 5 {
            failures.push(format!("{text:?}\n    want {want:?}\n    got  {got:?}"));
        }
    }
    Ok(Outcome {
        name,
        load_ms,
        passed,
        total: cases.len(),
        failures,
    })
}

#[test]
fn llama_cpp_vocab_vectors() {
    let dir = engine_testdata::vocab_dir().expect("llama.cpp vocab files");
    let mut vocabs: Vec<_> = std::fs::read_dir(&dir)
        .expect("vocab dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    vocabs.sort();
    assert!(
        !vocabs.is_empty(),
        "no ggml-vocab-*.gguf in {}",
        dir.display()
    );

    let mut failed = Vec::new();
    let mut skipped = Vec::new();
    let mut total_cases = 0;
    for path in &vocabs {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let has_vectors = Path::new(&format!("{}.inp", path.display())).exists();
        let model = GgufModel::open(path, true).expect("open vocab");
        let tok_model = model
            .get_str("tokenizer.ggml.model")
            .ok()
            .flatten()
            .unwrap_or("")
            .to_string();
        match (Tokenizer::from_gguf(&model), has_vectors) {
            (Err(TokenizerError::UnsupportedModel { model, reason }), _) => {
                // Only models outside SPM/BPE/WPM/UGM may be skipped.
                assert!(
                    !matches!(
                        tok_model.as_str(),
                        "llama" | "gpt2" | "bert" | "gemma4" | "t5"
                    ),
                    "{name}: {model} refused: {reason}"
                );
                skipped.push(format!("{name} (tokenizer.ggml.model = {model}: {reason})"));
                continue;
            }
            (Err(e), _) => panic!("{name}: {e}"),
            (Ok(_), false) => {
                println!("{name:40} loads ({tok_model}); no test vectors");
                continue;
            }
            (Ok(_), true) => {}
        }
        let outcome = run_vocab(path).unwrap_or_else(|e| panic!("{name}: {e}"));
        println!(
            "{:40} {:>4}/{:<4} ({tok_model}, loaded in {:.1} ms)",
            outcome.name, outcome.passed, outcome.total, outcome.load_ms
        );
        total_cases += outcome.total;
        if outcome.passed != outcome.total {
            failed.push(format!(
                "{}: {}/{} passed\n  {}",
                outcome.name,
                outcome.passed,
                outcome.total,
                outcome.failures.join("\n  ")
            ));
        }
    }
    if skipped.is_empty() {
        println!("skipped: none");
    }
    for s in &skipped {
        println!("skipped: {s}");
    }
    println!("{total_cases} cases checked");
    assert!(
        failed.is_empty(),
        "vocab conformance failures:\n{}",
        failed.join("\n")
    );
}

/// Chat markup with `parse_special = true` on real BPE vocabularies (ids as llama.cpp gives
/// them for Llama 3 and Qwen 2 prompts).
#[test]
fn chat_markup_with_special_tokens() {
    let dir = engine_testdata::vocab_dir().expect("llama.cpp vocab files");
    let load = |name: &str| {
        let model =
            GgufModel::open(dir.join(format!("ggml-vocab-{name}.gguf")), true).expect("open vocab");
        Tokenizer::from_gguf(&model).expect("tokenizer")
    };
    let llama3 = load("llama-bpe");
    let prompt = "<|start_header_id|>user<|end_header_id|>\n\nhello<|eot_id|>";
    assert_eq!(
        llama3.encode(prompt, true, true).unwrap(),
        [128000, 128006, 882, 128007, 271, 15339, 128009]
    );
    // Without parse_special the markup is plain text.
    let plain = llama3.encode(prompt, false, false).unwrap();
    assert!(!plain.contains(&128006) && !plain.contains(&128009));
    assert_eq!(llama3.decode(&plain, false), prompt);
    assert_eq!(llama3.eot(), Some(128009));
    assert!(llama3.is_eog(128009) && llama3.is_eog(128001));

    let qwen = load("qwen2");
    assert_eq!(
        qwen.encode("<|im_start|>user\nhello<|im_end|>", true, true)
            .unwrap(),
        [151644, 872, 198, 14990, 151645]
    );
    assert_eq!(qwen.eot(), Some(151645));
    assert_eq!(
        qwen.decode(&[151644, 872, 198, 14990, 151645], true),
        "<|im_start|>user\nhello<|im_end|>"
    );
    assert_eq!(
        qwen.decode(&[151644, 872, 198, 14990, 151645], false),
        "user\nhello"
    );
}

/// `ggml-vocab-nomic-bert-moe` (XLM-RoBERTa's Unigram vocabulary, `tokenizer.ggml.model =
/// "t5"`) has no `.inp`/`.out` vectors; these are the ids XLM-RoBERTa's reference tokenizer
/// gives, which llama.cpp reproduces.
#[test]
fn unigram_known_answers() {
    let dir = engine_testdata::vocab_dir().expect("llama.cpp vocab files");
    let model =
        GgufModel::open(dir.join("ggml-vocab-nomic-bert-moe.gguf"), true).expect("open vocab");
    let tok = Tokenizer::from_gguf(&model).expect("tokenizer");
    assert_eq!(tok.kind(), engine_tokenizer::TokenizerKind::Ugm);
    assert_eq!(
        tok.encode("Hello world", true, false).unwrap(),
        [0, 35378, 8999, 2]
    );
    assert_eq!(
        tok.encode("Hello, my dog is cute", true, false).unwrap(),
        [0, 35378, 4, 759, 10269, 83, 99942, 2]
    );
    // Extra whitespace is removed, and the character map normalizes (NFKC-like).
    assert_eq!(
        tok.encode("  Hello   world  ", false, false).unwrap(),
        [35378, 8999]
    );
    assert_eq!(
        tok.encode("ＡＢＣ", false, false).unwrap(),
        tok.encode("ABC", false, false).unwrap()
    );
    assert_eq!(
        tok.encode("e\u{301}", false, false).unwrap(),
        tok.encode("é", false, false).unwrap()
    );
    assert_eq!(tok.encode("", true, false).unwrap(), [0, 2]);
    assert_eq!(tok.encode("<mask>", false, true).unwrap(), [250001]);
    assert_eq!(tok.decode(&[35378, 8999], false), "Hello world");
}
