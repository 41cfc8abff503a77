//! `engine pull`, `engine list`, `engine rm`, `engine create`, `engine show`: the local model
//! store.

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use engine_store::remote::{self, SourceRef};
use engine_store::{find_card, Manifest, Store};

/// Arguments of `engine pull`.
#[derive(Args, Debug)]
pub struct PullArgs {
    /// What to pull: a known model name (see `models/`, e.g. gemma3-270m),
    /// `hf:ORG/REPO[/FILE.gguf]`, `hf:ORG/REPO:QUANT`, an https:// URL of a GGUF file, or a
    /// Hailo GenAI package's manifest.json (a URL or a local file) for a Hailo-10H.
    pub source: String,
    /// Store name for an hf: or URL source (default: the file name, lower-cased, without
    /// .gguf).
    #[arg(long = "name")]
    pub name: Option<String>,
    /// Expected sha256 of the file (hex); the download is refused if it differs. Hugging
    /// Face sources are checked against the Hub's digests without it.
    #[arg(long = "sha256")]
    pub sha256: Option<String>,
    /// For a Hailo manifest: where to download the HEF (it is still checked against the
    /// manifest's sha256).
    #[arg(long = "hef-url")]
    pub hef_url: Option<String>,
}

/// Arguments of `engine list`.
#[derive(Args, Debug)]
pub struct ListArgs {}

/// Arguments of `engine rm`.
#[derive(Args, Debug)]
pub struct RmArgs {
    /// Installed model name.
    pub name: String,
    /// Remove it even if presets are built on it.
    #[arg(long = "force")]
    pub force: bool,
}

/// Arguments of `engine create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Name of the new model (e.g. base-elroy, nemotron-3-nano:4b-elroy).
    pub name: String,
    /// The Modelfile (Ollama's format: FROM, PARAMETER, SYSTEM, TEMPLATE, MESSAGE).
    #[arg(short = 'f', long = "file", default_value = "Modelfile")]
    pub file: PathBuf,
}

/// Arguments of `engine show`.
#[derive(Args, Debug)]
pub struct ShowArgs {
    /// Installed model name.
    pub name: String,
    /// Print only its Modelfile.
    #[arg(long = "modelfile")]
    pub modelfile: bool,
}

/// A Hailo GenAI package when `spec` is a `.json` manifest (a URL or a local file).
fn hailo_package(
    spec: &str,
    hef_url: Option<&str>,
) -> Result<Option<engine_store::hailo::Package>> {
    let path_part = spec.split(['?', '#']).next().unwrap_or(spec);
    if !path_part.to_ascii_lowercase().ends_with(".json") {
        return Ok(None);
    }
    let remote = spec.starts_with("https://") || spec.starts_with("http://");
    let text = if remote {
        engine_store::http::get_json(&engine_store::http::agent(), spec, &[])?.to_string()
    } else {
        std::fs::read_to_string(spec).with_context(|| format!("cannot read {spec}"))?
    };
    if !engine_store::hailo::is_manifest(&text) {
        bail!("{spec} is not a Hailo GenAI manifest (it has no hef_h10h)");
    }
    Ok(Some(engine_store::hailo::parse(&text, spec, hef_url)?))
}

/// Pulls `spec` into `store` (a card, `hf:` reference, URL, or Hailo manifest) and returns
/// its manifest.
pub fn pull_source(
    store: &Store,
    spec: &str,
    name: Option<&str>,
    sha256: Option<&str>,
    hef_url: Option<&str>,
) -> Result<Manifest> {
    if let Some(s) = sha256 {
        if s.len() != 64 || !s.chars().all(|c| c.is_ascii_hexdigit()) {
            bail!("--sha256 must be 64 hexadecimal digits, got '{s}'");
        }
    }
    let mut bar = crate::progress::Bar::new();
    if let Some(pkg) = hailo_package(spec, hef_url)? {
        if sha256.is_some() {
            bail!("--sha256 does not apply to a Hailo manifest: the HEF is checked against its hef_h10h");
        }
        let mut plan = pkg.plan;
        plan.device = Some((pkg.device, pkg.preset));
        let name = name.map(str::to_string).unwrap_or(pkg.default_name);
        return Ok(store.pull_plan(&name, &plan, &mut bar)?);
    }
    if hef_url.is_some() {
        bail!("--hef-url applies to a Hailo manifest (a .json source) only");
    }
    let plan = match SourceRef::parse(spec)? {
        SourceRef::Card(n) => {
            let Some(card) = find_card(&n) else {
                let known: Vec<String> = engine_store::builtin_cards()
                    .into_iter()
                    .map(|c| c.name)
                    .collect();
                bail!(
                    "unknown model '{n}'; known models: {} (or pull hf:ORG/REPO[/FILE.gguf] or an https:// URL)",
                    known.join(", ")
                );
            };
            if name.is_some_and(|x| x != card.name) || sha256.is_some() {
                bail!("--name and --sha256 apply to hf: and URL sources; '{n}' is a known model with its own name and digest");
            }
            return Ok(store.pull(&card, &mut bar)?);
        }
        SourceRef::Hf(r) => {
            let mut plan = remote::plan_hf(&engine_store::http::agent(), &r)?;
            if let Some(s) = sha256 {
                if plan.files.len() != 1 {
                    bail!("--sha256 names one file, but {} is a split set of {} files (each is checked against the Hub's digest)", plan.source, plan.files.len());
                }
                plan.files[0].sha256 = Some(s.to_ascii_lowercase());
            }
            plan
        }
        SourceRef::Url(u) => remote::plan_url(&u, sha256)?,
    };
    let name = name
        .map(str::to_string)
        .unwrap_or_else(|| plan.default_name());
    Ok(store.pull_plan(&name, &plan, &mut bar)?)
}

/// Runs `engine pull`.
pub fn pull(a: PullArgs) -> Result<()> {
    let store = Store::open_default()?;
    let m = pull_source(
        &store,
        &a.source,
        a.name.as_deref(),
        a.sha256.as_deref(),
        a.hef_url.as_deref(),
    )?;
    let files = 1 + m.parts.len();
    eprintln!(
        "installed {} ({} bytes{}, sha256 {}) at {}",
        m.name,
        m.size,
        if files > 1 {
            format!(" in {files} files")
        } else {
            String::new()
        },
        m.sha256,
        store.model_path(&m).display()
    );
    Ok(())
}

/// Runs `engine list`.
pub fn list(_: ListArgs) -> Result<()> {
    let store = Store::open_default()?;
    let models = store.list()?;
    println!(
        "{:<32} {:<8} {:<12} {:>12}  SOURCE",
        "NAME", "QUANT", "ARCH", "SIZE"
    );
    for m in models {
        let source = match &m.from {
            Some(base) => format!("preset FROM {base}"),
            None => m.source.clone(),
        };
        println!(
            "{:<32} {:<8} {:<12} {:>12}  {}",
            m.name,
            m.quant,
            m.architecture,
            engine::memory::human(m.size),
            source
        );
    }
    for (name, bytes) in store.partials() {
        if bytes > 0 {
            eprintln!(
                "(an interrupted download of {name} holds {}; `engine pull` the same source again to resume)",
                engine::memory::human(bytes)
            );
        }
    }
    Ok(())
}

/// Runs `engine rm`.
pub fn rm(a: RmArgs) -> Result<()> {
    let store = Store::open_default()?;
    if !store.remove_checked(&a.name, a.force)? {
        bail!("model '{}' is not installed", a.name);
    }
    eprintln!("removed {}", a.name);
    Ok(())
}

/// Runs `engine create`.
pub fn create(a: CreateArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("cannot read the Modelfile {}", a.file.display()))?;
    let mf = engine_store::modelfile::parse(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.file.display()))?;
    for w in &mf.warnings {
        eprintln!("warning: {}: {w}", a.file.display());
    }
    if let Some(t) = &mf.preset.template {
        engine_server::models::template_choice(t)
            .map_err(|e| anyhow::anyhow!("{}: {e}", a.file.display()))?;
    }
    let store = Store::open_default()?;
    let base_dir = a
        .file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    // FROM a known model that is not installed yet: pull it first, as Ollama does
    if !base_dir.join(&mf.from).is_file() && store.get(&mf.from)?.is_none() {
        if let Some(card) = find_card(&mf.from) {
            let mut bar = crate::progress::Bar::new();
            store.pull(&card, &mut bar)?;
        }
    }
    let mut bar = crate::progress::Bar::new();
    let m = store.create(&a.name, &mf, &base_dir, &mut bar)?;
    drop(bar);
    match &m.from {
        Some(base) => eprintln!("created {} (FROM {base})", m.name),
        None => eprintln!("created {} ({} imported)", m.name, m.file),
    }
    Ok(())
}

/// Runs `engine show`.
pub fn show(a: ShowArgs) -> Result<()> {
    let store = Store::open_default()?;
    let Some(m) = store.get(&a.name)? else {
        bail!("model '{}' is not installed", a.name);
    };
    let (weights, path) = store.weights(&m)?;
    let preset = store.effective_preset(&m)?;
    let modelfile = engine_store::modelfile::render(
        m.from.as_deref().unwrap_or(&path.display().to_string()),
        &preset,
    );
    if a.modelfile {
        print!("{modelfile}");
        return Ok(());
    }
    println!("name          {}", m.name);
    if let Some(base) = &m.from {
        println!("from          {base}");
    }
    println!("architecture  {}", weights.architecture);
    println!("quantization  {}", weights.quant);
    println!(
        "size          {} ({} bytes)",
        engine::memory::human(weights.size),
        weights.size
    );
    println!("sha256        {}", weights.sha256);
    println!("source        {}", weights.source);
    println!("path          {}", path.display());
    if !preset.aliases.is_empty() {
        println!("aliases       {}", preset.aliases.join(", "));
    }
    println!("\n{modelfile}");
    Ok(())
}
