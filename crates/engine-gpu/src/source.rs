//! The kernel sources, compiled into the binary, and their expansion into one translation
//! unit for runtime compilers (NVRTC, hiprtc): `#include "x"` lines are replaced by the
//! named file once (`#pragma once` files are not repeated), so no include path is needed.

use sha2::{Digest, Sha256};

/// Every file of `kernels/cuda`, by name.
pub const FILES: &[(&str, &str)] = &[
    (
        "common.cuh",
        include_str!("../../../kernels/cuda/common.cuh"),
    ),
    ("quant.cuh", include_str!("../../../kernels/cuda/quant.cuh")),
    ("matmul.cu", include_str!("../../../kernels/cuda/matmul.cu")),
    ("ops.cu", include_str!("../../../kernels/cuda/ops.cu")),
    (
        "attention.cu",
        include_str!("../../../kernels/cuda/attention.cu"),
    ),
    ("ssm.cu", include_str!("../../../kernels/cuda/ssm.cu")),
];

/// The translation units, in order.
pub const UNITS: &[&str] = &["matmul.cu", "ops.cu", "attention.cu", "ssm.cu"];

fn file(name: &str) -> Option<&'static str> {
    FILES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

fn expand_into(name: &str, seen: &mut Vec<String>, out: &mut String) -> Result<(), String> {
    if seen.iter().any(|s| s == name) {
        return Ok(());
    }
    seen.push(name.to_string());
    let text = file(name).ok_or_else(|| format!("kernel source '{name}' is not built in"))?;
    for line in text.lines() {
        let t = line.trim();
        if t == "#pragma once" {
            continue;
        }
        if let Some(rest) = t.strip_prefix("#include") {
            let inc = rest.trim().trim_matches('"');
            if rest.trim().starts_with('"') {
                expand_into(inc, seen, out)?;
                continue;
            }
            return Err(format!(
                "{name}: system include {t} is not allowed in kernels"
            ));
        }
        out.push_str(line);
        out.push('\n');
    }
    Ok(())
}

/// All translation units as one source, each header once.
pub fn program() -> Result<String, String> {
    let mut seen = Vec::new();
    let mut out = String::new();
    for u in UNITS {
        expand_into(u, &mut seen, &mut out)?;
    }
    Ok(out)
}

/// Hex sha256 of a source text.
pub fn hash(text: &str) -> String {
    let d = Sha256::digest(text.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_inlines_each_header_once_and_keeps_every_kernel() {
        let p = program().unwrap();
        assert_eq!(p.matches("typedef unsigned char u8;").count(), 1);
        assert_eq!(p.matches("struct FmtQ4_K {").count(), 1);
        assert!(!p.contains("#include"));
        for k in [
            "EG_FORMATS(EG_MM_KERNELS)",
            "void rms_norm(",
            "EG_ATT_KERNEL(f16",
            "void ssm_scan(",
        ] {
            assert!(p.contains(k), "{k} missing");
        }
    }

    #[test]
    fn every_file_is_listed() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kernels/cuda");
        for e in std::fs::read_dir(&dir).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".cu") || name.ends_with(".cuh") {
                assert!(file(&name).is_some(), "{name} is not in FILES");
            }
        }
    }
}
