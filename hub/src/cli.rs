//! Command line of `proofline-hub`.
//!
//! Exit status: 0 success; 1 an error (bad input, I/O, a locked store); 2 usage error;
//! 3 verification found a fault (tampering or damage), named on stderr.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use proofline_common::Origin;

use crate::config::HubConfig;

#[derive(Debug, Parser)]
#[command(
    name = "proofline-hub",
    version,
    about = "Proofline plant hub: broker, witness and API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the hub's Ed25519 key and print its cosignature verifier key (for the agents).
    Keygen {
        /// Site of the plant; the key signs for proofline/<site>/hub.
        #[arg(long)]
        site: String,
        /// Private key file to create (mode 0600; an existing file is never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Run the hub.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Check a configuration file and list every problem with its key path.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Manage the agents the hub accepts records from.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Work with the hub's stored ledgers.
    #[command(subcommand)]
    Ledger(LedgerCommand),
}

#[derive(Debug, Subcommand)]
enum AgentCommand {
    /// Enroll an agent by its verifier key (as `proofline-agent keygen` printed it). A running
    /// hub picks it up within seconds.
    Enroll {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        agent_id: String,
        /// Verifier key <origin>+<key id>+<base64>, or a file holding it.
        #[arg(long)]
        key: String,
    },
    /// Replace an enrolled station's key. The running hub carries it out within seconds and
    /// records it in its ledger; a key changed any other way is refused and alerted.
    Rotate {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        agent_id: String,
        /// The new verifier key, or a file holding it.
        #[arg(long)]
        key: String,
    },
    /// Stop accepting a station's records (those witnessed are kept and stay verifiable). The
    /// running hub carries it out within seconds and records it in its ledger.
    Remove {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        agent_id: String,
    },
}

#[derive(Debug, Subcommand)]
enum LedgerCommand {
    /// Re-verify every witnessed agent ledger and the hub's own against the cosigned checkpoints.
    Verify {
        #[arg(long)]
        data_dir: PathBuf,
        /// Hub configuration, to check agent signatures with the enrolled keys too.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

enum Failure {
    Fault(String),
    Error(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Error(e.into())
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    proofline_common::process::init_logging(if matches!(cli.command, Command::Run { .. }) {
        tracing::Level::INFO
    } else {
        tracing::Level::WARN
    });
    let result = match cli.command {
        Command::Keygen { site, out } => keygen(&site, &out),
        Command::Run { config } => crate::run::main_run(&config).map_err(Failure::Error),
        Command::CheckConfig { config } => check_config(&config),
        Command::Agent(AgentCommand::Enroll {
            config,
            agent_id,
            key,
        }) => enroll(&config, &agent_id, &key),
        Command::Agent(AgentCommand::Rotate {
            config,
            agent_id,
            key,
        }) => rotate(&config, &agent_id, &key),
        Command::Agent(AgentCommand::Remove { config, agent_id }) => remove(&config, &agent_id),
        Command::Ledger(LedgerCommand::Verify { data_dir, config }) => {
            verify(&data_dir, config.as_deref())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Fault(msg)) => {
            eprintln!("proofline-hub: verification failed: {msg}");
            ExitCode::from(3)
        }
        Err(Failure::Error(e)) => {
            eprintln!("proofline-hub: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn keygen(site: &str, out: &Path) -> Result<(), Failure> {
    let origin = Origin::hub(site)?;
    let signer = proofline_common::keyfile::generate(&origin, out)?;
    println!("{}", signer.cosignature_verifier());
    Ok(())
}

fn check_config(path: &Path) -> Result<(), Failure> {
    let cfg = crate::run::load_checked(path)?;
    let enrolled = cfg.enrolled().map_err(anyhow::Error::msg)?.len()
        + crate::enroll::read_enrollments(&cfg.hub.data_dir, &cfg.hub.site).len();
    println!(
        "ok: {} is hub {} ({} broker), api {}, {} enrolled agent(s)",
        path.display(),
        cfg.origin().map_err(anyhow::Error::msg)?,
        cfg.broker.kind,
        cfg.api.listen,
        enrolled
    );
    Ok(())
}

fn read_key_arg(key: &str) -> anyhow::Result<String> {
    if key.contains('+') {
        return Ok(key.trim().to_owned());
    }
    std::fs::read_to_string(key)
        .map(|s| s.trim().to_owned())
        .with_context(|| format!("--key {key:?} is neither a verifier key nor a readable file"))
}

fn enroll(config: &Path, agent_id: &str, key: &str) -> Result<(), Failure> {
    let cfg = HubConfig::load(config)?;
    let key = read_key_arg(key)?;
    let e = crate::config::enrolled(&cfg.hub.site, agent_id, &key).map_err(anyhow::Error::msg)?;
    let path = crate::enroll::enrollment_path(&cfg.hub.data_dir, agent_id);
    if let Ok(existing) = std::fs::read_to_string(&path) {
        if existing.trim() == key {
            println!("ok: {} is already enrolled", e.origin);
            return Ok(());
        }
        return Err(anyhow::anyhow!(
            "{} is enrolled with another key ({}); to change a station's key use `proofline-hub agent rotate`",
            e.origin,
            path.display()
        )
        .into());
    }
    let dir = path.parent().expect("enrollment path has a directory");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{key}\n"))
        .and_then(|_| std::fs::rename(&tmp, &path))
        .with_context(|| format!("writing {}", path.display()))?;
    println!("ok: enrolled {} with key {}", e.origin, e.key);
    Ok(())
}

/// Leaves a request for the running hub (it settles the files once it has recorded it).
fn request(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = path.parent().expect("a request path has a directory");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    crate::enroll::write_atomically(path, text)
        .with_context(|| format!("writing {}", path.display()))
}

fn rotate(config: &Path, agent_id: &str, key: &str) -> Result<(), Failure> {
    let cfg = HubConfig::load(config)?;
    let key = read_key_arg(key)?;
    let e = crate::config::enrolled(&cfg.hub.site, agent_id, &key).map_err(anyhow::Error::msg)?;
    let configured = cfg
        .enrolled()
        .map_err(anyhow::Error::msg)?
        .into_iter()
        .any(|c| c.agent_id == agent_id);
    let data = &cfg.hub.data_dir;
    if !configured && !crate::enroll::enrollment_path(data, agent_id).exists() {
        return Err(anyhow::anyhow!("{} is not enrolled at this hub", e.origin).into());
    }
    request(
        &crate::enroll::rotation_path(data, agent_id),
        &format!("{key}\n"),
    )?;
    println!(
        "ok: the hub replaces the key of {} with {} within seconds and records it in its ledger",
        e.origin, e.key
    );
    if configured {
        println!("note: {agent_id} is enrolled in {}: put the new key there too, or the next start alerts a changed key", config.display());
    }
    Ok(())
}

fn remove(config: &Path, agent_id: &str) -> Result<(), Failure> {
    let cfg = HubConfig::load(config)?;
    if cfg
        .enrolled()
        .map_err(anyhow::Error::msg)?
        .iter()
        .any(|c| c.agent_id == agent_id)
    {
        return Err(anyhow::anyhow!(
            "{agent_id} is enrolled in {}: remove its [[agent]] entry there and restart the hub",
            config.display()
        )
        .into());
    }
    let data = &cfg.hub.data_dir;
    if !crate::enroll::enrollment_path(data, agent_id).exists() {
        return Err(anyhow::anyhow!("{agent_id} is not enrolled at this hub").into());
    }
    request(&crate::enroll::removal_path(data, agent_id), "")?;
    println!("ok: the hub stops accepting {agent_id} within seconds and records it in its ledger; its witnessed records are kept");
    Ok(())
}

fn verify(data_dir: &Path, config: Option<&Path>) -> Result<(), Failure> {
    let mut keys = None;
    if let Some(c) = config {
        let cfg = HubConfig::load(c)?;
        let mut enrolled = cfg.enrolled().map_err(anyhow::Error::msg)?;
        enrolled.extend(crate::enroll::read_enrollments(
            &cfg.hub.data_dir,
            &cfg.hub.site,
        ));
        // Removed stations' witnessed records stay verifiable with the key they had.
        for r in crate::enroll::read_removed(&cfg.hub.data_dir, &cfg.hub.site) {
            if !enrolled.iter().any(|e| e.agent_id == r.agent_id) {
                enrolled.push(r);
            }
        }
        let (signer, _) = proofline_common::keyfile::load(&cfg.hub.key_file)?;
        keys = Some(crate::verify::Keys {
            enrolled: enrolled.into_iter().map(|e| (e.agent_id, e.key)).collect(),
            cosigner: signer.cosignature_verifier(),
        });
    } else {
        println!(
            "note: without --config the station signatures are not checked and the hub's key is taken from the data being verified"
        );
    }
    match crate::verify::verify(data_dir, keys.as_ref()) {
        Ok(r) => {
            for a in &r.agents {
                println!("ok: agent {} size {} root {}", a.agent_id, a.size, a.root);
            }
            println!(
                "ok: hub ledger {} size {}; {} agent ledger(s) verified",
                r.hub_origin,
                r.hub_size,
                r.agents.len()
            );
            Ok(())
        }
        Err(crate::verify::VerifyError::Fault(m)) => Err(Failure::Fault(m)),
        Err(crate::verify::VerifyError::Store(e)) => Err(Failure::Error(e.into())),
    }
}
