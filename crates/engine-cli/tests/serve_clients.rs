//! `engine serve` driven by the real `openai` and `ollama` Python clients (installed from the
//! package index into the test cache on first use): chat and completions, streaming and not,
//! models, embeddings; Ollama generate, chat, list, show, embed, ps.

mod serve_support;

use serve_support::{engine_run, Server};

const CLIENTS: &[&str] = &["openai==3.51.0", "ollama==0.6.3"];

#[test]
fn openai_and_ollama_python_clients() {
    let _g = serve_support::serial();
    let mut py = engine_testdata::python_with(CLIENTS, &["openai", "ollama"])
        .expect("install the openai and ollama clients");
    let s = Server::start(&["-np", "2", "--alias", "gemma-test", "--no-cache-prompt"]);
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/serve_clients.py");
    let out = py
        .arg(&script)
        .arg(s.url())
        .arg("gemma-test")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "client script failed:\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.logs()
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reference = engine_run("The capital of France is", 12);
    let expect = reference["text"].as_str().unwrap();

    assert_eq!(v["openai_models"][0], "gemma-test");
    let c = &v["openai_completion"];
    assert_eq!(c["text"], expect, "greedy completion equals engine run");
    assert_eq!(c["completion_tokens"], 12);
    assert_eq!(c["finish_reason"], "length");
    assert_eq!(
        c["prompt_tokens"],
        reference["prompt_ids"].as_array().unwrap().len()
    );
    assert_eq!(v["openai_completion_stream"]["text"], expect);
    assert_eq!(v["openai_completion_stream"]["completion_tokens"], 12);

    let chat = &v["openai_chat"];
    assert_eq!(chat["role"], "assistant");
    assert!(chat["prompt_tokens"].as_u64().unwrap() > 5);
    assert_eq!(v["openai_chat_stream"]["content"], chat["content"]);
    assert_eq!(v["openai_chat_stream"]["roles"][0], "assistant");
    assert_eq!(
        v["openai_chat_stream"]["finish_reason"],
        chat["finish_reason"]
    );
    let t = &chat["timings"];
    for k in [
        "prompt_n",
        "prompt_ms",
        "prompt_per_second",
        "predicted_n",
        "predicted_ms",
        "predicted_per_second",
    ] {
        assert!(t[k].is_number(), "timings.{k} missing: {t}");
    }

    let e = &v["openai_embeddings"];
    assert_eq!(e["n"], 2);
    assert_eq!(e["dims"], 640);
    assert!((e["norm"].as_f64().unwrap() - 1.0).abs() < 1e-3);

    let g = &v["ollama_generate"];
    assert_eq!(
        g["response"], expect,
        "raw Ollama generate equals engine run"
    );
    assert_eq!(g["done"], true);
    assert_eq!(g["done_reason"], "length");
    assert_eq!(g["eval_count"], 12);
    assert!(g["total_duration"].as_u64().unwrap() >= g["eval_duration"].as_u64().unwrap());
    assert_eq!(
        g["context_len"].as_u64().unwrap(),
        reference["prompt_ids"].as_array().unwrap().len() as u64 + 12
    );
    assert_eq!(v["ollama_generate_stream"]["response"], expect);
    assert_eq!(v["ollama_generate_stream"]["done"], true);
    assert_eq!(v["ollama_chat"]["role"], "assistant");
    assert_eq!(
        v["ollama_chat"]["content"], chat["content"],
        "same chat template and sampling"
    );
    assert_eq!(v["ollama_chat_stream"]["content"], chat["content"]);
    assert_eq!(v["ollama_list"][0], "gemma-test:latest");
    assert_eq!(v["ollama_ps"][0], "gemma-test:latest");
    assert_eq!(v["ollama_show"]["family"], "gemma3");
    assert_eq!(v["ollama_show"]["format"], "gguf");
    assert_eq!(v["ollama_show"]["architecture"], "gemma3");
    assert_eq!(v["ollama_show"]["template_has_turns"], true);
    assert_eq!(v["ollama_embed"]["dims"], 640);
    assert_eq!(v["openai_unknown_model"], "NotFoundError");
    assert_eq!(v["ollama_unknown_model"], 404);
}
