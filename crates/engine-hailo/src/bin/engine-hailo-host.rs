//! The Hailo host process on its own (the `engine` binary has it as `engine hailo-host`):
//! loads the shim and answers the engine's line protocol on stdin/stdout.

fn main() {
    std::process::exit(engine_hailo::host::main());
}
