//! The ROCm half of `cargo xtask check-kernels`: compiles every GPU kernel for the AMD
//! targets our users run, with no GPU and no ROCm install beyond Debian's packages.
//!
//! 1. Debian's clang 19 (HIP mode, `--cuda-device-only --no-gpu-bundle-output`) with the HIP
//!    headers of `libamdhip64-dev` and the bitcode of `rocm-device-libs` builds each
//!    `kernels/cuda/*.cu` into a code object for gfx1103 (Radeon 780M), gfx1100, gfx1151
//!    and gfx90a (wave64). Debian's device libraries (ROCm 5.2) predate RDNA3, so the one
//!    file they lack per target, `oclc_isa_version_<N>.bc` (a single constant: the ISA
//!    version), is generated from an existing one into `.cache/rocm-device-libs`. Each
//!    object's metadata must declare the wavefront size the host launches with.
//! 2. The engine's own run-time path (`engine-rocm`'s hiprtc loader on the expanded
//!    program): `cargo test -p engine-rocm --test hiprtc_compile`, with Debian's hiprtc
//!    (ROCm 5.2: compiles the gfx9/gfx10 targets, and RDNA3 is refused with a message).
//!
//! Installs the packages with apt when missing (as root, like `test-aarch64`).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::sh;

/// Targets and the wavefront size each is built for.
const TARGETS: &[(&str, u32)] = &[
    ("gfx1103", 32),
    ("gfx1100", 32),
    ("gfx1151", 32),
    ("gfx90a", 64),
];
const CLANG: &str = "clang++-19";
const LLVM_BIN: &str = "/usr/lib/llvm-19/bin";
const BITCODE: &str = "/usr/lib/x86_64-linux-gnu/amdgcn/bitcode";
const HIP_HEADER: &str = "/usr/include/hip/hip_runtime.h";

fn ensure_packages() -> Result<()> {
    let ready = crate::have(CLANG)
        && Path::new(LLVM_BIN).join("ld.lld").is_file()
        && Path::new(LLVM_BIN).join("llvm-as").is_file()
        && Path::new(HIP_HEADER).is_file()
        && Path::new(BITCODE).join("ocml.bc").is_file();
    if !ready {
        sh(
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends clang-19 lld-19 llvm-19 libamdhip64-dev rocm-device-libs \
            >/dev/null",
        )?;
    }
    Ok(())
}

/// `oclc_isa_version` for a gfx name: major * 1000 + minor * 100 + stepping.
fn isa_version(target: &str) -> Result<u32> {
    let digits = target.strip_prefix("gfx").context("not a gfx target")?;
    let (major, rest) = digits.split_at(digits.len() - 2);
    let mut rest = rest.chars().map(|c| c.to_digit(16));
    let (minor, stepping) = (rest.next().flatten(), rest.next().flatten());
    Ok(major.parse::<u32>()? * 1000
        + minor.context("minor")? * 100
        + stepping.context("stepping")?)
}

/// Debian's bitcode directory mirrored into `dir`, plus the ISA-version files it lacks.
fn device_libs(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for e in std::fs::read_dir(BITCODE)? {
        let e = e?;
        let link = dir.join(e.file_name());
        if link.symlink_metadata().is_ok() && !link.exists() {
            std::fs::remove_file(&link)?; // a dangling link from an older install
        }
        if !link.exists() {
            std::os::unix::fs::symlink(e.path(), &link)?;
        }
    }
    let template = Path::new(BITCODE).join("oclc_isa_version_1030.bc");
    let text = Command::new(Path::new(LLVM_BIN).join("llvm-dis"))
        .arg(&template)
        .args(["-o", "-"])
        .output()
        .context("llvm-dis")?;
    let text = String::from_utf8(text.stdout)?;
    if !text.contains("i32 10300") {
        bail!("unexpected ISA-version bitcode in {}", template.display());
    }
    for (t, _) in TARGETS {
        let v = isa_version(t)?;
        let out = dir.join(format!("oclc_isa_version_{}.bc", &t[3..]));
        if out.exists() {
            continue;
        }
        let ll = dir.join(format!("isa_{t}.ll"));
        std::fs::write(&ll, text.replace("i32 10300", &format!("i32 {v}")))?;
        let st = Command::new(Path::new(LLVM_BIN).join("llvm-as"))
            .arg(&ll)
            .arg("-o")
            .arg(&out)
            .status()?;
        if !st.success() {
            bail!("llvm-as failed for {t}");
        }
    }
    Ok(())
}

fn wave_sizes(object: &Path) -> Result<Vec<u32>> {
    let o = Command::new(Path::new(LLVM_BIN).join("llvm-readelf"))
        .arg("--notes")
        .arg(object)
        .output()?;
    Ok(String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix(".wavefront_size:"))
        .filter_map(|v| v.trim().parse().ok())
        .collect())
}

pub fn run(repo: &Path) -> Result<()> {
    ensure_packages()?;
    let libs = repo.join(".cache/rocm-device-libs");
    device_libs(&libs)?;
    let out = std::env::temp_dir().join(format!("engine-hsaco-{}", std::process::id()));
    std::fs::create_dir_all(&out)?;
    let kdir = repo.join("kernels/cuda");
    let units = crate::check_kernels::kernel_units(repo)?;
    for u in &units {
        for (t, wave) in TARGETS {
            let stem = u.file_stem().unwrap().to_string_lossy();
            let obj = out.join(format!("{stem}_{t}.hsaco"));
            let o = Command::new(CLANG)
                .args(["-std=c++17", "--rocm-path=/usr", "-x", "hip", "-include"])
                .arg(HIP_HEADER)
                .arg(format!("--offload-arch={t}"))
                .arg(format!("--rocm-device-lib-path={}", libs.display()))
                .args(["--cuda-device-only", "--no-gpu-bundle-output", "-O3"])
                .arg(format!("-DEG_WARP={wave}"))
                .arg("-I")
                .arg(&kdir)
                .arg(u)
                .arg("-o")
                .arg(&obj)
                .output()
                .with_context(|| format!("cannot run {CLANG}"))?;
            if !o.status.success() {
                bail!(
                    "{CLANG} failed on {} for {t}:\n{}{}",
                    u.display(),
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            let waves = wave_sizes(&obj)?;
            if waves.is_empty() || waves.iter().any(|w| w != wave) {
                bail!(
                    "{}: {t} code object declares wavefront sizes {waves:?}, expected {wave}",
                    u.display()
                );
            }
            eprintln!(
                "clang (HIP): {} for {t}: ok ({} kernels, wave{wave})",
                u.display(),
                waves.len()
            );
        }
    }
    std::fs::remove_dir_all(&out).ok();
    let st = Command::new("cargo")
        .args([
            "test",
            "-p",
            "engine-rocm",
            "--test",
            "hiprtc_compile",
            "--",
            "--nocapture",
        ])
        .status()?;
    if !st.success() {
        bail!("hiprtc compile of the kernels failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn isa_versions() {
        assert_eq!(super::isa_version("gfx1103").unwrap(), 11003);
        assert_eq!(super::isa_version("gfx1151").unwrap(), 11501);
        assert_eq!(super::isa_version("gfx90a").unwrap(), 9010);
        assert_eq!(super::isa_version("gfx1030").unwrap(), 10300);
    }
}
