//! Random and odd inputs: encoding never panics or fails on any string, decoding never
//! panics on any ids (including out-of-range ones), streaming always yields valid text,
//! and for vocabularies whose decoding is lossless (byte fallback or byte-level BPE, no
//! clean-up passes) decoding gives back the input (for SentencePiece, with any `▁` in the
//! input read back as a space, since that is how SentencePiece stores spaces).

use engine_gguf::GgufModel;
use engine_tokenizer::{StreamDecoder, Tokenizer};

/// xorshift64*: deterministic, dependency-free randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const PIECES: &[&str] = &[
    " ",
    "  ",
    "\t",
    "\n",
    "\n\n",
    "\r\n",
    "\r",
    "\u{85}",
    "\u{A0}",
    "\u{3000}",
    "\u{2028}",
    "\u{200B}",
    "\u{200D}",
    "\u{FEFF}",
    "\u{FFFD}",
    "\0",
    "\u{378}",
    "\u{E000}",
    "\u{10FFFF}",
    "\u{1D400}",
    "\u{301}",
    "e\u{301}",
    "👨‍👩‍👧",
    "🇫🇷",
    "1️⃣",
    "👍🏽",
    "你好",
    "日本語",
    "한국어",
    "ελληνικά",
    "русский",
    "עברית",
    "العربية",
    "हिन्दी",
    "ไทย",
    "'s",
    "'LL",
    "don't",
    "123",
    "4567890",
    "3.14",
    "$",
    "€",
    "<",
    ">",
    "</",
    "<s>",
    "</s>",
    "<bos>",
    "<eos>",
    "<unk>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|begin_of_text|>",
    "[CLS]",
    "[SEP]",
    "<mask>",
    "<table>",
    "<h1>",
    "[multimodal]",
    "<0x0A>",
    "▁",
    "▁▁",
    "Ġ",
    "##",
    "__",
    "...",
    "!?",
    "http://x.y/z?a=1",
    "fn main() {}",
    "Hello",
    "world",
    "ÀÉÎÕÜ",
    "ß",
    "İ",
    "ǅ",
    "ﬁ",
];

fn random_text(rng: &mut Rng) -> String {
    let mut s = String::new();
    let n = rng.below(24);
    for _ in 0..n {
        match rng.below(4) {
            0 => {
                // Any Unicode scalar value.
                let c = loop {
                    let cp = match rng.below(3) {
                        0 => rng.below(0x80) as u32,
                        1 => rng.below(0x3000) as u32,
                        _ => rng.below(0x11_0000) as u32,
                    };
                    if let Some(c) = char::from_u32(cp) {
                        break c;
                    }
                };
                s.push(c);
            }
            1 => {
                let run = ["a", " ", "\n", "7", "\t", "-"][rng.below(6)];
                s.push_str(&run.repeat(1 + rng.below(40)));
            }
            _ => s.push_str(PIECES[rng.below(PIECES.len())]),
        }
    }
    s
}

fn stream(tok: &Tokenizer, ids: &[u32], special: bool) -> String {
    let mut out = String::new();
    let mut dec = StreamDecoder::new(special);
    for &id in ids {
        dec.push(tok, id, &mut out);
    }
    dec.finish(&mut out);
    out
}

/// What decoding an encoding gives back.
#[derive(Clone, Copy, PartialEq)]
enum RoundTrip {
    /// Nothing to check.
    Lossy,
    /// The input exactly.
    Exact,
    /// The input with `▁` turned into spaces.
    SpaceMarker,
}

fn exercise(name: &str, tok: &Tokenizer, round_trip: RoundTrip, rounds: usize, seed: u64) {
    let mut rng = Rng(seed);
    for round in 0..rounds {
        let text = random_text(&mut rng);
        for (add, parse) in [(false, false), (true, false), (false, true), (true, true)] {
            let ids = tok
                .encode(&text, add, parse)
                .unwrap_or_else(|e| panic!("{name}: encode({text:?}, {add}, {parse}) failed: {e}"));
            assert!(
                ids.iter().all(|&id| (id as usize) < tok.n_vocab()),
                "{name}: id out of range"
            );
            let decoded = tok.decode(&ids, true);
            let streamed = stream(tok, &ids, true);
            let joined: Vec<u8> = ids
                .iter()
                .flat_map(|&id| tok.token_to_piece(id, true).to_vec())
                .collect();
            assert_eq!(
                streamed,
                String::from_utf8_lossy(&joined),
                "{name}: stream of {text:?}"
            );
            if !add && round_trip != RoundTrip::Lossy {
                let want = match round_trip {
                    RoundTrip::SpaceMarker => text.replace('\u{2581}', " "),
                    _ => text.clone(),
                };
                assert_eq!(
                    decoded, want,
                    "{name}: round trip (parse_special {parse}), ids {ids:?}"
                );
            }
        }
        // Arbitrary ids, valid or not.
        let ids: Vec<u32> = (0..rng.below(16))
            .map(|_| match rng.below(3) {
                0 => rng.next() as u32,
                _ => rng.below(tok.n_vocab() + 10) as u32,
            })
            .collect();
        for special in [false, true] {
            let _ = tok.decode(&ids, special);
            let s = stream(tok, &ids, special);
            assert!(std::str::from_utf8(s.as_bytes()).is_ok());
        }
        if round == 0 {
            assert!(tok.encode(&"\u{200B}".repeat(5000), true, true).is_ok());
            assert!(tok.encode(&" ".repeat(10_000), true, true).is_ok());
            assert!(tok.encode(&"\n".repeat(3000), true, true).is_ok());
            assert!(tok.encode(&"x".repeat(20_000), true, true).is_ok());
        }
    }
}

#[test]
fn gemma3_random_inputs() {
    let path =
        engine_testdata::gemma3_model().expect("the Gemma 3 270M model is needed for this test");
    let model = GgufModel::open(&path, true).expect("open gemma3");
    let tok = Tokenizer::from_gguf(&model).expect("gemma3 tokenizer");
    exercise(
        "gemma3",
        &tok,
        RoundTrip::SpaceMarker,
        400,
        0x9E37_79B9_7F4A_7C15,
    );
}

#[test]
fn llama_cpp_vocabs_random_inputs() {
    let dir = engine_testdata::vocab_dir().expect("llama.cpp vocab files");
    let mut tried = 0;
    for entry in std::fs::read_dir(&dir).expect("vocab dir").flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|x| x != "gguf") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let model = GgufModel::open(&path, true).expect("open vocab");
        let Ok(tok) = Tokenizer::from_gguf(&model) else {
            continue;
        };
        // Lossless: byte fallback without a space prefix to strip, or byte-level BPE without
        // the clean-up passes.
        let round_trip = match name.as_str() {
            "ggml-vocab-qwen2.gguf" | "ggml-vocab-qwen35.gguf" => RoundTrip::Exact,
            _ => RoundTrip::Lossy,
        };
        exercise(&name, &tok, round_trip, 60, name.len() as u64 * 7919 + 1);
        tried += 1;
    }
    assert!(tried >= 15, "only {tried} vocabularies exercised");
}
