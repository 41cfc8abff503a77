//! Transformer operators on f32 rows: normalisation, rotary embeddings, gated activations
//! and attention over the KV cache. Each takes plain slices; [`crate::CpuBackend`] adapts
//! them to tensors and spreads rows over the thread pool.

pub mod activation;
pub mod attention;
pub mod norm;
pub mod rope;
