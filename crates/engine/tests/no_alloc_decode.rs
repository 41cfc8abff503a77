//! The decode loop allocates nothing per token: a counting global allocator observes the
//! allocations made between the 8th and the 40th generated token of a greedy generation and
//! of a sampled one (penalties and truncation samplers on), for a dense model, MoE models
//! (expert routing and grouping) and a hybrid Mamba-2 model (recurrent state).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

// The counter is global: this binary holds this one test only, so that nothing else (other
// tests, the harness reporting them) allocates while it counts.

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
    for file in [
        "llama/llama-Q4_K_M.gguf",
        "qwen3moe/qwen3moe-Q4_K_M.gguf",
        "gpt-oss/gpt-oss-MXFP4.gguf",
        "glm4moe/glm4moe-F32.gguf",
        "nemotron_h/nemotron_h-F32.gguf",
    ] {
        decode_without_allocating(file);
    }
}

fn decode_without_allocating(file: &str) {
    let path = engine_testdata::fixtures_dir().join("arch").join(file);
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
        let out = session
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
        assert_eq!(out.ids.len(), 48);
        assert_eq!(
            during, 0,
            "{file}: {during} allocations during 32 decode steps with {sampling:?}"
        );
    }
}
