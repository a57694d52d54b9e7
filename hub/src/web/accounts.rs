//! The hub's accounts: people (name, argon2id password hash, TOTP second factor) and service
//! accounts (a scoped bearer token for machine clients of the API), each with one role.
//!
//! - Kept in the hub's database (index `web.accounts`); every change is recorded in the hub
//!   ledger's access audit in the same durable commit.
//! - Changed only by requests: `proofline-hub user add|disable|reset` writes a request file into
//!   `<data_dir>/accounts/requests/` (holding hashes only: the password or token is printed to
//!   the administrator once and never stored); the running hub carries it out within a second,
//!   records it, writes the outcome to `accounts/done/` and the accounts (no secrets) to
//!   `accounts/list.json` for `user list`.
//! - Lockout: after [`LOCK_AFTER`] failed sign-ins in a row, the account is locked for 30 s,
//!   doubling with each further failure up to an hour; while locked, no password is checked.
//!   A good sign-in or `user reset` clears it.
//! - TOTP (RFC 6238: SHA-1, 6 digits, 30 s, one step of clock skew either way); a code is
//!   accepted once (its time step must be later than the last one accepted).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use proofline_common::hash::Hash;
use proofline_common::store::{Index, IndexBatch, StoreError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Failed sign-ins in a row before the account locks.
pub const LOCK_AFTER: u32 = 3;
const LOCK_FIRST_SECS: i64 = 30;
const LOCK_MAX_SECS: i64 = 3600;
/// Longest request file the hub reads.
const MAX_REQUEST_BYTES: u64 = 16 * 1024;
pub const INDEX: &str = "web.accounts";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Station status and the own station's recent results.
    Operator,
    /// Injectors, findings and their triage, SPC.
    Quality,
    /// Everything read-only, the audit log, evidence bundles.
    Auditor,
    /// Accounts, enrollment, configuration; no evidence.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Operator, Role::Quality, Role::Auditor, Role::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Quality => "quality",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Signs in with a password and TOTP; pages and API.
    Person,
    /// Presents a bearer token; API only.
    Service,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub name: String,
    pub role: Role,
    pub kind: Kind,
    /// Authorized for export-controlled technical data (a US person).
    pub us_person: bool,
    /// An operator's own station.
    pub station: Option<String>,
    pub disabled: bool,
    /// argon2id PHC string (people).
    pub password: Option<String>,
    /// The TOTP secret, once enrolled.
    pub totp: Option<Vec<u8>>,
    /// The last TOTP time step accepted.
    pub totp_last_step: u64,
    /// SHA-256 of the bearer token (service accounts).
    pub token_sha256: Option<Hash>,
    /// Failed sign-ins in a row.
    pub failures: u32,
    /// Locked until this time (UTC microseconds; 0: not locked).
    pub locked_until: i64,
    pub created_at: i64,
    pub last_signin: Option<i64>,
}

impl Account {
    pub fn locked_at(&self, now: i64) -> Option<i64> {
        (self.locked_until > now).then_some(self.locked_until)
    }

    /// Counts a failed sign-in; returns the lock's end if this one locks the account.
    pub fn fail(&mut self, now: i64) -> Option<i64> {
        self.failures = self.failures.saturating_add(1);
        if self.failures < LOCK_AFTER {
            return None;
        }
        let doublings = (self.failures - LOCK_AFTER).min(16);
        let secs = (LOCK_FIRST_SECS << doublings).min(LOCK_MAX_SECS);
        self.locked_until = now + secs * 1_000_000;
        Some(self.locked_until)
    }

    pub fn succeed(&mut self, now: i64) {
        self.failures = 0;
        self.locked_until = 0;
        self.last_signin = Some(now);
    }

    /// What `user list` and the access review show (no secrets).
    pub fn view(&self) -> AccountView {
        AccountView {
            name: self.name.clone(),
            role: self.role.name(),
            kind: match self.kind {
                Kind::Person => "person",
                Kind::Service => "service",
            },
            us_person: self.us_person,
            station: self.station.clone(),
            disabled: self.disabled,
            mfa_enrolled: self.totp.is_some(),
            failures: self.failures,
            locked_until: (self.locked_until > 0).then_some(self.locked_until),
            created_at: self.created_at,
            last_signin: self.last_signin,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    pub name: String,
    pub role: &'static str,
    pub kind: &'static str,
    pub us_person: bool,
    pub station: Option<String>,
    pub disabled: bool,
    pub mfa_enrolled: bool,
    pub failures: u32,
    pub locked_until: Option<i64>,
    pub created_at: i64,
    pub last_signin: Option<i64>,
}

/// A change asked for by `proofline-hub user ...`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Add {
        name: String,
        role: String,
        service: bool,
        us_person: bool,
        station: Option<String>,
        /// argon2id PHC string (people) ...
        password: Option<String>,
        /// ... or the token's SHA-256, hex (service accounts).
        token_sha256: Option<String>,
    },
    Disable {
        name: String,
    },
    /// A new password (or token), the TOTP enrollment and the lockout cleared.
    Reset {
        name: String,
        password: Option<String>,
        token_sha256: Option<String>,
    },
}

impl Request {
    pub fn name(&self) -> &str {
        match self {
            Request::Add { name, .. } | Request::Disable { name } | Request::Reset { name, .. } => {
                name
            }
        }
    }

    /// How the audit names it (no secret, no hash).
    pub fn describe(&self) -> String {
        match self {
            Request::Add {
                name,
                role,
                service,
                us_person,
                station,
                ..
            } => format!(
                "account.add {name} role {role}{}{}{}",
                if *service { " service" } else { "" },
                if *us_person { " us-person" } else { "" },
                station
                    .as_ref()
                    .map(|s| format!(" station {s}"))
                    .unwrap_or_default()
            ),
            Request::Disable { name } => format!("account.disable {name}"),
            Request::Reset { name, .. } => format!("account.reset {name}"),
        }
    }
}

/// An account name: a lowercase letter, then up to 31 lowercase letters, digits, `.`, `_`, `-`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= 32
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "account name {name:?} must be a lowercase letter followed by up to 31 lowercase letters, digits, '.', '_' or '-'"
        ))
    }
}

/// argon2id (the crate's defaults: 19 MiB, 2 passes, 1 lane) with a random salt.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt)?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?
        .to_string())
}

/// Checks `password` against a PHC string; a malformed hash never matches.
pub fn password_matches(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A hash to verify against when the account does not exist, so that a wrong name costs the
/// same time as a wrong password.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("decoy password").unwrap_or_default())
}

/// A random secret printed once: 24 characters of base64url (144 bits).
pub fn random_secret(prefix: &str) -> anyhow::Result<String> {
    use base64::Engine;
    let mut b = [0u8; 18];
    getrandom::getrandom(&mut b)?;
    Ok(format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    ))
}

pub fn token_hash(token: &str) -> Hash {
    Hash(Sha256::digest(token.as_bytes()).into())
}

/// The TOTP of `secret` for `account` at this hub.
pub fn totp(secret: &[u8], site: &str, account: &str) -> Result<totp_rs::TOTP, String> {
    totp_rs::TOTP::new(
        totp_rs::Algorithm::SHA1,
        6,
        0,
        30,
        secret.to_vec(),
        Some(format!("Proofline {site}")),
        account.to_owned(),
    )
    .map_err(|e| e.to_string())
}

/// The time step `code` is good for at `now_secs` (one step either way), if any.
pub fn totp_step(t: &totp_rs::TOTP, code: &str, now_secs: u64) -> Option<u64> {
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    [now_secs.saturating_sub(30), now_secs, now_secs + 30]
        .into_iter()
        .find(|&ts| t.check(code, ts))
        .map(|ts| ts / 30)
}

pub fn new_totp_secret() -> anyhow::Result<Vec<u8>> {
    let mut s = vec![0u8; 20];
    getrandom::getrandom(&mut s)?;
    Ok(s)
}

/// Where the account files live.
#[derive(Debug, Clone)]
pub struct Paths {
    pub dir: PathBuf,
}

impl Paths {
    pub fn new(data_dir: &Path) -> Paths {
        Paths {
            dir: data_dir.join("accounts"),
        }
    }
    pub fn requests(&self) -> PathBuf {
        self.dir.join("requests")
    }
    pub fn done(&self) -> PathBuf {
        self.dir.join("done")
    }
    pub fn list(&self) -> PathBuf {
        self.dir.join("list.json")
    }
    /// The hub's own token for tools on the hub's host (auditor, API only), made at start.
    pub fn local_token(&self) -> PathBuf {
        self.dir.join("local.token")
    }
}

/// The accounts, in memory and in the hub's database.
#[derive(Debug)]
pub struct Accounts {
    index: Index,
    map: BTreeMap<String, Account>,
}

impl Accounts {
    pub fn open(index: Index) -> Result<Accounts, StoreError> {
        let mut map = BTreeMap::new();
        for kv in index.scan(&[]) {
            let (_, v) = kv?;
            let a: Account = postcard::from_bytes(&v)
                .map_err(|_| StoreError::CorruptMeta("an account does not decode".into()))?;
            map.insert(a.name.clone(), a);
        }
        Ok(Accounts { index, map })
    }

    pub fn get(&self, name: &str) -> Option<&Account> {
        self.map.get(name)
    }

    pub fn all(&self) -> impl Iterator<Item = &Account> {
        self.map.values()
    }

    /// The service account presenting `token`.
    pub fn by_token(&self, token: &str) -> Option<&Account> {
        let h = token_hash(token);
        self.map
            .values()
            .find(|a| a.kind == Kind::Service && a.token_sha256 == Some(h))
    }

    /// Stores `a` (durable with the next hub ledger commit, which records why).
    pub fn put(&mut self, a: Account) -> Result<(), StoreError> {
        let mut b = IndexBatch::new();
        b.insert(
            a.name.as_bytes(),
            &postcard::to_allocvec(&a).expect("accounts encode"),
        )?;
        self.index.apply(b)?;
        self.map.insert(a.name.clone(), a);
        Ok(())
    }

    /// Carries out `req`; Ok names what was done, Err why it was refused.
    pub fn apply(&mut self, req: &Request, now: i64) -> Result<Result<String, String>, StoreError> {
        let name = req.name();
        if let Err(e) = check_name(name) {
            return Ok(Err(e));
        }
        let hash = |h: &Option<String>| -> Result<Option<Hash>, String> {
            h.as_deref()
                .map(|t| Hash::from_hex(t).map_err(|_| "token_sha256 is not a hex SHA-256".into()))
                .transpose()
        };
        let phc_ok = |p: &Option<String>| {
            p.as_deref().is_none_or(|p| {
                PasswordHash::new(p).is_ok_and(|h| h.algorithm.as_str() == "argon2id")
            })
        };
        match req {
            Request::Add {
                role,
                service,
                us_person,
                station,
                password,
                token_sha256,
                ..
            } => {
                if self.map.contains_key(name) {
                    return Ok(Err(format!("an account {name} exists already")));
                }
                let Some(role) = Role::parse(role) else {
                    return Ok(Err(format!(
                        "role {role:?} is not one of operator, quality, auditor, admin"
                    )));
                };
                let token = match hash(token_sha256) {
                    Ok(t) => t,
                    Err(e) => return Ok(Err(e)),
                };
                if !phc_ok(password) {
                    return Ok(Err("the password hash is not an argon2id PHC string".into()));
                }
                if *service != token.is_some() || *service == password.is_some() {
                    return Ok(Err(
                        "a person has a password hash and no token; a service account a token and no password".into(),
                    ));
                }
                if role == Role::Operator && station.is_none() {
                    return Ok(Err("an operator account names its station".into()));
                }
                self.put(Account {
                    name: name.to_owned(),
                    role,
                    kind: if *service {
                        Kind::Service
                    } else {
                        Kind::Person
                    },
                    us_person: *us_person,
                    station: station.clone(),
                    disabled: false,
                    password: password.clone(),
                    totp: None,
                    totp_last_step: 0,
                    token_sha256: token,
                    failures: 0,
                    locked_until: 0,
                    created_at: now,
                    last_signin: None,
                })?;
                Ok(Ok(format!("account {name} added ({})", role.name())))
            }
            Request::Disable { .. } => {
                let Some(mut a) = self.map.get(name).cloned() else {
                    return Ok(Err(format!("no account {name}")));
                };
                a.disabled = true;
                self.put(a)?;
                Ok(Ok(format!("account {name} disabled")))
            }
            Request::Reset {
                password,
                token_sha256,
                ..
            } => {
                let Some(mut a) = self.map.get(name).cloned() else {
                    return Ok(Err(format!("no account {name}")));
                };
                let token = match hash(token_sha256) {
                    Ok(t) => t,
                    Err(e) => return Ok(Err(e)),
                };
                if !phc_ok(password) {
                    return Ok(Err("the password hash is not an argon2id PHC string".into()));
                }
                match a.kind {
                    Kind::Person if password.is_some() && token.is_none() => {
                        a.password = password.clone();
                        a.totp = None;
                        a.totp_last_step = 0;
                    }
                    Kind::Service if token.is_some() && password.is_none() => {
                        a.token_sha256 = token;
                    }
                    _ => return Ok(Err(
                        "a person is reset with a password hash, a service account with a token"
                            .into(),
                    )),
                }
                a.failures = 0;
                a.locked_until = 0;
                a.disabled = false;
                self.put(a)?;
                Ok(Ok(format!("account {name} reset")))
            }
        }
    }

    /// Writes `list.json` (no secrets).
    pub fn write_list(&self, paths: &Paths) -> anyhow::Result<()> {
        let views: Vec<_> = self.map.values().map(Account::view).collect();
        proofline_common::durable::create_dir_all(&paths.dir)?;
        crate::enroll::write_atomically(&paths.list(), &serde_json::to_string_pretty(&views)?)?;
        Ok(())
    }
}

/// Pending request files, oldest first (names sort by the time they were made).
pub fn pending(paths: &Paths) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(paths.requests()) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    v.sort();
    v
}

/// Reads one request file (bounded).
pub fn read_request(path: &Path) -> Result<Request, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut text = String::new();
    f.take(MAX_REQUEST_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_REQUEST_BYTES {
        return Err("the request file is too large".into());
    }
    serde_json::from_str(&text).map_err(|e| format!("not a request: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_bounded_lowercase_identifiers() {
        for ok in ["alice", "q.eng-2", "a", "svc_qms"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Alice",
            "1st",
            "a b",
            "ä",
            &"a".repeat(33),
            "a/b",
            "a\n",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(password_matches(&h, "correct horse"));
        assert!(!password_matches(&h, "correct horsE"));
        assert!(!password_matches("not a hash", "correct horse"));
    }

    #[test]
    fn lockout_grows_and_a_good_sign_in_clears_it() {
        let mut a = Account {
            name: "alice".into(),
            role: Role::Quality,
            kind: Kind::Person,
            us_person: false,
            station: None,
            disabled: false,
            password: None,
            totp: None,
            totp_last_step: 0,
            token_sha256: None,
            failures: 0,
            locked_until: 0,
            created_at: 0,
            last_signin: None,
        };
        let s = 1_000_000;
        assert_eq!(a.fail(0), None);
        assert_eq!(a.fail(0), None);
        assert_eq!(a.fail(0), Some(30 * s));
        assert_eq!(a.fail(0), Some(60 * s));
        assert_eq!(a.fail(0), Some(120 * s));
        for _ in 0..30 {
            a.fail(0);
        }
        assert_eq!(a.locked_at(0), Some(3600 * s));
        assert_eq!(a.locked_at(3600 * s), None);
        a.succeed(5);
        assert_eq!((a.failures, a.locked_until, a.last_signin), (0, 0, Some(5)));
    }

    #[test]
    fn totp_matches_rfc_6238_and_allows_one_step_of_skew() {
        // RFC 6238 appendix B, SHA-1 seed "12345678901234567890": T = 59 s gives 94287082
        // (8 digits); its last 6 digits are the 6-digit code.
        let t = totp(b"12345678901234567890", "plant-1", "alice").unwrap();
        assert_eq!(t.generate(59), "287082");
        assert_eq!(t.generate(1_111_111_109), "081804");
        assert_eq!(totp_step(&t, "287082", 59), Some(1));
        assert_eq!(totp_step(&t, "287082", 59 + 30), Some(1));
        assert_eq!(totp_step(&t, "287082", 59 + 90), None);
        assert_eq!(totp_step(&t, "28708", 59), None);
        assert_eq!(totp_step(&t, "2870822", 59), None);
        assert!(t
            .get_url()
            .starts_with("otpauth://totp/Proofline%20plant-1:alice?"));
    }
}
