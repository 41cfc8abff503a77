//! The backend the model tests run on: the CPU, or the GPU named by `ENGINE_TEST_DEVICE`
//! (`cuda` or `cuda:N`), so the same fixtures check a GPU backend on a machine that has one.
//! A GPU that is asked for and cannot be opened fails the test with the reason: a run that
//! names a device must not quietly check the CPU instead.

use std::sync::Arc;

use engine_core::Backend;
use engine_cpu::CpuBackend;

/// The device named by `ENGINE_TEST_DEVICE` (default `cpu`), with 2 CPU threads.
pub fn backend() -> Arc<dyn Backend> {
    let name = std::env::var("ENGINE_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    let (kind, ordinal) = match name.split_once(':') {
        Some((k, n)) => (
            k,
            n.parse::<usize>().expect("ENGINE_TEST_DEVICE: bad ordinal"),
        ),
        None => (name.as_str(), 0),
    };
    match kind {
        "cpu" => Arc::new(CpuBackend::new(2)),
        "cuda" => {
            let cache = engine_gpu::cache::CodeCache::default_for("cuda");
            match engine_cuda::open(ordinal, &cache) {
                Ok(gpu) => Arc::new(gpu),
                Err(why) => panic!("ENGINE_TEST_DEVICE={name}: {why}"),
            }
        }
        _ => panic!("ENGINE_TEST_DEVICE={name}: expected cpu, cuda or cuda:N"),
    }
}

/// The device's name for log lines.
pub fn name() -> String {
    std::env::var("ENGINE_TEST_DEVICE").unwrap_or_else(|_| "cpu".into())
}
