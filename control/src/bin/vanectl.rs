//! `vanectl`, the operators' CLI for a Vane control server (see `vane_control::cli`).

fn main() -> std::process::ExitCode {
    vane_control::cli::main()
}
