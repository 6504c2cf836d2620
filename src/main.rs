//! The `bramble` binary: hands the command line to [`bramble::cli::main`],
//! which parses it and runs the subcommand; everything else is in the library.

fn main() -> std::process::ExitCode {
    bramble::cli::main()
}
