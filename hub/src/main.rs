//! `proofline-hub`: the plant hub. Witnessing, reconciliation, QMS sync and dashboards arrive
//! with their own issues; until then the binary reports its version.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "proofline-hub",
    version,
    about = "Proofline plant hub (witness, reconciliation, QMS sync, dashboards)"
)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    println!("proofline-hub {}", env!("CARGO_PKG_VERSION"));
}
