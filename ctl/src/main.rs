//! `vanectl`, the operators' CLI for a Vane control server (see the `vanectl` library).

fn main() -> std::process::ExitCode {
    vanectl::main()
}
