//! The HTTP APIs: [`openai`] (`/v1/...`) and [`ollama`] (`/api/...`) on the same port, and
//! what they share ([`common`]).

pub mod common;
pub mod ollama;
pub mod openai;
