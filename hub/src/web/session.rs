//! Sign-in sessions: a random 256-bit token in a `Secure; HttpOnly; SameSite=Strict` cookie,
//! kept in memory only (a restarted hub signs everyone out), with an idle and an absolute
//! timeout, a CSRF token for every form, and a new token at each step of the sign-in (no
//! session fixation). The table is bounded: when full, the oldest session that is not signed in
//! makes room, and if every one is signed in the new one is refused.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use proofline_common::hash::Hash;
use sha2::{Digest, Sha256};

pub const COOKIE: &str = "proofline_session";
/// Sessions held at once.
pub const MAX_SESSIONS: usize = 4096;

/// Where a session is in the sign-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// Nobody yet (the sign-in form was shown).
    Anonymous,
    /// The password was right; the TOTP code is asked.
    Password { account: String },
    /// The password was right and no second factor is enrolled: enrolling this secret.
    Enrolling { account: String, secret: Vec<u8> },
    /// Signed in.
    Active { account: String },
}

#[derive(Debug, Clone)]
pub struct Session {
    pub stage: Stage,
    pub csrf: String,
    pub created: Instant,
    pub last: Instant,
}

#[derive(Debug)]
pub struct Sessions {
    map: Mutex<HashMap<Hash, Session>>,
    pub idle: Duration,
    pub absolute: Duration,
    /// A session still signing in lasts this long.
    pub signing_in: Duration,
}

fn key(token: &str) -> Hash {
    Hash(Sha256::digest(token.as_bytes()).into())
}

fn random_b64(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::getrandom(&mut b).expect("the OS random source works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl Sessions {
    pub fn new(idle: Duration, absolute: Duration) -> Sessions {
        Sessions {
            map: Mutex::new(HashMap::new()),
            idle,
            absolute,
            signing_in: Duration::from_secs(600),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Hash, Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self, s: &Session, now: Instant) -> bool {
        let absolute = match s.stage {
            Stage::Active { .. } => self.absolute,
            _ => self.signing_in,
        };
        now.duration_since(s.last) < self.idle && now.duration_since(s.created) < absolute
    }

    /// A new session at `stage`; returns its token, or None when the table is full of
    /// signed-in sessions.
    pub fn create(&self, stage: Stage) -> Option<(String, Session)> {
        let now = Instant::now();
        let mut m = self.lock();
        if m.len() >= MAX_SESSIONS {
            m.retain(|_, s| self.live(s, now));
        }
        if m.len() >= MAX_SESSIONS {
            let oldest = m
                .iter()
                .filter(|(_, s)| !matches!(s.stage, Stage::Active { .. }))
                .min_by_key(|(_, s)| s.last)
                .map(|(k, _)| *k);
            m.remove(&oldest?);
        }
        let token = random_b64(32);
        let s = Session {
            stage,
            csrf: random_b64(24),
            created: now,
            last: now,
        };
        m.insert(key(&token), s.clone());
        Some((token, s))
    }

    /// The session of `token`, touched; None when unknown or expired (and then forgotten).
    pub fn get(&self, token: &str) -> Option<Session> {
        let now = Instant::now();
        let mut m = self.lock();
        let k = key(token);
        let s = m.get_mut(&k)?;
        if !self.live(s, now) {
            m.remove(&k);
            return None;
        }
        s.last = now;
        Some(s.clone())
    }

    /// Moves the session of `token` to `stage` under a new token (the old one stops working);
    /// a move to `Active` restarts the absolute timeout.
    pub fn advance(&self, token: &str, stage: Stage) -> Option<(String, Session)> {
        let mut m = self.lock();
        let old = m.remove(&key(token))?;
        let now = Instant::now();
        let token = random_b64(32);
        let s = Session {
            created: if matches!(stage, Stage::Active { .. }) {
                now
            } else {
                old.created
            },
            stage,
            csrf: random_b64(24),
            last: now,
        };
        m.insert(key(&token), s.clone());
        Some((token, s))
    }

    pub fn end(&self, token: &str) {
        self.lock().remove(&key(token));
    }

    /// Ends every session of `account` (disabled or reset).
    pub fn end_all(&self, account: &str) {
        self.lock().retain(|_, s| match &s.stage {
            Stage::Active { account: a }
            | Stage::Password { account: a }
            | Stage::Enrolling { account: a, .. } => a != account,
            Stage::Anonymous => true,
        });
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `Set-Cookie` for a session token.
pub fn set_cookie(token: &str) -> String {
    format!("{COOKIE}={token}; Path=/; HttpOnly; Secure; SameSite=Strict")
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0")
}

/// The session token in a request's `Cookie` headers.
pub fn token_of(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, v)| *k == COOKIE && !v.is_empty() && v.len() <= 64)
        .map(|(_, v)| v.to_owned())
}

/// Constant-time equality of two short secrets.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_change_at_each_step_and_old_ones_stop_working() {
        let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(3600));
        let (t0, first) = s.create(Stage::Anonymous).unwrap();
        assert!(s.get(&t0).is_some());
        let (t1, next) = s
            .advance(
                &t0,
                Stage::Password {
                    account: "alice".into(),
                },
            )
            .unwrap();
        assert_ne!(t0, t1);
        assert_ne!(first.csrf, next.csrf);
        assert!(s.get(&t0).is_none());
        assert!(s.get(&t1).is_some());
        s.end_all("alice");
        assert!(s.get(&t1).is_none());
    }

    #[test]
    fn idle_sessions_expire() {
        let s = Sessions::new(Duration::from_millis(1), Duration::from_secs(3600));
        let (t, _) = s.create(Stage::Anonymous).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(s.get(&t).is_none());
        assert!(s.is_empty());
    }

    #[test]
    fn a_full_table_evicts_sessions_still_signing_in_but_never_signed_in_ones() {
        let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(3600));
        let mut active = Vec::new();
        for i in 0..MAX_SESSIONS {
            let (t, _) = s
                .create(Stage::Active {
                    account: format!("a{i}"),
                })
                .unwrap();
            active.push(t);
        }
        assert!(s.create(Stage::Anonymous).is_none());
        s.end(&active[0]);
        let (anon, _) = s.create(Stage::Anonymous).unwrap();
        // Full again: the anonymous one makes room for the next.
        assert!(s.create(Stage::Anonymous).is_some());
        assert!(s.get(&anon).is_none());
        assert!(active[1..].iter().all(|t| s.get(t).is_some()));
    }

    #[test]
    fn the_cookie_is_found_among_others_and_bounded() {
        let mut h = axum::http::HeaderMap::new();
        h.append("cookie", "a=1; proofline_session=abc; b=2".parse().unwrap());
        assert_eq!(token_of(&h).as_deref(), Some("abc"));
        let mut h = axum::http::HeaderMap::new();
        h.append(
            "cookie",
            format!("proofline_session={}", "x".repeat(65))
                .parse()
                .unwrap(),
        );
        assert_eq!(token_of(&h), None);
        assert!(set_cookie("t").contains("HttpOnly; Secure; SameSite=Strict"));
    }
}
