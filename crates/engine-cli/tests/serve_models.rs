//! Many models on one `engine serve`: hot-swapping two real models under a memory budget
//! that fits one (swaps in `/api/ps` and the metrics, identical outputs after every reload,
//! resident memory flat over 20 swaps), a Modelfile SYSTEM prompt changing greedy chat
//! output, a model over the budget refused with its sizes, and keep-alive, shared loads and
//! the load/unload routes on tiny models.

mod serve_support;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use serve_support::Server;

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("engine-serve-models-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn models_file(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("models.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn ps_names(s: &Server) -> Vec<String> {
    let r = s.get("/api/ps");
    assert_eq!(r.status, 200, "{}", r.text());
    let mut v: Vec<String> = r.json()["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(30), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn complete(s: &Server, model: &str, extra: Value) -> Value {
    let mut body = json!({"model": model, "prompt": "The capital of France is", "max_tokens": 3, "temperature": 0});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let r = s.post("/v1/completions", &body);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.logs());
    r.json()
}

#[test]
fn two_models_swap_under_a_budget_that_fits_one() {
    let _g = serve_support::serial();
    let a = engine_testdata::gemma3_model().unwrap();
    let b = engine_testdata::requantized_gemma3(engine_core::DType::Q4_0).unwrap();
    let dir = tmp_dir("swap");
    let store = dir.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let file = models_file(
        &dir,
        &format!(
            "[models.gemma-q4km]\npath = {:?}\n\n[models.\"gemma-q4_0\"]\npath = {:?}\n",
            a.display().to_string(),
            b.display().to_string()
        ),
    );
    let f = file.to_str().unwrap().to_string();
    let env: [(&str, &OsStr); 1] = [("ENGINE_MODELS", store.as_os_str())];
    let base = ["--models", &f, "-np", "1", "-c", "512", "--metrics"];
    // What each needs, as the server estimates it.
    let (mem_a, mem_b) = {
        let mut args = base.to_vec();
        args.extend(["--max-memory", "64g"]);
        let s = Server::start_with(&args, &env);
        let load = |m: &str| {
            let r = s.post("/models/load", &json!({"model": m}));
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()["memory"].as_u64().unwrap()
        };
        (load("gemma-q4km"), load("gemma-q4_0"))
    };
    // Room for the larger one and half the smaller: never both.
    let budget = mem_a.max(mem_b) + mem_a.min(mem_b) / 2;
    eprintln!("estimates: {mem_a} and {mem_b} bytes; budget {budget}");
    let budget_s = budget.to_string();
    let mut args = base.to_vec();
    args.extend(["--max-memory", &budget_s]);
    let s = Server::start_with(&args, &env);
    assert!(ps_names(&s).is_empty(), "models load on demand");
    let mut outputs: HashMap<&str, String> = HashMap::new();
    let (mut rss_2, mut rss_20) = (0, 0);
    let t0 = Instant::now();
    for i in 0..21 {
        let m = if i % 2 == 0 {
            "gemma-q4km"
        } else {
            "gemma-q4_0"
        };
        let v = complete(&s, m, json!({}));
        assert_eq!(v["model"], m);
        let text = v["choices"][0]["text"].as_str().unwrap().to_string();
        // a reloaded model computes exactly what it computed before
        let first = outputs.entry(m).or_insert_with(|| text.clone());
        assert_eq!(*first, text, "{m} after {i} swaps");
        // only the model just used is loaded
        assert_eq!(
            ps_names(&s),
            vec![format!("{m}:latest")],
            "after request {i}"
        );
        if i == 2 {
            rss_2 = s.rss();
        }
        if i == 20 {
            rss_20 = s.rss();
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "21 requests, 20 swaps in {secs:.1}s; RSS after 2 swaps {:.1} MiB, after 20 swaps {:.1} MiB ({:+.1}%)",
        rss_2 as f64 / 1048576.0,
        rss_20 as f64 / 1048576.0,
        (rss_20 as f64 / rss_2 as f64 - 1.0) * 100.0
    );
    assert!(
        rss_20 as f64 <= rss_2 as f64 * 1.10,
        "resident memory grew from {rss_2} to {rss_20} bytes over 18 swaps"
    );
    let metric = |n: &str| s.metric(n);
    // the scheduler counts a request just after its last token goes out
    wait_for("the last request to be counted", || {
        metric("engine:request_success_total{finished_reason=\"length\"}") == 21.0
    });
    eprintln!(
        "mean load (estimate, eviction, load, scheduler start): {:.3}s",
        metric("engine:model_load_duration_seconds_sum")
            / metric("engine:model_load_duration_seconds_count")
    );
    assert_eq!(metric("engine:model_loads_total"), 21.0);
    assert_eq!(metric("engine:model_evictions_total"), 20.0);
    assert_eq!(metric("engine:model_unloads_total"), 20.0);
    assert_eq!(metric("engine:model_load_failures_total"), 0.0);
    assert_eq!(metric("engine:model_load_duration_seconds_count"), 21.0);
    assert_eq!(metric("engine:models_loaded"), 1.0);
    assert_eq!(metric("engine:models_memory_bytes"), mem_a as f64);
    assert_eq!(metric("engine:memory_budget_bytes"), budget as f64);
    assert!(metric("engine:models_memory_bytes") <= metric("engine:memory_budget_bytes"));
    // request counters survive the unloads of the models that served them
    assert_eq!(
        metric("engine:request_success_total{finished_reason=\"length\"}"),
        21.0
    );
    assert_eq!(metric("engine:generation_tokens_total"), 63.0);
    s.wait_idle();
    std::fs::remove_dir_all(&dir).unwrap();
}

fn create(store: &Path, dir: &Path, name: &str, modelfile: &str) {
    let mf = dir.join(format!("{name}.Modelfile"));
    std::fs::write(&mf, modelfile).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_engine"))
        .env("ENGINE_MODELS", store)
        .args(["create", name, "-f"])
        .arg(&mf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn chat(s: &Server, model: &str, messages: Value, extra: Value) -> String {
    let mut body = json!({"model": model, "messages": messages, "max_tokens": 16});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let r = s.post("/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_modelfile_system_prompt_changes_the_greedy_chat() {
    let _g = serve_support::serial();
    let dir = tmp_dir("system");
    let store = dir.join("store");
    let gguf = engine_testdata::gemma3_model().unwrap();
    // the default model imported into a store, then the seeds' workflow over it
    create(&store, &dir, "base", &format!("FROM {}\n", gguf.display()));
    let system = "Your name is Elroy. You were made by Acme Robotics.";
    create(
        &store,
        &dir,
        "base-elroy",
        &format!(
            "FROM base\nPARAMETER num_ctx 1024\nPARAMETER temperature 0\nSYSTEM \"\"\"{system}\"\"\"\n"
        ),
    );
    let env: [(&str, &OsStr); 1] = [("ENGINE_MODELS", store.as_os_str())];
    let s = Server::start_with(&["-np", "1", "-c", "1024", "--metrics"], &env);
    let q = json!([{"role": "user", "content": "What is your name?"}]);
    // greedy through the preset: no system message and no temperature in the request
    let with_preset = chat(&s, "base-elroy", q.clone(), json!({}));
    // the same as the base model given that system prompt by the client
    let explicit = chat(
        &s,
        "base",
        json!([{"role": "system", "content": system}, {"role": "user", "content": "What is your name?"}]),
        json!({"temperature": 0}),
    );
    let without = chat(&s, "base", q.clone(), json!({"temperature": 0}));
    eprintln!("preset: {with_preset:?}\nexplicit: {explicit:?}\nwithout: {without:?}");
    assert_eq!(with_preset, explicit);
    assert_ne!(with_preset, without);
    assert!(with_preset.contains("Elroy"), "{with_preset}");
    assert!(!without.contains("Elroy"), "{without}");
    // a client's own system message replaces the preset's
    let own = chat(
        &s,
        "base-elroy",
        json!([{"role": "system", "content": "Your name is Max."}, {"role": "user", "content": "What is your name?"}]),
        json!({}),
    );
    assert!(own.contains("Max") && !own.contains("Elroy"), "{own}");
    // Ollama's chat and generate apply it too; generate's `system` replaces it
    let r = s.post(
        "/api/chat",
        &json!({"model": "base-elroy", "messages": q, "stream": false, "options": {"num_predict": 16}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["message"]["content"], with_preset);
    let r = s.post(
        "/api/generate",
        &json!({"model": "base-elroy", "prompt": "What is your name?", "stream": false, "options": {"num_predict": 16}}),
    );
    assert_eq!(r.json()["response"], with_preset);
    let r = s.post(
        "/api/generate",
        &json!({"model": "base-elroy", "prompt": "What is your name?", "system": "Your name is Max.", "stream": false, "options": {"num_predict": 16}}),
    );
    let max = r.json()["response"].as_str().unwrap().to_string();
    assert!(max.contains("Max") && !max.contains("Elroy"), "{max}");
    // /api/show reports the preset, /api/tags lists both
    let r = s.post("/api/show", &json!({"model": "base-elroy"}));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["system"], system);
    assert!(v["modelfile"].as_str().unwrap().contains("SYSTEM"), "{v}");
    assert!(
        v["parameters"].as_str().unwrap().contains("temperature 0"),
        "{v}"
    );
    assert!(
        v["parameters"].as_str().unwrap().contains("num_ctx 1024"),
        "{v}"
    );
    let tags: Vec<String> = s.get("/api/tags").json()["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(tags, vec!["base:latest", "base-elroy:latest"]);
    // the preset's context is its own: 1024 per sequence
    let ps = s.get("/api/ps").json();
    let elroy = ps["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "base-elroy:latest")
        .unwrap()
        .clone();
    assert_eq!(elroy["context_length"], 1024);
    drop(s);
    // `engine serve -m PRESET` serves the one preset with its settings, llama-server style
    let s = Server::start_with(&["-m", "base-elroy", "-np", "1"], &env);
    assert_eq!(chat(&s, "base-elroy", q.clone(), json!({})), with_preset);
    assert_eq!(s.get("/api/ps").json()["models"][0]["context_length"], 1024);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_model_over_the_budget_is_refused_with_the_sizes() {
    let _g = serve_support::serial();
    let dir = tmp_dir("budget");
    let store = dir.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let gguf = engine_testdata::gemma3_model().unwrap();
    let file = models_file(
        &dir,
        &format!("[models.gemma]\npath = {:?}\n", gguf.display().to_string()),
    );
    let env: [(&str, &OsStr); 1] = [("ENGINE_MODELS", store.as_os_str())];
    let s = Server::start_with(
        &[
            "--models",
            file.to_str().unwrap(),
            "--max-memory",
            "100m",
            "--metrics",
        ],
        &env,
    );
    let check = |msg: &str, name: &str| {
        assert!(msg.contains(&format!("model '{name}' needs")), "{msg}");
        for needle in [
            "weights",
            "KV cache",
            "compute buffers",
            "memory budget of 100.0 MiB",
        ] {
            assert!(msg.contains(needle), "{needle:?} missing from {msg:?}");
        }
    };
    let r = s.post(
        "/v1/chat/completions",
        &json!({"model": "gemma", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(r.status, 507, "{}", r.text());
    check(r.json()["error"]["message"].as_str().unwrap(), "gemma");
    let r = s.post(
        "/api/generate",
        &json!({"model": "gemma", "prompt": "hi", "stream": false}),
    );
    assert_eq!(r.status, 507, "{}", r.text());
    check(r.json()["error"].as_str().unwrap(), "gemma");
    // refused before anything was allocated; the server carries on
    assert_eq!(s.get("/health").status, 200);
    assert!(ps_names(&s).is_empty());
    assert_eq!(s.metric("engine:model_load_failures_total"), 2.0);
    assert_eq!(s.metric("engine:model_loads_total"), 0.0);
    assert_eq!(s.metric("engine:models_memory_bytes"), 0.0);
    drop(s);
    // with -m the server does not start
    let out = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["serve", "-m"])
        .arg(&gguf)
        .args(["--port", "0", "--max-memory", "100m"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or("");
    check(line, "gemma-3-270m-q4_k_m");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn keep_alive_shared_loads_and_load_unload_routes() {
    let _g = serve_support::serial();
    let dir = tmp_dir("keepalive");
    let store = dir.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let fx = engine_testdata::fixtures_dir().join("arch/llama");
    // a third model comes from a URL: pulled into the store when the server starts
    let http = engine_testdata::http::FileServer::start();
    let f32 = std::fs::read(fx.join("llama-F32.gguf")).unwrap();
    let digest: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&f32)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    http.add("/llama-F32.gguf", f32);
    let file = models_file(
        &dir,
        &format!(
            "[models.tiny]\npath = {:?}\naliases = [\"tiny:q8\"]\n\n[models.\"tiny-q4\"]\npath = {:?}\n\n[models.tiny-url]\nsource = {:?}\nsha256 = {:?}\n",
            fx.join("llama-Q8_0.gguf").display().to_string(),
            fx.join("llama-Q4_0.gguf").display().to_string(),
            http.url("/llama-F32.gguf"),
            digest
        ),
    );
    let env: [(&str, &OsStr); 1] = [("ENGINE_MODELS", store.as_os_str())];
    let s = Server::start_with(
        &[
            "--models",
            file.to_str().unwrap(),
            "--metrics",
            "--keep-alive",
            "10m",
            "-np",
            "2",
            "-c",
            "256",
        ],
        &env,
    );
    let loads = |s: &Server| s.metric("engine:model_loads_total");
    let statuses = |s: &Server| -> HashMap<String, String> {
        s.get("/v1/models").json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["id"].as_str().unwrap().to_string(),
                    m["status"]["value"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(statuses(&s)["tiny"], "unloaded");
    assert!(ps_names(&s).is_empty());
    assert_eq!(statuses(&s)["tiny-url"], "unloaded");
    assert!(store.join("tiny-url/llama-F32.gguf").is_file());
    assert_eq!(http.requests("/llama-F32.gguf").len(), 1);
    complete(&s, "tiny-url", json!({"keep_alive": 0}));
    wait_for("tiny-url to unload", || ps_names(&s).is_empty());
    let first_loads = loads(&s);

    // Concurrent first requests (one by an alias) share one load.
    let texts: Vec<String> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|i| {
                let s = &s;
                sc.spawn(move || {
                    let name = if i % 2 == 0 { "tiny" } else { "tiny:q8" };
                    let v = complete(s, name, json!({}));
                    assert_eq!(v["model"], "tiny");
                    v["choices"][0]["text"].as_str().unwrap().to_string()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(texts.windows(2).all(|w| w[0] == w[1]), "{texts:?}");
    assert_eq!(loads(&s), first_loads + 1.0);
    assert_eq!(ps_names(&s), vec!["tiny:latest"]);
    assert_eq!(statuses(&s)["tiny"], "loaded");
    assert_eq!(statuses(&s)["tiny-q4"], "unloaded");
    // a loaded model's expiry is the keep-alive after its last request
    let ps = s.get("/api/ps").json();
    let exp = ps["models"][0]["expires_at"].as_str().unwrap().to_string();
    assert!(exp.starts_with("20") && !exp.starts_with("2318"), "{exp}");

    // A request's keep_alive replaces the model's: 1s, then it unloads by itself.
    complete(&s, "tiny-q4", json!({"keep_alive": "1s"}));
    assert_eq!(ps_names(&s), vec!["tiny-q4:latest", "tiny:latest"]);
    let unloads = s.metric("engine:model_unloads_total");
    wait_for("tiny-q4 to expire", || {
        ps_names(&s) == vec!["tiny:latest".to_string()]
    });
    assert_eq!(s.metric("engine:model_unloads_total"), unloads + 1.0);
    assert_eq!(s.metric("engine:model_evictions_total"), 0.0);

    // Ollama's way: an empty generate loads (keep_alive -1: never expires) ...
    let r = s.post(
        "/api/generate",
        &json!({"model": "tiny-q4", "keep_alive": -1}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["done_reason"], "load");
    let ps = s.get("/api/ps").json();
    let q4 = ps["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "tiny-q4:latest")
        .unwrap()
        .clone();
    assert!(
        q4["expires_at"].as_str().unwrap().starts_with("2318"),
        "{q4}"
    );
    // ... and keep_alive 0 unloads, at once when idle
    let r = s.post(
        "/api/chat",
        &json!({"model": "tiny-q4", "messages": [], "keep_alive": 0}),
    );
    assert_eq!(r.json()["done_reason"], "unload", "{}", r.text());
    assert_eq!(ps_names(&s), vec!["tiny:latest"]);
    // a generation with keep_alive 0 unloads its model when it is done
    complete(&s, "tiny-q4", json!({"keep_alive": 0}));
    wait_for("tiny-q4 to unload after its request", || {
        ps_names(&s) == vec!["tiny:latest".to_string()]
    });

    // The explicit routes.
    let r = s.post("/models/load", &json!({"model": "tiny-q4"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["memory"].as_u64().unwrap() > 0);
    assert_eq!(ps_names(&s), vec!["tiny-q4:latest", "tiny:latest"]);
    let r = s.post("/models/unload", &json!({"model": "tiny-q4"}));
    assert_eq!(r.json()["status"], "unloaded", "{}", r.text());
    assert_eq!(ps_names(&s), vec!["tiny:latest"]);
    let r = s.post("/unload", &json!({}));
    assert_eq!(r.json()["unloaded"], json!(["tiny"]), "{}", r.text());
    assert!(ps_names(&s).is_empty());

    // Names: unknown ones get 404 with the served names, none at all 400, bad keep_alive 400.
    let r = s.post("/v1/completions", &json!({"model": "gpt-9", "prompt": "x"}));
    assert_eq!(r.status, 404);
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("'tiny'") && msg.contains("'tiny-q4'") && msg.contains("'tiny-url'"),
        "{msg}"
    );
    let r = s.post("/v1/completions", &json!({"prompt": "x"}));
    assert_eq!(r.status, 400);
    assert!(r.text().contains("several models"), "{}", r.text());
    let r = s.post(
        "/v1/completions",
        &json!({"model": "tiny", "prompt": "x", "keep_alive": "soon"}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = s.post("/models/unload", &json!({"model": "nope"}));
    assert_eq!(r.status, 404);
    // Loads and load times are counted together.
    assert_eq!(
        s.metric("engine:model_load_duration_seconds_count"),
        loads(&s)
    );
    assert_eq!(s.metric("engine:models_loaded"), 0.0);
    assert_eq!(s.metric("engine:models_memory_bytes"), 0.0);
    s.wait_idle();
    std::fs::remove_dir_all(&dir).unwrap();
}
