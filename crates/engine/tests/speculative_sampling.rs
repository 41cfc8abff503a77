//! Speculative sampling leaves the output distribution unchanged: on a tiny fixture model
//! (the llama architecture, 352 tokens), the joint distribution of the first 4 sampled
//! tokens over thousands of seeds must fit the target's exact distribution, computed by
//! enumerating every path through its sampling chain (temperature 1.5, top-k 3).
//!
//! Two drafters cover both forms of the rule:
//! * a draft model (the first of the model's 2 blocks, so its distribution `q` really
//!   differs from the target's `p`), sampling its drafts and reporting `q`: acceptance with
//!   `min(1, p/q)`, residual `max(0, p - q)`;
//! * n-gram lookup on a repetitive prompt: deterministic drafts, `q` one-hot.
//!
//! The test is Pearson's chi-square goodness of fit, with cells of expected count below 5
//! pooled. The seeds are fixed, so the outcome is deterministic; the threshold is the
//! chi-square quantile at significance 1e-4 (a correct implementation fails with that
//! probability over the choice of seeds). The test also checks its own power: the
//! distribution a broken rule would produce (every draft accepted: the drafter's own joint
//! distribution) would score far above the threshold with the same number of samples.

use std::collections::HashMap;
use std::sync::Arc;

use engine::speculative::draft_model::ModelDrafter;
use engine::speculative::ngram::{NgramDrafter, NgramParams};
use engine::{
    Batch, Drafter, GenerateParams, LoadOptions, Model, Prompt, Sampler, SamplingParams, SpecParams,
};

const N_TOKENS: usize = 4;
const SAMPLES: u64 = 4000;

fn sampling(seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 1.5,
        top_k: 3,
        top_p: 1.0,
        min_p: 0.0,
        seed: Some(seed),
        ..Default::default()
    }
}

/// The exact joint distribution of the first `N_TOKENS` tokens `model` samples after
/// `prompt`, by enumerating the sampling chain's candidates at every step.
fn exact_joint(model: &Model, prompt: &[u32]) -> HashMap<Vec<u32>, f64> {
    let inner = model.inner();
    let nv = model.info().n_vocab;
    let mut ctx = model.new_context().unwrap();
    let mut sampler = Sampler::new(sampling(0));
    let mut dist = vec![];
    let mut out = HashMap::new();
    let mut logits = vec![];
    // depth-first over paths; each path is evaluated from scratch (the model is tiny)
    let mut stack = vec![(Vec::<u32>::new(), 1.0f64)];
    while let Some((path, p)) = stack.pop() {
        if path.len() == N_TOKENS {
            out.insert(path, p);
            continue;
        }
        let mut b = Batch::default();
        ctx.clear_seq(0);
        let all: Vec<u32> = prompt.iter().chain(&path).copied().collect();
        b.push_seq(&all, 0, 0, false);
        inner.forward(&mut ctx, &b, &mut logits).unwrap();
        sampler.distribution(&logits[..nv], &mut dist);
        for &(t, q) in &dist {
            let mut next = path.clone();
            next.push(t);
            stack.push((next, p * q as f64));
        }
    }
    out
}

/// Pearson's statistic of `counts` (of `n` samples) against `expected` probabilities, with
/// cells of expected count below 5 pooled; returns (statistic, degrees of freedom).
fn chi_square(
    counts: &HashMap<Vec<u32>, u64>,
    expected: &HashMap<Vec<u32>, f64>,
    n: u64,
) -> (f64, usize) {
    let (mut stat, mut cells) = (0.0, 0usize);
    let (mut pooled_o, mut pooled_e) = (0.0, 0.0);
    for (path, &p) in expected {
        let e = p * n as f64;
        let o = *counts.get(path).unwrap_or(&0) as f64;
        if e < 5.0 {
            pooled_o += o;
            pooled_e += e;
        } else {
            stat += (o - e) * (o - e) / e;
            cells += 1;
        }
    }
    // samples outside the support would be a bug of their own
    let outside: u64 = counts
        .iter()
        .filter(|(k, _)| !expected.contains_key(*k))
        .map(|(_, c)| c)
        .sum();
    assert_eq!(outside, 0, "tokens sampled outside the target's support");
    if pooled_e > 0.0 {
        stat += (pooled_o - pooled_e) * (pooled_o - pooled_e) / pooled_e.max(1e-9);
        cells += 1;
    }
    (stat, cells - 1)
}

/// The chi-square quantile at significance 1e-4 (Wilson-Hilferty; z = 3.719).
fn critical(df: usize) -> f64 {
    let d = df as f64;
    let z = 3.719;
    d * (1.0 - 2.0 / (9.0 * d) + z * (2.0 / (9.0 * d)).sqrt()).powi(3)
}

/// Noncentrality a sample of `n` from `wrong` has against `expected`: the chi-square a
/// broken rule producing `wrong` would score on average (minus df).
fn power(wrong: &HashMap<Vec<u32>, f64>, expected: &HashMap<Vec<u32>, f64>, n: u64) -> f64 {
    expected
        .iter()
        .filter(|(_, &p)| p * n as f64 >= 5.0)
        .map(|(k, &p)| {
            let q = wrong.get(k).copied().unwrap_or(0.0);
            n as f64 * (q - p) * (q - p) / p
        })
        .sum()
}

fn run(
    model: &Model,
    drafter: &mut dyn Drafter,
    prompt: &[u32],
    expected: &HashMap<Vec<u32>, f64>,
) -> (f64, usize, f64) {
    let spec = SpecParams {
        draft_max: 2,
        draft_min: 0,
        p_min: 0.0,
        adaptive: false,
    };
    let mut counts: HashMap<Vec<u32>, u64> = HashMap::new();
    let mut session = model.session().unwrap();
    let (mut drafted, mut accepted) = (0, 0);
    for seed in 0..SAMPLES {
        let params = GenerateParams {
            max_tokens: Some(N_TOKENS),
            sampling: sampling(seed),
            ignore_eos: true,
            ..Default::default()
        };
        let g = session
            .generate_speculative(
                &Prompt::Tokens(prompt.to_vec()),
                &params,
                drafter,
                &spec,
                |_| true,
            )
            .unwrap();
        let st = g.speculative.unwrap();
        drafted += st.drafted;
        accepted += st.accepted;
        *counts.entry(g.ids).or_default() += 1;
    }
    let (stat, df) = chi_square(&counts, expected, SAMPLES);
    (stat, df, accepted as f64 / drafted.max(1) as f64)
}

#[test]
fn speculative_sampling_preserves_the_distribution() {
    let fx = engine_testdata::logits::arch_fixtures(None);
    let f = fx
        .iter()
        .find(|f| f.arch == "llama" && f.label == "F32")
        .unwrap();
    let opts = LoadOptions {
        threads: 1,
        n_ctx: 64,
        ..Default::default()
    };
    let model = Model::load(&f.model, &opts).unwrap();
    let draft_path = engine_testdata::first_layers_model(&f.model, 1).unwrap();
    let draft = Arc::new(Model::load_sharing(&draft_path, &opts, &model).unwrap());

    // draft model: q sampled and reported
    let prompt = &f.tokens[..12];
    let expected = exact_joint(&model, prompt);
    let total: f64 = expected.values().sum();
    assert!((total - 1.0).abs() < 1e-4, "exact joint sums to {total}");
    let q_joint = exact_joint(&draft, prompt);
    let mut md = ModelDrafter::new(draft.clone(), &model, 1, 64, 0.0).unwrap();
    let (stat, df, acc) = run(&model, &mut md, prompt, &expected);
    let crit = critical(df);
    let lambda = power(&q_joint, &expected, SAMPLES);
    eprintln!(
        "draft model: chi2 {stat:.1} on {df} df (critical {crit:.1}), acceptance {acc:.2}, \
         a broken rule would add {lambda:.0}"
    );
    assert!(
        acc > 0.1 && acc < 0.95,
        "both outcomes must be exercised: {acc}"
    );
    assert!(
        lambda > 5.0 * crit,
        "the test has too little power: {lambda}"
    );
    assert!(
        stat < crit,
        "chi2 {stat:.1} > {crit:.1}: the distribution changed"
    );

    // n-gram drafts on a repetitive prompt: q one-hot
    let pattern = &f.tokens[1..4];
    let prompt: Vec<u32> = std::iter::once(f.tokens[0])
        .chain(pattern.iter().cycle().take(12).copied())
        .collect();
    let expected = exact_joint(&model, &prompt);
    let mut ng = NgramDrafter::new(NgramParams { n_min: 1, n_max: 3 });
    let (stat, df, acc) = run(&model, &mut ng, &prompt, &expected);
    let crit = critical(df);
    eprintln!("n-gram: chi2 {stat:.1} on {df} df (critical {crit:.1}), acceptance {acc:.2}");
    assert!(
        acc > 0.05 && acc < 0.95,
        "both outcomes must be exercised: {acc}"
    );
    assert!(
        stat < crit,
        "chi2 {stat:.1} > {crit:.1}: the distribution changed"
    );
}
