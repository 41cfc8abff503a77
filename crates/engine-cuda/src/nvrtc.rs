//! NVRTC, loaded at run time through the shared loader ([`engine_gpu::rtc`]): compiles the
//! kernel program to a cubin for a real SM.
//!
//! A cubin rather than PTX: PTX from a newer NVRTC is refused by an older driver
//! (`CUDA_ERROR_UNSUPPORTED_PTX_VERSION`), a cubin for the device's SM is not. The library
//! is found through `ENGINE_NVRTC_LIB` (a path), else the usual names from CUDA 13 down to
//! 11, so a CUDA 13-only system (GB10) is found too.

use engine_gpu::rtc::{Rtc, RtcApi};

/// Where NVRTC is and what its symbols are called.
pub const API: RtcApi = RtcApi {
    label: "NVRTC (the CUDA runtime compiler)",
    prefix: "nvrtc",
    code_size: "GetCUBINSize",
    code: "GetCUBIN",
    env: "ENGINE_NVRTC_LIB",
    candidates: &[
        "libnvrtc.so",
        "libnvrtc.so.13",
        "libnvrtc.so.12",
        "libnvrtc.so.11.2",
        "nvrtc64_130_0.dll",
        "nvrtc64_120_0.dll",
    ],
    install_hint: "install the CUDA toolkit's libnvrtc",
    file_name: "engine_kernels.cu",
};

/// A loaded NVRTC.
pub struct Nvrtc(Rtc);

impl Nvrtc {
    /// Loads NVRTC, or says what was tried.
    pub fn load() -> Result<Nvrtc, String> {
        Rtc::load(API).map(Nvrtc)
    }

    /// `(major, minor)`.
    pub fn version(&self) -> (i32, i32) {
        self.0.version()
    }

    /// The library that was loaded.
    pub fn path(&self) -> &str {
        self.0.path()
    }

    /// Compiles `src` for `arch` (e.g. `sm_86`, `sm_121a`) and returns the cubin, or the
    /// compiler's log.
    pub fn compile_cubin(&self, src: &str, arch: &str, extra: &[&str]) -> Result<Vec<u8>, String> {
        let mut opts = vec![
            format!("--gpu-architecture={arch}"),
            "--std=c++17".to_string(),
            "-default-device".to_string(),
        ];
        opts.extend(extra.iter().map(|e| e.to_string()));
        self.0.compile(src, arch, &opts)
    }
}
