//! A Hailo-10H model behind `engine serve`, contract-tested against the fake shim (no Hailo
//! device exists here): `engine pull` of a model-zoo GenAI manifest, then both APIs
//! streaming and not, stop strings, limits, sampling defaults and refusals, usage from the
//! device's tokenizer, context reuse, fair queueing, abort on disconnect, read timeouts,
//! device errors and crashes answered cleanly with the server alive, the temperature and
//! speed in `/metrics`, and a missing or mismatched shim refused with its reason.

mod serve_support;

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use serve_support::Server;
use sha2::{Digest, Sha256};

const MODEL: &str = "qwen2.5-instruct:1.5b";
const TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

struct Fixture {
    dir: PathBuf,
    store: PathBuf,
    shim: PathBuf,
    _files: engine_testdata::http::FileServer,
}

impl Fixture {
    /// A store with the Hailo model pulled from a local file server.
    fn new(name: &str) -> Fixture {
        let dir =
            std::env::temp_dir().join(format!("engine-serve-hailo-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = dir.join("store");
        std::fs::create_dir_all(&store).unwrap();
        let hef = b"HEF: a stand-in for a compiled Qwen2.5-1.5B".to_vec();
        let sha: String = Sha256::digest(&hef)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let files = engine_testdata::http::FileServer::start();
        files.add(&format!("/lib/qwen2.5-instruct/1.5b/sha256_{sha}"), hef);
        let manifest = json!({
            "hef_h10h": sha,
            "template_params": {"bos_token": "", "eos_token": "<|endoftext|>", "chat_template": TEMPLATE},
            "generation_params": {"stop_tokens": ["<|im_end|>", "<|endoftext|>"], "repetition_penalty": 1.1,
                "temperature": 0.7, "top_p": 0.8, "top_k": 20},
            "license": null, "system_prompt": null,
            "details": {"family": "qwen2.5", "parameter_size": "1.5B", "quantization_level": "Q4_0"}
        });
        files.add_json("/lib/qwen2.5-instruct/1.5b/manifest.json", &manifest);
        let out = Command::new(env!("CARGO_BIN_EXE_engine"))
            .args([
                "pull",
                &files.url("/lib/qwen2.5-instruct/1.5b/manifest.json"),
            ])
            .env("ENGINE_MODELS", &store)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pull: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let m: Value = serde_json::from_slice(
            &std::fs::read(store.join("qwen2.5-instruct_1.5b").join("manifest.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(m["device"]["device"], "hailo");
        assert_eq!(m["sha256"], json!(sha));
        Fixture {
            dir,
            store,
            shim: engine_testdata::hailo_fake_shim().expect("fake shim"),
            _files: files,
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.join("calls.log")
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.log())
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn serve(&self, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let shim = self.shim.display().to_string();
        let mut args = vec!["-m", MODEL, "--metrics", "--hailo-shim", &shim];
        args.extend_from_slice(extra);
        let log = self.log();
        let mut e: Vec<(&str, &OsStr)> = vec![
            ("ENGINE_MODELS", self.store.as_os_str()),
            ("ENGINE_HAILO_FAKE_LOG", log.as_os_str()),
        ];
        e.extend(env.iter().map(|(k, v)| (*k, OsStr::new(*v))));
        Server::start_with(&args, &e)
    }
}

fn chat(s: &Server, content: &str, extra: Value) -> serve_support::Resp {
    let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": content}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    s.post("/v1/chat/completions", &body)
}

fn content(r: &serve_support::Resp) -> String {
    let v = r.json();
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The fake's token count (words with their leading space, marks, special tokens).
fn fake_tokens(s: &str) -> usize {
    engine_hailo_fake::tokens(s).len()
}

fn metric_with(s: &Server, prefix: &str) -> f64 {
    s.metrics()
        .into_iter()
        .find(|(k, _)| k.starts_with(prefix))
        .unwrap_or_else(|| panic!("no metric {prefix}"))
        .1
}

#[test]
fn a_pulled_hef_model_serves_both_apis() {
    let _g = serve_support::serial();
    let f = Fixture::new("apis");
    let s = f.serve(&[], &[]);

    // OpenAI chat, not streamed: the manifest's template and sampling defaults reach the
    // device, usage comes from the device's tokenizer
    let r = chat(&s, "Hi there", json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let text = content(&r);
    let prompt = "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n";
    let head = format!(
        "Fake NPU: wrote {} onto 0; temperature 0.70, top_k 20.",
        fake_tokens(prompt)
    );
    assert!(text.starts_with(&head), "{text}");
    assert!(!text.contains("<|im_end|>"));
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], json!(fake_tokens(prompt)));
    assert_eq!(v["usage"]["completion_tokens"], json!(fake_tokens(&text)));
    assert_eq!(v["model"], MODEL);

    // request sampling settings win
    let r = chat(
        &s,
        "Hi there",
        json!({"temperature": 0.2, "top_k": 5, "seed": 3}),
    );
    assert!(
        content(&r).contains("temperature 0.20, top_k 5."),
        "{}",
        r.text()
    );

    // streamed: the chunks add up to the same text
    let r = chat(
        &s,
        "Hi there",
        json!({"stream": true, "stream_options": {"include_usage": true}}),
    );
    assert_eq!(r.status, 200);
    let (frames, done) = r.sse();
    assert!(done);
    let streamed: String = frames
        .iter()
        .filter_map(|f| f["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, text);
    assert!(frames.len() > 10, "{} frames", frames.len());
    assert!(
        frames.last().unwrap()["usage"]["completion_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );

    // completions: a token limit and a stop string
    let r = s.post(
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "Count", "max_tokens": 6}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["choices"][0]["text"], "Fake NPU: wrote 1 onto");
    let r = s.post(
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "Count", "stop": [" four"], "stream": true}),
    );
    let (frames, done) = r.sse();
    assert!(done);
    let t: String = frames
        .iter()
        .filter_map(|f| f["choices"][0]["text"].as_str())
        .collect();
    assert!(t.ends_with(" one two three"), "{t}");
    assert_eq!(
        frames.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );

    // Ollama: generate and chat, streamed (NDJSON) and not
    let r = s.post(
        "/api/generate",
        &json!({"model": MODEL, "prompt": "Hi there", "stream": false}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["response"].as_str().unwrap(), text);
    assert_eq!(v["done_reason"], "stop");
    assert!(v["eval_count"].as_u64().unwrap() > 0);
    assert!(
        v.get("context").is_none(),
        "a device model has no token ids to give"
    );
    let r = s.post(
        "/api/chat",
        &json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi there"}]}),
    );
    assert_eq!(r.status, 200);
    let lines: Vec<Value> = r
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let joined: String = lines
        .iter()
        .filter_map(|l| l["message"]["content"].as_str())
        .collect();
    assert_eq!(joined, text);
    assert_eq!(lines.last().unwrap()["done"], true);
    let r = s.post(
        "/api/generate",
        &json!({"model": MODEL, "prompt": "raw text", "raw": true, "options": {"num_predict": 3}}),
    );
    let lines: Vec<Value> = r
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.last().unwrap()["done_reason"], "length");

    // what a text device cannot do: a clear 400 naming it, and the server goes on
    for (body, what) in [
        (json!({"logprobs": true}), "logprobs"),
        (json!({"min_p": 0.2}), "min_p"),
        (json!({"repeat_penalty": 1.3}), "repeat_penalty"),
        (
            json!({"response_format": {"type": "json_object"}}),
            "JSON mode",
        ),
    ] {
        let r = chat(&s, "Hi", body.clone());
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.text().contains(what), "{}", r.text());
    }
    let r = s.post("/v1/embeddings", &json!({"model": MODEL, "input": "x"}));
    assert_eq!(r.status, 400, "{}", r.text());
    let r = s.post(
        "/api/generate",
        &json!({"model": MODEL, "prompt": "x", "context": [1, 2]}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = s.post(
        "/v1/completions",
        &json!({"model": MODEL, "prompt": [1, 2, 3]}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    // a prompt larger than the device's context
    let r = chat(&s, &"word ".repeat(3000), json!({}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("context holds 2048"), "{}", r.text());

    // the next turn of a conversation is written onto the kept device context
    let first = chat(&s, "Tell me more", json!({}));
    let answer = content(&first);
    let body = json!({"model": MODEL, "messages": [
        {"role": "user", "content": "Tell me more"},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And then?"}]});
    let r = s.post("/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let cached = v["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(cached > 0, "{v}");
    let gens: Vec<String> = f
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("generate"))
        .collect();
    let last = gens.last().unwrap();
    let delta = "\n<|im_start|>user\nAnd then?<|im_end|>\n<|im_start|>assistant\n";
    let wrote = format!("wrote={} ", fake_tokens(delta));
    assert!(
        last.contains(&wrote) && !last.ends_with("ctx=0"),
        "{gens:?}"
    );

    // temperature, speed and health of the device in /metrics
    let labels = format!("{{model=\"{MODEL}\",device=\"hailo\"}}");
    assert_eq!(
        s.metric(&format!("engine:device_temperature_celsius{labels}")),
        47.5
    );
    assert_eq!(s.metric(&format!("engine:device_up{labels}")), 1.0);
    assert!(s.metric(&format!("engine:device_tokens_per_second{labels}")) > 0.0);
    assert!(s.metric(&format!("engine:device_generated_tokens_total{labels}")) > 100.0);
    assert!(
        s.metric(&format!(
            "engine:device_context_reused_tokens_total{labels}"
        )) > 0.0
    );
    // listed like any model
    let r = s.get("/v1/models");
    assert!(r.text().contains("\"device\":\"hailo\""), "{}", r.text());
    let r = s.get("/api/tags");
    assert!(r.text().contains("qwen2.5"), "{}", r.text());
}

/// Starts a streamed chat on a raw connection and returns it after the headers.
fn open_stream(s: &Server, content: &str) -> std::net::TcpStream {
    let body =
        json!({"model": MODEL, "stream": true, "messages": [{"role": "user", "content": content}]})
            .to_string();
    let mut c = std::net::TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        c,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    c
}

#[test]
fn queueing_disconnects_timeouts_and_failures() {
    let _g = serve_support::serial();
    let f = Fixture::new("faults");
    let s = f.serve(
        &["--device-timeout", "1"],
        &[("ENGINE_HAILO_FAKE_DELAY_MS", "15")],
    );
    let labels = format!("{{model=\"{MODEL}\",device=\"hailo\"}}");

    // concurrent requests run one at a time, in arrival order
    let mut handles = Vec::new();
    for i in 0..3 {
        let url_addr = s.addr;
        handles.push(std::thread::spawn(move || {
            let body = json!({"model": MODEL, "stream": true, "messages": [{"role": "user", "content": format!("request {i}")}]}).to_string();
            let mut c = std::net::TcpStream::connect(url_addr).unwrap();
            write!(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
            let mut buf = [0u8; 4096];
            let (mut first, mut all) = (None, Vec::new());
            loop {
                let n = c.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                all.extend_from_slice(&buf[..n]);
                if first.is_none() && String::from_utf8_lossy(&all).contains("\"content\":\"Fake\"") {
                    first = Some(Instant::now());
                }
            }
            (first.unwrap(), Instant::now(), String::from_utf8_lossy(&all).into_owned())
        }));
        std::thread::sleep(Duration::from_millis(120));
    }
    let runs: Vec<(Instant, Instant, String)> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    for w in runs.windows(2) {
        assert!(
            w[0].1 <= w[1].0 + Duration::from_millis(50),
            "generations overlapped"
        );
        assert!(w[0].0 < w[1].0, "a later request overtook an earlier one");
    }
    for r in &runs {
        assert!(r.2.contains("[DONE]"), "{}", r.2);
    }
    let gens = f
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("generate"))
        .count();
    assert_eq!(gens, 3);

    // a client that hangs up mid-stream aborts the device's generation
    let mut c = open_stream(&s, "[fake:long] keep talking");
    let mut buf = [0u8; 2048];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains(" two") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    drop(c);
    let t0 = Instant::now();
    while !f.calls().iter().any(|l| l.starts_with("abort")) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no abort: {:?}",
            f.calls()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let aborted_after: usize = f
        .calls()
        .iter()
        .find_map(|l| {
            l.strip_prefix("abort after=")?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap();
    assert!(
        aborted_after < 100,
        "aborted after {aborted_after} of 400 pieces"
    );
    s.wait_idle();
    assert_eq!(
        s.metric(&format!("engine:device_aborts_total{labels}")),
        1.0
    );

    // no text within --device-timeout: 504, and the device goes on
    let t0 = Instant::now();
    let r = chat(&s, "[fake:stall]", json!({}));
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.text().contains("no text for 1.0s"), "{}", r.text());
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(chat(&s, "fine", json!({})).status, 200);
    // streamed, the error arrives as a final frame
    let r = chat(&s, "[fake:stall]", json!({"stream": true}));
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("timed out") && r.text().contains("[DONE]"),
        "{}",
        r.text()
    );

    // a device error: 500 with HailoRT's message
    let r = chat(&s, "[fake:error]", json!({}));
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("HAILO_INTERNAL_FAILURE"), "{}", r.text());
    assert_eq!(chat(&s, "fine", json!({})).status, 200);

    // the shim crashes: a clean 500, the server lives, the device is opened again
    let r = chat(&s, "[fake:crash]", json!({}));
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("killed by signal"), "{}", r.text());
    assert_eq!(s.metric(&format!("engine:device_up{labels}")), 0.0);
    let r = chat(&s, "fine again", json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        s.metric(&format!("engine:device_restarts_total{labels}")),
        1.0
    );
    assert_eq!(s.metric(&format!("engine:device_up{labels}")), 1.0);
    // ... and mid-stream
    let r = chat(&s, "[fake:crash-read]", json!({"stream": true}));
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("killed by signal") && r.text().contains("[DONE]"),
        "{}",
        r.text()
    );
    let r = s.post(
        "/api/chat",
        &json!({"model": MODEL, "messages": [{"role": "user", "content": "[fake:crash-read]"}]}),
    );
    assert!(
        r.text().lines().last().unwrap().contains("\"error\""),
        "{}",
        r.text()
    );
    assert_eq!(chat(&s, "still here", json!({})).status, 200);
    assert!(metric_with(&s, "engine:device_failures_total") >= 5.0);
}

#[test]
fn a_missing_or_mismatched_shim_is_refused_with_its_reason() {
    let _g = serve_support::serial();
    let f = Fixture::new("refuse");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_engine"));
        c.args(["serve", "--port", "0", "-m", MODEL]).args(args);
        c.env("ENGINE_MODELS", &f.store);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(
        &["--hailo-shim", "/nonexistent/libengine_hailo_shim.so"],
        &[],
    );
    assert!(e.contains("cannot load the Hailo shim /nonexistent"), "{e}");
    let shim = f.shim.display().to_string();
    let e = run(&["--hailo-shim", &shim], &[("ENGINE_HAILO_FAKE_ABI", "7")]);
    assert!(
        e.contains("ABI version 7") && e.contains("build-hailo-shim"),
        "{e}"
    );
    let e = run(
        &["--hailo-shim", &shim],
        &[("ENGINE_HAILO_FAKE_NO_DEVICE", "1")],
    );
    assert!(e.contains("no Hailo device found"), "{e}");
    assert!(!e.contains("panicked"), "{e}");

    // serving the whole store, the model loads on demand: a 503 with the reason, and the
    // server goes on
    let s = Server::start_with(
        &["--hailo-shim", "/nonexistent/libengine_hailo_shim.so"],
        &[("ENGINE_MODELS", f.store.as_os_str())],
    );
    let r = chat(&s, "Hi", json!({}));
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.text().contains("cannot load the Hailo shim"),
        "{}",
        r.text()
    );
    assert_eq!(s.get("/health").status, 200);
    let _ = Path::new(&f.dir);
}
