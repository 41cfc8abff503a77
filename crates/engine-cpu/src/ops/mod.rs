//! Transformer operators on f32 rows: normalisation, rotary embeddings, gated activations,
//! attention over the KV cache, expert mixing and the Mamba-2 recurrent operators. Each
//! takes plain slices; [`crate::CpuBackend`] adapts them to tensors and spreads rows over the
//! thread pool.

pub mod activation;
pub mod attention;
pub mod norm;
pub mod rope;
pub mod rows;
pub mod ssm;
