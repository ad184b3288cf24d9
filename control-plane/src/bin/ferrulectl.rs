//! `ferrulectl`: the operator CLI (see [`ferrule_control::cli`]).

fn main() -> std::process::ExitCode {
    ferrule_control::cli::main()
}
