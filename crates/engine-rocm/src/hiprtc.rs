//! hiprtc, loaded at run time through the shared loader ([`engine_gpu::rtc`]): compiles the
//! kernel program to an HSA code object for one gfx target. ROCm 6 and newer ship it as
//! `libhiprtc.so`; ROCm 5 built it into `libamdhip64.so`. `ENGINE_HIPRTC_LIB` (a path)
//! overrides the search.

use engine_gpu::rtc::{Rtc, RtcApi};

use crate::arch::Gfx;

/// Where hiprtc is and what its symbols are called.
pub const API: RtcApi = RtcApi {
    label: "hiprtc (the HIP runtime compiler)",
    prefix: "hiprtc",
    code_size: "GetCodeSize",
    code: "GetCode",
    env: "ENGINE_HIPRTC_LIB",
    candidates: &[
        "libhiprtc.so",
        "libhiprtc.so.7",
        "libhiprtc.so.6",
        "libamdhip64.so.5",
        "libamdhip64.so",
        "hiprtc0700.dll",
        "hiprtc0600.dll",
    ],
    install_hint: "install ROCm's hiprtc (part of the HIP runtime)",
    file_name: "engine_kernels.hip",
};

/// A loaded hiprtc, with the HIP runtime version it ships with (0 when unknown).
pub struct Hiprtc(Rtc, i32);

/// `hipRuntimeGetVersion`'s encoding: major * 10^7 + minor * 10^5 + patch.
pub fn version_name(v: i32) -> String {
    format!("{}.{}.{}", v / 10_000_000, (v / 100_000) % 100, v % 100_000)
}

/// Whether a ROCm of `runtime_version` can compile for `target`. ROCm before 5.5 has no
/// device libraries for RDNA3 (gfx11), and its hiprtc aborts the process instead of
/// returning an error, so such a pair is refused before compiling.
pub fn check_support(runtime_version: i32, target: Gfx) -> Result<(), String> {
    if runtime_version > 0 && runtime_version < 50_500_000 && target.major >= 11 {
        return Err(format!(
            "ROCm {} cannot compile for {target}: RDNA3 support arrived in ROCm 5.5 (its \
             hiprtc aborts on gfx11); install ROCm 6 or newer",
            version_name(runtime_version)
        ));
    }
    Ok(())
}

/// The compiler options for `target`: its ISA, full optimisation, and the wavefront size
/// the host launches with (the kernels check it against the compiler's own).
pub fn options(target: Gfx) -> Vec<String> {
    vec![
        format!("--offload-arch={target}"),
        "-O3".to_string(),
        "-std=c++17".to_string(),
        format!("-DEG_WARP={}", target.wave_size()),
    ]
}

impl Hiprtc {
    /// Loads hiprtc, or says what was tried.
    pub fn load() -> Result<Hiprtc, String> {
        let rtc = Rtc::load(API)?;
        let runtime = crate::hip::Hip::get().map_or(0, |h| h.version());
        Ok(Hiprtc(rtc, runtime))
    }

    /// The HIP runtime's version (0 when unknown).
    pub fn runtime_version(&self) -> i32 {
        self.1
    }

    /// `(major, minor)`.
    pub fn version(&self) -> (i32, i32) {
        self.0.version()
    }

    /// The library that was loaded.
    pub fn path(&self) -> &str {
        self.0.path()
    }

    /// Compiles `src` for `target` and returns the code object, or the compiler's log.
    pub fn compile(&self, src: &str, target: Gfx) -> Result<Vec<u8>, String> {
        check_support(self.1, target)?;
        self.0.compile(src, &target.to_string(), &options(target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_rocm_is_refused_for_rdna3_before_it_can_abort() {
        let g = |s| Gfx::parse(s).unwrap();
        assert_eq!(version_name(50221153), "5.2.21153");
        let e = check_support(50221153, g("gfx1103")).unwrap_err();
        assert!(
            e.contains("ROCm 5.2.21153 cannot compile for gfx1103"),
            "{e}"
        );
        assert!(check_support(50221153, g("gfx1030")).is_ok());
        assert!(check_support(60342134, g("gfx1103")).is_ok());
        assert!(check_support(0, g("gfx1151")).is_ok());
    }

    #[test]
    fn options_carry_the_target_and_its_wave_size() {
        let o = options(Gfx::parse("gfx1103").unwrap());
        assert!(o.contains(&"--offload-arch=gfx1103".to_string()));
        assert!(o.contains(&"-DEG_WARP=32".to_string()));
        let o = options(Gfx::parse("gfx90a").unwrap());
        assert!(o.contains(&"-DEG_WARP=64".to_string()));
    }
}
