//! Batching must not change results: greedy completions through `engine serve` equal
//! `engine run` for the same prompt, and eight concurrent greedy streams (decoded together
//! in one batch per step) each equal that stream's single-client output.

mod serve_support;

use serde_json::json;
use serve_support::{engine_run, Server};

const N: usize = 16;

const PROMPTS: [&str; 8] = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "The three primary colors are",
    "Water boils at a temperature of",
    "My favourite recipe for pancakes starts with",
    "In 1969, astronauts landed on",
    "The quick brown fox",
];

fn completion(s: &Server, prompt: &str, stream: bool) -> (String, usize, String) {
    let body = json!({
        "prompt": prompt, "max_tokens": N, "temperature": 0, "stream": stream,
        "stream_options": {"include_usage": true},
        // Fresh evaluation of every prompt: prefix reuse changes prompt chunking.
        "cache_prompt": false,
    });
    let r = s.post("/v1/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    if !stream {
        let v = r.json();
        return (
            v["choices"][0]["text"].as_str().unwrap().to_string(),
            v["usage"]["completion_tokens"].as_u64().unwrap() as usize,
            v["choices"][0]["finish_reason"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let (chunks, done) = r.sse();
    assert!(done, "stream must end with [DONE]: {}", r.text());
    let mut text = String::new();
    let mut finish = String::new();
    let mut n = 0;
    for c in &chunks {
        if let Some(ch) = c["choices"].as_array().and_then(|a| a.first()) {
            text.push_str(ch["text"].as_str().unwrap_or(""));
            if let Some(f) = ch["finish_reason"].as_str() {
                finish = f.to_string();
            }
        }
        if let Some(u) = c["usage"].as_object() {
            n = u["completion_tokens"].as_u64().unwrap() as usize;
        }
    }
    (text, n, finish)
}

#[test]
fn greedy_server_equals_engine_run_and_batching_is_invariant() {
    let _g = serve_support::serial();
    let s = Server::start(&["-np", "8", "-c", "2048", "--metrics"]);

    // One client at a time.
    let single: Vec<(String, usize, String)> =
        PROMPTS.iter().map(|p| completion(&s, p, false)).collect();
    for (p, out) in PROMPTS.iter().zip(&single) {
        assert!(!out.0.is_empty(), "{p}: empty completion");
    }

    // The same as `engine run` (the reference single-sequence loop).
    for (p, out) in PROMPTS.iter().zip(&single).take(4) {
        let r = engine_run(p, N);
        assert_eq!(
            out.0,
            r["text"].as_str().unwrap(),
            "server vs engine run for {p:?}"
        );
        assert_eq!(
            out.1,
            r["ids"].as_array().unwrap().len(),
            "token count for {p:?}"
        );
    }

    // Streaming gives the same text.
    let streamed = completion(&s, PROMPTS[1], true);
    assert_eq!(streamed, single[1]);

    // Eight concurrent streams decode together and still match one by one.
    let steps_before = s.metric("engine:batch_steps_total");
    let together: Vec<(String, usize, String)> = std::thread::scope(|sc| {
        let hs: Vec<_> = PROMPTS
            .iter()
            .map(|p| {
                let s = &s;
                sc.spawn(move || completion(s, p, true))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((p, a), b) in PROMPTS.iter().zip(&single).zip(&together) {
        assert_eq!(
            a, b,
            "batched stream differs from its single-client output for {p:?}"
        );
    }
    let steps = s.metric("engine:batch_steps_total") - steps_before;
    let tokens: usize = together.iter().map(|t| t.1).sum();
    // One pass per step for all sequences: far fewer passes than tokens generated.
    assert!(
        (steps as usize) < tokens / 2,
        "{steps} forward passes for {tokens} tokens: requests were not batched"
    );
    s.wait_idle();
}
