//! The Hailo provider against the fake shim, through the real host process: the loader and
//! its ABI version check, streaming, stop strings and limits, context reuse, cancellation,
//! read timeouts, device errors, a crashing and a hung shim, telemetry and context blobs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use engine::provider::{
    ChatMessage, GenerateText, ProviderError, TextInput, TextProvider, TextSampling, TextSession,
};
use engine::StopReason;
use engine_hailo::abi::Shim;
use engine_hailo::{HailoOptions, HailoProvider, HostCommand};

fn fake() -> PathBuf {
    engine_testdata::hailo_fake_shim().expect("fake shim")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("engine-hailo-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Setup {
    dir: PathBuf,
    opts: HailoOptions,
}

impl Setup {
    fn new(name: &str, env: &[(&str, &str)]) -> Setup {
        let dir = tmp(name);
        let hef = dir.join("model.hef");
        std::fs::write(&hef, b"not really a HEF").unwrap();
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.push((
            "ENGINE_HAILO_FAKE_LOG".into(),
            dir.join("calls.log").display().to_string(),
        ));
        let host = HostCommand {
            program: env!("CARGO_BIN_EXE_engine-hailo-host").into(),
            args: Vec::new(),
            env,
        };
        let mut opts = HailoOptions::new(hef, host);
        opts.shim = Some(fake());
        opts.end_tokens = vec!["<|im_end|>".into(), "<|endoftext|>".into()];
        opts.grace = Duration::from_secs(2);
        Setup { dir, opts }
    }

    fn open(&self) -> Result<HailoProvider, ProviderError> {
        HailoProvider::open(self.opts.clone())
    }

    fn session(&self) -> TextSession {
        TextSession::new(
            Box::new(self.open().expect("open")),
            Duration::from_millis(800),
        )
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

fn greedy(max: Option<u32>) -> TextSampling {
    TextSampling {
        temperature: 0.0,
        top_p: 1.0,
        top_k: 1,
        frequency_penalty: 0.0,
        seed: None,
        max_tokens: max,
    }
}

fn raw(prompt: &str, max: Option<u32>) -> GenerateText {
    GenerateText {
        input: TextInput::Raw(prompt.into()),
        sampling: greedy(max),
        stop: Vec::new(),
        reuse_context: true,
    }
}

fn run(
    s: &mut TextSession,
    req: &GenerateText,
) -> Result<(Vec<String>, engine::provider::TextOutcome), ProviderError> {
    let mut chunks = Vec::new();
    let out = s.generate(req, &mut |t| {
        if !t.is_empty() {
            chunks.push(t.to_string());
        }
        true
    })?;
    Ok((chunks, out))
}

#[test]
fn the_loader_checks_the_abi_version() {
    let shim = Shim::load(&fake()).expect("the fake loads");
    assert_eq!(shim.path, fake());
    let e = Shim::load(Path::new("/nonexistent/libengine_hailo_shim.so"))
        .err()
        .unwrap();
    assert!(e.contains("cannot load the Hailo shim"), "{e}");
    // a library that is not a shim
    let not = std::env::current_exe().unwrap();
    assert!(Shim::load(&not).is_err());
    // a shim built for another ABI version is refused, with a way out
    let s = Setup::new("abi", &[("ENGINE_HAILO_FAKE_ABI", "2")]);
    match s.open() {
        Err(ProviderError::Unavailable(m)) => {
            assert!(
                m.contains("ABI version 2") && m.contains("needs version 1"),
                "{m}"
            );
            assert!(m.contains("build-hailo-shim"), "{m}");
        }
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    // no device, no shim, no HEF: clear messages
    let s = Setup::new("nodev", &[("ENGINE_HAILO_FAKE_NO_DEVICE", "1")]);
    match s.open() {
        Err(ProviderError::Unavailable(m)) => assert!(m.contains("no Hailo device"), "{m}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    let mut s = Setup::new("noshim", &[]);
    s.opts.shim = Some("/nonexistent/libengine_hailo_shim.so".into());
    assert!(matches!(s.open(), Err(ProviderError::Unavailable(m)) if m.contains("cannot load")));
    let mut s = Setup::new("nohef", &[]);
    s.opts.hef = s.dir.join("missing.hef");
    assert!(matches!(s.open(), Err(ProviderError::Unavailable(m)) if m.contains("does not exist")));
}

#[test]
fn streams_with_limits_stop_strings_and_device_usage() {
    let s = Setup::new("stream", &[]);
    let mut sess = s.session();
    assert_eq!(sess.max_context(), 2048);
    let (chunks, out) = run(&mut sess, &raw("Hello there", None)).unwrap();
    assert!(chunks.len() > 10, "{chunks:?}");
    let text = chunks.concat();
    assert_eq!(text, out.text);
    assert!(
        text.starts_with("Fake NPU: wrote 2 onto 0; temperature 0.00, top_k 1."),
        "{text}"
    );
    assert!(
        !text.contains("<|im_end|>"),
        "the end token is not shown: {text}"
    );
    assert_eq!(out.reason, StopReason::Eog);
    assert_eq!(out.prompt_n, 2);
    // usage by the device's tokenizer
    let mut p = s.open().unwrap();
    assert_eq!(out.timings.predicted_n, p.tokenize(&text).unwrap().len());
    drop(p);
    // a token limit
    let (_, out) = run(&mut sess, &raw("Count for me", Some(5))).unwrap();
    assert_eq!(out.reason, StopReason::Length);
    assert_eq!(out.text, "Fake NPU: wrote 3");
    // a stop string: nothing of it shown, and the device's generation aborted
    let mut req = raw("Again", None);
    req.stop = vec![" three".into()];
    let (chunks, out) = run(&mut sess, &req).unwrap();
    assert_eq!(out.reason, StopReason::StopString);
    assert!(out.text.ends_with(" one two"), "{}", out.text);
    assert_eq!(chunks.concat(), out.text);
    assert!(
        s.calls().iter().any(|c| c.starts_with("abort")),
        "{:?}",
        s.calls()
    );
    // chat messages go to the device's own template
    let msgs = GenerateText {
        input: TextInput::Messages(vec![ChatMessage {
            role: "user".into(),
            content: "Hi".into(),
        }]),
        ..raw("", None)
    };
    let (_, out) = run(&mut sess, &msgs).unwrap();
    assert!(
        out.text.starts_with("Fake NPU: wrote 9 onto 0"),
        "{}",
        out.text
    );
    assert_eq!(out.prompt_n, 9);
    // telemetry and context blobs
    let t = sess.telemetry().unwrap();
    assert_eq!(t.temperature_c, Some(47.5));
    let blob = sess.provider().save_context().unwrap();
    sess.provider().clear_context().unwrap();
    assert_eq!(sess.provider().context_usage().unwrap(), 0);
    sess.provider().load_context(&blob).unwrap();
    assert!(sess.provider().context_usage().unwrap() > 0);
    assert!(matches!(
        sess.provider().load_context(b"garbage"),
        Err(ProviderError::Rejected(_))
    ));
}

#[test]
fn a_prompt_extending_the_conversation_keeps_the_device_context() {
    let s = Setup::new("reuse", &[]);
    let mut sess = s.session();
    let turn1 = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";
    let (_, a) = run(&mut sess, &raw(turn1, None)).unwrap();
    assert_eq!(a.cached_n, 0);
    let turn2 = format!(
        "{turn1}{}<|im_end|>\n<|im_start|>user\nMore<|im_end|>\n<|im_start|>assistant\n",
        a.text
    );
    let (_, b) = run(&mut sess, &raw(&turn2, None)).unwrap();
    // only the new turn was written, onto the kept context
    assert!(b.cached_n > 0, "{b:?}");
    assert!(b.text.starts_with("Fake NPU: wrote 10 onto"), "{}", b.text);
    let calls = s.calls();
    let gens: Vec<&String> = calls.iter().filter(|c| c.starts_with("generate")).collect();
    assert_eq!(gens.len(), 2, "{calls:?}");
    assert!(gens[1].contains("wrote=10"), "{calls:?}");
    assert_eq!(
        calls.iter().filter(|c| *c == "clear").count(),
        1,
        "{calls:?}"
    );
    // a different conversation clears the context first
    let (_, c) = run(&mut sess, &raw("Something else", None)).unwrap();
    assert_eq!(c.cached_n, 0);
    assert!(c.text.starts_with("Fake NPU: wrote 2 onto 0"), "{}", c.text);
    assert_eq!(s.calls().iter().filter(|c| *c == "clear").count(), 2);
    // without reuse the context is cleared even for an extension
    let mut r = raw(&format!("Something else{}<|im_end|>more", c.text), None);
    r.reuse_context = false;
    let (_, d) = run(&mut sess, &r).unwrap();
    assert_eq!(d.cached_n, 0);
    // a prompt larger than the context is refused before the device sees it
    let long = "word ".repeat(3000);
    match run(&mut sess, &raw(&long, None)) {
        Err(ProviderError::Rejected(m)) => assert!(m.contains("context holds 2048"), "{m}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn cancel_timeout_errors_crash_and_hang() {
    let s = Setup::new("fail", &[("ENGINE_HAILO_FAKE_DELAY_MS", "20")]);
    let mut sess = s.session();
    // the caller cancels after three chunks: the device's generation is aborted
    let mut n = 0;
    let out = sess
        .generate(&raw("Go on", None), &mut |t| {
            if !t.is_empty() {
                n += 1;
            }
            n < 3
        })
        .unwrap();
    assert_eq!(out.reason, StopReason::Cancelled);
    assert!(
        s.calls().iter().any(|c| c.starts_with("abort after=3")),
        "{:?}",
        s.calls()
    );
    // a device error is reported and the device stays usable
    match run(&mut sess, &raw("[fake:error]", None)) {
        Err(ProviderError::Failed(m)) => assert!(m.contains("HAILO_INTERNAL_FAILURE"), "{m}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert_eq!(
        run(&mut sess, &raw("fine", None)).unwrap().1.reason,
        StopReason::Eog
    );
    // no text within the read timeout: aborted, reported, usable again
    let t0 = Instant::now();
    match run(&mut sess, &raw("[fake:stall]", None)) {
        Err(ProviderError::Timeout(m)) => assert!(m.contains("no text for 0.8s"), "{m}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(
        run(&mut sess, &raw("fine", None)).unwrap().1.reason,
        StopReason::Eog
    );
    // the shim crashes: the host dies, the provider says so and stays dead
    match run(&mut sess, &raw("[fake:crash]", None)) {
        Err(ProviderError::Crashed(m)) => assert!(m.contains("killed by signal 6"), "{m}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert!(matches!(
        run(&mut sess, &raw("fine", None)),
        Err(ProviderError::Crashed(_))
    ));
    // a crash in the middle of the stream
    let mut sess = s.session();
    assert!(matches!(
        run(&mut sess, &raw("[fake:crash-read]", None)),
        Err(ProviderError::Crashed(_))
    ));
    // the shim hangs, ignoring its timeout: the host is killed after the grace period
    let mut sess = s.session();
    let t0 = Instant::now();
    match run(&mut sess, &raw("[fake:hang]", None)) {
        Err(ProviderError::Crashed(m)) => assert!(m.contains("did not answer"), "{m}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert!(t0.elapsed() < Duration::from_secs(10));
    // a failing temperature sensor is an error, not a panic
    let s = Setup::new("temp", &[("ENGINE_HAILO_FAKE_TEMP", "fail")]);
    let mut p = s.open().unwrap();
    assert!(matches!(p.telemetry(), Err(ProviderError::Failed(m)) if m.contains("temperature")));
}
