//! `engine serve` features beyond plain completion: the Gemma chat template (the default
//! model ships none), prefix reuse across chat turns, JSON mode, log-probabilities,
//! llama-server's `/completion`, Ollama continuation through `context`, metrics, and
//! reasoning split from content (streamed and not) with a template that opens `<think>`.

mod serve_support;

use engine_server::scheduler::json_constraint::JsonState;
use serde_json::{json, Value};
use serve_support::Server;

fn chat(s: &Server, body: Value) -> Value {
    let r = s.post("/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn templates_prefix_reuse_json_logprobs_and_native_endpoints() {
    let _g = serve_support::serial();
    let s = Server::start(&["-np", "2", "--metrics"]);

    // The Gemma built-in formats turns (the system prompt folds into the first user turn).
    let msgs = json!([
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is the capital of France?"}
    ]);
    let r = s.post("/apply-template", &json!({"messages": msgs}));
    assert_eq!(r.status, 200, "{}", r.text());
    let prompt = r.json()["prompt"].as_str().unwrap().to_string();
    assert_eq!(
        prompt,
        "<bos><start_of_turn>user\nAnswer briefly.\n\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
    );
    let toks = s
        .post(
            "/tokenize",
            &json!({"content": prompt, "parse_special": true}),
        )
        .json();
    let ids: Vec<u64> = toks["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(ids[0], 2, "one BOS from the template");
    assert_eq!(ids.iter().filter(|&&t| t == 2).count(), 1);
    assert!(
        ids.contains(&105) && ids.contains(&106),
        "turn markers are special tokens: {ids:?}"
    );
    let v = chat(
        &s,
        json!({"messages": msgs, "max_tokens": 8, "temperature": 0, "cache_prompt": false}),
    );
    assert_eq!(
        v["usage"]["prompt_tokens"].as_u64().unwrap() as usize,
        ids.len()
    );
    let answer = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();

    // The next turn reuses the cached conversation.
    let cached_before = s.metric("engine:prompt_tokens_cached_total");
    let turn2 = json!([
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And of Italy?"}
    ]);
    let v = chat(
        &s,
        json!({"messages": turn2, "max_tokens": 4, "temperature": 0}),
    );
    let cached = v["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(
        cached as usize >= ids.len() - 1,
        "cached {cached} of the first turn's {}",
        ids.len()
    );
    assert_eq!(v["timings"]["cache_n"], cached);
    assert_eq!(
        v["timings"]["prompt_n"].as_u64().unwrap(),
        v["usage"]["prompt_tokens"].as_u64().unwrap() - cached
    );
    assert_eq!(
        s.metric("engine:prompt_tokens_cached_total"),
        cached_before + cached as f64
    );

    // JSON mode: the answer is one JSON object (or a valid prefix of one when cut by length).
    for stream in [false, true] {
        let body = json!({
            "messages": [{"role": "user", "content": "Give me a JSON object describing a cat."}],
            "response_format": {"type": "json_object"}, "max_tokens": 48, "temperature": 0,
            "stream": stream,
        });
        let r = s.post("/v1/chat/completions", &body);
        assert_eq!(r.status, 200, "{}", r.text());
        let (content, finish) = if stream {
            let (chunks, done) = r.sse();
            assert!(done);
            let mut c = String::new();
            let mut f = String::new();
            for ch in chunks {
                c.push_str(ch["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
                if let Some(x) = ch["choices"][0]["finish_reason"].as_str() {
                    f = x.to_string();
                }
            }
            (c, f)
        } else {
            let v = r.json();
            (
                v["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                v["choices"][0]["finish_reason"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        };
        let mut j = JsonState::new();
        assert!(j.feed(content.as_bytes()), "not JSON: {content:?}");
        assert!(content.trim_start().starts_with('{'), "{content:?}");
        if finish == "stop" {
            let parsed: Value = serde_json::from_str(&content).unwrap();
            assert!(parsed.is_object());
        } else {
            assert_eq!(finish, "length");
        }
    }

    // Log-probabilities: greedy picks the most likely token.
    let v = chat(
        &s,
        json!({
            "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "temperature": 0,
            "logprobs": true, "top_logprobs": 3,
        }),
    );
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert!(!content.is_empty());
    for e in content {
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(e["token"], top[0]["token"]);
        assert!(
            (e["logprob"].as_f64().unwrap() - top[0]["logprob"].as_f64().unwrap()).abs() < 1e-6
        );
        assert!(e["logprob"].as_f64().unwrap() <= 0.0);
    }
    let r = s.post(
        "/v1/completions",
        &json!({"prompt": "One, two,", "max_tokens": 3, "temperature": 0, "logprobs": 2}),
    );
    let lp = &r.json()["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 3);
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);

    // llama-server's /completion gives the same greedy text as /v1/completions.
    let a = s.post("/completion", &json!({"prompt": "The sun rises in the", "n_predict": 8, "temperature": 0, "cache_prompt": false})).json();
    let b = s.post("/v1/completions", &json!({"prompt": "The sun rises in the", "max_tokens": 8, "temperature": 0, "cache_prompt": false})).json();
    assert_eq!(a["content"], b["choices"][0]["text"]);
    assert_eq!(a["stop"], true);
    assert_eq!(a["stop_type"], "limit");
    assert_eq!(a["tokens_predicted"], 8);
    let r = s.post("/completion", &json!({"prompt": "The sun rises in the", "n_predict": 8, "temperature": 0, "stream": true, "cache_prompt": false}));
    let (chunks, done) = r.sse();
    assert!(!done, "llama-server's /completion stream has no [DONE]");
    let text: String = chunks
        .iter()
        .map(|c| c["content"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(text, a["content"].as_str().unwrap());
    assert_eq!(chunks.last().unwrap()["stop"], true);
    let d = s
        .post("/detokenize", &json!({"tokens": a["tokens"]}))
        .json();
    assert_eq!(d["content"], a["content"]);

    // Ollama: a continuation through `context`.
    let g1 = s.post("/api/generate", &json!({"model": "", "prompt": "The capital of France is", "raw": true, "stream": false, "options": {"temperature": 0, "num_predict": 4}})).json();
    let ctx = g1["context"].as_array().unwrap().clone();
    let g2 = s.post("/api/generate", &json!({"model": "", "prompt": " Also,", "raw": true, "stream": false, "context": ctx, "options": {"temperature": 0, "num_predict": 4}})).json();
    assert_eq!(g2["done"], true, "{g2}");
    assert!(g2["prompt_eval_count"].as_u64().unwrap() > ctx.len() as u64);
    assert_eq!(&g2["context"].as_array().unwrap()[..ctx.len()], &ctx[..]);
    for k in [
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ] {
        assert!(g2[k].is_u64(), "{k} missing in {g2}");
    }

    // Latency histograms saw every generation.
    s.wait_idle();
    let m = s.metrics();
    let get = |k: &str| m.iter().find(|(n, _)| n == k).map(|x| x.1).unwrap();
    let finished = get("engine:request_success_total{finished_reason=\"stop\"}")
        + get("engine:request_success_total{finished_reason=\"length\"}");
    assert_eq!(get("engine:time_to_first_token_seconds_count"), finished);
    assert_eq!(get("engine:request_queue_time_seconds_count"), finished);
    assert!(get("engine:time_per_output_token_seconds_count") > 0.0);
    assert!(get("engine:process_resident_memory_bytes") > 1e8);
    assert!(get("engine:model_load_time_seconds") > 0.0);
    assert_eq!(get("engine:kv_cache_capacity_tokens"), 2.0 * 4096.0);
}

#[test]
fn reasoning_is_split_from_content_streamed_and_not() {
    let _g = serve_support::serial();
    let dir = std::env::temp_dir().join(format!("engine-serve-think-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("think.jinja");
    // Gemma turns, and a generation prompt that opens a reasoning block (as DeepSeek-R1's
    // template does): everything the model writes until </think> is reasoning.
    std::fs::write(
        &file,
        "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m.role == 'assistant' else 'user' }}\n{{ m.content | trim }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n<think>\n{% endif %}",
    )
    .unwrap();
    let s = Server::start(&["-np", "1", "--chat-template-file", file.to_str().unwrap()]);
    let msgs = json!([{"role": "user", "content": "Why is the sky blue?"}]);
    let v = chat(
        &s,
        json!({"messages": msgs, "max_tokens": 12, "temperature": 0, "cache_prompt": false}),
    );
    let m = &v["choices"][0]["message"];
    let reasoning = m["reasoning_content"]
        .as_str()
        .unwrap_or_else(|| panic!("no reasoning_content: {v}"));
    assert!(!reasoning.is_empty());
    let content = m["content"].as_str().unwrap();

    // The same split when streamed.
    let r = s.post("/v1/chat/completions", &json!({"messages": msgs, "max_tokens": 12, "temperature": 0, "stream": true, "cache_prompt": false}));
    let (chunks, done) = r.sse();
    assert!(done);
    let mut sr = String::new();
    let mut sc = String::new();
    for c in &chunks {
        let d = &c["choices"][0]["delta"];
        sr.push_str(d["reasoning_content"].as_str().unwrap_or(""));
        sc.push_str(d["content"].as_str().unwrap_or(""));
    }
    assert_eq!((sr.as_str(), sc.as_str()), (reasoning, content));

    // Without splitting, all of it is content, and it is the raw completion of the prompt.
    let v = chat(
        &s,
        json!({"messages": msgs, "max_tokens": 12, "temperature": 0, "cache_prompt": false, "reasoning_format": "none"}),
    );
    let raw = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(v["choices"][0]["message"]
        .get("reasoning_content")
        .is_none());
    assert_eq!(
        reasoning,
        raw.split("</think>").next().unwrap(),
        "reasoning is the text before </think>"
    );
    let p = s.post("/apply-template", &json!({"messages": msgs})).json();
    let c = s.post("/v1/completions", &json!({"prompt": p["prompt"].as_str().unwrap().strip_prefix("<bos>").unwrap(), "max_tokens": 12, "temperature": 0, "cache_prompt": false})).json();
    assert_eq!(c["choices"][0]["text"].as_str().unwrap(), raw);
    let _ = std::fs::remove_dir_all(&dir);
}
