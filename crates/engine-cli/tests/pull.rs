//! `engine pull` over HTTP against a local file server (engine_testdata::http): resuming an
//! interrupted download (a dropped connection, Ctrl-C, a full disk) without starting from
//! zero, refusing a sha256 mismatch, 404s and non-GGUF answers, Hugging Face sources (the
//! Hub's file list and digests, split sets, HF_TOKEN) — each leaving the store consistent:
//! nothing half-written is ever listed. Also `engine create` from a Modelfile, `show`, `rm`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use engine_testdata::http::{Fault, FileServer};
use serde_json::json;
use sha2::{Digest, Sha256};

fn engine(store: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_engine"));
    c.env("ENGINE_MODELS", store)
        .env_remove("HF_TOKEN")
        .env_remove("HUGGING_FACE_HUB_TOKEN")
        .env_remove("HF_ENDPOINT");
    c
}

fn store_dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("engine-pull-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fixture(file: &str) -> Vec<u8> {
    std::fs::read(
        engine_testdata::fixtures_dir()
            .join("arch/llama")
            .join(file),
    )
    .unwrap()
}

fn sha256(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn ok(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "failed: {err}");
    err
}

fn failed(out: &Output, needle: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "expected failure: {err}");
    assert_ne!(out.status.code(), Some(101), "panicked: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.to_lowercase().contains(&needle.to_lowercase()),
        "error should mention '{needle}': {err}"
    );
    err
}

/// Names listed by `engine list`.
fn listed(store: &Path) -> Vec<String> {
    let out = engine(store).arg("list").output().unwrap();
    ok(&out);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Entries of the store directory besides the lock file.
fn store_entries(store: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(store)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".lock")
        .collect();
    v.sort();
    v
}

fn part_file(store: &Path, name: &str, file: &str) -> PathBuf {
    store
        .join(".partial")
        .join(name)
        .join(format!("{file}.part"))
}

#[test]
fn a_dropped_connection_resumes_where_it_stopped() {
    let store = store_dir("dropped");
    let srv = FileServer::start();
    let bytes = fixture("llama-F32.gguf");
    let cut = bytes.len() as u64 * 2 / 5;
    srv.add("/m/llama-F32.gguf", bytes.clone());
    srv.fault(
        "/m/llama-F32.gguf",
        Fault {
            cut_after: Some(cut),
            cuts: 1,
            throttle: None,
        },
    );
    let out = engine(&store)
        .args(["pull", &srv.url("/m/llama-F32.gguf"), "--name", "tiny"])
        .args(["--sha256", &sha256(&bytes)])
        .output()
        .unwrap();
    ok(&out);
    let reqs = srv.requests("/m/llama-F32.gguf");
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0].range, None);
    assert_eq!(reqs[0].sent, cut);
    // the second request asks for the rest only, validated by the ETag
    assert_eq!(reqs[1].range_start(), Some(cut), "{reqs:?}");
    assert!(reqs[1].if_range.is_some(), "{reqs:?}");
    assert_eq!(reqs[1].status, 206);
    assert_eq!(reqs[0].sent + reqs[1].sent, bytes.len() as u64);
    assert_eq!(listed(&store), vec!["tiny"]);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("tiny/manifest.json")).unwrap()).unwrap();
    assert_eq!(m["sha256"], sha256(&bytes));
    assert_eq!(m["architecture"], "llama");
    assert_eq!(m["quant"], "F32");
    assert_eq!(
        std::fs::read(store.join("tiny/llama-F32.gguf")).unwrap(),
        bytes
    );
    assert_eq!(
        store_entries(&store),
        vec!["tiny"],
        "no work files are left"
    );
    // pulling the same source again is a no-op
    ok(&engine(&store)
        .args(["pull", &srv.url("/m/llama-F32.gguf"), "--name", "tiny"])
        .output()
        .unwrap());
    assert_eq!(srv.requests("/m/llama-F32.gguf").len(), 2);
    std::fs::remove_dir_all(&store).unwrap();
}

#[test]
fn ctrl_c_mid_download_keeps_the_store_consistent_and_the_next_pull_resumes() {
    let store = store_dir("ctrlc");
    let srv = FileServer::start();
    let bytes = fixture("llama-F32.gguf");
    let path = "/m/llama-F32.gguf";
    srv.add(path, bytes.clone());
    srv.fault(
        path,
        Fault {
            throttle: Some((16 << 10, Duration::from_millis(20))),
            ..Default::default()
        },
    );
    let mut cmd = engine(&store);
    cmd.args(["pull", &srv.url(path), "--name", "tiny"])
        .args(["--sha256", &sha256(&bytes)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // A process started in the background by a non-interactive shell (as CI runners may
    // start the test suite) inherits SIGINT as ignored; Ctrl-C at a terminal reaches a
    // pull with the default disposition, so restore it for the child.
    // SAFETY: `signal` is async-signal-safe, the only call made between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let part = part_file(&store, "tiny", "llama-F32.gguf");
    let t0 = Instant::now();
    while std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) < 256 << 10 {
        assert!(t0.elapsed() < Duration::from_secs(60), "no progress");
        assert!(child.try_wait().unwrap().is_none(), "the pull ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: sending SIGINT (what Ctrl-C sends) to our own child process.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "interrupted pull must not succeed");
    let kept = std::fs::metadata(&part).unwrap().len();
    assert!(kept > 0 && kept < bytes.len() as u64, "{kept}");
    // nothing is installed, the store lists nothing, no model directory exists
    assert!(listed(&store).is_empty());
    assert_eq!(store_entries(&store), vec![".partial"]);
    // `engine list` mentions the interrupted download
    let out = engine(&store).arg("list").output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("interrupted download of tiny"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // the next pull asks for the missing bytes only
    srv.clear_fault(path);
    ok(&engine(&store)
        .args(["pull", &srv.url(path), "--name", "tiny"])
        .args(["--sha256", &sha256(&bytes)])
        .output()
        .unwrap());
    // (the server logs a request when its connection ends, so the cut one may come last)
    let resumed: Vec<_> = srv
        .requests(path)
        .into_iter()
        .filter(|r| r.range.is_some())
        .collect();
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    assert_eq!(resumed[0].range_start(), Some(kept), "{resumed:?}");
    assert_eq!(resumed[0].status, 206);
    assert_eq!(resumed[0].sent, bytes.len() as u64 - kept);
    assert_eq!(listed(&store), vec!["tiny"]);
    assert_eq!(
        std::fs::read(store.join("tiny/llama-F32.gguf")).unwrap(),
        bytes
    );
    assert_eq!(store_entries(&store), vec!["tiny"]);
    std::fs::remove_dir_all(&store).unwrap();
}

#[test]
fn a_full_disk_installs_nothing_and_the_next_pull_resumes() {
    let store = store_dir("diskfull");
    let srv = FileServer::start();
    let bytes = fixture("llama-F32.gguf");
    let path = "/m/llama-F32.gguf";
    srv.add(path, bytes.clone());
    // The pull may write files of at most 1 MiB (RLIMIT_FSIZE, what a full disk looks like
    // to a writer: the write fails), with SIGXFSZ ignored so the write returns an error.
    let limit: u64 = 1 << 20;
    let mut cmd = engine(&store);
    cmd.args(["pull", &srv.url(path), "--name", "tiny"])
        .args(["--sha256", &sha256(&bytes)]);
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: limit as libc::rlim_t,
                    rlim_max: limit as libc::rlim_t,
                };
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let out = cmd.output().unwrap();
    let err = failed(&out, "nothing was installed");
    assert!(err.contains("cannot write"), "{err}");
    assert!(err.to_lowercase().contains("file too large"), "{err}");
    assert!(listed(&store).is_empty());
    assert_eq!(store_entries(&store), vec![".partial"]);
    let kept = std::fs::metadata(part_file(&store, "tiny", "llama-F32.gguf"))
        .unwrap()
        .len();
    assert!(kept > 0 && kept <= limit, "{kept}");
    // with room again, the pull resumes from what was kept
    ok(&engine(&store)
        .args(["pull", &srv.url(path), "--name", "tiny"])
        .args(["--sha256", &sha256(&bytes)])
        .output()
        .unwrap());
    let resumed: Vec<_> = srv
        .requests(path)
        .into_iter()
        .filter(|r| r.range.is_some())
        .collect();
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    assert_eq!(resumed[0].range_start(), Some(kept));
    assert_eq!(resumed[0].sent, bytes.len() as u64 - kept);
    assert_eq!(
        std::fs::read(store.join("tiny/llama-F32.gguf")).unwrap(),
        bytes
    );
    assert_eq!(store_entries(&store), vec!["tiny"]);
    std::fs::remove_dir_all(&store).unwrap();
}

#[test]
fn a_sha256_mismatch_is_refused_and_leaves_nothing() {
    let store = store_dir("sha");
    let srv = FileServer::start();
    let bytes = fixture("llama-Q4_0.gguf");
    srv.add("/m/llama-Q4_0.gguf", bytes.clone());
    let wrong = sha256(b"something else");
    let out = engine(&store)
        .args(["pull", &srv.url("/m/llama-Q4_0.gguf"), "--name", "tiny"])
        .args(["--sha256", &wrong])
        .output()
        .unwrap();
    let err = failed(&out, "checksum mismatch");
    assert!(
        err.contains(&wrong) && err.contains(&sha256(&bytes)),
        "{err}"
    );
    assert!(err.contains("nothing was installed"), "{err}");
    assert!(listed(&store).is_empty());
    // the bad bytes are not kept for a resume either
    assert!(!part_file(&store, "tiny", "llama-Q4_0.gguf").exists());
    assert!(!store.join("tiny").exists());
    // a malformed digest is refused before downloading
    let n = srv.log().len();
    failed(
        &engine(&store)
            .args(["pull", &srv.url("/m/llama-Q4_0.gguf"), "--sha256", "abc"])
            .output()
            .unwrap(),
        "64 hexadecimal digits",
    );
    assert_eq!(srv.log().len(), n);
    std::fs::remove_dir_all(&store).unwrap();
}

#[test]
fn not_found_and_non_gguf_answers_leave_the_store_clean() {
    let store = store_dir("notfound");
    let srv = FileServer::start();
    let out = engine(&store)
        .args(["pull", &srv.url("/nothing/here.gguf")])
        .output()
        .unwrap();
    failed(&out, "404");
    assert!(listed(&store).is_empty());
    assert!(
        store_entries(&store).is_empty(),
        "{:?}",
        store_entries(&store)
    );
    // a server answering an HTML page with 200: downloaded, found not to be a GGUF, dropped
    srv.add(
        "/page.gguf",
        b"<html><body>Sign in to continue</body></html>".to_vec(),
    );
    let out = engine(&store)
        .args(["pull", &srv.url("/page.gguf")])
        .output()
        .unwrap();
    failed(&out, "not a usable GGUF");
    assert!(listed(&store).is_empty());
    assert!(
        store_entries(&store).is_empty(),
        "{:?}",
        store_entries(&store)
    );
    // sources that are not sources
    failed(
        &engine(&store)
            .args(["pull", "ftp://x/y.gguf"])
            .output()
            .unwrap(),
        "only https:// and http://",
    );
    failed(
        &engine(&store)
            .args(["pull", "no-such-model"])
            .output()
            .unwrap(),
        "unknown model",
    );
    std::fs::remove_dir_all(&store).unwrap();
}

/// Writes `src` as a two-file split set `dir/prefix-0000N-of-00002.gguf`.
fn split_gguf(src: &Path, dir: &Path, prefix: &str) -> Vec<PathBuf> {
    use engine_gguf::{GgufModel, GgufWriter, Value};
    let g = GgufModel::open(src, false).unwrap();
    let n = g.tensors().len();
    let half = n / 2;
    let paths: Vec<PathBuf> = (1..=2)
        .map(|i| dir.join(format!("{prefix}-{i:05}-of-00002.gguf")))
        .collect();
    for (part, range) in [(0u16, 0..half), (1u16, half..n)] {
        let mut w = GgufWriter::new();
        if part == 0 {
            for (k, v) in g.metadata() {
                w.set(k, v.clone());
            }
        }
        w.set("split.no", Value::U16(part));
        w.set("split.count", Value::U16(2));
        w.set("split.tensors.count", Value::I32(n as i32));
        for t in &g.tensors()[range] {
            w.add_tensor(
                &t.name,
                t.dtype,
                &t.shape(),
                g.tensor_data(t).as_slice().to_vec(),
            )
            .unwrap();
        }
        w.write_to(&paths[part as usize]).unwrap();
    }
    paths
}

fn run_greedy(store: &Path, model: &str) -> String {
    let out = engine(store)
        .args([
            "run",
            "-m",
            model,
            "-p",
            "hello world",
            "-n",
            "4",
            "--temp",
            "0",
        ])
        .args(["-t", "1", "--json"])
        .output()
        .unwrap();
    ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["ids"].to_string()
}

#[test]
fn hugging_face_sources_use_the_hub_listing_digests_and_token() {
    let store = store_dir("hf");
    let work = store_dir("hf-work");
    let srv = FileServer::start();
    let src = engine_testdata::fixtures_dir().join("arch/llama/llama-Q8_0.gguf");
    let parts = split_gguf(&src, &work, "tiny-Q8_0");
    let q4 = fixture("llama-Q4_0.gguf");
    let repo = "org/tiny-GGUF";
    let mut listing = vec![json!({"type": "file", "path": "README.md", "size": 12, "oid": "0123"})];
    for p in &parts {
        let b = std::fs::read(p).unwrap();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        listing.push(
            json!({"type": "file", "path": name, "size": b.len(), "oid": "abcd",
            "lfs": {"oid": sha256(&b), "size": b.len(), "pointerSize": 130}}),
        );
        srv.add(&format!("/{repo}/resolve/main/{name}"), b);
    }
    listing.push(
        json!({"type": "file", "path": "tiny-Q4_0.gguf", "size": q4.len(),
        "lfs": {"oid": sha256(&q4), "size": q4.len()}}),
    );
    // this file is served the Hub's way: a redirect to a storage host (another server) that
    // needs no token and must not be sent one
    let cdn = FileServer::start();
    cdn.add("/blobs/q4", q4.clone());
    srv.redirect(
        &format!("/{repo}/resolve/main/tiny-Q4_0.gguf"),
        &cdn.url("/blobs/q4"),
    );
    srv.add_json(&format!("/api/models/{repo}/tree/main"), &json!(listing));
    // a repository whose Hub digest does not match what is served
    srv.add_json(
        "/api/models/org/bad-GGUF/tree/main",
        &json!([{"type": "file", "path": "bad.gguf", "size": q4.len(),
            "lfs": {"oid": sha256(b"other"), "size": q4.len()}}]),
    );
    srv.add("/org/bad-GGUF/resolve/main/bad.gguf", q4.clone());
    srv.require_authorization("Bearer hf_test_token");
    let hf = |args: &[&str], token: Option<&str>| {
        let mut c = engine(&store);
        c.env("HF_ENDPOINT", srv.base()).args(["pull"]).args(args);
        if let Some(t) = token {
            c.env("HF_TOKEN", t);
        }
        c.output().unwrap()
    };
    // without the token: refused, with a hint
    failed(&hf(&["hf:org/tiny-GGUF:Q8_0"], None), "HF_TOKEN");
    assert!(listed(&store).is_empty());
    let tok = Some("hf_test_token");
    // two models in the repository and no default quantization: name one
    let err = failed(&hf(&["hf:org/tiny-GGUF"], tok), "several files match");
    assert!(err.contains("tiny-Q4_0.gguf") && err.contains("tiny-Q8_0-00001-of-00002.gguf"));
    // a quantization tag picks the split set; both parts are pulled and verified
    ok(&hf(&["hf:org/tiny-GGUF:Q8_0"], tok));
    assert_eq!(listed(&store), vec!["tiny-q8_0"]);
    for p in &parts {
        assert_eq!(
            std::fs::read(store.join("tiny-q8_0").join(p.file_name().unwrap())).unwrap(),
            std::fs::read(p).unwrap()
        );
    }
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("tiny-q8_0/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(
        m["source"],
        "hf:org/tiny-GGUF/tiny-Q8_0-00001-of-00002.gguf"
    );
    assert_eq!(m["parts"].as_array().unwrap().len(), 1);
    assert!(srv
        .log()
        .iter()
        .filter(|l| l.status == 200 || l.status == 206 || l.status == 302)
        .all(|l| l.authorization.as_deref() == Some("Bearer hf_test_token")));
    // the split set loads from the store and computes what the single file computes
    assert_eq!(
        run_greedy(&store, "tiny-q8_0"),
        run_greedy(&store, src.to_str().unwrap())
    );
    // a file by path, under a chosen name
    ok(&hf(
        &["hf:org/tiny-GGUF/tiny-Q4_0.gguf", "--name", "q4"],
        tok,
    ));
    assert_eq!(listed(&store), vec!["q4", "tiny-q8_0"]);
    let blob = cdn.requests("/blobs/q4");
    assert_eq!(blob.len(), 1, "{blob:?}");
    assert_eq!(
        blob[0].authorization, None,
        "the token must not leave the Hub's host"
    );
    assert_eq!(
        srv.requests(&format!("/{repo}/resolve/main/tiny-Q4_0.gguf"))[0].authorization,
        tok.map(|t| format!("Bearer {t}"))
    );
    // a digest from the Hub that does not match: refused, nothing installed
    failed(&hf(&["hf:org/bad-GGUF"], tok), "checksum mismatch");
    assert_eq!(listed(&store), vec!["q4", "tiny-q8_0"]);
    assert!(!store.join("bad").exists());
    // unknown repository and unknown file
    failed(&hf(&["hf:org/missing"], tok), "not found");
    failed(
        &hf(&["hf:org/tiny-GGUF/nope.gguf"], tok),
        "has no file 'nope.gguf'",
    );
    assert_eq!(store_entries(&store), vec!["q4", "tiny-q8_0"]);
    std::fs::remove_dir_all(&store).unwrap();
    std::fs::remove_dir_all(&work).unwrap();
}

#[test]
fn create_from_a_modelfile_then_show_and_remove() {
    let store = store_dir("create");
    let work = store_dir("create-work");
    let src = engine_testdata::fixtures_dir().join("arch/llama/llama-Q8_0.gguf");
    // FROM a file: imported into the store
    std::fs::write(
        work.join("Modelfile.base"),
        format!("FROM {}\n", src.display()),
    )
    .unwrap();
    ok(&engine(&store)
        .args(["create", "base", "-f"])
        .arg(work.join("Modelfile.base"))
        .output()
        .unwrap());
    // the seeds' workflow, unchanged
    std::fs::write(
        work.join("Modelfile"),
        "FROM base\nPARAMETER num_ctx 2048\nSYSTEM \"\"\"You are Elroy, an assistant made by Acme.\nNever claim to be another model.\"\"\"\n",
    )
    .unwrap();
    let err = ok(&engine(&store)
        .args(["create", "base-elroy", "-f"])
        .arg(work.join("Modelfile"))
        .output()
        .unwrap());
    assert!(err.contains("created base-elroy (FROM base)"), "{err}");
    let out = engine(&store).arg("list").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("preset FROM base"), "{text}");
    assert_eq!(listed(&store), vec!["base", "base-elroy"]);
    // --models-dir names the store as ENGINE_MODELS does
    let out = Command::new(env!("CARGO_BIN_EXE_engine"))
        .env_remove("ENGINE_MODELS")
        .args(["list", "--models-dir"])
        .arg(&store)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("base-elroy"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // the preset resolves to the base's weights
    assert_eq!(run_greedy(&store, "base-elroy"), run_greedy(&store, "base"));
    let out = engine(&store)
        .args(["show", "base-elroy", "--modelfile"])
        .output()
        .unwrap();
    let mf = String::from_utf8_lossy(&out.stdout);
    assert!(mf.contains("FROM base\n"), "{mf}");
    assert!(mf.contains("PARAMETER num_ctx 2048"), "{mf}");
    assert!(mf.contains("SYSTEM \"\"\"You are Elroy"), "{mf}");
    // a base with presets on it stays unless forced
    failed(
        &engine(&store).args(["rm", "base"]).output().unwrap(),
        "base-elroy",
    );
    // bad Modelfiles: clear errors naming the line
    std::fs::write(work.join("Bad"), "FROM base\nPARAMETER temprature 1\n").unwrap();
    failed(
        &engine(&store)
            .args(["create", "x", "-f"])
            .arg(work.join("Bad"))
            .output()
            .unwrap(),
        "line 2: unknown PARAMETER 'temprature'",
    );
    std::fs::write(
        work.join("Go"),
        "FROM base\nTEMPLATE \"\"\"{{ .Prompt }}\"\"\"\n",
    )
    .unwrap();
    failed(
        &engine(&store)
            .args(["create", "x", "-f"])
            .arg(work.join("Go"))
            .output()
            .unwrap(),
        "Go template",
    );
    std::fs::write(work.join("Missing"), "FROM nowhere\n").unwrap();
    failed(
        &engine(&store)
            .args(["create", "x", "-f"])
            .arg(work.join("Missing"))
            .output()
            .unwrap(),
        "unknown model",
    );
    assert_eq!(listed(&store), vec!["base", "base-elroy"]);
    ok(&engine(&store).args(["rm", "base-elroy"]).output().unwrap());
    ok(&engine(&store).args(["rm", "base"]).output().unwrap());
    assert!(listed(&store).is_empty());
    std::fs::remove_dir_all(&store).unwrap();
    std::fs::remove_dir_all(&work).unwrap();
}
