//! Every supported architecture against llama.cpp's logits on the tiny fixtures
//! (`../shared/fixtures/arch`), with `check_logits.py`'s tiers: the whole sequence in one
//! batch, token by token through the KV cache, and two sequences decoded together.

use std::sync::Arc;

use engine_core::{Backend, DType};
use engine_gguf::GgufModel;
use engine_models::{Batch, ContextOptions, Model, SUPPORTED_ARCHITECTURES};
use engine_testdata::logits::{arch_fixtures, judge, logit_metrics, tier, ArchFixture};

mod device;

fn backend() -> Arc<dyn Backend> {
    device::backend()
}

fn opts(n_seq: usize) -> ContextOptions {
    ContextOptions {
        n_ctx: 512,
        n_seq,
        n_batch: 512,
        kv_type: DType::F32,
    }
}

fn load(f: &ArchFixture) -> Box<dyn Model> {
    let g = GgufModel::open(&f.model, true).unwrap();
    engine_models::load(&g, backend()).unwrap_or_else(|e| panic!("{}: {e}", f.model.display()))
}

fn check(f: &ArchFixture, what: &str, got: &[f32]) -> Result<(), String> {
    let m = logit_metrics(&f.logits, got, f.n_vocab);
    let t = tier(&f.arch, &f.label);
    let fails = judge(&m, t);
    let line = format!(
        "{} {} {:8} {:7} {:14} [{t}] max|d|={:.2e} rms={:.2e} KL={:.2e} top1={}/{} regret={:.2}",
        if fails.is_empty() { "PASS" } else { "FAIL" },
        device::name(),
        f.arch,
        f.label,
        what,
        m.max_abs,
        m.rms,
        m.kl_mean,
        m.top1,
        m.n,
        m.top1_regret
    );
    eprintln!("{line}");
    if fails.is_empty() {
        Ok(())
    } else {
        Err(format!("{line}: {}", fails.join("; ")))
    }
}

/// Every fixture in the folder; an architecture this build does not implement is a failure,
/// not a skip.
fn supported() -> Vec<ArchFixture> {
    let all = arch_fixtures(None);
    let mut missing: Vec<_> = all
        .iter()
        .filter(|f| !SUPPORTED_ARCHITECTURES.contains(&f.arch.as_str()))
        .map(|f| format!("{}/{}", f.arch, f.label))
        .collect();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "fixtures of unsupported architectures: {}",
        missing.join(", ")
    );
    assert!(!all.is_empty());
    all
}

#[test]
fn whole_sequence_in_one_batch() {
    let mut errors = vec![];
    for f in supported() {
        let model = load(&f);
        let mut ctx = model.new_context(opts(1)).unwrap();
        let mut b = Batch::default();
        b.push_seq(&f.tokens, 0, 0, true);
        let mut logits = vec![];
        model.forward(&mut ctx, &b, &mut logits).unwrap();
        if let Err(e) = check(&f, "batch", &logits) {
            errors.push(e);
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn token_by_token_through_the_cache() {
    let mut errors = vec![];
    for f in supported() {
        let model = load(&f);
        let mut ctx = model.new_context(opts(1)).unwrap();
        let mut all = vec![];
        let mut logits = vec![];
        let mut b = Batch::default();
        for (i, &t) in f.tokens.iter().enumerate() {
            b.clear();
            b.push(t, i as u32, 0, true);
            model.forward(&mut ctx, &b, &mut logits).unwrap();
            all.extend_from_slice(&logits);
        }
        assert_eq!(ctx.seq_len(0), f.tokens.len());
        if let Err(e) = check(&f, "token-by-token", &all) {
            errors.push(e);
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// Two sequences share every decode step: sequence 0 runs the fixture's tokens, sequence 1
/// the same tokens shifted by a different prompt prefix of 5 tokens. Sequence 0's logits must
/// equal those of decoding it alone (bit for bit: rows are computed independently).
#[test]
fn two_sequences_in_one_batch_match_decoding_alone() {
    for f in supported() {
        let model = load(&f);
        let n = f.tokens.len();
        let alone = {
            let mut ctx = model.new_context(opts(1)).unwrap();
            let mut b = Batch::default();
            let mut out = vec![];
            let mut logits = vec![];
            for (i, &t) in f.tokens.iter().enumerate() {
                b.clear();
                b.push(t, i as u32, 0, true);
                model.forward(&mut ctx, &b, &mut logits).unwrap();
                out.extend_from_slice(&logits);
            }
            out
        };
        let mut ctx = model.new_context(opts(2)).unwrap();
        let prefix: Vec<u32> = f.tokens.iter().rev().take(5).copied().collect();
        let mut b = Batch::default();
        b.push_seq(&prefix, 0, 1, false);
        let mut logits = vec![];
        model.forward(&mut ctx, &b, &mut logits).unwrap();
        let mut together = vec![];
        for i in 0..n {
            b.clear();
            b.push(f.tokens[i], i as u32, 0, true);
            b.push(f.tokens[(i + 7) % n], (5 + i) as u32, 1, true);
            model.forward(&mut ctx, &b, &mut logits).unwrap();
            together.extend_from_slice(&logits[..f.n_vocab]);
        }
        let worst = alone
            .iter()
            .zip(&together)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!(
            "{} {}: batched-vs-alone max|d| = {worst:e}",
            f.arch, f.label
        );
        assert!(
            worst <= 1e-4,
            "{} {}: batching changed logits by {worst}",
            f.arch,
            f.label
        );
    }
}

#[test]
fn unknown_architecture_is_a_clear_error() {
    let mut w = engine_gguf::GgufWriter::new();
    w.set(
        "general.architecture",
        engine_gguf::Value::String("frobnicator".into()),
    );
    let dir = std::env::temp_dir().join(format!("engine-unknown-arch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("m.gguf");
    w.write_to(&p).unwrap();
    let g = GgufModel::open(&p, true).unwrap();
    let err = engine_models::load(&g, backend())
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        err.contains("frobnicator") && err.contains("gemma3") && err.contains("llama"),
        "{err}"
    );
}

/// Two different prompts evaluated in one batch (one run each) and then decoded together
/// give each sequence exactly the logits it gets alone: matmul row groups, attention,
/// expert grouping and recurrent state all stay per sequence.
#[test]
fn two_prompts_prefilled_together_equal_each_alone() {
    for f in supported() {
        let model = load(&f);
        let n = f.tokens.len();
        let prompts: [Vec<u32>; 2] = [
            f.tokens[..30].to_vec(),
            f.tokens[n - 21..].iter().rev().copied().collect(),
        ];
        let steps = 6;
        // Decoded continuation of each prompt: the fixture's tokens after position 30.
        let cont = &f.tokens[30..30 + steps];
        let alone: Vec<Vec<f32>> = prompts
            .iter()
            .map(|p| {
                let mut ctx = model.new_context(opts(1)).unwrap();
                let mut b = Batch::default();
                b.push_seq(p, 0, 0, true);
                let mut all = vec![];
                model.forward(&mut ctx, &b, &mut all).unwrap();
                let mut logits = vec![];
                for (i, &t) in cont.iter().enumerate() {
                    b.clear();
                    b.push(t, (p.len() + i) as u32, 0, true);
                    model.forward(&mut ctx, &b, &mut logits).unwrap();
                    all.extend_from_slice(&logits);
                }
                all
            })
            .collect();
        let mut ctx = model.new_context(opts(2)).unwrap();
        let mut b = Batch::default();
        b.push_seq(&prompts[0], 0, 0, true);
        b.push_seq(&prompts[1], 0, 1, true);
        let mut logits = vec![];
        model.forward(&mut ctx, &b, &mut logits).unwrap();
        let v = f.n_vocab;
        let (l0, l1) = (prompts[0].len(), prompts[1].len());
        let mut together = [
            logits[..l0 * v].to_vec(),
            logits[l0 * v..(l0 + l1) * v].to_vec(),
        ];
        for (i, &t) in cont.iter().enumerate() {
            b.clear();
            b.push(t, (l0 + i) as u32, 0, true);
            b.push(t, (l1 + i) as u32, 1, true);
            model.forward(&mut ctx, &b, &mut logits).unwrap();
            together[0].extend_from_slice(&logits[..v]);
            together[1].extend_from_slice(&logits[v..]);
        }
        for s in 0..2 {
            assert!(
                alone[s] == together[s],
                "{} {}: sequence {s} differs when batched with another",
                f.arch,
                f.label
            );
        }
        eprintln!(
            "{} {}: two prompts batched = alone, bit for bit",
            f.arch, f.label
        );
    }
}
