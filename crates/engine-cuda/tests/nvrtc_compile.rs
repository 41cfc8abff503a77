//! The run-time compile path without a GPU: NVRTC compiles the expanded kernel program to a
//! cubin for every SM our users run. Needs NVRTC (`ENGINE_NVRTC_LIB`, set by
//! `cargo xtask check-kernels`, or a system CUDA); without it the test says what it skipped.

#[test]
fn nvrtc_compiles_every_kernel_for_every_target() {
    let nv = match engine_cuda::nvrtc::Nvrtc::load() {
        Ok(n) => n,
        Err(why) => {
            eprintln!("SKIPPED: NVRTC compile of the CUDA kernels not checked: {why}");
            return;
        }
    };
    let src = engine_gpu::source::program().unwrap();
    for target in engine_cuda::arch::CI_TARGETS {
        let cubin = nv
            .compile_cubin(&src, target, &[])
            .unwrap_or_else(|e| panic!("{target}: {e}"));
        assert_eq!(&cubin[..4], b"\x7fELF", "{target}: not an ELF cubin");
        eprintln!(
            "NVRTC {:?} ({}) compiled the kernels for {target}: {} bytes",
            nv.version(),
            nv.path(),
            cubin.len()
        );
    }
}
