//! Architecture definitions: each reads its family's hyperparameters from the file and
//! builds a model from the shared pieces. The registry maps `general.architecture` to them.

pub mod gemma3;
pub mod glm4moe;
pub mod gpt_oss;
pub mod llama;
pub mod nemotron_h;
pub mod phi3;
pub mod qwen;

use engine_gguf::GgufModel;

use crate::error::Result;

/// Which layers use sliding-window attention, as llama.cpp decides it: an explicit bool
/// array `{arch}.attention.sliding_window_pattern`, or an integer pattern `n` (layer `il`
/// is local unless it is the last of each group of `n`; with `dense_first`, unless it is
/// the first), or `default_pattern` when the key is absent. A pattern of 0 makes every
/// layer local.
pub fn swa_layers(
    g: &GgufModel,
    arch: &str,
    n_layer: usize,
    default_pattern: usize,
    dense_first: bool,
) -> Result<Vec<bool>> {
    let key = format!("{arch}.attention.sliding_window_pattern");
    if let Some(a) = g.get_array(&key)? {
        if let Some(v) = a.to_ints().filter(|v| v.len() == n_layer) {
            return Ok(v.into_iter().map(|x| x != 0).collect());
        }
        return Err(crate::ModelError::HParam(format!(
            "'{key}' must hold one flag per layer"
        )));
    }
    let n = g.get_usize(&key)?.unwrap_or(default_pattern);
    Ok((0..n_layer)
        .map(|il| {
            if n == 0 {
                true
            } else if dense_first {
                il % n != 0
            } else {
                il % n < n - 1
            }
        })
        .collect())
}
