//! `engine perplexity` against llama.cpp's llama-perplexity on the default model, the
//! KL-divergence round trip, and its errors.

use std::path::PathBuf;
use std::process::{Command, Output};

fn engine() -> Command {
    Command::new(env!("CARGO_BIN_EXE_engine"))
}

fn text() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../benches/data/quality.txt")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("engine-ppl-tests-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn ok(out: Output) -> (String, String) {
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "failed: {e}");
    (o, e)
}

fn json(out: Output) -> serde_json::Value {
    let (o, _) = ok(out);
    serde_json::from_str(o.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {o}"))
}

/// llama-perplexity (llama.cpp 0c1e570, from the llama-cpp-python 0.3.36 sdist) on the
/// real Q4_K_M file:
/// `llama-perplexity -m gemma-3-270m-q4_k_m.gguf -f benches/data/quality.txt -c 128 -b 128
/// -t 1 --chunks 6` prints
/// `[1]33.6166,[2]30.6444,[3]31.9313,[4]32.8249,[5]29.4406,[6]29.2608` and
/// `Final estimate: PPL = 29.2608 +/- 4.33349`. Same chunking, same BOS handling, same
/// scored half, so the per-chunk running values must agree to the printed digits (the
/// kernels follow llama.cpp's arithmetic; a wrong chunking or an off-by-one in the scored
/// positions moves them by whole percents).
#[test]
fn perplexity_matches_llama_perplexity() {
    let model = engine_testdata::gemma3_model().unwrap();
    let (_, err) = ok(engine()
        .arg("perplexity")
        .arg("-m")
        .arg(&model)
        .arg("-f")
        .arg(text())
        .args(["-c", "128", "--chunks", "6"])
        .output()
        .unwrap());
    let running: Vec<f64> = err
        .lines()
        .find(|l| l.starts_with("[1]"))
        .unwrap_or_else(|| panic!("no running values: {err}"))
        .split(',')
        .filter_map(|c| c.split(']').nth(1)?.parse().ok())
        .collect();
    let reference = [33.6166, 30.6444, 31.9313, 32.8249, 29.4406, 29.2608];
    assert_eq!(running.len(), reference.len(), "{err}");
    for (i, (got, want)) in running.iter().zip(reference).enumerate() {
        assert!(
            (got - want).abs() <= 2e-4,
            "chunk {}: {got} vs llama-perplexity {want}",
            i + 1
        );
    }
}

/// Saving a model's distributions and comparing the same model against them gives a
/// divergence of zero and full top-1 agreement, and the base perplexity read back from the
/// file equals the one computed while saving.
#[test]
fn kl_divergence_round_trip() {
    let model = engine_testdata::gemma3_model().unwrap();
    let base = tmp("base.bin");
    let run = |extra: &[&str]| {
        json(
            engine()
                .arg("perplexity")
                .arg("-m")
                .arg(&model)
                .arg("-f")
                .arg(text())
                .args([
                    "-c",
                    "64",
                    "--chunks",
                    "3",
                    "--json",
                    "--kl-divergence-base",
                ])
                .arg(&base)
                .args(extra)
                .output()
                .unwrap(),
        )
    };
    let saved = run(&[]);
    assert_eq!(saved["tokens_scored"], 3 * 31);
    let cmp = run(&["--kl-divergence"]);
    let k = &cmp["kld"];
    assert!(k["mean"].as_f64().unwrap() < 1e-9, "{cmp}");
    assert_eq!(k["same_top"].as_f64().unwrap(), 1.0, "{cmp}");
    let (p, pb) = (
        saved["ppl"].as_f64().unwrap(),
        k["ppl_base"].as_f64().unwrap(),
    );
    assert!((p - pb).abs() < 1e-9 * p, "{p} vs {pb}");
    assert_eq!(cmp["ppl"], saved["ppl"]);
}

#[test]
fn perplexity_errors_are_clear() {
    let model = engine_testdata::gemma3_model().unwrap();
    let short = tmp("short.txt");
    std::fs::write(&short, "Too short to score.").unwrap();
    let out = engine()
        .arg("perplexity")
        .arg("-m")
        .arg(&model)
        .arg("-f")
        .arg(&short)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("needs at least 1024"),
        "{err}"
    );
    let junk = tmp("junk.bin");
    std::fs::write(&junk, b"ENGKLD01\x10\x00").unwrap();
    let out = engine()
        .arg("perplexity")
        .arg("-m")
        .arg(&model)
        .arg("--kl-divergence-base")
        .arg(&junk)
        .arg("--kl-divergence")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not a valid KL-divergence base file"),
        "{err}"
    );
    assert_ne!(out.status.code(), Some(101), "panicked: {err}");
}
