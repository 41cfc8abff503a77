//! Every GPU operation against the CPU backend on random data, on a real AMD GPU (the shared
//! conformance check of `engine-gpu/tests/conformance`), with the model's memory in the pool
//! `--gpu-memory auto` picks. Without ROCm or a GPU the test prints what was not checked and
//! passes: CI has no GPU, and no AMD GPU was reachable when this was written.

#[path = "../../engine-gpu/tests/conformance/mod.rs"]
mod conformance;

#[test]
fn every_gpu_op_matches_the_cpu_backend() {
    if let Some(why) = engine_rocm::unavailable_reason() {
        eprintln!("SKIPPED: no ROCm GPU; the GPU ops were not run ({why})");
        return;
    }
    let cache = engine_gpu::cache::CodeCache::default_for("rocm");
    let gpu = engine_rocm::open(0, &cache, engine_rocm::memory::Choice::Auto, None)
        .expect("open ROCm device 0");
    conformance::every_op_matches_the_cpu_backend(Box::new(gpu));
}
