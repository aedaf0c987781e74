//! The `hlm` binary; everything lives in the library (see `hlm_cli::main`).

fn main() -> std::process::ExitCode {
    hlm_cli::main()
}
