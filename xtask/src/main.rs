//! Project automation, run as `cargo xtask <task>`:
//!
//! * `test-aarch64`: builds the CPU kernels for aarch64 and runs their tests under qemu, so the
//!   NEON code paths (Raspberry Pi 5, Jetson CPUs) are checked on an x86 machine. Installs the
//!   rustup target, qemu-user and the cross linker when missing (Debian/Ubuntu, as root).
//! * `bench-vs-llamacpp`: `engine bench` against llama.cpp's `llama-bench` on the default
//!   model's quant ladder, interleaved, with ratios (see [`vs_llamacpp`]).
//! * `check-kernels [cuda|rocm]`: compiles every GPU kernel for every CUDA target with nvcc
//!   and the engine's NVRTC path, and for the AMD targets with clang (HIP) and the engine's
//!   hiprtc path; no GPU needed (see [`check_kernels`], [`check_kernels_rocm`]).
//! * `build-hailo-shim`: builds the C++ Hailo shim against an installed HailoRT 5.x (see
//!   [`hailo_shim`]).

use std::process::Command;

use anyhow::{bail, Context, Result};

mod check_kernels;
mod check_kernels_rocm;
mod hailo_shim;
mod vs_llamacpp;

fn main() -> Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    match task.as_str() {
        "test-aarch64" => test_aarch64(),
        "bench-vs-llamacpp" => vs_llamacpp::run(&std::env::args().skip(2).collect::<Vec<_>>()),
        "check-kernels" => {
            let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
            let which = std::env::args().nth(2).unwrap_or_default();
            if which.is_empty() || which == "cuda" {
                check_kernels::run(&repo)?;
            }
            if which.is_empty() || which == "rocm" {
                check_kernels_rocm::run(&repo)?;
            }
            if !["", "cuda", "rocm"].contains(&which.as_str()) {
                bail!("check-kernels takes cuda, rocm or nothing (both)");
            }
            Ok(())
        }
        "build-hailo-shim" => hailo_shim::run(&std::env::args().skip(2).collect::<Vec<_>>()),
        _ => {
            eprintln!(
                "usage: cargo xtask <task>\n\ntasks:\n  test-aarch64        run the CPU kernel tests for aarch64 under qemu\n  bench-vs-llamacpp   engine bench vs llama-bench on the quant ladder (--help)\n  check-kernels       compile every GPU kernel for every CUDA and AMD target (no GPU needed)\n  build-hailo-shim    build the Hailo shim against an installed HailoRT 5.x (--help)"
            );
            bail!("unknown task '{task}'")
        }
    }
}

pub(crate) fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub(crate) fn sh(cmd: &str) -> Result<()> {
    eprintln!("+ {cmd}");
    let st = Command::new("sh")
        .args(["-c", cmd])
        .status()
        .with_context(|| format!("cannot run {cmd}"))?;
    if !st.success() {
        bail!("`{cmd}` failed ({st})");
    }
    Ok(())
}

fn test_aarch64() -> Result<()> {
    const TARGET: &str = "aarch64-unknown-linux-gnu";
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("rustup is needed")?;
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == TARGET)
    {
        sh(&format!("rustup target add {TARGET}"))?;
    }
    if !have("qemu-aarch64") || !have("aarch64-linux-gnu-gcc") {
        sh("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross >/dev/null")?;
    }
    let st = Command::new("cargo")
        .args(["test", "-p", "engine-cpu", "--target", TARGET])
        .env(
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
            "aarch64-linux-gnu-gcc",
        )
        .env(
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER",
            "qemu-aarch64 -L /usr/aarch64-linux-gnu",
        )
        .status()?;
    if !st.success() {
        bail!("aarch64 kernel tests failed");
    }
    Ok(())
}
