//! Who may use the broker, and for what (DESIGN §4, "And still lock the broker").
//!
//! Identities: the hub (client id and username `proofline-hub-<site>`) and each enrolled
//! station (agent id `X`, client id `proofline-agent-<site>-X`). A station proves its id with a
//! credential issued at enrollment (username `X`, a random secret whose Mosquitto-format
//! PBKDF2-SHA512 hash is kept in `<data_dir>/enrolled/X.cred`) or with a TLS client certificate
//! whose CN or a DNS SAN is `X` (the listener verified it against `broker.tls.client_ca_file`).
//! A client id that does not match the identity is refused at CONNECT, so nobody takes over
//! another's persistent session.
//!
//! Rights, the same on the embedded broker ([`BrokerAcl`], a rumqttd authorizer) and on Mosquitto
//! (the files [`mosquitto_files`] writes):
//! - station X publishes `proofline/v1/<site>/X/records`, `.../X/status` (its will too) and
//!   `.../X/interlock`, and subscribes `.../X/ack` and `.../X/clearance`;
//! - the hub subscribes `.../+/records`, `.../+/status` (its own `hub/status` too) and
//!   `.../+/interlock`, and publishes `.../<station>/ack`, `.../<station>/clearance` and
//!   `.../hub/status`;
//! - nothing else, for anyone. A refused SUBSCRIBE gets the failure return code; a refused
//!   PUBLISH disconnects the client (MQTT 3.1.1 §3.3.5 allows either; a genuine client never
//!   does it, so the disconnection is the louder signal).
//!
//! The stations allowed are the enrolled ones (configuration and `enrolled/*.key`), less those
//! removed or with a removal request waiting; the hub's [`crate::enroll::Ticker`] refreshes the
//! set every few seconds, and every PUBLISH and SUBSCRIBE is judged against the current set, so a
//! removed station loses its rights within seconds, connected or not, without a restart.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use proofline_common::wire::{is_valid_agent_id, TOPIC_ROOT};
use rumqttd::{Access, Authorizer, Identity};

/// PBKDF2 rounds of a credential hash: Mosquitto's own default (`mosquitto_passwd`). The secrets
/// are 256 random bits, so the hash needs no stretching to resist guessing.
const PBKDF2_ROUNDS: u32 = 101;
/// Salt bytes, as `mosquitto_passwd` makes them.
const SALT_BYTES: usize = 12;
/// Bytes of a generated secret (256 bits).
const SECRET_BYTES: usize = 32;
/// At most one log line per this interval for refusals a peer can provoke.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// The hub's client id and username at a site.
pub fn hub_client_id(site: &str) -> String {
    format!("proofline-hub-{site}")
}

/// A station's client id (as `proofline-agent`'s forwarder connects).
pub fn station_client_id(site: &str, agent_id: &str) -> String {
    format!("proofline-agent-{site}-{agent_id}")
}

/// A new random secret, base64url without padding.
pub fn new_secret() -> String {
    let mut b = [0u8; SECRET_BYTES];
    getrandom::getrandom(&mut b).expect("the system's random source");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Hash of `secret` in Mosquitto's password-file format (`$7$<rounds>$<salt>$<hash>`,
/// PBKDF2-HMAC-SHA512, standard base64), as `mosquitto_passwd` writes it.
pub fn hash_secret(secret: &str) -> String {
    let mut salt = [0u8; SALT_BYTES];
    getrandom::getrandom(&mut salt).expect("the system's random source");
    let mut out = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(secret.as_bytes(), &salt, PBKDF2_ROUNDS, &mut out);
    let b64 = base64::engine::general_purpose::STANDARD;
    format!(
        "$7${PBKDF2_ROUNDS}${}${}",
        b64.encode(salt),
        b64.encode(out)
    )
}

/// Whether `secret` matches a hash made by [`hash_secret`] (or by `mosquitto_passwd`).
pub fn verify_secret(hash: &str, secret: &str) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut parts = hash.trim().split('$');
    let (Some(""), Some("7"), Some(rounds), Some(salt), Some(want), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let (Ok(rounds), Ok(salt), Ok(want)) =
        (rounds.parse::<u32>(), b64.decode(salt), b64.decode(want))
    else {
        return false;
    };
    if !(1..=1_000_000).contains(&rounds) || want.len() != 64 {
        return false;
    }
    let mut got = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(secret.as_bytes(), &salt, rounds, &mut got);
    constant_time_eq(&got, &want)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Where a station's credential hash is kept.
pub fn credential_path(data_dir: &Path, agent_id: &str) -> std::path::PathBuf {
    data_dir
        .join(crate::enroll::ENROLLED_DIR)
        .join(format!("{agent_id}.cred"))
}

/// Issues a new credential for `agent_id`: its hash goes to the data directory, the secret is
/// returned (to be given to the station once, and kept nowhere else).
pub fn issue_credential(data_dir: &Path, agent_id: &str) -> std::io::Result<String> {
    let secret = new_secret();
    let path = credential_path(data_dir, agent_id);
    if let Some(dir) = path.parent() {
        proofline_common::durable::create_dir_all(dir)?;
    }
    crate::enroll::write_atomically(&path, &format!("{}\n", hash_secret(&secret)))?;
    Ok(secret)
}

/// Writes a secret for a station to `path`, readable by its owner only.
pub fn write_secret_file(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(format!("{secret}\n").as_bytes())?;
    f.sync_all()?;
    proofline_common::durable::sync_parent(path)
}

/// The stations allowed on the broker now: enrolled ones (in the configuration or on disk),
/// without those removed or being removed, with their credential hashes (None: certificate
/// only).
pub fn allowed_stations(
    data_dir: &Path,
    site: &str,
    configured: &HashSet<String>,
) -> HashMap<String, Option<String>> {
    let removing: HashSet<String> = crate::enroll::read_requests(data_dir, site)
        .into_iter()
        .filter_map(|c| match c {
            crate::witness::worker::Cmd::Remove { agent_id } => Some(agent_id),
            _ => None,
        })
        .collect();
    let mut ids: HashSet<String> = configured.clone();
    ids.extend(
        crate::enroll::read_enrollments(data_dir, site)
            .into_iter()
            .map(|e| e.agent_id),
    );
    ids.into_iter()
        .filter(|id| !removing.contains(id) && id != "hub" && is_valid_agent_id(id))
        .map(|id| {
            let cred = std::fs::read_to_string(credential_path(data_dir, &id))
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty());
            (id, cred)
        })
        .collect()
}

/// Counters of refusals, for `/metrics` and the log.
#[derive(Debug, Default)]
pub struct AclCounters {
    pub refused_connects: AtomicU64,
    pub denied_publishes: AtomicU64,
    pub denied_subscribes: AtomicU64,
}

/// The embedded broker's authorizer (see the module doc). Cheap to share: the broker's
/// connections and the ticker hold it through an `Arc`.
#[derive(Debug)]
pub struct BrokerAcl {
    site: String,
    root: String,
    hub_id: String,
    hub_secret: String,
    stations: RwLock<HashMap<String, Option<String>>>,
    pub counters: AclCounters,
    last_log: std::sync::Mutex<Option<Instant>>,
}

enum Who<'a> {
    Hub,
    Station(&'a str),
}

impl BrokerAcl {
    /// An authorizer for `site`, the hub's own client connecting with `hub_secret`.
    pub fn new(site: &str, hub_secret: String) -> Arc<BrokerAcl> {
        Arc::new(BrokerAcl {
            site: site.to_owned(),
            root: format!("{TOPIC_ROOT}/{site}"),
            hub_id: hub_client_id(site),
            hub_secret,
            stations: RwLock::new(HashMap::new()),
            counters: AclCounters::default(),
            last_log: std::sync::Mutex::new(None),
        })
    }

    /// The hub's own secret at this broker.
    pub fn hub_secret(&self) -> &str {
        &self.hub_secret
    }

    /// Replaces the stations allowed (see [`allowed_stations`]).
    pub fn set_stations(&self, stations: HashMap<String, Option<String>>) {
        *self.stations.write().unwrap_or_else(|e| e.into_inner()) = stations;
    }

    /// Reads the allowed stations from the data directory again.
    pub fn refresh(&self, data_dir: &Path, configured: &HashSet<String>) {
        self.set_stations(allowed_stations(data_dir, &self.site, configured));
    }

    fn who<'a>(&self, client_id: &'a str) -> Option<Who<'a>> {
        if client_id == self.hub_id {
            return Some(Who::Hub);
        }
        let id = client_id
            .strip_prefix("proofline-agent-")?
            .strip_prefix(self.site.as_str())?
            .strip_prefix('-')?;
        self.stations
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(id)
            .then_some(Who::Station(id))
    }

    fn refused(&self, counter: &AtomicU64, what: &str, identity: &Identity, topic: &str) {
        counter.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last_log.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(
                client_id = %identity.client_id,
                username = ?identity.username,
                topic,
                refused_connects = self.counters.refused_connects.load(Ordering::Relaxed),
                denied_publishes = self.counters.denied_publishes.load(Ordering::Relaxed),
                denied_subscribes = self.counters.denied_subscribes.load(Ordering::Relaxed),
                "broker refused {what}"
            );
        }
    }

    fn check_connect(&self, identity: &Identity, password: Option<&str>) -> bool {
        match self.who(&identity.client_id) {
            None => false,
            Some(Who::Hub) => {
                identity.username.as_deref() == Some(self.hub_id.as_str())
                    && password
                        .is_some_and(|p| constant_time_eq(p.as_bytes(), self.hub_secret.as_bytes()))
            }
            Some(Who::Station(id)) => {
                let by_cert = identity.cert_names.iter().any(|n| n == id);
                match (identity.username.as_deref(), password) {
                    // A certificate naming the station is enough; a username, if sent, must be
                    // the same station.
                    (None, _) => by_cert,
                    (Some(u), _) if u != id => false,
                    (Some(_), None) => by_cert,
                    (Some(_), Some(p)) => {
                        let hash = self
                            .stations
                            .read()
                            .unwrap_or_else(|e| e.into_inner())
                            .get(id)
                            .cloned()
                            .flatten();
                        (by_cert && p.is_empty()) || hash.is_some_and(|h| verify_secret(&h, p))
                    }
                }
            }
        }
    }

    fn check(&self, identity: &Identity, access: Access, topic: &str) -> bool {
        let Some(rest) = topic
            .strip_prefix(self.root.as_str())
            .and_then(|r| r.strip_prefix('/'))
        else {
            return false;
        };
        match (self.who(&identity.client_id), access) {
            (None, _) => false,
            (Some(Who::Station(id)), Access::Publish) => rest
                .strip_prefix(id)
                .is_some_and(|k| matches!(k, "/records" | "/status" | "/interlock")),
            (Some(Who::Station(id)), Access::Subscribe) => rest
                .strip_prefix(id)
                .is_some_and(|k| k == "/ack" || k == "/clearance"),
            (Some(Who::Hub), Access::Subscribe) => {
                matches!(
                    rest,
                    "+/records" | "+/status" | "+/interlock" | "hub/status"
                )
            }
            (Some(Who::Hub), Access::Publish) => {
                rest == "hub/status"
                    || rest
                        .strip_suffix("/ack")
                        .or_else(|| rest.strip_suffix("/clearance"))
                        .is_some_and(|id| id != "hub" && is_valid_agent_id(id))
            }
        }
    }
}

impl Authorizer for BrokerAcl {
    fn connect(&self, identity: &Identity, password: Option<&str>) -> bool {
        let ok = self.check_connect(identity, password);
        if !ok {
            self.refused(
                &self.counters.refused_connects,
                "a connection",
                identity,
                "",
            );
        }
        ok
    }

    fn allow(&self, identity: &Identity, access: Access, topic: &str) -> bool {
        let ok = self.check(identity, access, topic);
        if !ok {
            let (counter, what) = match access {
                Access::Publish => (&self.counters.denied_publishes, "a publish"),
                Access::Subscribe => (&self.counters.denied_subscribes, "a subscription"),
            };
            self.refused(counter, what, identity, topic);
        }
        ok
    }
}

/// Mosquitto's files for a site, written by `proofline-hub broker-config`.
#[derive(Debug)]
pub struct MosquittoFiles {
    /// `password_file`: one `user:$7$...` line per station with a credential, and the hub's.
    pub passwords: String,
    /// `acl_file`.
    pub acl: String,
    /// A `mosquitto.conf` snippet naming both.
    pub conf: String,
}

/// Mosquitto's password file, ACL file and configuration for `stations` (from
/// [`allowed_stations`]) and the hub's credential hash. Mosquitto binds the client id to the
/// username (`use_username_as_clientid`), so the hub's client id is its username and a station's
/// is its agent id there.
///
/// `crl_file` (`broker.tls.crl_file`) goes into the options for the TLS listener as `crlfile`.
/// Those options are written commented: Mosquitto applies a listener option to the `listener`
/// line above it, and only the operator knows which of theirs is the TLS one.
pub fn mosquitto_files(
    site: &str,
    hub_hash: &str,
    stations: &HashMap<String, Option<String>>,
    password_file: &Path,
    acl_file: &Path,
    crl_file: Option<&Path>,
) -> MosquittoFiles {
    let root = format!("{TOPIC_ROOT}/{site}");
    let hub = hub_client_id(site);
    let mut ids: Vec<&String> = stations.keys().collect();
    ids.sort();
    let mut passwords = format!("{hub}:{}\n", hub_hash.trim());
    for id in &ids {
        if let Some(Some(h)) = stations.get(*id) {
            let _ = writeln!(passwords, "{id}:{h}");
        }
    }
    let mut acl = format!(
        "# Generated by proofline-hub broker-config; regenerate after an enrollment change.\n\
         # Nobody has any right not granted below.\n\n\
         user {hub}\n\
         topic read {root}/+/records\n\
         topic read {root}/+/status\n\
         topic readwrite {root}/hub/status\n\
         topic write {root}/+/ack\n\
         topic read {root}/+/interlock\n\
         topic write {root}/+/clearance\n"
    );
    for id in ids {
        let _ = write!(
            acl,
            "\nuser {id}\n\
             topic write {root}/{id}/records\n\
             topic write {root}/{id}/status\n\
             topic read {root}/{id}/ack\n\
             topic write {root}/{id}/interlock\n\
             topic read {root}/{id}/clearance\n"
        );
    }
    let mut conf = format!(
        "# Proofline: every client authenticates; rights from the generated ACL. Put these after\n\
         # the listener lines (before them Mosquitto also opens its default listener, port 1883),\n\
         # with per_listener_settings false (the default).\n\
         allow_anonymous false\n\
         password_file {}\n\
         acl_file {}\n\
         # A client's id is its username: nobody takes over another's session.\n\
         use_username_as_clientid true\n\
         # For stations that authenticate with a client certificate (CN = agent id), under the TLS\n\
         # listener's own line (a listener option applies to the listener line above it):\n\
         #require_certificate true\n\
         #use_identity_as_username true\n",
        password_file.display(),
        acl_file.display()
    );
    if let Some(crl) = crl_file {
        let _ = write!(
            conf,
            "# Revoked client certificates (broker.tls.crl_file). Mosquitto reads it at start and on\n\
             # SIGHUP only, for new connections; it does not disconnect a connected client whose\n\
             # certificate a new CRL revokes. Past the CRL's nextUpdate it refuses every client\n\
             # certificate.\n\
             #crlfile {}\n",
            crl.display()
        );
    }
    MosquittoFiles {
        passwords,
        acl,
        conf,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(client_id: &str, user: Option<&str>) -> Identity {
        Identity {
            client_id: client_id.into(),
            username: user.map(str::to_owned),
            cert_names: Vec::new(),
        }
    }

    #[test]
    fn secret_hashes_verify_and_mosquitto_hashes_too() {
        let s = new_secret();
        assert!(s.len() >= 22);
        let h = hash_secret(&s);
        assert!(verify_secret(&h, &s));
        assert!(!verify_secret(&h, "nope"));
        // Written by mosquitto_passwd 2.0.11 for the password "pass".
        let m = "$7$101$FtuqMzD0slsGsy6X$QI9ESAXgtdWhE5eZT/F8dEBXetILJJidKc1TsmSVTbeE2BiLocXaPtVILHtdjpnWq9AbFu55CjITxchzsjkTOA==";
        assert!(verify_secret(m, "pass"));
        assert!(!verify_secret(m, "pas"));
    }

    #[test]
    fn stations_reach_only_their_own_topics() {
        let acl = BrokerAcl::new("s1", "hubsecret".into());
        let h = hash_secret("pw-a");
        acl.set_stations(HashMap::from([("a".into(), Some(h)), ("b".into(), None)]));
        let a = ident("proofline-agent-s1-a", Some("a"));
        assert!(acl.connect(&a, Some("pw-a")));
        assert!(!acl.connect(&a, Some("pw-b")));
        assert!(!acl.connect(&ident("proofline-agent-s1-b", Some("a")), Some("pw-a")));
        assert!(!acl.connect(&ident("proofline-hub-s1", Some("a")), Some("pw-a")));
        assert!(!acl.connect(&ident("proofline-agent-s1-a", None), None));
        assert!(acl.connect(
            &ident("proofline-hub-s1", Some("proofline-hub-s1")),
            Some("hubsecret")
        ));
        let p = |t: &str| acl.allow(&a, Access::Publish, t);
        let s = |t: &str| acl.allow(&a, Access::Subscribe, t);
        assert!(p("proofline/v1/s1/a/records") && p("proofline/v1/s1/a/status"));
        assert!(!p("proofline/v1/s1/b/records") && !p("proofline/v1/s1/a/ack"));
        assert!(!p("proofline/v1/s1/hub/status"));
        assert!(s("proofline/v1/s1/a/ack"));
        assert!(!s("proofline/#") && !s("proofline/v1/s1/+/ack") && !s("proofline/v1/s1/b/ack"));
        assert!(!s("proofline/v1/s1/a/records"));
        assert!(p("proofline/v1/s1/a/interlock") && s("proofline/v1/s1/a/clearance"));
        assert!(!p("proofline/v1/s1/b/interlock") && !p("proofline/v1/s1/a/clearance"));
        assert!(!s("proofline/v1/s1/b/clearance") && !s("proofline/v1/s1/a/interlock"));
        let hub = ident("proofline-hub-s1", Some("proofline-hub-s1"));
        assert!(acl.allow(&hub, Access::Subscribe, "proofline/v1/s1/+/records"));
        assert!(!acl.allow(&hub, Access::Subscribe, "proofline/#"));
        assert!(acl.allow(&hub, Access::Publish, "proofline/v1/s1/a/ack"));
        assert!(!acl.allow(&hub, Access::Publish, "proofline/v1/s1/a/records"));
        assert!(acl.allow(&hub, Access::Subscribe, "proofline/v1/s1/+/interlock"));
        assert!(acl.allow(&hub, Access::Publish, "proofline/v1/s1/a/clearance"));
        assert!(!acl.allow(&hub, Access::Publish, "proofline/v1/s1/hub/clearance"));
        assert!(!acl.allow(&hub, Access::Publish, "proofline/v1/s1/a/interlock"));
        // Removed: rights gone at once, connected or not.
        acl.set_stations(HashMap::new());
        assert!(!p("proofline/v1/s1/a/records"));
        assert!(!acl.connect(&a, Some("pw-a")));
    }

    #[test]
    fn the_mosquitto_snippet_names_the_crl_file_for_the_tls_listener_when_there_is_one() {
        let files = |crl: Option<&Path>| {
            mosquitto_files(
                "s1",
                &hash_secret("x"),
                &HashMap::new(),
                Path::new("/m/passwd"),
                Path::new("/m/acl"),
                crl,
            )
            .conf
        };
        assert!(!files(None).contains("crlfile"));
        let conf = files(Some(Path::new("/etc/proofline/clients.crl")));
        assert!(
            conf.lines()
                .any(|l| l == "#crlfile /etc/proofline/clients.crl"),
            "{conf}"
        );
    }

    #[test]
    fn a_certificate_naming_the_station_is_a_credential() {
        let acl = BrokerAcl::new("s1", "x".into());
        acl.set_stations(HashMap::from([("a".into(), None)]));
        let mut a = ident("proofline-agent-s1-a", None);
        assert!(!acl.connect(&a, None));
        a.cert_names = vec!["a".into()];
        assert!(acl.connect(&a, None));
        a.cert_names = vec!["b".into()];
        assert!(!acl.connect(&a, None));
    }
}
