//! Command line of `proofline-agent`.
//!
//! Exit status: 0 success; 1 an error (bad input, I/O, a locked or missing ledger);
//! 2 usage error; 3 verification found a fault (tampering or damage), named on stderr.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use self::ledger::Failure;

#[cfg(feature = "test-hooks")]
pub mod bench;
pub mod ledger;
pub mod probe;
pub mod scan_parse;

#[derive(Debug, Parser)]
#[command(name = "proofline-agent", version, about = "Proofline station agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the station's Ed25519 signing key and print its C2SP verifier key.
    Keygen {
        /// Ledger origin the key signs for: proofline/<site>/<agent_id>.
        #[arg(long)]
        origin: String,
        /// Private key file to create (mode 0600; an existing file is never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Work with the station's ledger.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Run the station: read its sources, record every result durably.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Read a source's result block once and print every point in all four word orders.
    Probe {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        source: String,
    },
    /// Check a configuration file and list every problem with its key path.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Work with evidence bundles made by the hub.
    #[command(subcommand)]
    Evidence(EvidenceCommand),
    /// Parse scanner frames from stdin, one per line, and print one JSON line per frame.
    ScanParse {
        /// Refuse frames without an AIM symbology identifier (as a scanner configured so would).
        #[arg(long)]
        require_aim: bool,
    },
}

#[derive(Debug, Subcommand)]
enum EvidenceCommand {
    /// Check an evidence bundle offline, with nothing from the hub: every station and hub
    /// signature, inclusion proof, leaf hash and readable body, and that no record listed in
    /// the hub's signed manifest is missing. Prints what the bundle proves.
    Verify {
        /// The bundle (`proofline-hub evidence` or the injector page's download).
        file: PathBuf,
        /// The keys you trust, one verifier key per line (`#` comments): at least the hub's
        /// (as `proofline-hub keygen` printed it); station keys listed must match the bundle's.
        #[arg(long)]
        trust: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum LedgerCommand {
    /// Append synthetic inspection results through the real writer and report throughput
    /// (test and benchmark builds only: it writes synthetic data).
    #[cfg(feature = "test-hooks")]
    Bench(BenchArgs),
    /// Verify the ledger: chain, Merkle root and committed head.
    Verify {
        #[arg(long)]
        data_dir: PathBuf,
        /// Verify from genesis instead of from the last cosigned checkpoint.
        #[arg(long)]
        full: bool,
    },
    /// Print records as JSON lines {"seq","leaf","record","body"}.
    Export {
        #[arg(long)]
        data_dir: PathBuf,
        /// First seq to export.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Last seq to export (inclusive); default: the head.
        #[arg(long)]
        to: Option<u64>,
    },
    /// Print a signed checkpoint note for the ledger head.
    Checkpoint {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
    /// Verify an export offline against a signed checkpoint and the signer's verifier key.
    VerifyExport {
        /// Export file (JSON lines from seq 0).
        #[arg(long)]
        file: PathBuf,
        /// File holding the signed checkpoint note.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Verifier key <origin>+<key id>+<base64>, or a file holding it.
        #[arg(long)]
        pubkey: String,
    },
}

#[cfg(feature = "test-hooks")]
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[arg(long)]
    pub data_dir: PathBuf,
    #[arg(long)]
    pub key: PathBuf,
    /// Records to append.
    #[arg(long)]
    pub records: u64,
    /// Records per durable commit.
    #[arg(long, default_value_t = 1)]
    pub batch: u64,
    /// Approximate encoded size of each record (a flow-bench result with five characteristics
    /// and its raw registers is about 500 bytes).
    #[arg(long, default_value_t = 512)]
    pub record_bytes: usize,
    /// After every N commits, store a checkpoint of the head cosigned by a key made for the run
    /// (as the hub would cosign it), printing `COSIGNING <size>` before and `COSIGNED <size>`
    /// once it is durable; 0: never.
    #[arg(long, default_value_t = 0)]
    pub cosign_every: u64,
    /// After each cosigned checkpoint, prune what it covers (at most `--prune-pages` pages a
    /// pass), printing `PRUNING` before and `PRUNED <floor>` after.
    #[arg(long)]
    pub prune: bool,
    #[arg(long, default_value_t = 16)]
    pub prune_pages: usize,
}

/// Parses the command line, runs the command and maps the outcome to an exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    proofline_common::process::init_logging(if matches!(cli.command, Command::Run { .. }) {
        tracing::Level::INFO
    } else {
        tracing::Level::WARN
    });
    dispatch(cli)
}

/// [`main`] with the arguments given (the first names the program), for tools and tests that run
/// a command in-process as the shell would: the same code and exit status, with the caller's
/// logging (none is set up here).
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    dispatch(Cli::parse_from(args))
}

fn dispatch(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Keygen { origin, out } => self::ledger::keygen(&origin, &out),
        Command::Run { config } => crate::run::main_run(&config),
        Command::Probe { config, source } => self::probe::probe(&config, &source),
        Command::CheckConfig { config } => self::ledger::check_config(&config),
        Command::ScanParse { require_aim } => self::scan_parse::scan_parse(require_aim),
        Command::Evidence(EvidenceCommand::Verify { file, trust }) => {
            self::ledger::verify_evidence(&file, &trust)
        }
        Command::Ledger(cmd) => match cmd {
            #[cfg(feature = "test-hooks")]
            LedgerCommand::Bench(args) => self::bench::run(&args),
            LedgerCommand::Verify { data_dir, full } => self::ledger::verify(&data_dir, full),
            LedgerCommand::Export { data_dir, from, to } => {
                self::ledger::export(&data_dir, from, to)
            }
            LedgerCommand::Checkpoint { data_dir, key } => {
                self::ledger::checkpoint(&data_dir, &key)
            }
            LedgerCommand::VerifyExport {
                file,
                checkpoint,
                pubkey,
            } => self::ledger::verify_export(&file, &checkpoint, &pubkey),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Fault(msg)) => {
            eprintln!("proofline-agent: verification failed: {msg}");
            ExitCode::from(3)
        }
        Err(Failure::Error(e)) => {
            eprintln!("proofline-agent: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
