//! Test support shared by the crates' test suites: where the shared fixtures live, and
//! fetching of data that is not committed (llama.cpp's tokenizer test vocabularies).
//!
//! Data is fetched once into `<workspace>/.cache/testdata` (override with
//! `ENGINE_TESTDATA_DIR`) through the machine's own `pip`, so whatever package index pip is
//! configured for is used. Fetching is idempotent and safe when test binaries race: files
//! are written to a temporary name and renamed into place.

#![warn(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

pub mod http;
pub mod logits;

/// Byte offsets of the f16 scale fields in one block of `t` (empty for types without one),
/// for tests and benches that fill blocks with random codes and must keep the scales finite.
pub fn f16_scale_fields(t: engine_core::DType) -> &'static [usize] {
    use engine_core::DType;
    match t {
        DType::Q4_0 | DType::Q5_0 | DType::Q8_0 | DType::IQ4_NL | DType::IQ4_XS => &[0],
        DType::Q4_1 | DType::Q5_1 | DType::Q4_K | DType::Q5_K => &[0, 2],
        DType::Q2_K => &[80, 82],
        DType::Q3_K => &[108],
        DType::Q6_K => &[208],
        _ => &[],
    }
}

/// The llama-cpp-python source distribution that vendors the reference llama.cpp.
pub const LLAMA_CPP_PYTHON: &str = "llama-cpp-python==0.3.36";

static FETCH_LOCK: Mutex<()> = Mutex::new(());

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crate lives in <root>/crates/<name>")
        .to_path_buf()
}

/// `../shared/fixtures` beside the workspace root (or `ENGINE_FIXTURES_DIR`).
pub fn fixtures_dir() -> PathBuf {
    if let Ok(p) = std::env::var("ENGINE_FIXTURES_DIR") {
        return PathBuf::from(p);
    }
    workspace_root().join("../shared/fixtures")
}

/// Cache directory for fetched test data.
pub fn cache_dir() -> PathBuf {
    let dir = match std::env::var("ENGINE_TESTDATA_DIR") {
        Ok(p) => PathBuf::from(p),
        Err(_) => workspace_root().join(".cache/testdata"),
    };
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// The python interpreter to use (`PYTHON` or `python3`).
pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// The `gguf` Python package version used as the reference for codecs.
pub const GGUF_PY: &str = "gguf==0.19.0";

/// A Python command that can `import gguf` (and numpy). When the interpreter lacks them, they
/// are installed once with pip into `<cache>/pylib` and put on `PYTHONPATH`.
pub fn python_with_gguf() -> Result<Command, String> {
    let _g = FETCH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let probe = |extra: Option<&Path>| {
        let mut c = Command::new(python());
        if let Some(p) = extra {
            c.env("PYTHONPATH", p);
        }
        c.args(["-c", "import gguf, numpy"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if probe(None) {
        return Ok(Command::new(python()));
    }
    let lib = cache_dir().join("pylib");
    if !probe(Some(&lib)) {
        let tmp = cache_dir().join(format!("pylib.tmp.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        run(Command::new(python())
            .args(["-m", "pip", "install", "-q", "--target"])
            .arg(&tmp)
            .args([GGUF_PY, "numpy"]))?;
        let _ = std::fs::remove_dir_all(&lib);
        std::fs::rename(&tmp, &lib).map_err(|e| e.to_string())?;
    }
    let mut c = Command::new(python());
    c.env("PYTHONPATH", &lib);
    Ok(c)
}

/// A Python command whose `PYTHONPATH` holds `packages` (pip requirement strings such as
/// `"openai==3.51.0"`), installed once with pip into `<cache>/pylib-<name>` where `name`
/// is derived from the requirements. `imports` are the module names probed to decide
/// whether the install is complete.
pub fn python_with(packages: &[&str], imports: &[&str]) -> Result<Command, String> {
    let _g = FETCH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let name: String = packages
        .join("_")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let lib = cache_dir().join(format!("pylib-{name}"));
    let probe = format!("import {}", imports.join(", "));
    let ok = |dir: &Path| {
        Command::new(python())
            .env("PYTHONPATH", dir)
            .args(["-c", &probe])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if !ok(&lib) {
        let tmp = cache_dir().join(format!("pylib-{name}.tmp.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        run(Command::new(python())
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(&tmp)
            .args(packages))?;
        let _ = std::fs::remove_dir_all(&lib);
        std::fs::rename(&tmp, &lib).map_err(|e| e.to_string())?;
        if !ok(&lib) {
            return Err(format!("installed {packages:?} but `{probe}` still fails"));
        }
    }
    let mut c = Command::new(python());
    c.env("PYTHONPATH", &lib);
    Ok(c)
}

/// Downloads the llama-cpp-python sdist once and returns its path.
pub fn llama_cpp_sdist() -> Result<PathBuf, String> {
    let _g = FETCH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = cache_dir().join("sdist");
    let want = dir.join("llama_cpp_python-0.3.36.tar.gz");
    if want.exists() {
        return Ok(want);
    }
    let tmp = cache_dir().join(format!("sdist.tmp.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
    run(Command::new(python())
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            "llama-cpp-python",
            "-q",
            "-d",
        ])
        .arg(&tmp)
        .arg(LLAMA_CPP_PYTHON))?;
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::rename(tmp.join("llama_cpp_python-0.3.36.tar.gz"), &want)
        .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(want)
}

/// Directory holding llama.cpp's `ggml-vocab-*.gguf` files with their `.inp`/`.out` vectors,
/// extracted from the sdist on first use.
pub fn vocab_dir() -> Result<PathBuf, String> {
    let dir = cache_dir().join("vocab");
    if dir.join(".complete").exists() {
        return Ok(dir);
    }
    let sdist = llama_cpp_sdist()?;
    let _g = FETCH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if dir.join(".complete").exists() {
        return Ok(dir);
    }
    let tmp = cache_dir().join(format!("vocab.tmp.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&sdist)
        .arg("-C")
        .arg(&tmp)
        .args([
            "--wildcards",
            "--strip-components=4",
            "*/vendor/llama.cpp/models/ggml-vocab-*",
        ]))?;
    std::fs::write(tmp.join(".complete"), b"").map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).map_err(|e| e.to_string())?;
    Ok(dir)
}

/// Path of the real Gemma 3 270M Q4_K_M file (`ENGINE_GEMMA3_GGUF` overrides).
///
/// Installs it into the local model store (`ENGINE_MODELS`, else `~/.cache/engine/models`)
/// on first use, the way `engine pull gemma3-270m` does.
pub fn gemma3_model() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("ENGINE_GEMMA3_GGUF") {
        return Ok(PathBuf::from(p));
    }
    let _g = FETCH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    engine_store::store::ensure_quiet("gemma3-270m")
        .map_err(|e| format!("cannot get the default model: {e}"))
}

/// A copy of the default model with every quantized weight re-encoded as `dtype` (e.g. Q4_0)
/// by the project's own codecs and GGUF writer: a second real model of the same
/// architecture, for tests that need two. Written once into the cache directory.
pub fn requantized_gemma3(dtype: engine_core::DType) -> Result<PathBuf, String> {
    let src = gemma3_model()?;
    let dst = cache_dir().join(format!(
        "gemma-3-270m-{}.gguf",
        dtype.to_string().to_lowercase()
    ));
    let _g = FETCH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if dst.is_file() {
        return Ok(dst);
    }
    let g = engine_gguf::GgufModel::open(&src, true).map_err(|e| e.to_string())?;
    let mut w = engine_gguf::GgufWriter::new();
    for (k, v) in g.metadata() {
        w.set(k, v.clone());
    }
    if dtype == engine_core::DType::Q4_0 {
        w.set("general.file_type", engine_gguf::Value::U32(2));
    }
    for t in g.tensors() {
        let shape = t.shape();
        let data = g.tensor_data(t);
        let row = shape.last().copied().unwrap_or(1);
        let requant = t.dtype.is_quantized()
            && t.dtype != dtype
            && dtype.row_bytes(row).is_some()
            && engine_core::quant::dequant_fn(t.dtype).is_some();
        let (dt, bytes) = if requant {
            let n = t.numel() as usize;
            let f = engine_core::quant::dequantize_to_vec(t.dtype, data.as_slice(), n)
                .map_err(|e| format!("{}: {e}", t.name))?;
            let mut out = vec![0u8; dtype.row_bytes(row).unwrap_or(0) * (n / row)];
            let rb = dtype.row_bytes(row).unwrap_or(0);
            for (i, r) in f.chunks(row).enumerate() {
                engine_core::quant::quantize(dtype, r, &mut out[i * rb..(i + 1) * rb])
                    .map_err(|e| format!("{}: {e}", t.name))?;
            }
            (dtype, out)
        } else {
            (t.dtype, data.as_slice().to_vec())
        };
        w.add_tensor(&t.name, dt, &shape, bytes)
            .map_err(|e| e.to_string())?;
    }
    let tmp = dst.with_extension(format!("tmp.{}", std::process::id()));
    w.write_to(&tmp).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, &dst).map_err(|e| e.to_string())?;
    Ok(dst)
}

/// A self-drafting model for speculative decoding tests: the first `n_layers` blocks of the
/// GGUF at `src` (with its embeddings, final norm and output head), written once into the
/// cache as `<stem>-first<n_layers>.gguf`. It shares the vocabulary, so it can draft for the
/// full model, and it agrees with it often but not always, so verification both accepts
/// and rejects.
pub fn first_layers_model(src: &Path, n_layers: usize) -> Result<PathBuf, String> {
    let stem = src
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let dst = cache_dir().join(format!("{stem}-first{n_layers}.gguf"));
    let _g = FETCH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if dst.exists() {
        return Ok(dst);
    }
    let g = engine_gguf::GgufModel::open(src, true).map_err(|e| e.to_string())?;
    let arch = g
        .get("general.architecture")
        .and_then(|v| v.as_str())
        .ok_or("no general.architecture")?
        .to_string();
    let mut w = engine_gguf::GgufWriter::new();
    for (k, v) in g.metadata() {
        if *k == format!("{arch}.block_count") {
            w.set(k, engine_gguf::Value::U32(n_layers as u32));
        } else {
            w.set(k, v.clone());
        }
    }
    for t in g.tensors() {
        let layer = t
            .name
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|n| n.parse::<usize>().ok());
        if layer.is_some_and(|l| l >= n_layers) {
            continue;
        }
        w.add_tensor(
            &t.name,
            t.dtype,
            &t.shape(),
            g.tensor_data(t).as_slice().to_vec(),
        )
        .map_err(|e| e.to_string())?;
    }
    let tmp = dst.with_extension(format!("tmp.{}", std::process::id()));
    w.write_to(&tmp).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, &dst).map_err(|e| e.to_string())?;
    Ok(dst)
}

/// Index of the largest value (first on ties).
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = (0usize, f32::NEG_INFINITY);
    for (i, &v) in x.iter().enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0 as u32
}

static FAKE_SHIM: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();

/// The fake Hailo shim (`crates/engine-hailo-fake`), built on first use with the `cargo`
/// running the tests into the workspace's target directory (or `CARGO_TARGET_DIR`).
pub fn hailo_fake_shim() -> Result<PathBuf, String> {
    FAKE_SHIM
        .get_or_init(|| {
            let root = workspace_root();
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target"));
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            run(Command::new(cargo)
                .current_dir(&root)
                .args([
                    "build",
                    "-j",
                    "1",
                    "-p",
                    "engine-hailo-fake",
                    "--target-dir",
                ])
                .arg(&target))?;
            let lib = target.join("debug").join("libengine_hailo_fake.so");
            if lib.is_file() {
                Ok(lib)
            } else {
                Err(format!(
                    "building the fake Hailo shim left no {}",
                    lib.display()
                ))
            }
        })
        .clone()
}
