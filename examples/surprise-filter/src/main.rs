//! `hlm-surprise`: the full `hlm` command with the `draft_surprise` estimator linked in.
//! Try: `cargo run -p hlm-surprise-filter -- config check examples/surprise-filter/surprise-hlm.toml`

fn main() -> std::process::ExitCode {
    hlm_surprise_filter::link();
    hlm_cli::main()
}
