//! The HTTP APIs: [`openai`] (`/v1/...`), [`ollama`] (`/api/...`) and llama-server's own
//! endpoints ([`llama`]) on the same port, model loading and unloading ([`manage`]), and
//! what they share ([`common`]).

pub mod common;
pub mod llama;
pub mod manage;
pub mod ollama;
pub mod openai;
