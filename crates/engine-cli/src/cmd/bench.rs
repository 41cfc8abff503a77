//! `engine bench`: prompt-processing and token-generation throughput with llama-bench's
//! flags, test semantics and output formats (md, json, jsonl, csv), so a quant ladder is one
//! command and its table lines up with llama-bench's column for column.

use std::io::Write;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use engine::bench::{run_test, BenchConfig, BenchResult, BenchTest};
use engine::{LoadOptions, Model};

/// Arguments of `engine bench`. List-valued flags take comma-separated values, ranges
/// (`first-last`, `first-last+step`, `first-last*mult`) or repeated flags, as llama-bench.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Models (paths or store names); comma-separated or repeated.
    #[arg(short = 'm', long = "model", required = true, action = clap::ArgAction::Append)]
    pub model: Vec<String>,
    /// Prompt lengths for pp tests (0 skips them).
    #[arg(short = 'p', long = "n-prompt", default_value = "512", action = clap::ArgAction::Append)]
    pub n_prompt: Vec<String>,
    /// Generation lengths for tg tests (0 skips them).
    #[arg(short = 'n', long = "n-gen", default_value = "128", action = clap::ArgAction::Append)]
    pub n_gen: Vec<String>,
    /// Combined prompt+generation tests, as `PP,TG` pairs (flag may repeat).
    #[arg(long = "pg", action = clap::ArgAction::Append)]
    pub pg: Vec<String>,
    /// Context depth (tokens already in the cache) for every test.
    #[arg(short = 'd', long = "n-depth", default_value = "0", action = clap::ArgAction::Append)]
    pub n_depth: Vec<String>,
    /// Logical batch size.
    #[arg(short = 'b', long = "batch-size", default_value = "2048", action = clap::ArgAction::Append)]
    pub batch_size: Vec<String>,
    /// Physical batch size (largest forward pass).
    #[arg(long = "ubatch-size", visible_alias = "ub", default_value = "512", action = clap::ArgAction::Append)]
    pub ubatch_size: Vec<String>,
    /// Thread counts (default: all cores).
    #[arg(short = 't', long = "threads", action = clap::ArgAction::Append)]
    pub threads: Vec<String>,
    /// Repetitions of each test.
    #[arg(short = 'r', long = "repetitions", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub reps: u32,
    /// Output format: md, json, jsonl or csv.
    #[arg(short = 'o', long = "output", default_value = "md")]
    pub output: String,
    /// Skip the warm-up run before each test.
    #[arg(long = "no-warmup")]
    pub no_warmup: bool,
    /// Print progress to stderr.
    #[arg(long = "progress")]
    pub progress: bool,
    /// KV cache type for keys: f16 or f32.
    #[arg(long = "cache-type-k", visible_alias = "ctk", default_value = "f16")]
    pub cache_type_k: String,
    /// KV cache type for values (must equal the key type).
    #[arg(long = "cache-type-v", visible_alias = "ctv", default_value = "f16")]
    pub cache_type_v: String,
    /// Device: auto (the first usable CUDA GPU, else ROCm GPU, else the CPU), cpu, cuda[:N],
    /// rocm[:N].
    #[arg(long = "device", default_value = "auto")]
    pub device: String,
    /// Where a GPU puts the model: auto (device memory; on an AMD APU whichever of the BIOS
    /// carve-out and GTT holds it), device, or host (GPU-mapped system memory).
    #[arg(long = "gpu-memory", default_value = "auto")]
    pub gpu_memory: String,
    /// Keep weights in their file format (no load-time repacking).
    #[arg(long = "no-repack")]
    pub no_repack: bool,
    /// Speculative mode: with a drafter (--spec-type, --model-draft or --draft-remote), time
    /// -n tokens of greedy generation from a text prompt plainly and speculatively.
    #[command(flatten)]
    pub spec: super::spec::SpecArgs,
    /// Speculative mode: the prompt text file (default: a built-in "repeat and edit this
    /// text" task).
    #[arg(long = "spec-prompt")]
    pub spec_prompt: Option<std::path::PathBuf>,
}

/// Parses llama-bench list values: `a,b,c`, `first-last`, `first-last+step`,
/// `first-last*mult`, across all occurrences of the flag.
pub fn parse_int_list(flag: &str, values: &[String]) -> Result<Vec<usize>> {
    let mut out = vec![];
    for v in values {
        for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let bad = || anyhow::anyhow!("{flag}: '{item}' is not a number or range");
            let num = |s: &str| s.trim().parse::<usize>().map_err(|_| bad());
            match item.split_once('-') {
                None => out.push(num(item)?),
                Some((first, rest)) => {
                    let first = num(first)?;
                    let (last, step) = if let Some((l, s)) = rest.split_once('+') {
                        (num(l)?, Step::Add(num(s)?))
                    } else if let Some((l, s)) = rest.split_once('*') {
                        (num(l)?, Step::Mul(num(s)?))
                    } else {
                        (num(rest)?, Step::Add(1))
                    };
                    let mut x = first;
                    while x <= last {
                        out.push(x);
                        let next = match step {
                            Step::Add(s) => x.checked_add(s),
                            Step::Mul(m) => x.checked_mul(m),
                        };
                        match next {
                            Some(n) if n > x => x = n,
                            _ => bail!("{flag}: the range '{item}' does not advance"),
                        }
                    }
                }
            }
        }
    }
    if out.is_empty() {
        bail!("{flag}: no values");
    }
    Ok(out)
}

enum Step {
    Add(usize),
    Mul(usize),
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Md,
    Json,
    Jsonl,
    Csv,
}

/// One printed row: a test's result with everything llama-bench reports next to it.
struct Row<'a> {
    model_filename: &'a str,
    model_type: &'a str,
    model_size: u64,
    model_n_params: u64,
    backend_info: &'a str,
    backend: &'a str,
    n_batch: usize,
    n_ubatch: usize,
    n_threads: usize,
    type_kv: &'a str,
    test_time: String,
    result: &'a BenchResult,
}

const CSV_FIELDS: &[&str] = &[
    "build_commit",
    "cpu_info",
    "backends",
    "backend_info",
    "model_filename",
    "model_type",
    "model_size",
    "model_n_params",
    "n_batch",
    "n_ubatch",
    "n_threads",
    "type_k",
    "type_v",
    "n_prompt",
    "n_gen",
    "n_depth",
    "test_time",
    "avg_ns",
    "stddev_ns",
    "avg_ts",
    "stddev_ts",
];

impl Row<'_> {
    fn json(&self) -> serde_json::Value {
        let (avg_ns, sd_ns) = self.result.ns_stats();
        let (avg_ts, sd_ts) = self.result.ts_stats();
        let t = self.result.test;
        serde_json::json!({
            "build_commit": env!("CARGO_PKG_VERSION"),
            "cpu_info": cpu_info(),
            "backends": self.backend,
            "backend_info": self.backend_info,
            "model_filename": self.model_filename,
            "model_type": self.model_type,
            "model_size": self.model_size,
            "model_n_params": self.model_n_params,
            "n_batch": self.n_batch,
            "n_ubatch": self.n_ubatch,
            "n_threads": self.n_threads,
            "type_k": self.type_kv,
            "type_v": self.type_kv,
            "n_prompt": t.n_prompt,
            "n_gen": t.n_gen,
            "n_depth": t.n_depth,
            "test_time": self.test_time,
            "avg_ns": avg_ns.round() as u64,
            "stddev_ns": sd_ns.round() as u64,
            "avg_ts": avg_ts,
            "stddev_ts": sd_ts,
            "samples_ns": self.result.samples_ns,
            "samples_ts": self.result.samples_ts(),
        })
    }

    fn csv(&self) -> String {
        let j = self.json();
        CSV_FIELDS
            .iter()
            .map(|f| {
                let v = match &j[*f] {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                format!("\"{}\"", v.replace('"', "\"\""))
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    fn md(&self) -> String {
        let (avg_ts, sd_ts) = self.result.ts_stats();
        format!(
            "| {:<30} | {:>10} | {:>10} | {:<10} | {:>7} | {:>15} | {:>20} |",
            self.model_type,
            human_size(self.model_size),
            human_params(self.model_n_params),
            self.backend,
            self.n_threads,
            self.result.test.name(),
            format!("{avg_ts:.2} ± {sd_ts:.2}"),
        )
    }
}

const MD_HEADER: &str = "| model                          |       size |     params | backend    | threads |            test |                  t/s |\n| ------------------------------ | ---------: | ---------: | ---------- | ------: | --------------: | -------------------: |";

fn human_size(bytes: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if bytes < 1 << 30 {
        format!("{:.2} MiB", bytes as f64 / MIB)
    } else {
        format!("{:.2} GiB", bytes as f64 / MIB / 1024.0)
    }
}

fn human_params(n: u64) -> String {
    if n < 1_000_000_000 {
        format!("{:.2} M", n as f64 / 1e6)
    } else {
        format!("{:.2} B", n as f64 / 1e9)
    }
}

/// The CPU's model name, as llama-bench's `cpu_info`.
fn cpu_info() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// llama-bench's `model_type`: architecture, size label, file type name.
fn model_type(model: &Model) -> String {
    let g = model.gguf();
    let arch = &model.info().arch;
    let size = g
        .get_str("general.size_label")
        .ok()
        .flatten()
        .map(str::to_string)
        .unwrap_or_else(|| {
            let p = model.info().n_params as f64;
            if p >= 1e9 {
                format!("{:.0}B", p / 1e9)
            } else {
                format!("{:.0}M", p / 1e6)
            }
        });
    let ftype = g
        .get_int("general.file_type")
        .ok()
        .flatten()
        .and_then(|v| u32::try_from(v).ok())
        .and_then(engine_gguf::file_type_name)
        .unwrap_or("unknown type");
    format!("{arch} {size} {ftype}")
}

/// UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // civil date from days since 1970-01-01 (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Runs `engine bench`.
pub fn run(a: BenchArgs) -> Result<()> {
    if a.spec.enabled() {
        return super::bench_spec::run(&a);
    }
    let format = match a.output.as_str() {
        "md" => Format::Md,
        "json" => Format::Json,
        "jsonl" => Format::Jsonl,
        "csv" => Format::Csv,
        o => bail!("unknown output format '{o}' (md, json, jsonl or csv)"),
    };
    let kv = match (a.cache_type_k.as_str(), a.cache_type_v.as_str()) {
        ("f16", "f16") => engine::DType::F16,
        ("f32", "f32") => engine::DType::F32,
        (k, v) if k == v => bail!("unsupported cache type '{k}' (f16 or f32)"),
        _ => bail!("-ctk and -ctv must be equal (one cache type per context)"),
    };
    let models: Vec<String> = a
        .model
        .iter()
        .flat_map(|m| m.split(','))
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .collect();
    let n_prompt = parse_int_list("-p", &a.n_prompt)?;
    let n_gen = parse_int_list("-n", &a.n_gen)?;
    let n_depth = parse_int_list("-d", &a.n_depth)?;
    let n_batch = parse_int_list("-b", &a.batch_size)?;
    let n_ubatch = parse_int_list("-ub", &a.ubatch_size)?;
    let threads = if a.threads.is_empty() {
        vec![engine::default_threads()]
    } else {
        parse_int_list("-t", &a.threads)?
    };
    if threads.contains(&0) || n_batch.contains(&0) || n_ubatch.contains(&0) {
        bail!("thread counts and batch sizes must be at least 1");
    }
    let mut pg = vec![];
    for v in &a.pg {
        let nums = parse_int_list("-pg", std::slice::from_ref(v))?;
        match nums.as_slice() {
            [p, g] => pg.push((*p, *g)),
            _ => bail!("-pg takes PP,TG (got '{v}')"),
        }
    }
    // The tests of one configuration, in llama-bench's order.
    let tests = |depth: usize| {
        let mut t = vec![];
        for &p in n_prompt.iter().filter(|&&p| p > 0) {
            t.push(BenchTest {
                n_prompt: p,
                n_gen: 0,
                n_depth: depth,
            });
        }
        for &g in n_gen.iter().filter(|&&g| g > 0) {
            t.push(BenchTest {
                n_prompt: 0,
                n_gen: g,
                n_depth: depth,
            });
        }
        for &(p, g) in &pg {
            if p + g > 0 {
                t.push(BenchTest {
                    n_prompt: p,
                    n_gen: g,
                    n_depth: depth,
                });
            }
        }
        t
    };
    let max_ctx = n_depth
        .iter()
        .flat_map(|&d| tests(d).into_iter().map(|t| t.n_depth + t.n_tokens()))
        .max()
        .unwrap_or(0);
    if max_ctx == 0 {
        bail!("nothing to run: every test is empty (-p 0 -n 0 and no -pg)");
    }

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut first = true;
    match format {
        Format::Md => writeln!(out, "{MD_HEADER}")?,
        Format::Json => write!(out, "[")?,
        Format::Csv => writeln!(out, "{}", CSV_FIELDS.join(","))?,
        Format::Jsonl => {}
    }
    out.flush()?;
    for spec in &models {
        let path = super::resolve_model(spec)?;
        for &t in &threads {
            for &ub in &n_ubatch {
                let opts = LoadOptions {
                    threads: t,
                    n_ctx: max_ctx,
                    n_batch: ub.min(max_ctx),
                    kv_type: kv,
                    device: a.device.parse()?,
                    gpu_memory: super::parse_gpu_memory(&a.gpu_memory)?,
                    repack: !a.no_repack,
                    ..Default::default()
                };
                let model = Model::load(&path, &opts)
                    .with_context(|| format!("cannot load {}", path.display()))?;
                let mtype = model_type(&model);
                let backend_info = model.backend().describe();
                let fname = path.display().to_string();
                for &b in &n_batch {
                    for &d in &n_depth {
                        for test in tests(d) {
                            if a.progress {
                                eprintln!(
                                    "engine bench: {} t={t} b={b} ub={ub} {}",
                                    fname,
                                    test.name()
                                );
                            }
                            let cfg = BenchConfig {
                                n_batch: b,
                                n_ubatch: ub,
                                reps: a.reps as usize,
                                warmup: !a.no_warmup,
                            };
                            let result = run_test(&model, test, &cfg)
                                .with_context(|| format!("{} on {fname}", test.name()))?;
                            let row = Row {
                                model_filename: &fname,
                                model_type: &mtype,
                                model_size: model.gguf().tensor_bytes(),
                                model_n_params: model.info().n_params,
                                backend_info: &backend_info,
                                backend: model.backend().name(),
                                n_batch: b,
                                n_ubatch: ub,
                                n_threads: t,
                                type_kv: if kv == engine::DType::F16 {
                                    "f16"
                                } else {
                                    "f32"
                                },
                                test_time: utc_now(),
                                result: &result,
                            };
                            match format {
                                Format::Md => writeln!(out, "{}", row.md())?,
                                Format::Json => {
                                    let sep = if first { "\n" } else { ",\n" };
                                    write!(
                                        out,
                                        "{sep}{}",
                                        serde_json::to_string_pretty(&row.json())?
                                    )?
                                }
                                Format::Jsonl => writeln!(out, "{}", row.json())?,
                                Format::Csv => writeln!(out, "{}", row.csv())?,
                            }
                            first = false;
                            out.flush()?;
                        }
                    }
                }
            }
        }
    }
    match format {
        Format::Json => writeln!(out, "\n]")?,
        Format::Md => writeln!(out, "\nbuild: engine {}", env!("CARGO_PKG_VERSION"))?,
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(v: &[&str]) -> Result<Vec<usize>> {
        parse_int_list("-x", &v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn lists_and_ranges() {
        assert_eq!(list(&["512"]).unwrap(), vec![512]);
        assert_eq!(list(&["1,2", "4"]).unwrap(), vec![1, 2, 4]);
        assert_eq!(list(&["1-3"]).unwrap(), vec![1, 2, 3]);
        assert_eq!(list(&["0-1024+512"]).unwrap(), vec![0, 512, 1024]);
        assert_eq!(list(&["1-8*2"]).unwrap(), vec![1, 2, 4, 8]);
        assert!(list(&["1-8*1"]).is_err());
        assert!(list(&["x"]).is_err());
        assert!(list(&[""]).is_err());
    }

    #[test]
    fn sizes_print_like_llama_bench() {
        assert_eq!(human_size(246_587_904), "235.16 MiB");
        assert_eq!(human_params(268_098_176), "268.10 M");
        assert_eq!(human_params(7_241_732_096), "7.24 B");
    }

    #[test]
    fn utc_format() {
        let s = utc_now();
        assert_eq!(s.len(), 20);
        assert!(s.ends_with('Z') && s.as_bytes()[10] == b'T');
    }
}
