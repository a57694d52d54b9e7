//! `proofline-agent`: thin entry point; everything lives in the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    proofline_agent::commands::main()
}
