//! Hybrid memory: the recurrent (conv + SSM) state of Nemotron-H's Mamba-2 layers next to
//! the KV cache of its attention layer, per sequence slot, under batching, when a sequence
//! is cancelled and its slot reused, when a whole sequence is copied to reuse its prefix,
//! and the clear errors for rewinds that recurrent state cannot do.

use std::sync::Arc;

use engine_core::{Backend, DType};
use engine_cpu::CpuBackend;
use engine_gguf::GgufModel;
use engine_models::{Batch, Context, ContextOptions, Model};
use engine_testdata::logits::{arch_fixtures, judge, logit_metrics, tier, ArchFixture};

fn fixture(arch: &str) -> ArchFixture {
    arch_fixtures(None)
        .into_iter()
        .find(|f| f.arch == arch && f.label == "F32")
        .unwrap()
}

fn load(f: &ArchFixture) -> Box<dyn Model> {
    let g = GgufModel::open(&f.model, true).unwrap();
    let be: Arc<dyn Backend> = Arc::new(CpuBackend::new(2));
    engine_models::load(&g, be).unwrap()
}

fn ctx(model: &dyn Model, n_seq: usize) -> Context {
    model
        .new_context(ContextOptions {
            n_ctx: 128,
            n_seq,
            n_batch: 64,
            kv_type: DType::F32,
        })
        .unwrap()
}

/// Feeds `tokens` to `seq` starting at `start`, one per step, returning all logits.
fn decode(
    model: &dyn Model,
    ctx: &mut Context,
    seq: u32,
    start: usize,
    tokens: &[u32],
) -> Vec<f32> {
    let mut out = vec![];
    let mut b = Batch::default();
    let mut logits = vec![];
    for (i, &t) in tokens.iter().enumerate() {
        b.clear();
        b.push(t, (start + i) as u32, seq, true);
        model.forward(ctx, &b, &mut logits).unwrap();
        out.extend_from_slice(&logits);
    }
    out
}

#[test]
fn nemotron_h_keeps_recurrent_and_kv_memory() {
    let f = fixture("nemotron_h");
    let model = load(&f);
    let c = ctx(&*model, 1);
    assert!(c.is_recurrent());
    // conv state 3 x 320 and SSM state 256 x 16 per Mamba layer (two), plus a 128-position
    // KV cache of 2 x 32 keys and values for the attention layer (F32)
    assert_eq!(
        c.kv_bytes(),
        2 * (3 * 320 + 256 * 16) * 4 + 128 * (64 + 64) * 4
    );
    let est = model.memory_estimate(c.options());
    assert_eq!(est.kv_cache, c.kv_bytes());
}

#[test]
fn cancelled_sequence_slot_is_reused_cleanly() {
    let f = fixture("nemotron_h");
    let model = load(&f);
    let n = f.tokens.len();
    let alone = decode(&*model, &mut ctx(&*model, 1), 0, 0, &f.tokens);

    let mut c = ctx(&*model, 2);
    // slot 1 runs something else for a while, then its request is cancelled
    let other: Vec<u32> = f.tokens.iter().rev().take(17).copied().collect();
    decode(&*model, &mut c, 1, 0, &other);
    c.clear_seq(1);
    // slot 0 is busy too; slot 1 now serves the fixture's sequence, decoded alongside it
    decode(&*model, &mut c, 0, 0, &other[..5]);
    let mut b = Batch::default();
    let mut logits = vec![];
    let mut got = vec![];
    for i in 0..n {
        b.clear();
        b.push(f.tokens[i], i as u32, 1, true);
        b.push(other[i % other.len()], (5 + i) as u32, 0, true);
        model.forward(&mut c, &b, &mut logits).unwrap();
        got.extend_from_slice(&logits[..f.n_vocab]);
    }
    assert!(got == alone, "a reused slot must start from a clean state");
    let m = logit_metrics(&f.logits, &got, f.n_vocab);
    assert!(judge(&m, tier(&f.arch, &f.label)).is_empty(), "{m:?}");

    // restarting at position 0 without clearing also starts from a clean state
    let again = decode(&*model, &mut c, 1, 0, &f.tokens[..8]);
    assert!(again[..] == alone[..8 * f.n_vocab]);
}

#[test]
fn whole_sequence_copy_continues_like_the_original() {
    let f = fixture("nemotron_h");
    let model = load(&f);
    let (n, v) = (f.tokens.len(), f.n_vocab);
    let alone = decode(&*model, &mut ctx(&*model, 1), 0, 0, &f.tokens);
    let split = 20;
    let mut c = ctx(&*model, 3);
    let mut b = Batch::default();
    b.push_seq(&f.tokens[..split], 0, 0, false);
    let mut logits = vec![];
    model.forward(&mut c, &b, &mut logits).unwrap();
    // fork the prompt into slots 1 and 2 (slot 2 held something before)
    decode(&*model, &mut c, 2, 0, &f.tokens[30..40]);
    c.copy_prefix(0, 1, split).unwrap();
    c.copy_prefix(0, 2, split).unwrap();
    assert_eq!((c.seq_len(1), c.seq_len(2)), (split, split));
    // all three continue together with the same tokens: each equals the original run
    let mut got = [vec![], vec![], vec![]];
    for i in split..n {
        b.clear();
        for s in 0..3u32 {
            b.push(f.tokens[i], i as u32, s, true);
        }
        model.forward(&mut c, &b, &mut logits).unwrap();
        for (s, g) in got.iter_mut().enumerate() {
            g.extend_from_slice(&logits[s * v..(s + 1) * v]);
        }
    }
    for (s, g) in got.iter().enumerate() {
        assert!(
            g[..] == alone[split * v..],
            "slot {s} diverged after the copy"
        );
    }
}

#[test]
fn partial_rewinds_are_refused_for_recurrent_models() {
    let f = fixture("nemotron_h");
    let model = load(&f);
    let mut c = ctx(&*model, 2);
    decode(&*model, &mut c, 0, 0, &f.tokens[..12]);
    let e = c.truncate_seq(0, 5).unwrap_err().to_string();
    assert!(
        e.contains("recurrent") && e.contains("12") && e.contains('5'),
        "{e}"
    );
    let e = c.copy_prefix(0, 1, 5).unwrap_err().to_string();
    assert!(
        e.contains("recurrent") && e.contains("whole sequence"),
        "{e}"
    );
    let mut b = Batch::default();
    b.push(f.tokens[5], 5, 0, true);
    let mut logits = vec![];
    let e = model
        .forward(&mut c, &b, &mut logits)
        .unwrap_err()
        .to_string();
    assert!(e.contains("position 5") && e.contains("recurrent"), "{e}");
    assert_eq!(c.seq_len(0), 12, "a refused batch changes nothing");
    // no-ops and full clears are fine
    c.truncate_seq(0, 12).unwrap();
    c.truncate_seq(0, 100).unwrap();
    c.copy_prefix(0, 1, 0).unwrap();
    c.truncate_seq(0, 0).unwrap();
    assert_eq!(c.seq_len(0), 0);
    assert!(c.truncate_seq(7, 0).is_err());
}

#[test]
fn attention_models_can_rewind_and_copy_prefixes() {
    let f = fixture("qwen3");
    let model = load(&f);
    let v = f.n_vocab;
    let alone = decode(&*model, &mut ctx(&*model, 1), 0, 0, &f.tokens[..24]);
    let mut c = ctx(&*model, 2);
    assert!(!c.is_recurrent());
    decode(&*model, &mut c, 0, 0, &f.tokens[..16]);
    c.truncate_seq(0, 10).unwrap();
    let again = decode(&*model, &mut c, 0, 10, &f.tokens[10..24]);
    assert!(again[..] == alone[10 * v..], "rewound sequence diverged");
    c.copy_prefix(0, 1, 12).unwrap();
    let copy = decode(&*model, &mut c, 1, 12, &f.tokens[12..24]);
    assert!(copy[..] == alone[12 * v..], "copied prefix diverged");
}
