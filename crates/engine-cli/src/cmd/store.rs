//! `engine pull`, `engine list`, `engine rm`: the local model store.

use anyhow::{bail, Result};
use clap::Args;
use engine_store::{find_card, Store};

/// Arguments of `engine pull`.
#[derive(Args, Debug)]
pub struct PullArgs {
    /// Model name (see models/ for the known ones, e.g. gemma3-270m).
    pub name: String,
}

/// Arguments of `engine list`.
#[derive(Args, Debug)]
pub struct ListArgs {}

/// Arguments of `engine rm`.
#[derive(Args, Debug)]
pub struct RmArgs {
    /// Installed model name.
    pub name: String,
}

/// Runs `engine pull`.
pub fn pull(a: PullArgs) -> Result<()> {
    let Some(card) = find_card(&a.name) else {
        let known: Vec<String> = engine_store::builtin_cards()
            .into_iter()
            .map(|c| c.name)
            .collect();
        bail!(
            "unknown model '{}'; known models: {}",
            a.name,
            known.join(", ")
        );
    };
    let store = Store::open_default()?;
    let mut bar = crate::progress::Bar::new();
    let m = store.pull(&card, &mut bar)?;
    drop(bar);
    eprintln!(
        "installed {} ({} bytes, sha256 {}) at {}",
        m.name,
        m.size,
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
        "{:<24} {:<8} {:<12} {:>12}  PATH",
        "NAME", "QUANT", "ARCH", "SIZE"
    );
    for m in models {
        println!(
            "{:<24} {:<8} {:<12} {:>12}  {}",
            m.name,
            m.quant,
            m.architecture,
            m.size,
            store.model_path(&m).display()
        );
    }
    Ok(())
}

/// Runs `engine rm`.
pub fn rm(a: RmArgs) -> Result<()> {
    let store = Store::open_default()?;
    if !store.remove(&a.name)? {
        bail!("model '{}' is not installed", a.name);
    }
    eprintln!("removed {}", a.name);
    Ok(())
}
