//! The `sluice` command line, built inside this package so that `cargo test` always runs the
//! slt suites against a binary built from the current sources (`CARGO_BIN_EXE_sluice-slt`).

fn main() -> std::process::ExitCode {
    sluice_server::cli::main()
}
