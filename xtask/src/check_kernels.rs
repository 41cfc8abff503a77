//! The CUDA half of `cargo xtask check-kernels`: compiles every GPU kernel for every CUDA
//! target our users run, with no GPU and no system CUDA. nvcc and NVRTC come from the `nvidia-cuda-nvcc` and
//! `nvidia-cuda-nvrtc` packages on PyPI, installed into `.cache/cuda-venv`. Two checks:
//!
//! 1. nvcc (`-cubin`, so ptxas runs) compiles each `kernels/cuda/*.cu` for sm_86, sm_87,
//!    sm_90, sm_120a and sm_121a; any error fails.
//! 2. the engine's own run-time path (`engine-cuda`'s NVRTC loader, the expanded program)
//!    compiles the same targets: `cargo test -p engine-cuda --test nvrtc_compile` with
//!    `ENGINE_NVRTC_LIB` pointing at the installed NVRTC.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::sh;

const TARGETS: &[&str] = &["sm_86", "sm_87", "sm_90", "sm_120a", "sm_121a"];

fn cuda_root(venv: &Path) -> Result<PathBuf> {
    let lib = venv.join("lib");
    for py in std::fs::read_dir(&lib).with_context(|| format!("{}", lib.display()))? {
        let nv = py?.path().join("site-packages/nvidia");
        for sub in ["cu13", "cuda_nvcc", "cu12"] {
            if nv.join(sub).join("bin/nvcc").is_file() {
                return Ok(nv.join(sub));
            }
        }
    }
    bail!("nvcc not found under {}", venv.display())
}

fn find_nvrtc(root: &Path) -> Option<PathBuf> {
    let nv = root.parent()?;
    for dir in [root.join("lib"), nv.join("cuda_nvrtc/lib")] {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with("libnvrtc.so") {
                    return Some(e.path());
                }
            }
        }
    }
    None
}

/// The kernel translation units (`kernels/cuda/*.cu`), sorted.
pub fn kernel_units(repo: &Path) -> Result<Vec<PathBuf>> {
    let mut units: Vec<PathBuf> = std::fs::read_dir(repo.join("kernels/cuda"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    units.sort();
    Ok(units)
}

pub fn run(repo: &Path) -> Result<()> {
    let venv = repo.join(".cache/cuda-venv");
    if !venv.join("bin/pip").is_file() {
        sh(&format!("python3 -m venv {}", venv.display()))?;
    }
    let root = match cuda_root(&venv) {
        Ok(r) if find_nvrtc(&r).is_some() => r,
        _ => {
            sh(&format!(
                "{}/bin/pip install -q nvidia-cuda-nvcc nvidia-cuda-nvrtc",
                venv.display()
            ))?;
            cuda_root(&venv)?
        }
    };
    let nvcc = root.join("bin/nvcc");
    let out = std::env::temp_dir().join(format!("engine-cubins-{}", std::process::id()));
    std::fs::create_dir_all(&out)?;
    let units = kernel_units(repo)?;
    for u in &units {
        for t in TARGETS {
            let stem = u.file_stem().unwrap().to_string_lossy();
            let o = Command::new(&nvcc)
                .args(["-cubin", "-std=c++17", &format!("-arch={t}"), "-o"])
                .arg(out.join(format!("{stem}_{t}.cubin")))
                .arg(u)
                .output()
                .with_context(|| format!("cannot run {}", nvcc.display()))?;
            if !o.status.success() {
                bail!(
                    "nvcc failed on {} for {t}:\n{}{}",
                    u.display(),
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            eprintln!("nvcc: {} for {t}: ok", u.display());
        }
    }
    std::fs::remove_dir_all(&out).ok();
    let nvrtc = find_nvrtc(&root).context("libnvrtc not found in the venv")?;
    let st = Command::new("cargo")
        .args([
            "test",
            "-p",
            "engine-cuda",
            "--test",
            "nvrtc_compile",
            "--",
            "--nocapture",
        ])
        .env("ENGINE_NVRTC_LIB", &nvrtc)
        .status()?;
    if !st.success() {
        bail!("NVRTC compile of the kernels failed");
    }
    Ok(())
}
