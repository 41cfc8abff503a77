//! The tiny-architecture fixtures (`../shared/fixtures/arch`) and the comparison metrics of
//! their `tools/check_logits.py`, so Rust tests apply the same tiers.

use std::path::{Path, PathBuf};

/// One reference: a model file, its token sequence, and llama.cpp's logits.
#[derive(Clone, Debug)]
pub struct ArchFixture {
    /// Architecture (directory name).
    pub arch: String,
    /// Label (`F32`, `Q8_0`, ...).
    pub label: String,
    /// Model path.
    pub model: PathBuf,
    /// Tokens to evaluate.
    pub tokens: Vec<u32>,
    /// Reference logits, `[n_tokens][n_vocab]`.
    pub logits: Vec<f32>,
    /// Vocabulary size.
    pub n_vocab: usize,
}

/// Every fixture listed in the manifests under `dir` (default: the shared fixtures).
pub fn arch_fixtures(dir: Option<&Path>) -> Vec<ArchFixture> {
    let root = dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| crate::fixtures_dir().join("arch"));
    let mut out = vec![];
    let mut entries: Vec<_> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("fixtures not found at {}: {e}", root.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("manifest.json").exists())
        .collect();
    entries.sort();
    for d in entries {
        let man: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("manifest.json")).unwrap())
                .unwrap();
        let arch = man["arch"].as_str().unwrap().to_string();
        let toks: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("tokens.json")).unwrap()).unwrap();
        let tokens: Vec<u32> = toks["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        for ent in man["logits"].as_array().unwrap() {
            let label = ent["label"].as_str().unwrap().to_string();
            let n_vocab = ent["n_vocab"].as_u64().unwrap() as usize;
            let bytes = std::fs::read(d.join(ent["logits"].as_str().unwrap())).unwrap();
            let logits = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            let file = man["files"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["label"].as_str() == Some(&label))
                .map(|f| f["file"].as_str().unwrap().to_string())
                .unwrap_or_else(|| format!("{arch}-{label}.gguf"));
            out.push(ArchFixture {
                arch: arch.clone(),
                label,
                model: d.join(file),
                tokens: tokens.clone(),
                logits,
                n_vocab,
            });
        }
    }
    out
}

/// Comparison metrics, as `check_logits.py` computes them.
#[derive(Clone, Debug)]
pub struct LogitMetrics {
    /// Largest absolute difference.
    pub max_abs: f64,
    /// Root mean square difference.
    pub rms: f64,
    /// Mean KL(P_ref || P_engine) over positions.
    pub kl_mean: f64,
    /// Positions whose argmax agrees.
    pub top1: usize,
    /// Positions.
    pub n: usize,
    /// Worst reference-logit regret of the engine's argmax.
    pub top1_regret: f64,
}

/// Computes [`LogitMetrics`] for `[n][n_vocab]` arrays.
pub fn logit_metrics(reference: &[f32], got: &[f32], n_vocab: usize) -> LogitMetrics {
    assert_eq!(reference.len(), got.len(), "logit arrays differ in size");
    let n = reference.len() / n_vocab;
    let (mut max_abs, mut sq, mut kl_sum, mut top1, mut regret) = (0f64, 0f64, 0f64, 0usize, 0f64);
    let lsm = |x: &[f32]| -> Vec<f64> {
        let m = x.iter().fold(f64::MIN, |a, &v| a.max(v as f64));
        let s: f64 = x.iter().map(|&v| (v as f64 - m).exp()).sum();
        x.iter().map(|&v| v as f64 - m - s.ln()).collect()
    };
    let argmax = |x: &[f32]| {
        x.iter()
            .enumerate()
            .fold((0, f32::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a })
            .0
    };
    for p in 0..n {
        let r = &reference[p * n_vocab..(p + 1) * n_vocab];
        let g = &got[p * n_vocab..(p + 1) * n_vocab];
        for (a, b) in r.iter().zip(g) {
            let d = (*a as f64 - *b as f64).abs();
            max_abs = if d.is_nan() {
                f64::INFINITY
            } else {
                max_abs.max(d)
            };
            sq += d * d;
        }
        let (lp, lq) = (lsm(r), lsm(g));
        kl_sum += lp
            .iter()
            .zip(&lq)
            .map(|(a, b)| a.exp() * (a - b))
            .sum::<f64>();
        let (ar, ag) = (argmax(r), argmax(g));
        if ar == ag {
            top1 += 1;
        }
        regret = regret.max(r[ar] as f64 - r[ag] as f64);
    }
    LogitMetrics {
        max_abs,
        rms: (sq / reference.len() as f64).sqrt(),
        kl_mean: kl_sum / n as f64,
        top1,
        n,
        top1_regret: regret,
    }
}

/// The tier `check_logits.py` applies to a fixture.
pub fn tier(arch: &str, label: &str) -> &'static str {
    if label == "F32" {
        if arch == "gemma3" {
            "f32-gemma3"
        } else {
            "f32"
        }
    } else if matches!(arch, "qwen3moe" | "gpt-oss" | "glm4moe") {
        "quant-moe"
    } else {
        "quant"
    }
}

/// Failures of `m` against `tier` (empty = pass).
pub fn judge(m: &LogitMetrics, tier: &str) -> Vec<String> {
    let mut f = vec![];
    let (max_abs, rms, kl, regret, top1_all) = match tier {
        "f32" => (Some(1e-3), None, None, None, true),
        "f32-gemma3" => (Some(1e-2), None, None, None, true),
        "quant" => (None, Some(0.10), Some(5e-3), Some(0.5), false),
        "quant-moe" => (None, Some(0.25), Some(2e-2), Some(1.5), false),
        "quant-strict" => (None, Some(0.03), Some(5e-4), Some(0.15), false),
        other => panic!("unknown tier {other}"),
    };
    if !m.max_abs.is_finite() {
        f.push("non-finite logits".to_string());
    }
    if let Some(l) = max_abs {
        if m.max_abs > l {
            f.push(format!("max_abs {:.3e} > {l}", m.max_abs));
        }
    }
    if let Some(l) = rms {
        if m.rms > l {
            f.push(format!("rms {:.3e} > {l}", m.rms));
        }
    }
    if let Some(l) = kl {
        if m.kl_mean > l {
            f.push(format!("kl_mean {:.3e} > {l}", m.kl_mean));
        }
    }
    if top1_all && m.top1 != m.n {
        f.push(format!(
            "top-1 differs at {} of {} positions",
            m.n - m.top1,
            m.n
        ));
    }
    if let Some(l) = regret {
        if m.top1_regret > l {
            f.push(format!("top-1 regret {:.3} > {l}", m.top1_regret));
        }
    }
    f
}
