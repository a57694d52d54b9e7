//! Certificate revocation lists for a listener that verifies client certificates
//! (`TlsConfig::Rustls { crlpath, .. }`).
//!
//! The file holds one or more CRLs in PEM (`-----BEGIN X509 CRL-----` blocks, as
//! `openssl ca -gencrl` writes them) or a single DER CRL. Each must be a version 2 CRL issued
//! and signed by the listener's client CA (`capath`); a CRL from another issuer would be
//! ignored by the verifier, so it is refused instead of silently revoking nothing.
//!
//! Invariants:
//! - The listener does not start without a usable file ([`ClientCrls::open`]).
//! - The file is re-read when it changes, so a revocation applies to new connections without
//!   a restart; connections already up are checked again every few seconds and closed
//!   once their certificate is revoked ([`ClientCrls::is_revoked`]).
//! - A file that becomes unreadable or unusable never means "no CRL": while it is, every new
//!   TLS handshake is refused (fail closed) and the error is logged at a bounded rate; the CRLs
//!   last loaded keep judging the connections already up, so nothing revoked before is
//!   forgotten.
//! - A CRL past its `nextUpdate` refuses new handshakes too (as OpenSSL does with CRL checking
//!   on): revocations issued since may be missing from it. Its entries still apply.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_rustls::rustls::server::UnparsedCertRevocationList;
use tracing::{error, info, warn};
use webpki::CertRevocationList as _;

/// The file's size and modification time are looked at no more often than this, whatever the
/// rate of handshakes and link checks.
///
/// The file is checked on demand (at a handshake, at a link check) rather than by a task of
/// its own: a change applies to the very next handshake after this interval, a listener with
/// no traffic costs nothing, and there is no task to stop with the listener.
const RECHECK_EVERY: Duration = Duration::from_secs(1);
/// A file modified this recently is read again at the next check even if its size and time
/// have not changed: a second write within the file system's timestamp granularity, of the
/// same length, would otherwise go unseen.
const SETTLED_AFTER: Duration = Duration::from_secs(2);
/// At most one log line per this interval for a CRL file that stays unusable or expired.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(60);
/// A CRL this close to its `nextUpdate` is reported when loaded.
const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);

/// Signature algorithms accepted on a CRL (those rustls accepts on certificates).
static SIG_ALGS: &[&webpki::SignatureAlgorithm] = &[
    &webpki::ECDSA_P256_SHA256,
    &webpki::ECDSA_P256_SHA384,
    &webpki::ECDSA_P384_SHA256,
    &webpki::ECDSA_P384_SHA384,
    &webpki::ED25519,
    &webpki::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    &webpki::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
    &webpki::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
    &webpki::RSA_PKCS1_2048_8192_SHA256,
    &webpki::RSA_PKCS1_2048_8192_SHA384,
    &webpki::RSA_PKCS1_2048_8192_SHA512,
    &webpki::RSA_PKCS1_3072_8192_SHA384,
];

/// A CRL file that cannot be used, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct CrlError {
    pub path: String,
    pub problem: String,
}

/// What a usable CRL file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlSummary {
    /// CRLs in the file.
    pub crls: usize,
    /// Certificates revoked, over all of them.
    pub revoked: usize,
    /// The earliest `nextUpdate` of the CRLs: past it the listener refuses new connections.
    pub next_update: Option<SystemTime>,
}

/// Which certificate a client presented: its issuer and serial number, as encoded in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct CertId {
    issuer: Vec<u8>,
    serial: Vec<u8>,
}

impl CertId {
    pub(crate) fn of(cert_der: &[u8]) -> Option<CertId> {
        let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
        Some(CertId {
            issuer: cert.issuer().as_raw().to_vec(),
            serial: cert.raw_serial().to_vec(),
        })
    }
}

/// Checks a CRL file as the listener would load it, against the client CA in `ca_path`.
pub fn check_crl_file(crl_path: &str, ca_path: &str) -> Result<CrlSummary, CrlError> {
    load(crl_path, ca_path).map(|l| l.summary())
}

#[derive(Debug, Default)]
struct Loaded {
    ders: Vec<Vec<u8>>,
    revoked: HashSet<CertId>,
    next_update: Option<SystemTime>,
}

impl Loaded {
    fn summary(&self) -> CrlSummary {
        CrlSummary {
            crls: self.ders.len(),
            revoked: self.revoked.len(),
            next_update: self.next_update,
        }
    }

    fn expired(&self, now: SystemTime) -> bool {
        self.next_update.is_some_and(|t| now > t)
    }
}

fn load(path: &str, ca_path: &str) -> Result<Loaded, CrlError> {
    let fail = |problem: String| CrlError {
        path: path.to_owned(),
        problem,
    };
    let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let ders = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        let items = rustls_pemfile::read_all(&mut std::io::BufReader::new(&bytes[..]))
            .map_err(|e| fail(format!("not PEM: {e}")))?;
        items
            .into_iter()
            .filter_map(|i| match i {
                rustls_pemfile::Item::Crl(der) => Some(der),
                _ => None,
            })
            .collect()
    } else {
        vec![bytes]
    };
    if ders.is_empty() {
        return Err(fail("no X509 CRL in the file".into()));
    }
    let ca = std::fs::read(ca_path)
        .ok()
        .and_then(|pem| {
            rustls_pemfile::certs(&mut std::io::BufReader::new(&pem[..]))
                .ok()?
                .into_iter()
                .next()
        })
        .ok_or_else(|| fail(format!("no client CA certificate in {ca_path}")))?;
    let anchor = webpki::TrustAnchor::try_from_cert_der(&ca)
        .map_err(|e| fail(format!("the client CA in {ca_path}: {e:?}")))?;
    let mut loaded = Loaded::default();
    for (i, der) in ders.into_iter().enumerate() {
        let which = |problem: String| fail(format!("CRL {}: {problem}", i + 1));
        // Parsed as the verifier will parse it at each handshake.
        let crl = UnparsedCertRevocationList(der.clone())
            .parse()
            .map_err(|e| which(format!("{e:?} (a version 2 CRL with nextUpdate is needed)")))?;
        let (_, parsed) =
            x509_parser::parse_x509_crl(&der).map_err(|e| which(format!("bad encoding: {e}")))?;
        if crl.issuer() != anchor.subject {
            return Err(which(format!(
                "issued by \"{}\", not by the client CA in {ca_path}",
                parsed.issuer()
            )));
        }
        crl.verify_signature(SIG_ALGS, anchor.spki).map_err(|e| {
            which(format!(
                "its signature does not verify with the client CA's key ({e:?})"
            ))
        })?;
        let issuer = parsed.issuer().as_raw();
        loaded
            .revoked
            .extend(parsed.iter_revoked_certificates().map(|r| CertId {
                issuer: issuer.to_vec(),
                serial: r.raw_serial().to_vec(),
            }));
        if let Some(t) = parsed.next_update() {
            let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0));
            loaded.next_update = Some(loaded.next_update.map_or(t, |n| n.min(t)));
        }
        loaded.ders.push(der);
    }
    Ok(loaded)
}

/// The file's identity for change detection: size and modification time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: SystemTime,
}

impl Stamp {
    fn of(path: &str) -> Option<Stamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(Stamp {
            len: m.len(),
            modified: m.modified().ok()?,
        })
    }

    /// Whether a later write could still leave the same stamp (see [`SETTLED_AFTER`]).
    fn settled(&self, read_at: SystemTime) -> bool {
        self.modified + SETTLED_AFTER <= read_at
    }
}

/// The revocation lists of one listener, re-read when the file changes (see the module doc).
#[derive(Debug)]
pub struct ClientCrls {
    path: String,
    ca_path: String,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The CRLs last loaded without error.
    good: Arc<Loaded>,
    /// Stamp of the content last read, good or not; None: read again at the next check.
    stamp: Option<Stamp>,
    /// Why the file on disk cannot be used now (None: `good` is what it holds).
    failure: Option<CrlError>,
    checked: Instant,
    last_error_log: Option<Instant>,
}

/// Why a handshake is refused before it starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrlRefusal {
    #[error("certificate revocation list unusable, refusing TLS connections: {0}")]
    Unusable(CrlError),
    #[error("certificate revocation list {0} expired (nextUpdate passed), refusing TLS connections until a new one is issued")]
    Expired(String),
}

impl ClientCrls {
    /// Loads the CRLs; an error when the file cannot be used (the listener does not start).
    pub(crate) fn open(path: &str, ca_path: &str) -> Result<Arc<ClientCrls>, CrlError> {
        let read_at = SystemTime::now();
        let stamp = Stamp::of(path);
        let loaded = load(path, ca_path)?;
        log_loaded(path, &loaded, read_at);
        Ok(Arc::new(ClientCrls {
            path: path.to_owned(),
            ca_path: ca_path.to_owned(),
            state: Mutex::new(State {
                good: Arc::new(loaded),
                stamp: stamp.filter(|s| s.settled(read_at)),
                failure: None,
                checked: Instant::now(),
                last_error_log: None,
            }),
        }))
    }

    /// The CRLs for a new handshake; a refusal while the file is unusable or expired.
    pub(crate) fn for_handshake(&self) -> Result<Vec<UnparsedCertRevocationList>, CrlRefusal> {
        let mut state = self.refresh();
        let refusal = match &state.failure {
            Some(e) => Some(CrlRefusal::Unusable(e.clone())),
            None if state.good.expired(SystemTime::now()) => {
                Some(CrlRefusal::Expired(self.path.clone()))
            }
            None => None,
        };
        if let Some(refusal) = refusal {
            if state
                .last_error_log
                .is_none_or(|t| t.elapsed() >= ERROR_LOG_EVERY)
            {
                state.last_error_log = Some(Instant::now());
                error!(path = %self.path, "{refusal}");
            }
            return Err(refusal);
        }
        Ok(state
            .good
            .ders
            .iter()
            .map(|d| UnparsedCertRevocationList(d.clone()))
            .collect())
    }

    /// Whether `cert` is revoked by the CRLs last loaded without error.
    pub(crate) fn is_revoked(&self, cert: &CertId) -> bool {
        self.refresh().good.revoked.contains(cert)
    }

    /// Reads the file again if it changed, at most once per [`RECHECK_EVERY`].
    fn refresh(&self) -> std::sync::MutexGuard<'_, State> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() < RECHECK_EVERY {
            return state;
        }
        state.checked = Instant::now();
        let stamp = Stamp::of(&self.path);
        if stamp.is_some() && stamp == state.stamp {
            return state;
        }
        let read_at = SystemTime::now();
        match load(&self.path, &self.ca_path) {
            Ok(loaded) => {
                log_loaded(&self.path, &loaded, read_at);
                if state.failure.take().is_some() {
                    info!(path = %self.path, "certificate revocation list usable again");
                }
                state.good = Arc::new(loaded);
            }
            Err(e) => {
                if state.failure.as_ref() != Some(&e)
                    || state
                        .last_error_log
                        .is_none_or(|t| t.elapsed() >= ERROR_LOG_EVERY)
                {
                    state.last_error_log = Some(Instant::now());
                    error!(
                        error = %e,
                        kept_revoked = state.good.revoked.len(),
                        "certificate revocation list unusable: new TLS connections are refused until it is fixed; connected clients are still checked against the list last loaded"
                    );
                }
                state.failure = Some(e);
            }
        }
        state.stamp = stamp.filter(|s| s.settled(read_at));
        state
    }
}

fn log_loaded(path: &str, loaded: &Loaded, now: SystemTime) {
    let next_update = loaded
        .next_update
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    info!(
        path,
        crls = loaded.ders.len(),
        revoked = loaded.revoked.len(),
        next_update_unix = next_update,
        "certificate revocation list loaded"
    );
    match loaded.next_update {
        Some(t) if now > t => error!(
            path,
            next_update_unix = next_update,
            "certificate revocation list expired: new TLS connections are refused until a new one is issued"
        ),
        Some(t) if now + EXPIRY_WARNING > t => warn!(
            path,
            next_update_unix = next_update,
            "certificate revocation list expires within a week: issue a new one before then"
        ),
        _ => {}
    }
}
