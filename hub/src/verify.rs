//! `proofline-hub ledger verify`: re-verifies every witnessed agent ledger and the hub's own,
//! offline, against the cosigned checkpoints.
//!
//! For each agent: every stored record from seq 0 must extend the chain (origin, seq, `prev`),
//! the walk must end at the stored size, last leaf and Merkle root, and the last cosigned
//! checkpoint must carry the agent's signature (key recorded at enrollment) and the hub's
//! cosignature over exactly that size and root. The hub's own ledger is verified from genesis.
//!
//! The keys come from outside the database being checked when the caller has them (the hub's
//! configuration: enrolled station keys and the hub's own key), so that rewriting the stored
//! state cannot also rewrite what it is checked against. Without them, the hub's cosigning key
//! recorded in the database is used and station signatures are not checked.

use std::path::Path;

use proofline_common::chain::ChainState;
use proofline_common::note::{Checkpoint, Note, VerifierKey};
use proofline_common::store::{Access, Store, StoreError, StoreOptions, VerifyScope, WitnessStore};

use crate::witness::load_state;

/// One agent ledger's verification result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentReport {
    pub agent_id: String,
    pub size: u64,
    pub root: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub hub_origin: String,
    pub hub_size: u64,
    pub agents: Vec<AgentReport>,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Damage or tampering, named with the ledger and seq.
    #[error("{0}")]
    Fault(String),
    #[error(transparent)]
    Store(StoreError),
}

/// The keys to check signatures with, from the hub's configuration.
#[derive(Debug, Clone)]
pub struct Keys {
    /// Every enrolled station's key.
    pub enrolled: Vec<(String, VerifierKey)>,
    /// The hub's cosignature key (from its key file).
    pub cosigner: VerifierKey,
}

/// Verifies everything in `data_dir`; the first fault stops it.
pub fn verify(data_dir: &Path, keys: Option<&Keys>) -> Result<Report, VerifyError> {
    let opts = StoreOptions {
        verify: VerifyScope::Full,
        ..StoreOptions::default()
    };
    let (store, report) = Store::open(data_dir, Access::Read, &opts).map_err(|e| match e {
        StoreError::Fault(f) => VerifyError::Fault(format!("hub ledger: {f}")),
        other => VerifyError::Store(other),
    })?;
    let witnessed = store.witness_store();
    let recorded = witnessed
        .meta(crate::run::META_COSIGNER)
        .ok()
        .flatten()
        .map(|v| String::from_utf8_lossy(&v).into_owned());
    let cosigner = match keys {
        Some(k) => {
            if recorded
                .as_deref()
                .is_some_and(|r| r != k.cosigner.to_string())
            {
                return Err(VerifyError::Fault(format!(
                    "the cosigning key recorded in the hub's data ({}) is not this hub's key ({})",
                    recorded.unwrap_or_default(),
                    k.cosigner
                )));
            }
            Some(k.cosigner.clone())
        }
        None => recorded.and_then(|r| VerifierKey::parse(&r).ok()),
    };
    let mut agents = Vec::new();
    let mut ids = witnessed.stations();
    ids.sort();
    for id in ids {
        if let Some(r) = verify_station(&witnessed, &id, keys, cosigner.as_ref())? {
            agents.push(r);
        }
    }
    Ok(Report {
        hub_origin: store.origin().to_string(),
        hub_size: report.head.size,
        agents,
    })
}

/// Re-verifies one witnessed station ledger; None when the hub holds nothing of it.
fn verify_station(
    witnessed: &WitnessStore,
    id: &str,
    keys: Option<&Keys>,
    cosigner: Option<&VerifierKey>,
) -> Result<Option<AgentReport>, VerifyError> {
    let fault = |m: String| VerifyError::Fault(format!("agent {id}: {m}"));
    let ledger = witnessed.open(id).map_err(VerifyError::Store)?;
    let reader = ledger.reader();
    let Some(state) = load_state(&ledger).map_err(VerifyError::Store)? else {
        if reader.range(0..u64::MAX).next().is_none() {
            return Ok(None);
        }
        return Err(fault(
            "records are stored but the witness state is missing".into(),
        ));
    };
    let mut chain = ChainState::genesis(&state.origin);
    for item in reader.range(0..state.size) {
        let (seq, bytes) = item.map_err(|e| match e {
            StoreError::Fault(f) => fault(f.to_string()),
            other => VerifyError::Store(other),
        })?;
        if seq != chain.size() {
            return Err(fault(format!("record {} is missing", chain.size())));
        }
        chain
            .check(&bytes)
            .map_err(|e| fault(e.fault_at(seq, Some(state.size)).to_string()))?;
    }
    if chain.size() != state.size {
        return Err(fault(format!(
            "records end at {} but {} were witnessed",
            chain.size(),
            state.size
        )));
    }
    if chain.root() != state.root || chain.last_leaf() != state.last_leaf {
        return Err(fault(format!(
            "root at size {} differs from the witnessed root",
            state.size
        )));
    }
    if state.size > 0 && state.cosigned.is_none() {
        return Err(fault(format!(
            "{} records witnessed but no cosigned checkpoint is stored",
            state.size
        )));
    }
    if let Some(note_text) = &state.cosigned {
        let note =
            Note::parse(note_text).map_err(|e| fault(format!("cosigned checkpoint: {e}")))?;
        let cp = Checkpoint::parse(&note.text)
            .map_err(|e| fault(format!("cosigned checkpoint: {e}")))?;
        if cp.size != state.size || cp.root != state.root || cp.origin != state.origin {
            return Err(fault(format!(
                "the last cosigned checkpoint (size {}) does not match the witnessed ledger (size {})",
                cp.size, state.size
            )));
        }
        if let Some(keys) = keys {
            let k = keys
                .enrolled
                .iter()
                .find(|(a, _)| *a == id)
                .map(|(_, k)| k)
                .ok_or_else(|| {
                    fault(
                        "not enrolled in this configuration: its signature cannot be checked"
                            .into(),
                    )
                })?;
            k.verify(&note)
                .map_err(|e| fault(format!("cosigned checkpoint: agent signature: {e}")))?;
        }
        let c = cosigner
            .ok_or_else(|| fault("no hub cosigning key to check the cosignature with".into()))?;
        c.verify_cosignature(&note)
            .map_err(|e| fault(format!("cosigned checkpoint: hub cosignature: {e}")))?;
    }
    Ok(Some(AgentReport {
        agent_id: id.to_owned(),
        size: state.size,
        root: state.root.to_hex(),
    }))
}
