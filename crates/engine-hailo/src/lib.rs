//! # engine-hailo
//!
//! The Hailo-10H text provider. A Hailo-10H runs LLMs only through HailoRT's C++ GenAI API
//! (`hailort::genai::LLM`): text or chat messages in, text out, with the tokenizer on the
//! device. The engine reaches it through a small C++ shim with a C ABI
//! (`shim/hailo/`), built on the Pi against the installed HailoRT with
//! `cargo xtask build-hailo-shim` and loaded at run time, so `engine` builds and runs
//! everywhere.
//!
//! * [`abi`]: the C ABI (mirroring `shim/hailo/engine_hailo_shim.h`) and the loader with its
//!   version check.
//! * [`device`]: safe calls on one shim handle.
//! * [`protocol`]: the line protocol to the host process.
//! * [`host`]: the host process, which runs the shim away from the server.
//! * [`client`]: [`HailoProvider`], the [`engine::provider::TextProvider`] over the host.
//!
//! Status: contract-tested against a fake shim (`crates/engine-hailo-fake`); not run on
//! hardware. The real shim has not been compiled here (HailoRT's headers are in no package
//! registry).

#![warn(missing_docs)]

pub mod abi;
pub mod client;
pub mod device;
pub mod host;
pub mod protocol;

pub use client::{HailoOptions, HailoProvider, HostCommand};
