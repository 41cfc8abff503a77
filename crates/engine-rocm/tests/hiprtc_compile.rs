//! The run-time compile path without a GPU: hiprtc compiles the expanded kernel program to
//! an HSA code object for each CI target. Needs hiprtc (a ROCm install, `ENGINE_HIPRTC_LIB`,
//! or the HIP runtime that `cargo xtask check-kernels` installs); without it the test says
//! what it skipped. A hiprtc too old for a target (ROCm 5.2's knows no gfx11) is reported
//! per target, and at least one target must compile.

use engine_rocm::arch::{Gfx, CI_TARGETS};

#[test]
fn hiprtc_compiles_the_kernels() {
    let rtc = match engine_rocm::hiprtc::Hiprtc::load() {
        Ok(r) => r,
        Err(why) => {
            eprintln!("SKIPPED: hiprtc compile of the ROCm kernels not checked: {why}");
            return;
        }
    };
    let src = engine_gpu::source::program().unwrap();
    let mut compiled = Vec::new();
    for name in CI_TARGETS.iter().chain(["gfx1030", "gfx906"].iter()) {
        let target = Gfx::parse(name).unwrap();
        match rtc.compile(&src, target) {
            Ok(code) => {
                assert_eq!(&code[..4], b"\x7fELF", "{name}: not an ELF code object");
                eprintln!(
                    "hiprtc {:?} ({}) compiled the kernels for {name}: {} bytes",
                    rtc.version(),
                    rtc.path(),
                    code.len()
                );
                compiled.push(*name);
            }
            Err(e) => {
                let first = e.lines().take(6).collect::<Vec<_>>().join("\n");
                eprintln!(
                    "hiprtc {:?} could not compile for {name}:\n{first}",
                    rtc.version()
                );
            }
        }
    }
    assert!(!compiled.is_empty(), "hiprtc compiled for no target");
}
