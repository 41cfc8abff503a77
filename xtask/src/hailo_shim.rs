//! `cargo xtask build-hailo-shim`: builds `shim/hailo/` (the C++ shim over HailoRT's GenAI
//! API) with CMake against the installed HailoRT 5.x, and puts `libengine_hailo_shim.so`
//! next to the `engine` binaries (`target/release/` and `target/debug/`), where the engine
//! looks for it. Fails with what to install when HailoRT, its headers, CMake, a C++ compiler
//! or nlohmann-json is missing.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::{have, sh};

/// Where HailoRT's headers may be.
const HEADER_DIRS: &[&str] = &["/usr/include", "/usr/local/include"];

fn hailort_installed(prefix: Option<&Path>) -> bool {
    let dirs: Vec<PathBuf> = match prefix {
        Some(p) => vec![p.join("include")],
        None => HEADER_DIRS.iter().map(PathBuf::from).collect(),
    };
    dirs.iter()
        .any(|d| d.join("hailo/genai/llm/llm.hpp").is_file())
}

/// Runs the task; `args` may hold `--hailort-prefix DIR`.
pub fn run(args: &[String]) -> Result<()> {
    let mut prefix: Option<PathBuf> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--hailort-prefix" => {
                prefix = Some(
                    it.next()
                        .context("--hailort-prefix needs a directory")?
                        .into(),
                )
            }
            "-h" | "--help" => {
                eprintln!("usage: cargo xtask build-hailo-shim [--hailort-prefix DIR]\n\nBuilds shim/hailo/ against HailoRT 5.x (headers and libhailort from Hailo's HailoRT 5.x packages) and copies\nlibengine_hailo_shim.so next to the engine binaries.");
                return Ok(());
            }
            other => bail!("unknown argument '{other}' (see --help)"),
        }
    }
    if !hailort_installed(prefix.as_deref()) {
        bail!(
            "HailoRT 5.x is not installed here: hailo/genai/llm/llm.hpp was not found in {}. Install HailoRT 5.x with its development headers (on a Raspberry Pi 5 with a Hailo-10H: Hailo's HailoRT 5.x packages), or pass --hailort-prefix DIR. The shim cannot be built without it.",
            match &prefix {
                Some(p) => p.join("include").display().to_string(),
                None => HEADER_DIRS.join(", "),
            }
        );
    }
    for tool in ["cmake", "c++"] {
        if !have(tool) {
            bail!("'{tool}' is missing: install cmake and a C++17 compiler (apt-get install cmake g++)");
        }
    }
    let root = engine_testdata::workspace_root();
    let src = root.join("shim/hailo");
    let build = root.join("target/hailo-shim");
    let prefix_arg = prefix
        .as_ref()
        .map(|p| format!(" -DCMAKE_PREFIX_PATH={}", p.display()))
        .unwrap_or_default();
    sh(&format!(
        "cmake -S {} -B {} -DCMAKE_BUILD_TYPE=Release{prefix_arg}",
        src.display(),
        build.display()
    ))
    .context("CMake could not configure the shim (is nlohmann-json installed? apt-get install nlohmann-json3-dev)")?;
    sh(&format!("cmake --build {} -j 2", build.display()))?;
    let lib = build.join("libengine_hailo_shim.so");
    if !lib.is_file() {
        bail!("the build left no {}", lib.display());
    }
    for profile in ["release", "debug"] {
        let dir = root.join("target").join(profile);
        std::fs::create_dir_all(&dir)?;
        let to = dir.join("libengine_hailo_shim.so");
        std::fs::copy(&lib, &to).with_context(|| format!("cannot copy to {}", to.display()))?;
        eprintln!("installed {}", to.display());
    }
    Ok(())
}
