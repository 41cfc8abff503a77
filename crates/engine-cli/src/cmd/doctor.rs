//! `engine doctor`: what this machine offers the engine, in words — CPU features and RAM,
//! the CUDA and ROCm runtimes found (or why not), each GPU's architecture and memory, and
//! on an AMD APU what the BIOS UMA carve-out costs in GPU-usable memory.

use anyhow::Result;
use clap::Args;

/// Options of `engine doctor` (none yet).
#[derive(Args, Debug)]
pub struct DoctorArgs {}

fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

fn cpu_lines() -> Vec<String> {
    let name = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    #[allow(unused_mut)]
    let mut features: Vec<&str> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        for (f, on) in [
            ("AVX2", std::arch::is_x86_feature_detected!("avx2")),
            ("FMA", std::arch::is_x86_feature_detected!("fma")),
            ("AVX-512F", std::arch::is_x86_feature_detected!("avx512f")),
            (
                "AVX-512 VNNI",
                std::arch::is_x86_feature_detected!("avx512vnni"),
            ),
        ] {
            if on {
                features.push(f);
            }
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        features.push("NEON");
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            features.push("dotprod");
        }
    }
    let mut out = vec![format!(
        "CPU: {name}, {} threads by default, features: {}",
        engine::default_threads(),
        if features.is_empty() {
            "none the kernels use".to_string()
        } else {
            features.join(" ")
        }
    )];
    if let Some(m) = engine_core::hostmem::read(std::path::Path::new("/")) {
        out.push(format!(
            "RAM: {} seen by the OS, {} available",
            gib(m.total),
            gib(m.available)
        ));
    }
    out
}

fn cuda_lines() -> Vec<String> {
    match engine_cuda::probe() {
        Err(why) => vec![why],
        Ok(devs) => devs
            .iter()
            .map(|d| {
                format!(
                    "CUDA device {}: {}, compute capability {}.{}, {}{}",
                    d.ordinal,
                    d.name,
                    d.capability.0,
                    d.capability.1,
                    gib(d.total_memory),
                    if d.integrated {
                        ", integrated (shares RAM)"
                    } else {
                        ""
                    }
                )
            })
            .collect(),
    }
}

pub fn run(_a: &DoctorArgs) -> Result<()> {
    println!("== CPU");
    for l in cpu_lines() {
        println!("{l}");
    }
    println!("\n== CUDA (--device cuda[:N])");
    for l in cuda_lines() {
        println!("{l}");
    }
    println!("\n== ROCm (--device rocm[:N])");
    for l in engine_rocm::report() {
        println!("{l}");
    }
    Ok(())
}
