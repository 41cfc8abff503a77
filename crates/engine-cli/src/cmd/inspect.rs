//! `engine inspect`: a model's metadata and tensor table (name, type, shape, bytes).

use anyhow::Result;
use clap::Args;
use engine_gguf::GgufModel;

/// Arguments of `engine inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Model: a GGUF path or a store name.
    pub model: String,
    /// Show every array element instead of a summary.
    #[arg(long = "full")]
    pub full: bool,
}

/// Runs `engine inspect`.
pub fn run(a: InspectArgs) -> Result<()> {
    let path = super::resolve_model(&a.model)?;
    let g = GgufModel::open(&path, true)?;
    println!("file: {}", path.display());
    println!(
        "format: GGUF v{}, {} files, {} bytes, {} metadata keys, {} tensors, alignment {}",
        g.files()[0].version(),
        g.files().len(),
        g.file_bytes(),
        g.metadata().len(),
        g.tensors().len(),
        g.files()[0].alignment()
    );
    println!("\nmetadata:");
    for (k, v) in g.metadata() {
        match (a.full, v.as_array()) {
            (true, Some(arr)) => println!("  {k} = {arr:?}"),
            _ => println!("  {k} = {v}"),
        }
    }
    println!("\ntensors:");
    println!(
        "  {:<40} {:<8} {:<24} {:>12}",
        "name", "type", "shape (ne)", "bytes"
    );
    let mut params = 0u64;
    for t in g.tensors() {
        let shape =
            t.ne.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(" x ");
        println!(
            "  {:<40} {:<8} {:<24} {:>12}",
            t.name,
            t.dtype.name(),
            shape,
            t.size
        );
        params += t.numel();
    }
    println!(
        "\n{} tensors, {} parameters, {:.1} MiB of tensor data",
        g.tensors().len(),
        params,
        g.tensor_bytes() as f64 / (1u64 << 20) as f64
    );
    Ok(())
}
