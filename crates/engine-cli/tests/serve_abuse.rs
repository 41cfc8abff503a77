//! Abuse: malformed and hostile requests each get their documented status (docs/server.md),
//! the server stays up, `/metrics` stays consistent (running returns to 0), and SIGTERM
//! shuts down cleanly with exit status 0.

mod serve_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use serve_support::Server;

const KEY: &str = "s3cret-key";

fn auth() -> [(&'static str, &'static str); 2] {
    [
        ("Authorization", "Bearer s3cret-key"),
        ("Content-Type", "application/json"),
    ]
}

fn post(s: &Server, path: &str, body: &str) -> serve_support::Resp {
    s.request("POST", path, &auth(), body.as_bytes())
}

fn assert_openai_error(r: &serve_support::Resp, status: u16, needle: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let v = r.json();
    let msg = v["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message: {v}"));
    assert!(
        msg.to_lowercase().contains(needle),
        "{msg:?} should mention {needle:?}"
    );
    assert_eq!(v["error"]["code"], status);
}

#[test]
fn hostile_requests_get_their_status_and_the_server_survives() {
    let _g = serve_support::serial();
    let s = Server::start(&[
        "-np",
        "2",
        "-c",
        "128",
        "--queue-size",
        "4",
        "--api-key",
        KEY,
        "--metrics",
        "--max-body-size",
        "1048576",
    ]);
    let chat = "/v1/chat/completions";

    // Authentication: /health is open, everything else wants the key.
    assert_eq!(s.get("/health").status, 200);
    let r = s.request("POST", chat, &[], b"{}");
    assert_openai_error(&r, 401, "api key");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let r = s.request(
        "GET",
        "/v1/models",
        &[("Authorization", "Bearer wrong")],
        b"",
    );
    assert_openai_error(&r, 401, "invalid api key");
    let r = s.request(
        "GET",
        "/api/tags",
        &[("Authorization", "Bearer wrong")],
        b"",
    );
    assert_eq!(r.status, 401);
    assert!(
        r.json()["error"].is_string(),
        "Ollama error shape: {}",
        r.text()
    );
    assert_eq!(s.request("GET", "/metrics", &[], b"").status, 401);

    // Malformed JSON and wrong types.
    assert_openai_error(&post(&s, chat, "{\"messages\": [}"), 400, "invalid json");
    assert_openai_error(&post(&s, chat, ""), 400, "empty");
    assert_openai_error(
        &post(&s, chat, "{\"messages\": \"hi\"}"),
        400,
        "invalid type",
    );
    assert_openai_error(
        &post(
            &s,
            chat,
            "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"max_tokens\": \"lots\"}",
        ),
        400,
        "invalid",
    );
    assert_openai_error(
        &post(&s, chat, "{\"messages\": [{\"content\": \"x\"}]}"),
        400,
        "role",
    );
    assert_openai_error(
        &post(&s, "/v1/completions", "{\"prompt\": {\"a\": 1}}"),
        400,
        "invalid",
    );
    assert_openai_error(
        &post(&s, "/v1/completions", "{\"prompt\": [999999999]}"),
        400,
        "vocabulary",
    );
    assert_openai_error(
        &post(
            &s,
            "/v1/completions",
            "{\"prompt\": \"x\", \"temperature\": 1, \"top_p\": 7}",
        ),
        400,
        "top_p",
    );
    let r = post(&s, "/api/generate", "{\"model\": 5}");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("invalid type"));
    let r = post(&s, "/api/chat", "[1, 2");
    assert_eq!(r.status, 400);

    // Unknown model and route.
    let unknown = json!({"model": "gpt-17", "messages": [{"role": "user", "content": "hi"}]});
    assert_openai_error(&post(&s, chat, &unknown.to_string()), 404, "not found");
    let r = post(
        &s,
        "/api/generate",
        "{\"model\": \"nope:7b\", \"prompt\": \"hi\"}",
    );
    assert_eq!(r.status, 404);
    assert_openai_error(
        &s.request("GET", "/v2/everything", &auth(), b""),
        404,
        "no route",
    );

    // A prompt past the context: 400 naming the sizes, never truncated.
    let long = "word ".repeat(100);
    let r = post(
        &s,
        "/v1/completions",
        &json!({"prompt": long, "max_tokens": 4}).to_string(),
    );
    assert_openai_error(&r, 400, "context holds 64");
    let r = post(
        &s,
        "/api/generate",
        &json!({"model": "x", "prompt": long, "raw": true}).to_string(),
    );
    assert_eq!(r.status, 404, "model is checked first");

    // max_tokens 10^9: accepted, generation ends when the context is full.
    let t0 = Instant::now();
    let r = post(
        &s,
        "/v1/completions",
        &json!({"prompt": "Once upon a time", "max_tokens": 1_000_000_000u64, "temperature": 0, "ignore_eos": true}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let used = v["usage"]["total_tokens"].as_u64().unwrap();
    assert_eq!(
        used, 64,
        "prompt plus completion fill the 64-token context exactly"
    );
    eprintln!("max_tokens 1e9 finished in {:?}", t0.elapsed());

    // A 20 MB body: 413 from the declared length, before any of it is sent.
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        c,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        20 << 20
    )
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = c.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    drop(c);
    // A body over the limit without a declared length (chunked) is refused too.
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        c,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![b' '; 64 << 10];
    let mut sent = 0;
    let mut got = Vec::new();
    while sent < (2 << 20) {
        if write!(c, "{:x}\r\n", chunk.len()).is_err()
            || c.write_all(&chunk).is_err()
            || c.write_all(b"\r\n").is_err()
        {
            break;
        }
        sent += chunk.len();
    }
    let _ = c.read_to_end(&mut got);
    let head = String::from_utf8_lossy(&got).to_string();
    assert!(
        head.is_empty() || head.starts_with("HTTP/1.1 413"),
        "{head}"
    );

    // A client that disconnects mid-stream frees its sequence.
    let aborted_before = s.metric("engine:request_success_total{finished_reason=\"abort\"}");
    let mut c = TcpStream::connect(s.addr).unwrap();
    let body = json!({"prompt": "Tell me a long story.", "max_tokens": 100, "stream": true, "ignore_eos": true}).to_string();
    write!(
        c,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut seen = String::new();
    let t0 = Instant::now();
    while !seen.contains("data: {") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        assert!(t0.elapsed() < Duration::from_secs(60));
    }
    drop(c);
    // (the gauges are published after each step, so wait for the abort itself rather than
    // for `running` to read 0, which it may still do from before this request started)
    let t0 = Instant::now();
    while s.metric("engine:request_success_total{finished_reason=\"abort\"}") < aborted_before + 1.0
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the sequence was not freed promptly"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    s.wait_idle();
    assert_eq!(
        s.metric("engine:request_success_total{finished_reason=\"abort\"}"),
        aborted_before + 1.0
    );

    // 300 requests at once: 2 slots + 4 queued are admitted; the rest get 503 + Retry-After.
    let results: Vec<(u16, Option<String>)> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..300)
            .map(|i| {
                let s = &s;
                sc.spawn(move || {
                    let body = json!({"prompt": format!("Count to {i}:"), "max_tokens": 2, "temperature": 0});
                    let r = s.request("POST", "/v1/completions", &auth(), body.to_string().as_bytes());
                    (r.status, r.header("retry-after").map(str::to_string))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let busy: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    assert_eq!(
        ok + busy.len(),
        300,
        "only 200 or 503 expected: {results:?}"
    );
    assert!(
        ok >= 6,
        "at least parallel + queue requests succeed, got {ok}"
    );
    assert!(
        !busy.is_empty(),
        "the bounded queue must refuse some of 300"
    );
    assert!(
        busy.iter().all(|r| r.1.as_deref() == Some("2")),
        "503 without Retry-After"
    );
    s.wait_idle();
    assert_eq!(
        s.metric("engine:requests_rejected_total"),
        busy.len() as f64,
        "rejections counted"
    );

    // Metrics are consistent and the server still serves.
    let m = s.metrics();
    let get = |k: &str| {
        m.iter()
            .find(|(n, _)| n == k)
            .map(|x| x.1)
            .unwrap_or(f64::NAN)
    };
    assert_eq!(get("engine:num_requests_running"), 0.0);
    assert_eq!(get("engine:num_requests_waiting"), 0.0);
    assert_eq!(get("engine:kv_cache_usage_ratio"), 0.0);
    let finished: f64 = ["stop", "length", "abort", "error"]
        .iter()
        .map(|r| {
            get(&format!(
                "engine:request_success_total{{finished_reason=\"{r}\"}}"
            ))
        })
        .sum();
    // Generations admitted: 1 (max_tokens) + 1 (disconnect) + the 300-burst successes.
    assert_eq!(
        finished,
        (2 + ok) as f64,
        "every admitted generation is counted once"
    );
    assert_eq!(
        get("engine:e2e_request_latency_seconds_count"),
        (1 + ok) as f64
    );
    assert!(get("engine:generation_tokens_total") >= (50 + ok) as f64);
    let r = post(
        &s,
        "/v1/completions",
        &json!({"prompt": "Hello", "max_tokens": 3}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!s.logs().contains("panicked"), "{}", s.logs());
}

#[test]
fn sigterm_finishes_running_streams_and_exits_zero() {
    let _g = serve_support::serial();
    let mut s = Server::start(&["-np", "2", "--shutdown-timeout", "20"]);
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body =
        json!({"prompt": "Once upon a time", "max_tokens": 24, "stream": true, "ignore_eos": true})
            .to_string();
    write!(
        c,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("data: {") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
    }
    let pid = s.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // The running stream completes normally.
    c.read_to_end(&mut seen).unwrap();
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("\"finish_reason\":\"length\""), "{text}");
    assert!(text.contains("data: [DONE]"));
    // New connections are refused or answered 503 while draining; then the process exits 0.
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "did not exit: {}",
            s.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "{}", s.logs());
    assert!(s.logs().contains("shutting down"));
}
