//! The `ddpm` command line: dispatch only; each subcommand lives in `ddpm::cli`.

fn main() -> std::process::ExitCode {
    ddpm::cli::main()
}
