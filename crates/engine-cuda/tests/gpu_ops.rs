//! Every GPU operation against the CPU backend on random data, on a real CUDA device (the
//! shared conformance check of `engine-gpu/tests/conformance`). Without one (no driver, no
//! GPU) the test prints what was not checked and passes: CI has no GPU.

#[path = "../../engine-gpu/tests/conformance/mod.rs"]
mod conformance;

#[test]
fn every_gpu_op_matches_the_cpu_backend() {
    if let Some(why) = engine_cuda::unavailable_reason() {
        eprintln!("SKIPPED: no CUDA GPU; the GPU ops were not run ({why})");
        return;
    }
    let cache = engine_gpu::cache::CodeCache::default_for("cuda");
    let gpu = engine_cuda::open(0, &cache).expect("open CUDA device 0");
    conformance::every_op_matches_the_cpu_backend(Box::new(gpu));
}
