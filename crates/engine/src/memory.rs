//! Memory budgeting: what the host has available, what a model and context will need
//! before anything is allocated ([`estimate`]), and the check that refuses to start a model
//! and context that would not fit (instead of letting the node run out of memory).

use std::path::Path;
use std::sync::Arc;

use engine_models::ContextOptions;
pub use engine_models::MemoryEstimate;

use crate::error::{Error, Result};
use crate::model::LoadOptions;

/// What loading `path` with `opts` will need — weights, the KV cache for `opts.n_seq`
/// sequences of the configured context, and compute scratch for `opts.n_batch` tokens — and
/// the context size per sequence that implies. Nothing is allocated: the file is mapped and
/// its tensors are only looked at, so this is cheap even for a model that would not fit.
pub fn estimate(path: &Path, opts: &LoadOptions) -> Result<(MemoryEstimate, usize)> {
    let gguf = engine_gguf::GgufModel::open(path, true)?;
    // Built over views of the map (no repacking, so nothing is copied); the weights are
    // then counted in the layout the real load will give them.
    let views = engine_cpu::CpuBackend::new(1).with_repack(false);
    let stored = engine_cpu::CpuBackend::new(1).with_repack(opts.repack);
    let backend: Arc<dyn engine_core::Backend> = Arc::new(views);
    let model = engine_models::load(&gguf, backend)?;
    let info = model.info();
    let extra: u64 = gguf
        .tensors()
        .iter()
        .map(|t| {
            let s = engine_core::Backend::weight_bytes(&stored, t.dtype, &t.shape())
                .map_or(t.size as u64, |b| b as u64);
            s.saturating_sub(t.size as u64)
        })
        .sum();
    let n_ctx = if opts.n_ctx == 0 {
        info.n_ctx_train.clamp(1, 4096)
    } else {
        opts.n_ctx
    };
    let ctx = ContextOptions {
        n_ctx,
        n_seq: opts.n_seq.max(1),
        n_batch: opts.n_batch.max(1),
        kv_type: opts.kv_type,
    };
    let mut est = model.memory_estimate(&ctx);
    est.weights += extra;
    Ok((est, n_ctx))
}

/// Parses a memory size: bytes (`1073741824`), or a number with a unit. `k`, `m`, `g`, `t`
/// (any case, optionally followed by `iB`) are powers of 1024 as in `docker --memory`;
/// `KB`, `MB`, `GB`, `TB` are powers of 1000. Fractions are allowed (`1.5g`).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid size '{s}' (e.g. 8g, 512MiB, 2GB or a number of bytes)"))?;
    let unit = unit.trim();
    let mult: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        _ => {
            return Err(format!(
                "invalid size unit '{unit}' in '{s}' (k, m, g, t, KiB, MiB, GiB, KB, MB, GB)"
            ))
        }
    };
    let v = n * mult;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(format!("size '{s}' is out of range"));
    }
    Ok(v as u64)
}

/// Bytes the OS reports as available (`MemAvailable` in /proc/meminfo), if known.
pub fn available_memory() -> Option<u64> {
    engine_core::hostmem::read(Path::new("/")).map(|m| m.available)
}

/// Bytes of RAM in total (`MemTotal`), if known.
pub fn total_memory() -> Option<u64> {
    engine_core::hostmem::read(Path::new("/")).map(|m| m.total)
}

/// Formats a byte count as MiB/GiB for messages.
pub fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

/// Refuses an estimate larger than `budget` bytes, naming the parts.
pub fn check(est: &MemoryEstimate, budget: u64, what: &str) -> Result<()> {
    if est.total() > budget {
        return Err(Error::Memory(format!(
            "{what} needs {} (weights {} + KV cache {} + compute buffers {}), but only {} is available; use a smaller context (-c) or a smaller model",
            human(est.total()),
            human(est.weights),
            human(est.kv_cache),
            human(est.scratch),
            human(budget)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("8g"), Ok(8 << 30));
        assert_eq!(parse_size("8G"), Ok(8 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size(" 300 MB "), Ok(300_000_000));
        for bad in ["", "g", "12 parsecs", "-1g", "1..2m"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn estimate_of_a_fixture_counts_the_context() {
        let p = engine_testdata::fixtures_dir().join("arch/llama/llama-Q8_0.gguf");
        let opts = |n_ctx, n_seq| LoadOptions {
            n_ctx,
            n_seq,
            ..Default::default()
        };
        let (small, n) = estimate(&p, &opts(64, 1)).unwrap();
        assert_eq!(n, 64);
        let (big, _) = estimate(&p, &opts(1024, 4)).unwrap();
        assert_eq!(small.weights, big.weights);
        assert!(small.weights > 0 && small.weights <= std::fs::metadata(&p).unwrap().len());
        assert_eq!(big.kv_cache, small.kv_cache * 16 * 4);
        assert!(estimate(Path::new("/nonexistent.gguf"), &opts(64, 1)).is_err());
        // the estimate agrees with what a real load counts
        let m = crate::Model::load(&p, &opts(64, 1)).unwrap();
        assert_eq!(small.weights, m.info().weight_bytes);
    }

    #[test]
    fn estimate_counts_repacked_weights_like_a_load() {
        // the default model has Q5_0 tensors, which the CPU backend repacks at load
        let p = engine_testdata::gemma3_model().unwrap();
        let opts = |repack| LoadOptions {
            n_ctx: 128,
            repack,
            threads: 1,
            ..Default::default()
        };
        let (packed, _) = estimate(&p, &opts(true)).unwrap();
        let (plain, _) = estimate(&p, &opts(false)).unwrap();
        assert!(packed.weights > plain.weights);
        for repack in [true, false] {
            let m = crate::Model::load(&p, &opts(repack)).unwrap();
            let want = if repack { packed } else { plain };
            assert_eq!(want.weights, m.info().weight_bytes, "repack {repack}");
        }
    }

    #[test]
    fn refusal_names_the_sizes() {
        let est = MemoryEstimate {
            weights: 3 << 30,
            kv_cache: 1 << 30,
            scratch: 1 << 20,
        };
        let e = check(&est, 2 << 30, "model x").unwrap_err().to_string();
        assert!(
            e.contains("4.00 GiB") && e.contains("2.00 GiB") && e.contains("weights 3.00 GiB"),
            "{e}"
        );
        assert!(check(&est, 8 << 30, "model x").is_ok());
    }
}
