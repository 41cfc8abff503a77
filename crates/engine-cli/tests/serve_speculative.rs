//! Speculative decoding through `engine serve`, for every drafter kind:
//!
//! * greedy outputs for the 12 prompts of the Gemma 3 greedy fixtures, sent concurrently
//!   (4 slots, so verification rows share batches with other sequences' rows), equal plain
//!   greedy decoding with `--spec-type ngram`, with `--model-draft` and with
//!   `--draft-remote` (a second `engine serve` on loopback drafting with the first 12 of
//!   the model's 18 blocks, behind an API key), and the per-kind counters move;
//! * the remote protocol's refusals: no key (401), an unknown version (400), a session the
//!   drafter does not hold (409), bounds (400);
//! * the remote drafter killed in the middle of a streamed generation: the stream completes
//!   with exactly the plain output and the fallback is counted.

mod serve_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use serve_support::{Resp, Server};

const N: usize = 32;

fn records() -> Vec<(String, Vec<u32>)> {
    let path = engine_testdata::fixtures_dir().join("gemma3-270m/greedy.jsonl");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let ids = v["prompt_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            (v["name"].as_str().unwrap().to_string(), ids)
        })
        .collect()
}

fn drafter_model() -> PathBuf {
    let m = engine_testdata::gemma3_model().unwrap();
    engine_testdata::first_layers_model(&m, 12).unwrap()
}

/// Plain greedy generation in-process: (text, tokens generated).
fn plain(prompt: &[u32], n: usize, ignore_eos: bool) -> (String, usize) {
    let model = engine::Model::load(
        engine_testdata::gemma3_model().unwrap(),
        &engine::LoadOptions {
            threads: 2,
            n_ctx: 1024,
            ..Default::default()
        },
    )
    .unwrap();
    let g = model
        .session()
        .unwrap()
        .generate(
            &engine::Prompt::Tokens(prompt.to_vec()),
            &engine::GenerateParams {
                max_tokens: Some(n),
                sampling: engine::SamplingParams::greedy(),
                ignore_eos,
                ..Default::default()
            },
            |_| true,
        )
        .unwrap();
    (g.text, g.ids.len())
}

fn completion_body(prompt: &[u32], n: usize, stream: bool) -> serde_json::Value {
    json!({
        "prompt": prompt, "n_predict": n, "temperature": 0, "stream": stream,
        // every prompt evaluated afresh, as the plain reference does
        "cache_prompt": false,
    })
}

/// All records at once through `s`; returns (text, predicted_n) per record.
fn through(s: &Server, recs: &[(String, Vec<u32>)]) -> Vec<(String, usize)> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = recs
            .iter()
            .map(|(_, ids)| {
                scope.spawn(move || {
                    let r = s.post("/completion", &completion_body(ids, N, false));
                    assert_eq!(r.status, 200, "{}", r.text());
                    let v = r.json();
                    (
                        v["content"].as_str().unwrap().to_string(),
                        v["timings"]["predicted_n"].as_u64().unwrap() as usize,
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn spec_counter(s: &Server, what: &str, kind: &str) -> f64 {
    s.metric(&format!(
        "engine:spec_decode_num_{what}_total{{drafter=\"{kind}\"}}"
    ))
}

#[test]
fn every_drafter_kind_reproduces_plain_greedy_output_through_the_server() {
    let _g = serve_support::serial();
    let recs = records();
    assert_eq!(recs.len(), 12);
    let want: Vec<(String, usize)> = recs.iter().map(|(_, p)| plain(p, N, false)).collect();
    let draft = drafter_model();
    let draft_arg = draft.to_str().unwrap().to_string();

    // the remote drafter, with its own API key
    let drafter = Server::start_model(&draft, &["-np", "4", "--api-key", "drafter-key"]);
    let remote_url = drafter.url();
    let configs: [(&str, Vec<&str>); 3] = [
        (
            "ngram",
            vec!["--spec-type", "ngram", "--draft-fixed", "--draft-max", "4"],
        ),
        // fixed lengths: the adaptive length depends on measured times (these drafters cost
        // nearly what the target does, so it would rightly draft rarely), and this test
        // needs every kind to draft and be accepted sometimes, deterministically
        (
            "draft",
            vec![
                "--model-draft",
                &draft_arg,
                "--draft-fixed",
                "--draft-max",
                "4",
            ],
        ),
        (
            "remote",
            vec![
                "--draft-remote",
                &remote_url,
                "--draft-remote-key",
                "drafter-key",
                // generous: this checks identity on a busy 2-core machine, not latency
                "--draft-remote-timeout",
                "20000",
                "--draft-fixed",
                "--draft-max",
                "4",
            ],
        ),
    ];
    let mut failures = vec![];
    for (kind, extra) in configs {
        let mut args = vec!["-np", "4", "--metrics"];
        args.extend(extra);
        let s = Server::start(&args);
        let got = through(&s, &recs);
        for (((name, _), w), g) in recs.iter().zip(&want).zip(&got) {
            if w != g {
                failures.push(format!("{kind} {name}: {g:?}\n   plain: {w:?}"));
            }
        }
        let (d, a) = (
            spec_counter(&s, "draft_tokens", kind),
            spec_counter(&s, "accepted_tokens", kind),
        );
        let rate = s.metric(&format!(
            "engine:spec_decode_draft_acceptance_rate{{drafter=\"{kind}\"}}"
        ));
        eprintln!("{kind}: drafted {d}, accepted {a}, rate {rate:.2}");
        assert!(d > 0.0 && a > 0.0, "{kind}: no drafting happened");
        assert!((rate - a / d).abs() < 1e-9);
        assert_eq!(
            spec_counter(&s, "fallbacks", kind),
            0.0,
            "{kind}: {}",
            s.logs()
        );
        s.wait_idle();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // the protocol's refusals
    let post = |body: serde_json::Value, key: Option<&str>| -> Resp {
        let mut h = vec![("Content-Type", "application/json".to_string())];
        if let Some(k) = key {
            h.push(("Authorization", format!("Bearer {k}")));
        }
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        drafter.request("POST", "/v1/draft", &h, body.to_string().as_bytes())
    };
    let ok = json!({"v": 1, "session": "t-1", "base": 0, "base_hash": "cbf29ce484222325",
                    "append": recs[0].1, "n_draft": 4});
    assert_eq!(post(ok.clone(), None).status, 401);
    assert_eq!(post(ok.clone(), Some("wrong")).status, 401);
    let r = post(ok.clone(), Some("drafter-key"));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["v"], 1);
    assert!(v["tokens"].as_array().unwrap().len() <= 4);
    let mut bad = ok.clone();
    bad["v"] = json!(2);
    let r = post(bad, Some("drafter-key"));
    assert_eq!(r.status, 400);
    assert!(r.text().contains("version"), "{}", r.text());
    let mut unknown = ok.clone();
    unknown["session"] = json!("never-seen");
    unknown["base"] = json!(3);
    assert_eq!(post(unknown, Some("drafter-key")).status, 409);
    let mut big = ok.clone();
    big["n_draft"] = json!(65);
    assert_eq!(post(big, Some("drafter-key")).status, 400);
    let mut extra = ok;
    extra["surprise"] = json!(1);
    assert_eq!(post(extra, Some("drafter-key")).status, 400);
}

#[test]
fn killing_the_remote_drafter_mid_generation_falls_back_to_plain_decoding() {
    let _g = serve_support::serial();
    let recs = records();
    let prompt = &recs.iter().find(|(n, _)| n == "story").unwrap().1;
    let n = 64;
    let want = plain(prompt, n, true);
    let mut drafter = Server::start_model(&drafter_model(), &["-np", "2"]);
    let url = drafter.url();
    // fixed-length drafts: on this tiny model a loopback round trip costs more than a
    // step, and the adaptive length would rightly stop asking the drafter (see the cost
    // model); this test is about what happens when a drafter that is asked dies
    let s = Server::start(&[
        "-np",
        "2",
        "--metrics",
        "--draft-remote",
        &url,
        "--draft-remote-timeout",
        "2000",
        "--draft-fixed",
    ]);
    // stream the generation, killing the drafter after a few tokens
    let mut body = completion_body(prompt, n, true);
    body["ignore_eos"] = json!(true);
    let body = body.to_string();
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    write!(
        c,
        "POST /completion HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        s.addr,
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let mut killed = false;
    loop {
        let k = c.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..k]);
        let events = raw.windows(6).filter(|w| w == b"data: ").count();
        if !killed && events >= 8 {
            drafter.child.kill().unwrap();
            drafter.child.wait().unwrap();
            killed = true;
        }
    }
    assert!(killed, "the stream ended before the drafter was killed");
    let r = Resp::parse(&raw);
    assert_eq!(r.status, 200);
    let mut text = String::new();
    let mut stop = false;
    for l in r.text().lines() {
        if let Some(d) = l.strip_prefix("data: ") {
            let v: serde_json::Value = serde_json::from_str(d).unwrap();
            text.push_str(v["content"].as_str().unwrap_or(""));
            stop |= v["stop"].as_bool() == Some(true);
        }
    }
    assert!(stop, "the stream must end normally: {}", r.text());
    assert_eq!(text, want.0, "the output must be exactly the plain one");
    let drafted = spec_counter(&s, "draft_tokens", "remote");
    let fallbacks = spec_counter(&s, "fallbacks", "remote");
    eprintln!("remote: drafted {drafted} before the kill, {fallbacks} fallbacks after");
    assert!(drafted > 0.0, "the drafter was used before it died");
    assert!(fallbacks >= 1.0, "the fallback must be counted");
    assert_eq!(
        s.metric("engine:request_success_total{finished_reason=\"error\"}"),
        0.0
    );
    s.wait_idle();
}
