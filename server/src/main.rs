//! The `sluice` binary; everything lives in the library's `cli` module so that test harnesses can
//! build the very same command.

fn main() -> std::process::ExitCode {
    sluice_server::cli::main()
}
