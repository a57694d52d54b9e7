//! The route interlock, hub side: a station configured for it asks, after each part scan,
//! whether the part may be tested there; the hub answers from the reconciled view.
//!
//! - A question is taken only if the station's witnessed key signed it, it names the station of
//!   its topic, and its message id is above the last one answered for that station (a replay is
//!   not answered again). Its UII and part number are bounded, printable ASCII.
//! - The answer ([`Clearance`]) is signed by the hub key and names the station, the question's
//!   id and the UII: the station records it verbatim in its ledger, where anyone with the hub's
//!   verifier key can check it.
//! - One thread answers, reading the reconciled view (sled reads, no lock on the witness).
//!   Questions wait in a bounded queue; when it is full they are dropped and counted, never
//!   queued without bound: the station's offline policy decides for them.
//! - The decision ([`clearance`]) walks the route as the reconciler does, so what it allows is
//!   what the route check will accept once the result is witnessed. Records of the part still
//!   on their way from another station are not known yet: the answer says what is missing, and
//!   the operator scans again once that station's records are witnessed.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use proofline_common::note::NoteSigner;
use proofline_common::record::now_micros;
use proofline_common::wire::{
    self, AskBody, Clearance, ClearanceBody, ClearanceMsg, InterlockMsg, MsgId, Signed,
    DOMAIN_CLEARANCE, DOMAIN_INTERLOCK, MAX_PART_NUMBER_BYTES, MAX_UII_BYTES,
};
use rumqttc::{AsyncClient, QoS};
use tokio::sync::{mpsc, watch};

use crate::api::{HubMetrics, Snapshot};
use crate::reconcile::rules::{clearance, Rules};

/// Questions waiting to be answered, at most.
pub const QUEUE: usize = 256;

/// One question as it came off the broker.
#[derive(Debug)]
pub struct Question {
    pub agent_id: String,
    pub payload: Vec<u8>,
}

/// Answers questions until every sender is gone.
pub struct Responder {
    pub questions: mpsc::Receiver<Question>,
    pub client: AsyncClient,
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub rules: Arc<Rules>,
    pub signer: NoteSigner,
    pub site: String,
    pub metrics: Arc<HubMetrics>,
    /// The findings' triage: a closed hold finding no longer holds the part.
    pub web: Option<Arc<crate::web::Web>>,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("interlock::Responder")
            .field("site", &self.site)
            .finish()
    }
}

/// Why a question is not answered.
#[derive(Debug, thiserror::Error)]
pub enum Ignored {
    #[error("{0} is not a witnessed station")]
    Unknown(String),
    #[error("{0}")]
    Malformed(String),
    #[error("replay: {0} is not after {1}")]
    Replay(MsgId, MsgId),
}

impl Responder {
    /// Runs on its own thread (sled reads block).
    pub fn run(mut self) {
        let mut last: HashMap<String, MsgId> = HashMap::new();
        while let Some(q) = self.questions.blocking_recv() {
            match self.answer(&q, &mut last) {
                Ok((topic, payload, allowed)) => {
                    let counter = if allowed {
                        &self.metrics.interlock_allowed
                    } else {
                        &self.metrics.interlock_refused
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = self
                        .client
                        .try_publish(topic, QoS::AtMostOnce, false, payload)
                    {
                        tracing::warn!(agent = %q.agent_id, error = %e, "could not queue an interlock answer");
                    }
                }
                Err(e) => {
                    self.metrics
                        .interlock_ignored
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(agent = %q.agent_id, error = %e, "interlock question not answered");
                }
            }
        }
    }

    /// The signed answer to `q` and its topic; `bool` = allowed.
    fn answer(
        &self,
        q: &Question,
        last: &mut HashMap<String, MsgId>,
    ) -> Result<(String, Vec<u8>, bool), Ignored> {
        let snap = Arc::clone(&self.snapshot.borrow());
        let key = snap
            .keys
            .get(&q.agent_id)
            .ok_or_else(|| Ignored::Unknown(q.agent_id.clone()))?;
        let InterlockMsg::V2(signed) =
            InterlockMsg::decode(&q.payload).map_err(|e| Ignored::Malformed(e.to_string()))?;
        let ask: AskBody = signed
            .open(DOMAIN_INTERLOCK, key)
            .map_err(|e| Ignored::Malformed(e.to_string()))?;
        if ask.agent_id != q.agent_id {
            return Err(Ignored::Malformed(format!(
                "signed for {:?} on the topic of {}",
                ask.agent_id, q.agent_id
            )));
        }
        let printable = |s: &str, max: usize| {
            !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic())
        };
        if !printable(&ask.uii, MAX_UII_BYTES) {
            return Err(Ignored::Malformed(format!(
                "UII {:?} is not 1 to {MAX_UII_BYTES} printable ASCII characters",
                wire::truncate_utf8(&ask.uii, MAX_UII_BYTES)
            )));
        }
        if let Some(pn) = &ask.part_number {
            if !printable(pn, MAX_PART_NUMBER_BYTES) {
                return Err(Ignored::Malformed(format!(
                    "part number is not 1 to {MAX_PART_NUMBER_BYTES} printable ASCII characters"
                )));
            }
        }
        if let Some(prev) = last.get(&q.agent_id) {
            if ask.id <= *prev {
                return Err(Ignored::Replay(ask.id, *prev));
            }
        }
        last.insert(q.agent_id.clone(), ask.id);
        let decided = match &snap.lookup {
            None => Err((
                "no_route_view".to_owned(),
                "the hub keeps no reconciled view (no data directory index)".to_owned(),
            )),
            Some(lookup) => match lookup.timeline(&ask.uii) {
                Err(e) => Err((
                    "hub_error".to_owned(),
                    format!("the hub cannot read the part's timeline: {e}"),
                )),
                Ok(timeline) => clearance(
                    &self.rules,
                    &ask.uii,
                    &ask.agent_id,
                    ask.part_number.as_deref(),
                    &timeline,
                    &|id| {
                        self.web.as_ref().is_some_and(|w| {
                            w.triage().state(id) == crate::web::triage::State::Closed
                        })
                    },
                )
                .map_err(|(code, reason)| (code.code().to_owned(), reason)),
            },
        };
        let allowed = decided.is_ok();
        let clearance = match decided {
            Ok(operation) => Clearance::Allowed { operation },
            Err((code, reason)) => Clearance::Refused { code, reason },
        };
        tracing::info!(agent = %ask.agent_id, uii = %ask.uii, ?clearance, "interlock answered");
        let body = ClearanceBody {
            agent_id: ask.agent_id.clone(),
            answers: ask.id,
            uii: ask.uii,
            clearance,
            at: now_micros(),
        };
        let msg = ClearanceMsg::V2(Signed::seal(DOMAIN_CLEARANCE, &body, &self.signer));
        let topic = wire::AgentTopics::new(&self.site, &ask.agent_id).clearance;
        Ok((topic, msg.encode(), allowed))
    }
}
