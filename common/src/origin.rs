//! Ledger origins: `proofline/<site>/<agent_id>` (the hub's own is `proofline/<site>/hub`).
//!
//! The origin names a ledger everywhere: in every record, in checkpoint notes and as the name of
//! the key that signs them, so it must also be a valid C2SP signed-note key name.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A validated origin. Construct with [`Origin::parse`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Origin(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid origin {value:?}: {reason} (expected proofline/<site>/<agent_id>, each part 1-64 of a-z A-Z 0-9 . _ -)")]
pub struct OriginError {
    pub value: String,
    pub reason: &'static str,
}

const MAX_PART: usize = 64;

impl Origin {
    pub fn parse(s: &str) -> Result<Self, OriginError> {
        let err = |reason| OriginError {
            value: s.to_owned(),
            reason,
        };
        let mut parts = s.split('/');
        if parts.next() != Some("proofline") {
            return Err(err("must start with \"proofline/\""));
        }
        let site = parts.next().ok_or_else(|| err("missing site"))?;
        let agent = parts.next().ok_or_else(|| err("missing agent id"))?;
        if parts.next().is_some() {
            return Err(err("too many parts"));
        }
        for part in [site, agent] {
            if part.is_empty() || part.len() > MAX_PART {
                return Err(err("part is empty or longer than 64 characters"));
            }
            if !part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            {
                return Err(err("part holds a character outside a-z A-Z 0-9 . _ -"));
            }
        }
        Ok(Origin(s.to_owned()))
    }

    /// Origin of a site's hub ledger.
    pub fn hub(site: &str) -> Result<Self, OriginError> {
        Origin::parse(&format!("proofline/{site}/hub"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn site(&self) -> &str {
        self.0.split('/').nth(1).unwrap_or_default()
    }

    pub fn agent_id(&self) -> &str {
        self.0.split('/').nth(2).unwrap_or_default()
    }
}

impl TryFrom<String> for Origin {
    type Error = OriginError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Origin::parse(&s)
    }
}

impl From<Origin> for String {
    fn from(o: Origin) -> String {
        o.0
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Origin({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_agent_and_hub_origins() {
        let o = Origin::parse("proofline/plant-1/flow_bench.3").unwrap();
        assert_eq!(o.site(), "plant-1");
        assert_eq!(o.agent_id(), "flow_bench.3");
        assert_eq!(
            Origin::hub("plant-1").unwrap().as_str(),
            "proofline/plant-1/hub"
        );
    }

    #[test]
    fn rejects_malformed_origins() {
        for bad in [
            "",
            "proofline",
            "proofline/site",
            "proofline//a",
            "other/site/a",
            "proofline/site/a/b",
            "proofline/si te/a",
            "proofline/site/a+b",
            "proofline/site/é",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Origin::parse(&format!("proofline/s/{}", "a".repeat(65))).is_err());
    }
}
