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
        /// Also log in to the QMS and check every mapped id exists there (and that no mapped
        /// NUMERIC measurement definition lacks its nominal and tolerances).
        #[arg(long)]
        online: bool,
    },
    /// Work with the delivery to the central QMS.
    #[command(subcommand)]
    Qms(QmsCommand),
    /// Export reconciled results for other tools (the hub must be stopped: it holds its
    /// store).
    #[command(subcommand)]
    Export(ExportCommand),
    /// Manage the agents the hub accepts records from.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Manage the accounts of the web app and the API (carried out by the running hub within a
    /// second and recorded in its access audit; queued while it is stopped).
    #[command(subcommand)]
    User(UserCommand),
    /// Write one injector's evidence bundle: its records from every station, each with an
    /// inclusion proof against the station's last cosigned checkpoint, and a manifest signed
    /// by the hub. `proofline-agent evidence verify FILE --trust KEYFILE` checks it offline.
    /// Made from the store of a stopped hub, or asked of the running hub's API.
    Evidence {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        uii: String,
        /// Bundle file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write an external Mosquitto's password file, ACL file and a mosquitto.conf snippet from
    /// the enrollments; run again after an enrollment change, then reload Mosquitto (SIGHUP).
    BrokerConfig {
        #[arg(long)]
        config: PathBuf,
        /// Directory for `passwd`, `acl` and `proofline.conf`.
        #[arg(long)]
        out: PathBuf,
    },
    /// Work with the hub's stored ledgers.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Show the reconciled view the hub keeps (a summary, or one injector's timeline, route and
    /// findings as JSON), or recompute it from the witnessed records and compare (`--rebuild`).
    /// The hub must be stopped: it holds its store.
    Reconcile {
        /// The hub's configuration (its data directory and findings rules).
        #[arg(long, conflicts_with = "data_dir")]
        config: Option<PathBuf>,
        /// The data directory, when there is no configuration at hand (default rules).
        #[arg(long, required_unless_present = "config")]
        data_dir: Option<PathBuf>,
        /// Recompute everything from the records into a scratch index and compare it with what
        /// the hub keeps: exit 0 when identical, 3 when they differ.
        #[arg(long)]
        rebuild: bool,
        /// Print this injector's timeline, route state and findings (JSON lines).
        #[arg(long)]
        uii: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ExportCommand {
    /// The results of one part type as a Q-DAS (AQDEF) `.dfq` file, one chart population per
    /// (part number, characteristic, test plan revision, bench).
    Qdas {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        part_type: String,
        /// Only this characteristic.
        #[arg(long)]
        characteristic: Option<String>,
        /// Results from this time on (RFC 3339, e.g. 2026-12-01T00:00:00Z), station clock.
        #[arg(long)]
        from: Option<String>,
        /// Results before this time (RFC 3339).
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum QmsCommand {
    /// Put a parked result (one the QMS refused) back on the outbox of the running hub, once
    /// what the QMS objected to is fixed. EVENT_ID is `proofline:proofline/<site>/<agent>:<seq>`
    /// as `GET /api/v1/injectors/{uii}` and the hub's log show it.
    Retry {
        #[arg(long)]
        config: PathBuf,
        event_id: String,
    },
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
        /// Also issue the station's broker credential (username = agent id) and write its
        /// secret here (mode 0600), for the station's `hub.mqtt.password_file`.
        #[arg(long)]
        credential_out: Option<PathBuf>,
    },
    /// Issue a new broker credential for an enrolled station (the old one stops working within
    /// seconds); its secret is written to FILE (mode 0600) and printed once, only its hash kept.
    Credential {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        agent_id: String,
        #[arg(long, value_name = "FILE")]
        credential_out: PathBuf,
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
enum UserCommand {
    /// Add an account. A person gets a one-time password, printed once, and enrolls the TOTP
    /// second factor at the first sign-in; a service account (`--service`) gets an API token.
    Add {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        name: String,
        /// operator, quality, auditor or admin.
        #[arg(long)]
        role: String,
        /// Authorized for export-controlled technical data (ITAR/EAR): a US person.
        #[arg(long)]
        us_person: bool,
        /// An operator's own station (agent id).
        #[arg(long)]
        station: Option<String>,
        /// A service account for a machine client of the API (a bearer token, no password).
        #[arg(long)]
        service: bool,
        /// Also write the service token to this file (mode 0600).
        #[arg(long)]
        token_out: Option<PathBuf>,
    },
    /// Disable an account: its sessions end and it cannot sign in.
    Disable {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// A new one-time password (or token), the second factor to enroll again, the lockout and
    /// the disabling lifted.
    Reset {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        token_out: Option<PathBuf>,
    },
    /// The accounts as the running hub last wrote them (no secrets).
    List {
        #[arg(long)]
        config: PathBuf,
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
        Command::Keygen { site, out } => keygen(&site, &out),
        Command::Run { config } => crate::run::main_run(&config).map_err(Failure::Error),
        Command::CheckConfig { config, online } => {
            check_config(&config).and_then(|()| if online { check_qms(&config) } else { Ok(()) })
        }
        Command::Qms(QmsCommand::Retry { config, event_id }) => qms_retry(&config, &event_id),
        Command::Export(ExportCommand::Qdas {
            config,
            part_type,
            characteristic,
            from,
            to,
            out,
        }) => export_qdas(
            &config,
            crate::qdas::QdasQuery {
                part_type,
                characteristic,
                from: None,
                to: None,
            },
            from.as_deref(),
            to.as_deref(),
            &out,
        ),
        Command::Agent(AgentCommand::Enroll {
            config,
            agent_id,
            key,
            credential_out,
        }) => enroll(&config, &agent_id, &key).and_then(|()| match credential_out {
            Some(out) => credential(&config, &agent_id, &out),
            None => Ok(()),
        }),
        Command::Agent(AgentCommand::Credential {
            config,
            agent_id,
            credential_out,
        }) => credential(&config, &agent_id, &credential_out),
        Command::BrokerConfig { config, out } => broker_config(&config, &out),
        Command::Evidence { config, uii, out } => evidence(&config, &uii, &out),
        Command::User(cmd) => user(cmd),
        Command::Agent(AgentCommand::Rotate {
            config,
            agent_id,
            key,
        }) => rotate(&config, &agent_id, &key),
        Command::Agent(AgentCommand::Remove { config, agent_id }) => remove(&config, &agent_id),
        Command::Ledger(LedgerCommand::Verify { data_dir, config }) => {
            verify(&data_dir, config.as_deref())
        }
        Command::Reconcile {
            config,
            data_dir,
            rebuild,
            uii,
        } => reconcile(
            config.as_deref(),
            data_dir.as_deref(),
            rebuild,
            uii.as_deref(),
        ),
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

/// `check-config --online`: the QMS login, tenant and every mapped id.
fn check_qms(path: &Path) -> Result<(), Failure> {
    let cfg = HubConfig::load(path)?;
    let Some(plan) = cfg.qms_plan(&mut Default::default()) else {
        println!("ok: no [qms] section, nothing to check online");
        return Ok(());
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    let problems = rt.block_on(crate::qms::check_online(&plan))?;
    if problems.is_empty() {
        println!(
            "ok: the QMS at {} has every mapped id ({} station(s))",
            plan.base_url,
            plan.stations.len()
        );
        Ok(())
    } else {
        for p in &problems {
            eprintln!("  {p}");
        }
        Err(anyhow::anyhow!("{} problem(s) with the QMS mapping", problems.len()).into())
    }
}

fn rfc3339_micros(flag: &str, s: &str) -> anyhow::Result<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .with_context(|| format!("{flag} {s:?} is not an RFC 3339 time (2026-12-01T00:00:00Z)"))?;
    Ok((t.unix_timestamp_nanos() / 1000) as i64)
}

fn export_qdas(
    config: &Path,
    mut q: crate::qdas::QdasQuery,
    from: Option<&str>,
    to: Option<&str>,
    out: &Path,
) -> Result<(), Failure> {
    use proofline_common::store::{Access, Store, StoreOptions};
    let cfg = HubConfig::load(config)?;
    if !cfg.part_type.iter().any(|t| t.name == q.part_type) {
        let names: Vec<&str> = cfg.part_type.iter().map(|t| t.name.as_str()).collect();
        return Err(anyhow::anyhow!(
            "no part type {:?} in {} (there: {})",
            q.part_type,
            config.display(),
            names.join(", ")
        )
        .into());
    }
    q.from = from.map(|s| rfc3339_micros("--from", s)).transpose()?;
    q.to = to.map(|s| rfc3339_micros("--to", s)).transpose()?;
    let rules = std::sync::Arc::new(cfg.rules(&mut Default::default()));
    let (store, _) = Store::open(&cfg.hub.data_dir, Access::Read, &StoreOptions::default())
        .with_context(|| format!("opening the hub store in {}", cfg.hub.data_dir.display()))?;
    let live = crate::reconcile::Reconciler::open(&store.witness_store(), rules)?;
    let (text, n) = crate::qdas::export(&live.view()?, &q);
    proofline_common::durable::write_atomically(out, text.as_bytes())
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "ok: {n} values of {} written to {}",
        q.part_type,
        out.display()
    );
    Ok(())
}

fn qms_retry(config: &Path, event_id: &str) -> Result<(), Failure> {
    let cfg = HubConfig::load(config)?;
    let Some((agent, seq)) = crate::qms::worker::parse_event_id(event_id) else {
        return Err(anyhow::anyhow!(
            "{event_id:?} is not an event id (proofline:proofline/<site>/<agent>:<seq>)"
        )
        .into());
    };
    if !event_id.starts_with(&format!("proofline:proofline/{}/", cfg.hub.site)) {
        return Err(anyhow::anyhow!("{event_id} is not of site {}", cfg.hub.site).into());
    }
    let dir = crate::qms::retry_dir(&cfg.hub.data_dir);
    request(&dir.join(crate::qms::worker::retry_file(&agent, seq)), "")?;
    println!("ok: the running hub puts {event_id} back on its QMS outbox within seconds, if it is parked");
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
    proofline_common::durable::create_dir_all(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    crate::enroll::write_atomically(&path, &format!("{key}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    println!("ok: enrolled {} with key {}", e.origin, e.key);
    Ok(())
}

/// Issues a station's broker credential: the hash stays with the hub, the secret goes to `out`.
fn credential(config: &Path, agent_id: &str, out: &Path) -> Result<(), Failure> {
    let cfg = HubConfig::load(config)?;
    let data = &cfg.hub.data_dir;
    let configured = cfg
        .enrolled()
        .map_err(anyhow::Error::msg)?
        .iter()
        .any(|e| e.agent_id == agent_id);
    if !configured && !crate::enroll::enrollment_path(data, agent_id).exists() {
        return Err(anyhow::anyhow!("{agent_id} is not enrolled at this hub").into());
    }
    let secret = crate::acl::issue_credential(data, agent_id).with_context(|| {
        format!(
            "writing {}",
            crate::acl::credential_path(data, agent_id).display()
        )
    })?;
    crate::acl::write_secret_file(out, &secret)
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "ok: broker credential for {agent_id}: username {agent_id}, secret {secret} (written to {}; shown only now)",
        out.display()
    );
    Ok(())
}

/// Mosquitto's files from the enrollments (see [`crate::acl::mosquitto_files`]).
fn broker_config(config: &Path, out: &Path) -> Result<(), Failure> {
    let cfg = HubConfig::load(config)?;
    let site = &cfg.hub.site;
    let hub = crate::acl::hub_client_id(site);
    let mqtt = cfg.client_mqtt();
    let (Some(user), Some(pw_file)) = (&mqtt.username, &mqtt.password_file) else {
        return Err(anyhow::anyhow!(
            "mqtt.username and mqtt.password_file: the hub needs its own credential at Mosquitto (username {hub:?})"
        )
        .into());
    };
    if *user != hub {
        return Err(anyhow::anyhow!(
            "mqtt.username: {user:?} must be {hub:?} (Mosquitto binds the client id to the username)"
        )
        .into());
    }
    let secret = std::fs::read_to_string(pw_file)
        .with_context(|| format!("mqtt.password_file: cannot read {}", pw_file.display()))?;
    let configured = cfg
        .enrolled()
        .map_err(anyhow::Error::msg)?
        .into_iter()
        .map(|e| e.agent_id)
        .collect();
    let stations = crate::acl::allowed_stations(&cfg.hub.data_dir, site, &configured);
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let out = out
        .canonicalize()
        .with_context(|| format!("{}", out.display()))?;
    let (pw_path, acl_path) = (out.join("passwd"), out.join("acl"));
    let files = crate::acl::mosquitto_files(
        site,
        &crate::acl::hash_secret(secret.trim_end_matches(['\r', '\n'])),
        &stations,
        &pw_path,
        &acl_path,
        cfg.broker.tls.as_ref().and_then(|t| t.crl_file.as_deref()),
    );
    for (path, text) in [
        (&pw_path, &files.passwords),
        (&acl_path, &files.acl),
        (&out.join("proofline.conf"), &files.conf),
    ] {
        crate::enroll::write_atomically(path, text)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let without: Vec<&String> = stations
        .iter()
        .filter(|(_, c)| c.is_none())
        .map(|(id, _)| id)
        .collect();
    println!(
        "ok: wrote {} ({} station(s)); include proofline.conf in mosquitto.conf, then reload Mosquitto (SIGHUP)",
        out.display(),
        stations.len()
    );
    if !without.is_empty() {
        println!(
            "note: without a credential (certificate only, or `agent credential`): {without:?}"
        );
    }
    Ok(())
}

/// Leaves a request for the running hub (it settles the files once it has recorded it).
fn request(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = path.parent().expect("a request path has a directory");
    proofline_common::durable::create_dir_all(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
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

fn reconcile(
    config: Option<&Path>,
    data_dir: Option<&Path>,
    rebuild: bool,
    uii: Option<&str>,
) -> Result<(), Failure> {
    use crate::reconcile::Reconciler;
    use proofline_common::store::{Access, Store, StoreOptions};
    let (data_dir, rules) = match (config, data_dir) {
        (Some(c), _) => {
            let cfg = HubConfig::load(c)?;
            let rules = cfg.rules(&mut Default::default());
            (cfg.hub.data_dir, rules)
        }
        (None, Some(d)) => (d.to_owned(), crate::reconcile::rules::Rules::defaults()),
        (None, None) => unreachable!("clap requires one"),
    };
    let rules = std::sync::Arc::new(rules);
    let (store, _) = Store::open(&data_dir, Access::Read, &StoreOptions::default())
        .with_context(|| format!("opening the hub store in {}", data_dir.display()))?;
    let ws = store.witness_store();
    let live = Reconciler::open(&ws, rules.clone())?;
    if rebuild {
        let rebuilt = Reconciler::rebuild(&ws, rules)?;
        let (a, b) = (live.digest()?, rebuilt.digest()?);
        println!(
            "kept by the hub: {} records, digest {}",
            live.records(),
            a.to_hex()
        );
        println!(
            "rebuilt:         {} records, digest {}",
            rebuilt.records(),
            b.to_hex()
        );
        if a != b {
            let (l, r) = (live.view()?, rebuilt.view()?);
            let first = r
                .injectors
                .iter()
                .find(|(u, t)| l.injectors.get(*u) != Some(t))
                .map(|(u, _)| format!("the first injector that differs is {u}"))
                .unwrap_or_else(|| {
                    "the timelines agree; stations, routes or findings differ".into()
                });
            return Err(Failure::Fault(format!(
                "the projection the hub keeps differs from the one rebuilt from the records ({first})"
            )));
        }
        println!("ok: identical");
        return Ok(());
    }
    let p = live.view()?;
    match uii {
        Some(u) => {
            let Some(timeline) = p.injectors.get(u) else {
                return Err(anyhow::anyhow!("no injector {u:?} in the witnessed records").into());
            };
            let line = |v: serde_json::Value| println!("{v}");
            for e in timeline {
                line(serde_json::json!({ "entry": e }));
            }
            line(serde_json::json!({ "route": p.routes.get(u) }));
            for f in p.findings.values().filter(|f| f.uii.as_deref() == Some(u)) {
                line(serde_json::json!({ "finding": f }));
            }
        }
        None => {
            for (id, s) in &p.stations {
                println!(
                    "station {id}: {} records, {} station events",
                    s.next_seq,
                    s.events.len()
                );
            }
            println!(
                "ok: {} records, {} injectors ({} complete), {} unbound results, {} findings; digest {}",
                p.records(),
                p.injectors.len(),
                p.routes.values().filter(|r| r.complete).count(),
                p.unbound.len(),
                p.findings.len(),
                live.digest()?.to_hex()
            );
        }
    }
    Ok(())
}

/// Every station key the configuration and the enrollments know, removed stations' included
/// (their witnessed records stay verifiable with the key they had).
fn station_keys(
    cfg: &HubConfig,
) -> Result<Vec<(String, proofline_common::note::VerifierKey)>, Failure> {
    let mut enrolled = cfg.enrolled().map_err(anyhow::Error::msg)?;
    enrolled.extend(crate::enroll::read_enrollments(
        &cfg.hub.data_dir,
        &cfg.hub.site,
    ));
    for r in crate::enroll::read_removed(&cfg.hub.data_dir, &cfg.hub.site) {
        if !enrolled.iter().any(|e| e.agent_id == r.agent_id) {
            enrolled.push(r);
        }
    }
    Ok(enrolled.into_iter().map(|e| (e.agent_id, e.key)).collect())
}

/// `user list`: the accounts as the running hub last wrote them.
fn user_list(paths: &crate::web::accounts::Paths) -> Result<(), Failure> {
    let text = std::fs::read_to_string(paths.list()).with_context(|| {
        format!(
            "reading {} (the hub writes it when it starts)",
            paths.list().display()
        )
    })?;
    let list: Vec<serde_json::Value> = serde_json::from_str(&text)?;
    println!("name\trole\tkind\tus_person\tstation\tmfa\tstate\tlast_signin");
    for a in &list {
        let state = if a["disabled"] == true {
            "disabled".to_owned()
        } else if let Some(t) = a["locked_until"].as_i64() {
            format!("locked until {}", proofline_common::evidence::rfc3339(t))
        } else {
            "active".to_owned()
        };
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            a["name"].as_str().unwrap_or(""),
            a["role"].as_str().unwrap_or(""),
            a["kind"].as_str().unwrap_or(""),
            if a["us_person"] == true { "yes" } else { "no" },
            a["station"].as_str().unwrap_or("-"),
            if a["mfa_enrolled"] == true {
                "enrolled"
            } else {
                "-"
            },
            state,
            a["last_signin"]
                .as_i64()
                .map_or_else(|| "never".to_owned(), proofline_common::evidence::rfc3339)
        );
    }
    Ok(())
}

/// A new one-time password (a person) or API token (a service account), and what the hub
/// keeps of it: the password's argon2id hash, or the token's SHA-256.
fn new_account_secret(service: bool) -> anyhow::Result<(String, Option<String>, Option<String>)> {
    use crate::web::accounts;
    if service {
        let token = accounts::random_secret("plt_")?;
        let hash = accounts::token_hash(&token).to_hex();
        Ok((token, None, Some(hash)))
    } else {
        let password = accounts::random_secret("")?;
        let phc = accounts::hash_password(&password)?;
        Ok((password, Some(phc), None))
    }
}

/// `user ...`: a request for the running hub, then its outcome (or "queued").
fn user(cmd: UserCommand) -> Result<(), Failure> {
    use crate::web::accounts::{self, Request};
    let config = match &cmd {
        UserCommand::Add { config, .. }
        | UserCommand::Disable { config, .. }
        | UserCommand::Reset { config, .. }
        | UserCommand::List { config } => config.clone(),
    };
    let cfg = HubConfig::load(&config)?;
    let paths = accounts::Paths::new(&cfg.hub.data_dir);
    let (req, secret, token_out) = match cmd {
        UserCommand::List { .. } => return user_list(&paths),
        UserCommand::Add {
            name,
            role,
            us_person,
            station,
            service,
            token_out,
            ..
        } => {
            accounts::check_name(&name).map_err(anyhow::Error::msg)?;
            let r = accounts::Role::parse(&role).ok_or_else(|| {
                anyhow::anyhow!("--role {role:?} is not one of operator, quality, auditor, admin")
            })?;
            if r == accounts::Role::Operator && station.is_none() {
                return Err(anyhow::anyhow!("an operator account needs --station AGENT_ID").into());
            }
            if token_out.is_some() && !service {
                return Err(
                    anyhow::anyhow!("--token-out is for service accounts (--service)").into(),
                );
            }
            let (secret, password, token_sha256) = new_account_secret(service)?;
            (
                Request::Add {
                    name,
                    role: r.name().to_owned(),
                    service,
                    us_person,
                    station,
                    password,
                    token_sha256,
                },
                Some((secret, service)),
                token_out,
            )
        }
        UserCommand::Disable { name, .. } => {
            accounts::check_name(&name).map_err(anyhow::Error::msg)?;
            (Request::Disable { name }, None, None)
        }
        UserCommand::Reset {
            name, token_out, ..
        } => {
            accounts::check_name(&name).map_err(anyhow::Error::msg)?;
            let listed: Vec<serde_json::Value> = std::fs::read_to_string(paths.list())
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            let service = listed
                .iter()
                .any(|a| a["name"] == name.as_str() && a["kind"] == "service");
            let (secret, password, token_sha256) = new_account_secret(service)?;
            (
                Request::Reset {
                    name,
                    password,
                    token_sha256,
                },
                Some((secret, service)),
                token_out,
            )
        }
    };
    let file = format!(
        "{:020}-{}.json",
        proofline_common::record::now_micros(),
        req.name()
    );
    request(&paths.requests().join(&file), &serde_json::to_string(&req)?)?;
    let done = paths.done().join(&file);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let outcome = loop {
        if let Ok(t) = std::fs::read_to_string(&done) {
            let _ = std::fs::remove_file(&done);
            break Some(t);
        }
        if std::time::Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    match &outcome {
        Some(t) if t.starts_with("refused") => {
            return Err(anyhow::anyhow!("the hub {t}").into());
        }
        Some(t) => println!("ok: {t}"),
        None => println!(
            "queued: the hub carries it out within a second of running (it is not running now, or busy)"
        ),
    }
    if let Some((secret, service)) = secret {
        if service {
            if let Some(out) = &token_out {
                crate::acl::write_secret_file(out, &secret)
                    .with_context(|| format!("writing {}", out.display()))?;
                println!("token written to {} (mode 0600)", out.display());
            }
            println!("API token (shown once; send it as Authorization: Bearer <token>): {secret}");
        } else {
            println!("one-time password (shown once): {secret}");
            println!(
                "sign in with it, then enroll the second factor (TOTP) from the QR code shown"
            );
        }
    }
    Ok(())
}

/// `evidence`: from the store when the hub is stopped, from its API when it runs.
fn evidence(config: &Path, uii: &str, out: &Path) -> Result<(), Failure> {
    use proofline_common::store::{Access, Store, StoreError, StoreOptions};
    let cfg = HubConfig::load(config)?;
    let bytes = match Store::open(&cfg.hub.data_dir, Access::Read, &StoreOptions::default()) {
        Ok((store, _)) => {
            let (signer, _) = proofline_common::keyfile::load(&cfg.hub.key_file)?;
            let keys: std::collections::BTreeMap<_, _> = station_keys(&cfg)?.into_iter().collect();
            let rules = std::sync::Arc::new(cfg.rules(&mut Default::default()));
            let ws = store.witness_store();
            let live = crate::reconcile::Reconciler::open(&ws, rules)?;
            let source = |id: &str| {
                let ledger = ws.open(id).ok()?;
                let state = crate::witness::load_state(&ledger).ok()??;
                Some(crate::evidence::StationSource {
                    key: keys.get(id)?.clone(),
                    cosigned: state.cosigned,
                    reader: ledger.reader(),
                })
            };
            let now = u64::try_from(proofline_common::record::now_micros() / 1_000_000)?;
            let bundle = crate::evidence::make(uii, &live.lookup(), source, &signer, now)
                .map_err(anyhow::Error::from)?;
            serde_json::to_vec_pretty(&bundle)?
        }
        Err(StoreError::Locked(_)) => evidence_from_api(&cfg, uii)?,
        Err(e) => {
            return Err(anyhow::Error::from(e)
                .context(format!(
                    "opening the hub store in {}",
                    cfg.hub.data_dir.display()
                ))
                .into())
        }
    };
    let bundle = proofline_common::evidence::parse(&bytes).map_err(anyhow::Error::from)?;
    proofline_common::durable::write_atomically(out, &bytes)
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "ok: evidence of {} ({} record(s) from {} station(s)) written to {}",
        bundle.uii,
        bundle
            .stations
            .iter()
            .map(|s| s.records.len())
            .sum::<usize>(),
        bundle.stations.len(),
        out.display()
    );
    Ok(())
}

/// The running hub holds its store: ask its API (on loopback) for the bundle.
fn evidence_from_api(cfg: &HubConfig, uii: &str) -> Result<Vec<u8>, Failure> {
    let addr: std::net::SocketAddr = cfg
        .api
        .listen
        .parse()
        .with_context(|| format!("api.listen {:?}", cfg.api.listen))?;
    let mut url = reqwest::Url::parse(&format!("http://{addr}/api/v1/injectors/"))?;
    url.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("api.listen does not make a URL"))?
        .pop_if_empty()
        .push(uii)
        .push("evidence");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The hub's own token for tools on its host (only those who can read its data can).
    let token_file = crate::web::accounts::Paths::new(&cfg.hub.data_dir).local_token();
    let token = std::fs::read_to_string(&token_file)
        .with_context(|| format!("reading the hub's local token {}", token_file.display()))?;
    rt.block_on(async {
        let resp = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(300))
            .build()?
            .get(url)
            .bearer_auth(token.trim())
            .send()
            .await
            .with_context(|| {
                format!(
                    "the hub store is locked (the hub runs) and its API at {addr} does not answer"
                )
            })?;
        let status = resp.status();
        let body = resp.bytes().await?;
        if !status.is_success() {
            let msg = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            return Err(anyhow::anyhow!("the running hub answered {status}: {msg}").into());
        }
        Ok(body.to_vec())
    })
}

fn verify(data_dir: &Path, config: Option<&Path>) -> Result<(), Failure> {
    let mut keys = None;
    if let Some(c) = config {
        let cfg = HubConfig::load(c)?;
        let (signer, _) = proofline_common::keyfile::load(&cfg.hub.key_file)?;
        keys = Some(crate::verify::Keys {
            enrolled: station_keys(&cfg)?,
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
