//! The HTTP APIs: [`openai`] (`/v1/...`), [`ollama`] (`/api/...`) and llama-server's own
//! endpoints ([`llama`]) on the same port, and what they share ([`common`]).

pub mod common;
pub mod llama;
pub mod ollama;
pub mod openai;
