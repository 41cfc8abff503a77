//! `cargo xtask bench-vs-llamacpp`: our `engine bench` against llama.cpp's `llama-bench` on
//! the same files and threads, interleaved A B A B, with the ratio per cell.
//!
//! * llama.cpp is built once from the llama-cpp-python source distribution (its vendored
//!   llama.cpp, the same one every reference fixture was made with) into
//!   `<workspace>/.cache/llamacpp/build` (`LLAMACPP_BUILD` overrides, e.g. to reuse a build).
//! * The quant ladder (Q8_0, Q6_K, Q4_0, IQ4_NL, F16) is made from the real Q4_K_M file with
//!   `llama-quantize --allow-requantize` into `<workspace>/.cache/llamacpp/ladder`.
//! * Each round runs every cell once with `-r 1` in both engines, one after the other, so
//!   slow drifts of a noisy machine hit both alike; the table reports the mean ± stddev over
//!   rounds and the ratio of the means.
//! * `--quality` adds one table per ladder: file size, our pp/tg at the most threads asked
//!   for, perplexity on `benches/data/quality.txt` (ours and llama-perplexity's, which must
//!   agree) and the KL-divergence against the F16 file's distributions (`engine perplexity
//!   --kl-divergence`). `--rounds 0` skips the speed cells and runs only that table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{have, sh};

/// The ladder, in table order: label, llama-quantize type (None = the original file).
const LADDER: &[(&str, Option<&str>)] = &[
    ("Q4_K_M", None),
    ("Q8_0", Some("Q8_0")),
    ("Q6_K", Some("Q6_K")),
    ("Q4_0", Some("Q4_0")),
    ("IQ4_NL", Some("IQ4_NL")),
    ("F16", Some("F16")),
];

struct Options {
    quants: Vec<String>,
    threads: Vec<usize>,
    rounds: usize,
    n_prompt: usize,
    n_gen: usize,
    depth: Vec<usize>,
    json_out: Option<PathBuf>,
    quality: bool,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        quants: LADDER.iter().map(|l| l.0.to_string()).collect(),
        threads: vec![1, 2],
        rounds: 3,
        n_prompt: 512,
        n_gen: 128,
        depth: vec![0],
        json_out: None,
        quality: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        let list = |s: &str| -> Result<Vec<usize>> {
            s.split(',')
                .map(|x| {
                    x.trim()
                        .parse()
                        .with_context(|| format!("bad number '{x}'"))
                })
                .collect()
        };
        match a.as_str() {
            "--quants" => o.quants = val()?.split(',').map(|s| s.trim().to_string()).collect(),
            "-t" | "--threads" => o.threads = list(val()?)?,
            "--rounds" => o.rounds = val()?.parse()?,
            "-p" => o.n_prompt = val()?.parse()?,
            "-n" => o.n_gen = val()?.parse()?,
            "-d" => o.depth = list(val()?)?,
            "--json" => o.json_out = Some(PathBuf::from(val()?)),
            "--quality" => o.quality = true,
            "-h" | "--help" => {
                eprintln!(
                    "usage: cargo xtask bench-vs-llamacpp [--quants Q4_K_M,Q8_0,...] [-t 1,2] \
                     [--rounds 3] [-p 512] [-n 128] [-d 0,1024] [--json FILE] [--quality]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown option '{other}'"),
        }
    }
    for q in &o.quants {
        if !LADDER.iter().any(|l| l.0 == q) {
            bail!(
                "unknown quant '{q}' (one of {})",
                LADDER.iter().map(|l| l.0).collect::<Vec<_>>().join(", ")
            );
        }
    }
    if (o.rounds == 0 && !o.quality) || o.threads.is_empty() {
        bail!("--rounds (unless --quality) and --threads need at least one");
    }
    Ok(o)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

/// Builds llama-bench, llama-quantize and llama-perplexity once; returns the bin directory.
pub fn llamacpp_bin() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("LLAMACPP_BUILD") {
        let bin = PathBuf::from(p).join("bin");
        if bin.join("llama-bench").exists() {
            return Ok(bin);
        }
        bail!("LLAMACPP_BUILD={} has no bin/llama-bench", bin.display());
    }
    let root = workspace_root().join(".cache/llamacpp");
    let build = root.join("build");
    let bin = build.join("bin");
    let tools = ["llama-bench", "llama-quantize", "llama-perplexity"];
    if tools.iter().all(|t| bin.join(t).exists()) {
        return Ok(bin);
    }
    if !have("cmake") || !have("g++") {
        sh("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake g++ make >/dev/null")?;
    }
    let sdist = engine_testdata::llama_cpp_sdist().map_err(anyhow::Error::msg)?;
    let src = root.join("src");
    if !src.join("CMakeLists.txt").exists() {
        std::fs::create_dir_all(&src)?;
        sh(&format!(
            "tar -xzf '{}' -C '{}' --strip-components=3 --wildcards '*/vendor/llama.cpp/*'",
            sdist.display(),
            src.display()
        ))?;
    }
    sh(&format!(
        "cmake -S '{}' -B '{}' -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
         -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null",
        src.display(),
        build.display()
    ))?;
    sh(&format!(
        "cmake --build '{}' --config Release -j 2 --target {}",
        build.display(),
        tools.join(" ")
    ))?;
    Ok(bin)
}

/// The ladder's files, quantizing the missing ones.
fn ladder(bin: &Path, quants: &[String]) -> Result<Vec<(String, PathBuf)>> {
    let base = engine_testdata::gemma3_model().map_err(anyhow::Error::msg)?;
    let dir = workspace_root().join(".cache/llamacpp/ladder");
    std::fs::create_dir_all(&dir)?;
    let mut out = vec![];
    for (label, qtype) in LADDER {
        if !quants.iter().any(|q| q == label) {
            continue;
        }
        let path = match qtype {
            None => base.clone(),
            Some(t) => {
                let p = dir.join(format!("gemma-3-270m-{}.gguf", label.to_lowercase()));
                if !p.exists() {
                    let tmp = p.with_extension("tmp");
                    sh(&format!(
                        "'{}' --allow-requantize '{}' '{}' {t} >/dev/null 2>&1",
                        bin.join("llama-quantize").display(),
                        base.display(),
                        tmp.display()
                    ))?;
                    std::fs::rename(&tmp, &p)?;
                }
                p
            }
        };
        out.push((label.to_string(), path));
    }
    Ok(out)
}

/// Runs a benchmark command that prints llama-bench JSON; returns t/s per test name.
fn bench_json(cmd: &mut Command) -> Result<Vec<(String, f64)>> {
    let stdout = output(cmd)?;
    let v: serde_json::Value =
        serde_json::from_str(&stdout).with_context(|| format!("{cmd:?} printed no JSON"))?;
    let mut rows = vec![];
    for r in v.as_array().context("JSON array expected")? {
        let (p, g, d) = (
            r["n_prompt"].as_u64().unwrap_or(0),
            r["n_gen"].as_u64().unwrap_or(0),
            r["n_depth"].as_u64().unwrap_or(0),
        );
        let mut name = match (p, g) {
            (p, 0) => format!("pp{p}"),
            (0, g) => format!("tg{g}"),
            (p, g) => format!("pp{p}+tg{g}"),
        };
        if d > 0 {
            name.push_str(&format!(" @ d{d}"));
        }
        rows.push((name, r["avg_ts"].as_f64().context("avg_ts")?));
    }
    Ok(rows)
}

/// (quant index, threads, test) -> (llama.cpp samples, engine samples), in t/s.
type Cells = BTreeMap<(usize, usize, String), (Vec<f64>, Vec<f64>)>;

fn mean_sd(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let m = x.iter().sum::<f64>() / n;
    let sd = if x.len() > 1 {
        (x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (m, sd)
}

/// Runs the comparison and prints the ratio table.
pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let bin = llamacpp_bin()?;
    sh("cargo build --release -q -p engine-cli")?;
    let engine = workspace_root().join("target/release/engine");
    let files = ladder(&bin, &o.quants)?;
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let mut cells = Cells::new();
    let depths = o
        .depth
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(",");
    for round in 0..o.rounds {
        for (qi, (label, path)) in files.iter().enumerate() {
            for &t in &o.threads {
                eprintln!("round {}/{}: {label} at {t} thread(s)", round + 1, o.rounds);
                let common = |c: &mut Command| {
                    c.arg("-m")
                        .arg(path)
                        .args(["-p", &o.n_prompt.to_string()])
                        .args(["-n", &o.n_gen.to_string()])
                        .args(["-d", &depths])
                        .args(["-t", &t.to_string(), "-r", "1", "-o", "json"]);
                };
                let mut a = Command::new(bin.join("llama-bench"));
                common(&mut a);
                let mut b = Command::new(&engine);
                b.arg("bench");
                common(&mut b);
                // A then B, then B then A next round, so neither always runs second.
                let (first, second) = if round % 2 == 0 {
                    (&mut a, &mut b)
                } else {
                    (&mut b, &mut a)
                };
                let r1 = bench_json(first)?;
                let r2 = bench_json(second)?;
                let (ra, rb) = if round % 2 == 0 { (r1, r2) } else { (r2, r1) };
                for (name, ts) in ra {
                    cells.entry((qi, t, name)).or_default().0.push(ts);
                }
                for (name, ts) in rb {
                    cells.entry((qi, t, name)).or_default().1.push(ts);
                }
            }
        }
    }
    println!(
        "Gemma 3 270M on {cpu}, {} round(s) interleaved; t/s mean ± stddev\n",
        o.rounds
    );
    println!("| model | threads | test | llama.cpp t/s | engine t/s | ratio |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let mut json = vec![];
    for ((qi, t, name), (a, b)) in &cells {
        if a.is_empty() || b.is_empty() {
            continue;
        }
        let (ma, sa) = mean_sd(a);
        let (mb, sb) = mean_sd(b);
        println!(
            "| {} | {t} | {name} | {ma:.2} ± {sa:.2} | {mb:.2} ± {sb:.2} | {:.2}× |",
            files[*qi].0,
            mb / ma
        );
        json.push(serde_json::json!({
            "quant": files[*qi].0, "threads": t, "test": name,
            "llamacpp_ts": a, "engine_ts": b, "ratio": mb / ma,
        }));
    }
    if o.quality {
        let rows = quality(&bin, &engine, &o, &cells, &files)?;
        json.push(serde_json::json!({ "quality": rows }));
    }
    if let Some(p) = &o.json_out {
        std::fs::write(p, serde_json::to_string_pretty(&json)?)?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

/// Runs a command and returns its stdout, failing with its stderr.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// llama-perplexity's final estimate (`Final estimate: PPL = X +/- Y`).
fn llama_ppl(bin: &Path, model: &Path, text: &Path, threads: usize) -> Result<f64> {
    let out = Command::new(bin.join("llama-perplexity"))
        .arg("-m")
        .arg(model)
        .arg("-f")
        .arg(text)
        .args(["-c", "512", "-b", "512", "-t", &threads.to_string()])
        .output()
        .context("cannot run llama-perplexity")?;
    let all =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let line = all
        .lines()
        .find_map(|l| l.split("Final estimate: PPL = ").nth(1))
        .with_context(|| format!("llama-perplexity printed no estimate: {}", all.trim()))?;
    line.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .context("unreadable PPL")
}

/// The quality table: size, speed, perplexity and KL-divergence vs F16 per ladder row.
fn quality(
    bin: &Path,
    engine: &Path,
    o: &Options,
    cells: &Cells,
    files: &[(String, PathBuf)],
) -> Result<Vec<serde_json::Value>> {
    let text = workspace_root().join("benches/data/quality.txt");
    let t = *o.threads.iter().max().expect("checked non-empty");
    let f16 = ladder(bin, &["F16".to_string()])?.remove(0).1;
    let base = workspace_root().join(".cache/llamacpp/kld-base-f16.bin");
    let perplexity = |model: &Path, extra: &[&str]| -> Result<serde_json::Value> {
        let mut c = Command::new(engine);
        c.arg("perplexity")
            .arg("-m")
            .arg(model)
            .arg("-f")
            .arg(&text)
            .args(["-c", "512", "-t", &t.to_string(), "--json"])
            .args(extra);
        Ok(serde_json::from_str(output(&mut c)?.trim())?)
    };
    eprintln!("quality: saving the F16 distributions");
    let b = base.display().to_string();
    perplexity(&f16, &["--kl-divergence-base", &b])?;
    let speed = |qi: usize, test: &str| {
        cells
            .get(&(qi, t, test.to_string()))
            .filter(|c| !c.1.is_empty())
            .map(|c| format!("{:.1}", mean_sd(&c.1).0))
            .unwrap_or_else(|| "-".into())
    };
    let (pp, tg) = (format!("pp{}", o.n_prompt), format!("tg{}", o.n_gen));
    println!(
        "\nQuality on benches/data/quality.txt (-c 512), KL-divergence vs the F16 file; speed at {t} thread(s)\n"
    );
    println!(
        "| model | size MiB | {pp} t/s | {tg} t/s | PPL | llama.cpp PPL | mean KLD | same top-1 |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut rows = vec![];
    for (qi, (label, path)) in files.iter().enumerate() {
        eprintln!("quality: {label}");
        let v = perplexity(path, &["--kl-divergence-base", &b, "--kl-divergence"])?;
        let lp = llama_ppl(bin, path, &text, t)?;
        let size = std::fs::metadata(path)?.len() as f64 / (1 << 20) as f64;
        let k = &v["kld"];
        println!(
            "| {label} | {size:.1} | {} | {} | {:.4} | {lp:.4} | {:.6} ± {:.6} | {:.2} % |",
            speed(qi, &pp),
            speed(qi, &tg),
            v["ppl"].as_f64().unwrap_or(f64::NAN),
            k["mean"].as_f64().unwrap_or(f64::NAN),
            k["mean_err"].as_f64().unwrap_or(f64::NAN),
            100.0 * k["same_top"].as_f64().unwrap_or(f64::NAN),
        );
        rows.push(serde_json::json!({
            "quant": label, "size_bytes": std::fs::metadata(path)?.len(),
            "engine": v, "llamacpp_ppl": lp,
        }));
    }
    Ok(rows)
}
