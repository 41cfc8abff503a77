//! The `engine` command line. Each subcommand lives in its own module under `cmd/`; this
//! file parses arguments, sets up logging, and turns every failure (and any panic) into a
//! one-line error and a non-zero exit status.

mod cmd;
mod progress;

use clap::{Parser, Subcommand};

/// Native LLM inference: run GGUF models locally.
#[derive(Parser)]
#[command(name = "engine", version, about, propagate_version = true)]
struct Cli {
    /// The model store directory (default: $ENGINE_MODELS, else
    /// $XDG_CACHE_HOME/engine/models, else ~/.cache/engine/models).
    #[arg(long = "models-dir", global = true, value_name = "DIR")]
    models_dir: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt.
    Run(cmd::run::RunArgs),
    /// Print a model's metadata and tensor table.
    Inspect(cmd::inspect::InspectArgs),
    /// Print the token ids of a text.
    Tokenize(cmd::tokenize::TokenizeArgs),
    /// Evaluate token ids and write the logits of every position (raw little-endian f32).
    Logits(cmd::logits::LogitsArgs),
    /// Install a model into the local store (a known name, hf:ORG/REPO[/FILE], or a URL).
    Pull(cmd::store::PullArgs),
    /// List installed models and presets.
    List(cmd::store::ListArgs),
    /// Remove an installed model or preset.
    Rm(cmd::store::RmArgs),
    /// Create a model from an Ollama Modelfile (a preset over a store model, or an import).
    Create(cmd::store::CreateArgs),
    /// Show an installed model's details and Modelfile.
    Show(cmd::store::ShowArgs),
    /// Measure prompt-processing and generation speed (llama-bench's flags and tables).
    Bench(cmd::bench::BenchArgs),
    /// Serve the model over HTTP (OpenAI- and Ollama-compatible APIs).
    Serve(Box<cmd::serve::ServeArgs>),
    /// What this machine offers: CPU features, RAM, CUDA and ROCm devices, and on an AMD APU
    /// what the BIOS UMA carve-out costs.
    Doctor(cmd::doctor::DoctorArgs),
    /// Perplexity over a text, and KL-divergence against a base model (llama-perplexity).
    Perplexity(cmd::perplexity::PerplexityArgs),
    /// The Hailo host process `engine serve` starts for a HEF model (not for people): loads
    /// the Hailo shim and answers the engine's line protocol on stdin/stdout.
    #[command(hide = true)]
    HailoHost,
}

/// llama.cpp's tools spell some long options with one dash (`-pg`, `-ub`, `-ctk`); accept
/// those spellings by rewriting them to the `--` form before parsing.
fn llama_style_args(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    const LONG_WITH_ONE_DASH: &[&str] = &["-pg", "-ub", "-ctk", "-ctv", "-md"];
    args.map(|a| match a.to_str() {
        Some(s) if LONG_WITH_ONE_DASH.contains(&s) => format!("-{s}").into(),
        _ => a,
    })
    .collect()
}

/// Logs to stderr, filtered by `ENGINE_LOG` (default `default_level`), as text or JSON.
fn init_logging(default_level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ENGINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("error: internal error (this is a bug, please report it): {info}");
    }));
    let args = std::env::args_os().map(|a| a.to_string_lossy().into_owned());
    let args = cmd::serve::normalize_args(args.collect());
    let cli = match Cli::try_parse_from(llama_style_args(args.into_iter().map(Into::into))) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            // One line, like every other error of this command.
            let text = e.render().to_string();
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments");
            eprintln!("{} (see --help)", first.trim_end());
            std::process::exit(2);
        }
    };
    if let Some(dir) = &cli.models_dir {
        // Still one thread: the store reads this wherever it is opened.
        std::env::set_var("ENGINE_MODELS", dir);
    }
    match &cli.command {
        Command::Serve(a) => init_logging("info", cmd::serve::log_format(a) == "json"),
        _ => init_logging("warn", false),
    }
    let result = std::panic::catch_unwind(|| match cli.command {
        Command::Run(a) => cmd::run::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Tokenize(a) => cmd::tokenize::run(a),
        Command::Logits(a) => cmd::logits::run(a),
        Command::Pull(a) => cmd::store::pull(a),
        Command::List(a) => cmd::store::list(a),
        Command::Rm(a) => cmd::store::rm(a),
        Command::Create(a) => cmd::store::create(a),
        Command::Show(a) => cmd::store::show(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Serve(a) => cmd::serve::run(*a),
        Command::Perplexity(a) => cmd::perplexity::run(a),
        Command::Doctor(a) => cmd::doctor::run(&a),
        // stdout is the protocol there (logging goes to stderr)
        Command::HailoHost => std::process::exit(engine_hailo::host::main()),
    });
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("error: {msg}");
            std::process::exit(1);
        }
        Err(_) => std::process::exit(101),
    }
}
