//! One injector's evidence bundle, from what the hub holds (the format and its offline check are
//! in [`proofline_common::evidence`]): the records on the injector's reconciled timeline, each
//! proven against its station's last checkpoint the hub cosigned, and a manifest the hub signs.
//!
//! The running hub makes bundles from its published snapshot (`GET
//! /api/v1/injectors/{uii}/evidence`); `proofline-hub evidence` makes them from the store of a
//! stopped hub, where stations removed since are included as well.

use std::collections::BTreeMap;

use proofline_common::evidence::{self, Bundle, MakeError, StationInput};
use proofline_common::note::{Checkpoint, Note, NoteSigner, VerifierKey};
use proofline_common::store::Reader;

use crate::reconcile::Lookup;

/// What the hub holds of one station, for a bundle.
#[derive(Debug, Clone)]
pub struct StationSource {
    pub key: VerifierKey,
    /// The last cosigned checkpoint note (None before the first).
    pub cosigned: Option<String>,
    pub reader: Reader,
}

#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("no injector {0:?} in the witnessed records")]
    NotFound(String),
    /// The bundle cannot be made now; the message says why and what to do.
    #[error("{0}")]
    Unavailable(String),
    #[error("reading the reconciled view: {0}")]
    Lookup(#[from] crate::reconcile::ReconcileError),
    #[error(transparent)]
    Make(#[from] MakeError),
}

/// Makes the bundle of `uii`. `stations` gives what the hub holds of a station by agent id.
pub fn make(
    uii: &str,
    lookup: &Lookup,
    stations: impl Fn(&str) -> Option<StationSource>,
    signer: &NoteSigner,
    now_secs: u64,
) -> Result<Bundle, EvidenceError> {
    let timeline = lookup.timeline(uii)?;
    if timeline.is_empty() {
        return Err(EvidenceError::NotFound(uii.to_owned()));
    }
    let mut seqs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in &timeline {
        seqs.entry(e.proof.agent_id.clone())
            .or_default()
            .push(e.proof.seq);
    }
    let mut inputs = Vec::with_capacity(seqs.len());
    for (agent_id, seqs) in seqs {
        let Some(src) = stations(&agent_id) else {
            return Err(EvidenceError::Unavailable(format!(
                "station {agent_id} is no longer enrolled at the running hub; `proofline-hub evidence` on the stopped hub's store includes removed stations"
            )));
        };
        let Some(cosigned) = src.cosigned else {
            return Err(EvidenceError::Unavailable(format!(
                "station {agent_id} has no cosigned checkpoint yet"
            )));
        };
        // After a key rotation the stored checkpoint may still carry the previous key's
        // signature until the station's next batch or heartbeat.
        let signed_now = Note::parse(&cosigned)
            .ok()
            .is_some_and(|n| src.key.verify(&n).is_ok() && Checkpoint::parse(&n.text).is_ok());
        if !signed_now {
            return Err(EvidenceError::Unavailable(format!(
                "the last cosigned checkpoint of station {agent_id} is not signed by its enrolled key {} (a key rotation not yet followed by a checkpoint); try again after the station's next heartbeat",
                src.key
            )));
        }
        inputs.push(StationInput {
            agent_id,
            key: src.key,
            checkpoint: cosigned,
            reader: src.reader,
            seqs,
        });
    }
    Ok(evidence::make(uii, inputs, signer, now_secs)?)
}

/// A file name for a bundle: `evidence-<uii>.json`, with anything but letters, digits, `-`
/// and `.` replaced by `_`.
pub fn file_name(uii: &str) -> String {
    let safe: String = uii
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("evidence-{safe}.json")
}
