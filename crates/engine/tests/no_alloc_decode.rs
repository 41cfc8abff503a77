//! The decode loop allocates nothing per token: a counting global allocator observes the
//! allocations made between the 8th and the 40th generated token of a greedy generation and
//! of a sampled one (penalties and truncation samplers on).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

struct Counting;

static COUNT: AtomicUsize = AtomicUsize::new(0);
static ARMED: AtomicBool = AtomicBool::new(false);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) {
            COUNT.fetch_add(1, Ordering::Relaxed);
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) {
            COUNT.fetch_add(1, Ordering::Relaxed);
        }
        System.realloc(ptr, layout, new)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn no_allocation_per_decoded_token() {
    let path = engine_testdata::fixtures_dir().join("arch/llama/llama-Q4_K_M.gguf");
    let model = engine::Model::load(
        &path,
        &engine::LoadOptions {
            threads: 2,
            n_ctx: 256,
            ..Default::default()
        },
    )
    .unwrap();
    for sampling in [
        engine::SamplingParams::greedy(),
        engine::SamplingParams {
            seed: Some(1),
            repeat_penalty: 1.1,
            frequency_penalty: 0.1,
            ..Default::default()
        },
    ] {
        let params = engine::GenerateParams {
            max_tokens: Some(48),
            sampling: sampling.clone(),
            ignore_eos: true,
            ..Default::default()
        };
        let mut session = model.session().unwrap();
        let mut n = 0;
        let mut during = 0;
        session
            .generate(
                &engine::Prompt::Tokens(vec![1, 50, 60, 70]),
                &params,
                |_| {
                    n += 1;
                    if n == 8 {
                        COUNT.store(0, Ordering::SeqCst);
                        ARMED.store(true, Ordering::SeqCst);
                    }
                    if n == 40 {
                        ARMED.store(false, Ordering::SeqCst);
                        during = COUNT.load(Ordering::SeqCst);
                    }
                    true
                },
            )
            .unwrap();
        assert_eq!(n, 48);
        assert_eq!(
            during, 0,
            "{during} allocations during 32 decode steps with {sampling:?}"
        );
    }
}

#[test]
fn hidden_states_match_the_logits() {
    // The logits are the output projection of the hidden states: check one row by hand.
    let path = engine_testdata::fixtures_dir().join("arch/qwen2/qwen2-F32.gguf");
    let model = engine::Model::load(
        &path,
        &engine::LoadOptions {
            threads: 1,
            n_ctx: 64,
            kv_type: engine::DType::F32,
            ..Default::default()
        },
    )
    .unwrap();
    let ids = [1u32, 20, 30, 40];
    let mut s = model.session().unwrap();
    let hidden = s.hidden_states(&ids).unwrap();
    let logits = s.logits_all(&ids).unwrap();
    let e = model.info().n_embd;
    let nv = model.info().n_vocab;
    assert_eq!(hidden.len(), ids.len() * e);
    let g = model.gguf();
    let t = g.tensor("token_embd.weight").unwrap();
    let w = engine_core::quant::dequantize_to_vec(t.dtype, g.tensor_data(t).as_slice(), nv * e)
        .unwrap();
    let last = &hidden[3 * e..4 * e];
    for v in [0usize, 7, nv - 1] {
        let want: f32 = (0..e).map(|i| last[i] * w[v * e + i]).sum();
        assert!(
            (want - logits[3 * nv + v]).abs() < 1e-3,
            "vocab {v}: {want} vs {}",
            logits[3 * nv + v]
        );
    }
}
