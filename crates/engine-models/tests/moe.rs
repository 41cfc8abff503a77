//! Mixture-of-experts execution: decode reads only the experts the router selected, prefill
//! runs one matmul per selected expert over all of its tokens, and a Llama file with experts
//! (Mixtral layout) runs through the same MoE path.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use common::{f32_bytes, keep, rewrite_gguf, temp_dir, tensor_f32, CountingBackend, MatmulCall};
use engine_core::{Backend, DType};
use engine_cpu::CpuBackend;
use engine_gguf::{GgufModel, Value};
use engine_models::{Batch, ContextOptions, Model};
use engine_testdata::logits::{arch_fixtures, judge, logit_metrics, tier, ArchFixture};

fn fixture(arch: &str, label: &str) -> ArchFixture {
    arch_fixtures(None)
        .into_iter()
        .find(|f| f.arch == arch && f.label == label)
        .unwrap_or_else(|| panic!("no fixture {arch}/{label}"))
}

fn opts() -> ContextOptions {
    ContextOptions {
        n_ctx: 512,
        n_seq: 1,
        n_batch: 512,
        kv_type: DType::F32,
    }
}

/// Expert matmuls of `calls` keyed by (layer, projection) -> expert -> rows of each call.
type ExpertCalls = BTreeMap<(usize, String), BTreeMap<usize, Vec<usize>>>;

/// Parses `blk.{l}.ffn_{proj}_exps.weight[{e}]`.
fn expert_calls(calls: &[MatmulCall]) -> ExpertCalls {
    let mut out = ExpertCalls::new();
    for c in calls {
        let Some(rest) = c.weight.strip_prefix("blk.") else {
            continue;
        };
        let Some((layer, rest)) = rest.split_once('.') else {
            continue;
        };
        let Some((proj, rest)) = rest.split_once("_exps.weight[") else {
            continue;
        };
        let e: usize = rest.trim_end_matches(']').parse().unwrap();
        out.entry((layer.parse().unwrap(), proj.to_string()))
            .or_default()
            .entry(e)
            .or_default()
            .push(c.rows);
    }
    out
}

struct MoeFacts {
    n_expert: usize,
    n_used: usize,
    moe_layers: Vec<usize>,
    /// Bytes of all experts of all MoE layers (all projections).
    expert_bytes: usize,
}

fn moe_facts(g: &GgufModel) -> MoeFacts {
    let arch = g
        .get_str("general.architecture")
        .unwrap()
        .unwrap()
        .to_string();
    let k = |s: &str| g.get_usize(&format!("{arch}.{s}")).unwrap().unwrap();
    let nextn = g
        .get_usize(&format!("{arch}.nextn_predict_layers"))
        .unwrap()
        .unwrap_or(0);
    let n_run = k("block_count") - nextn;
    let moe_layers: Vec<usize> = (0..n_run)
        .filter(|l| g.tensor(&format!("blk.{l}.ffn_up_exps.weight")).is_some())
        .collect();
    let expert_bytes = moe_layers
        .iter()
        .flat_map(|l| ["gate", "up", "down"].map(|p| format!("blk.{l}.ffn_{p}_exps.weight")))
        .filter_map(|n| g.tensor(&n))
        .map(|t| t.size)
        .sum();
    MoeFacts {
        n_expert: k("expert_count"),
        n_used: k("expert_used_count"),
        moe_layers,
        expert_bytes,
    }
}

fn load_counting(f: &ArchFixture) -> (Box<dyn Model>, Arc<CountingBackend>, MoeFacts) {
    let g = GgufModel::open(&f.model, true).unwrap();
    let counting = CountingBackend::new(Arc::new(CpuBackend::new(2)));
    let model = engine_models::load(&g, counting.clone()).unwrap();
    (model, counting, moe_facts(&g))
}

const MOE_FIXTURES: &[(&str, &str)] = &[
    ("qwen3moe", "F32"),
    ("qwen3moe", "Q4_K_M"),
    ("gpt-oss", "MXFP4"),
    ("glm4moe", "F32"),
];

#[test]
fn decode_reads_only_the_selected_experts() {
    for &(arch, label) in MOE_FIXTURES {
        let f = fixture(arch, label);
        let (model, counting, facts) = load_counting(&f);
        let mut ctx = model.new_context(opts()).unwrap();
        let split = 40;
        let mut b = Batch::default();
        b.push_seq(&f.tokens[..split], 0, 0, false);
        let mut logits = vec![];
        model.forward(&mut ctx, &b, &mut logits).unwrap();
        let mut read = 0usize;
        for (i, &t) in f.tokens.iter().enumerate().skip(split) {
            counting.take();
            b.clear();
            b.push(t, i as u32, 0, true);
            model.forward(&mut ctx, &b, &mut logits).unwrap();
            let calls = counting.take();
            let by = expert_calls(&calls);
            for &l in &facts.moe_layers {
                let projs: Vec<_> = by.iter().filter(|((ll, _), _)| *ll == l).collect();
                assert!(!projs.is_empty(), "{arch}: no expert matmul in layer {l}");
                let mut chosen: Option<BTreeSet<usize>> = None;
                for ((_, proj), experts) in projs {
                    // exactly k experts, each multiplied once with the one decoded row
                    assert_eq!(
                        experts.len(),
                        facts.n_used,
                        "{arch} {label} layer {l} {proj}: experts {:?}",
                        experts.keys()
                    );
                    assert!(experts.values().all(|rows| rows == &[1]), "{experts:?}");
                    let set: BTreeSet<usize> = experts.keys().copied().collect();
                    if let Some(c) = &chosen {
                        assert_eq!(c, &set, "{arch} layer {l}: projections disagree");
                    }
                    chosen = Some(set);
                }
            }
            read += calls
                .iter()
                .filter(|c| c.weight.contains("_exps.weight["))
                .map(|c| c.bytes)
                .sum::<usize>();
        }
        let steps = f.tokens.len() - split;
        let per_token = read / steps;
        let all = facts.expert_bytes;
        eprintln!(
            "{arch} {label}: a decode step reads {per_token} of {all} expert bytes ({} of {} experts per layer)",
            facts.n_used, facts.n_expert
        );
        assert_eq!(per_token * facts.n_expert, all * facts.n_used);
    }
}

#[test]
fn prefill_runs_one_matmul_per_selected_expert() {
    for &(arch, label) in MOE_FIXTURES {
        let f = fixture(arch, label);
        let (model, counting, facts) = load_counting(&f);
        let mut ctx = model.new_context(opts()).unwrap();
        let mut b = Batch::default();
        b.push_seq(&f.tokens, 0, 0, true);
        let mut logits = vec![];
        counting.take();
        model.forward(&mut ctx, &b, &mut logits).unwrap();
        let by = expert_calls(&counting.take());
        let n = f.tokens.len();
        for &l in &facts.moe_layers {
            for ((ll, proj), experts) in &by {
                if *ll != l {
                    continue;
                }
                // one call per expert, and the calls cover every (token, slot) once
                assert!(
                    experts.values().all(|rows| rows.len() == 1),
                    "{arch} layer {l} {proj}: an expert ran more than once: {experts:?}"
                );
                let rows: usize = experts.values().map(|r| r[0]).sum();
                assert_eq!(rows, n * facts.n_used, "{arch} layer {l} {proj}");
            }
        }
        let m = logit_metrics(&f.logits, &logits, f.n_vocab);
        assert!(judge(&m, tier(&f.arch, &f.label)).is_empty(), "{m:?}");
    }
}

/// A Llama file with experts (Mixtral layout): the llama fixture with its feed-forward
/// weights copied into four identical experts and a random router. Renormalised top-2
/// weights of identical experts sum to one, so the logits must still be llama.cpp's dense
/// ones, while every feed-forward now runs through routing and the expert matmuls.
#[test]
fn llama_with_experts_runs_the_moe_path() {
    let f = fixture("llama", "F32");
    let dir = temp_dir("mixtral");
    let dst = dir.join("llama-moe.gguf");
    let n_expert = 4usize;
    let mut seed = 12345u64;
    rewrite_gguf(
        &f.model,
        &dst,
        |k, v| Some((k.to_string(), v.clone())),
        |g, name| {
            for p in ["gate", "up", "down"] {
                if let Some(l) = name
                    .strip_prefix("blk.")
                    .and_then(|r| r.strip_suffix(&format!(".ffn_{p}.weight")))
                {
                    let (v, shape) = tensor_f32(g, name);
                    let data: Vec<f32> = (0..n_expert).flat_map(|_| v.iter().copied()).collect();
                    let mut out = vec![(
                        format!("blk.{l}.ffn_{p}_exps.weight"),
                        DType::F32,
                        vec![n_expert, shape[0], shape[1]],
                        f32_bytes(&data),
                    )];
                    if p == "gate" {
                        let e = shape[1];
                        let router: Vec<f32> = (0..n_expert * e)
                            .map(|_| {
                                seed = seed
                                    .wrapping_mul(6364136223846793005)
                                    .wrapping_add(1442695040888963407);
                                ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.5
                            })
                            .collect();
                        out.push((
                            format!("blk.{l}.ffn_gate_inp.weight"),
                            DType::F32,
                            vec![n_expert, e],
                            f32_bytes(&router),
                        ));
                    }
                    return out;
                }
            }
            keep(g, name)
        },
        &[
            ("llama.expert_count", Value::U32(n_expert as u32)),
            ("llama.expert_used_count", Value::U32(2)),
        ],
    );
    let g = GgufModel::open(&dst, true).unwrap();
    let counting = CountingBackend::new(Arc::new(CpuBackend::new(2)) as Arc<dyn Backend>);
    let model = engine_models::load(&g, counting.clone()).unwrap();
    let mut ctx = model.new_context(opts()).unwrap();
    let mut b = Batch::default();
    b.push_seq(&f.tokens, 0, 0, true);
    let mut logits = vec![];
    model.forward(&mut ctx, &b, &mut logits).unwrap();
    let by = expert_calls(&counting.take());
    assert!(
        by.keys().any(|(l, p)| *l == 0 && p == "ffn_up") && by.keys().any(|(l, _)| *l == 1),
        "no expert matmuls: {:?}",
        by.keys()
    );
    let m = logit_metrics(&f.logits, &logits, f.n_vocab);
    let fails = judge(&m, tier("llama", "F32"));
    eprintln!("llama with 4 identical experts vs llama.cpp's dense logits: {m:?}");
    assert!(fails.is_empty(), "{fails:?}");
    std::fs::remove_dir_all(dir).ok();
}
