//! `proofline-agent`: thin entry point; everything lives in the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    proofline_common::process::abort_on_panic();
    proofline_agent::commands::main()
}
