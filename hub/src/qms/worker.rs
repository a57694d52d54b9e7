//! The delivery loop: one outbox entry at a time (so one part's writes are serialized), each
//! searched for in the QMS before it is posted.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proofline_common::backoff::Backoff;
use proofline_common::record::{now_micros, Alarm, Body, Severity, StationEvent};
use proofline_common::store::{Entry as LedgerEntry, Index, IndexBatch};
use proofline_common::writer::LedgerHandle;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::client::{Failure, QmsClient};
use super::{report_body, Delivery, OutboxEntry, QmsPlan};
use crate::alerts::{AlertBook, AlertKind, Raised};
use crate::reconcile::rules::{Finding, Rule};
use crate::reconcile::{keys, Entry};

/// What `/api/v1/qms` and `/metrics` show.
#[derive(Debug, Default, Clone, Serialize)]
pub struct QmsStatus {
    /// Entries not yet delivered.
    pub depth: u64,
    /// Age of the oldest of them (station clock of its result to now), seconds.
    pub oldest_age_secs: Option<f64>,
    /// Entries parked, waiting for an operator (`proofline-hub qms retry`).
    pub parked: u64,
    /// Delivered since start, and how many of those the QMS already had (found by the search
    /// after an unknown outcome).
    pub delivered: u64,
    pub found_existing: u64,
    /// Calls that failed with an unknown outcome, since start.
    pub transient_failures: u64,
    pub last_error: Option<String>,
    /// Why delivery is stopped, while it is.
    pub stopped: Option<String>,
}

/// The QMS worker's component.
#[derive(Debug)]
pub struct QmsWorker {
    pub plan: QmsPlan,
    pub site: String,
    pub index: Index,
    pub ledger: LedgerHandle,
    pub alerts: Arc<Mutex<AlertBook>>,
    pub status: Arc<Mutex<QmsStatus>>,
    /// `qms retry` requests are files here.
    pub retry_dir: PathBuf,
}

/// How long delivery waits after it stopped before it tries again by itself.
const STOPPED_WAIT: Duration = Duration::from_secs(300);
/// How often a mapped bench's calibration is checked.
const CALIBRATION_EVERY: Duration = Duration::from_secs(3600);

/// What one delivery attempt ended in.
enum Outcome {
    Delivered {
        report_id: String,
        report_number: String,
        found: bool,
    },
    Parked(String),
}

impl QmsWorker {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut client: Option<QmsClient> = None;
        let mut tenant_ok = false;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(60));
        let mut calibration_at: Option<tokio::time::Instant> = None;
        let mut counted_at: Option<tokio::time::Instant> = None;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            self.take_retries();
            if counted_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                self.count();
                counted_at = Some(tokio::time::Instant::now());
            }
            let c = match &mut client {
                Some(c) => c,
                None => match QmsClient::new(&self.plan) {
                    Ok(c) => client.insert(c),
                    Err(e) => {
                        self.stop(&format!("the QMS client cannot start: {e}"))
                            .await;
                        if sleep_or_stop(&shutdown, STOPPED_WAIT).await {
                            break;
                        }
                        continue;
                    }
                },
            };
            if !tenant_ok {
                match c.check_tenant().await {
                    Ok(()) => tenant_ok = true,
                    Err(f) => {
                        if self.failed(f, &mut backoff, &shutdown).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            if calibration_at.is_none_or(|t| t.elapsed() >= CALIBRATION_EVERY) {
                calibration_at = Some(tokio::time::Instant::now());
                self.check_calibrations(c).await;
            }
            let next = match self.next_pending() {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "reading the QMS outbox");
                    if sleep_or_stop(&shutdown, Duration::from_secs(5)).await {
                        break;
                    }
                    continue;
                }
            };
            let Some((key, mut entry)) = next else {
                // New entries come with witnessed batches; a short poll keeps them flowing.
                if sleep_or_stop(&shutdown, Duration::from_millis(200)).await {
                    break;
                }
                continue;
            };
            entry.attempts += 1;
            match self.deliver(c, &entry).await {
                Ok(o) => {
                    backoff.reset();
                    self.settle(&key, entry, o);
                    self.clear_stop();
                }
                Err(Failure::Refused(e)) => {
                    backoff.reset();
                    self.settle(&key, entry, Outcome::Parked(e));
                }
                Err(f) => {
                    entry.last_error = Some(f.to_string());
                    self.store(&key, &entry, false);
                    if self.failed(f, &mut backoff, &shutdown).await {
                        break;
                    }
                }
            }
        }
        self.sync().await;
    }

    /// Delivers one entry: its part found or made, the QMS searched for its event id, and only
    /// then posted.
    async fn deliver(&self, c: &mut QmsClient, o: &OutboxEntry) -> Result<Outcome, Failure> {
        let Some(e) = self.result_entry(o) else {
            return Ok(Outcome::Parked(
                "the result is not in the reconciled view (rebuild it with reconcile --rebuild)"
                    .into(),
            ));
        };
        let event_id = o.event_id(&self.site);
        let part = match self.part(c, &o.uii, &e).await? {
            Ok(p) => p,
            Err(why) => return Ok(Outcome::Parked(why)),
        };
        if let Some(r) = c.report(&event_id).await? {
            let (id, number) = report_ids(&r);
            return Ok(Outcome::Delivered {
                report_id: id,
                report_number: number,
                found: true,
            });
        }
        let body = match report_body(&self.plan, &event_id, &o.uii, &part, &e) {
            Ok(b) => b,
            Err(why) => return Ok(Outcome::Parked(why)),
        };
        let r = c.post_report(&body).await?;
        let (id, number) = report_ids(&r);
        Ok(Outcome::Delivered {
            report_id: id,
            report_number: number,
            found: false,
        })
    }

    /// The QMS part of `uii`: cached, found by exact ERP_id, or created. Ok(Err) when it cannot
    /// be told (two parts with that ERP_id: a finding, never a guess).
    async fn part(
        &self,
        c: &mut QmsClient,
        uii: &str,
        e: &Entry,
    ) -> Result<Result<String, String>, Failure> {
        if let Ok(Some(v)) = self.index.get(&keys::qms_part(uii)) {
            if let Ok(id) = String::from_utf8(v) {
                return Ok(Ok(id));
            }
        }
        let found = c.parts(uii).await?;
        let id = match found.as_slice() {
            [] => c.create_part(uii, &self.plan.part_type).await?,
            [one] => one["id"].as_str().unwrap_or_default().to_owned(),
            many => {
                let ids: Vec<&str> = many.iter().filter_map(|p| p["id"].as_str()).collect();
                let why = format!(
                    "the QMS has {} parts with ERP_id {uii} ({}): the hub does not guess which is this injector; merge them in the QMS, then `proofline-hub qms retry`",
                    many.len(),
                    ids.join(", ")
                );
                let f = Finding::new(
                    Rule::QmsDuplicatePart,
                    Some(uii),
                    None,
                    &ids.join(","),
                    vec![e.proof.clone()],
                    why.clone(),
                );
                self.put_finding(&f);
                return Ok(Err(why));
            }
        };
        if id.is_empty() {
            return Err(Failure::Transient(format!(
                "the QMS part of {uii} has no id"
            )));
        }
        let mut b = IndexBatch::new();
        if b.insert(&keys::qms_part(uii), id.as_bytes()).is_ok() {
            let _ = self.index.apply(b);
        }
        Ok(Ok(id))
    }

    fn result_entry(&self, o: &OutboxEntry) -> Option<Entry> {
        let v = self
            .index
            .get(&keys::timeline(&o.uii, o.at, &o.agent_id, o.seq))
            .ok()??;
        postcard::from_bytes(&v).ok()
    }

    fn next_pending(&self) -> Result<Option<(Vec<u8>, OutboxEntry)>, String> {
        for kv in self.index.scan(&[keys::PENDING]) {
            let (k, _) = kv.map_err(|e| e.to_string())?;
            let Some((agent, seq)) = keys::parse_outbox(&k) else {
                continue;
            };
            let key = keys::outbox(&agent, seq);
            match self.index.get(&key).map_err(|e| e.to_string())? {
                Some(v) => match postcard::from_bytes::<OutboxEntry>(&v) {
                    Ok(o) if o.state == Delivery::Pending => return Ok(Some((key, o))),
                    _ => self.unpend(&agent, seq),
                },
                None => self.unpend(&agent, seq),
            }
        }
        Ok(None)
    }

    fn unpend(&self, agent: &str, seq: u64) {
        let mut b = IndexBatch::new();
        b.remove(&keys::pending(agent, seq));
        let _ = self.index.apply(b);
    }

    /// Writes an entry's new state (and takes it off the pending list when it is settled).
    /// Durable with the hub ledger's next sync: an entry delivered but not yet durably marked
    /// is found again by the search, never posted twice.
    fn store(&self, key: &[u8], o: &OutboxEntry, settled: bool) {
        let mut b = IndexBatch::new();
        let v = postcard::to_stdvec(o).expect("an entry encodes");
        if b.insert(key, &v).is_err() {
            return;
        }
        if settled {
            b.remove(&keys::pending(&o.agent_id, o.seq));
        }
        if matches!(o.state, Delivery::Parked { .. }) {
            let _ = b.insert(&keys::parked(&o.agent_id, o.seq), &[]);
        }
        if let Err(e) = self.index.apply(b) {
            tracing::error!(error = %e, "storing a QMS outbox entry");
        }
    }

    fn settle(&self, key: &[u8], mut o: OutboxEntry, out: Outcome) {
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        match out {
            Outcome::Delivered {
                report_id,
                report_number,
                found,
            } => {
                tracing::info!(uii = %o.uii, agent = %o.agent_id, seq = o.seq, report = %report_number, found, "delivered to the QMS");
                st.delivered += 1;
                st.found_existing += u64::from(found);
                o.state = Delivery::Delivered {
                    report_id,
                    report_number,
                    at: now_micros(),
                };
                o.last_error = None;
            }
            Outcome::Parked(error) => {
                tracing::error!(uii = %o.uii, agent = %o.agent_id, seq = o.seq, "parked: {error}");
                st.parked += 1;
                st.last_error = Some(error.clone());
                o.last_error = Some(error.clone());
                o.state = Delivery::Parked { error };
            }
        }
        drop(st);
        self.store(key, &o, true);
    }

    /// A failure: waits as it says; true when the hub is stopping.
    async fn failed(
        &self,
        f: Failure,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> bool {
        let wait = match &f {
            Failure::Transient(e) => {
                {
                    let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
                    st.transient_failures += 1;
                    st.last_error = Some(e.clone());
                }
                tracing::warn!("QMS: {e}; trying again (after a search for what was sent)");
                backoff.next_delay()
            }
            Failure::Throttled(d, e) => {
                tracing::warn!("QMS: {e}; waiting {} s", d.as_secs());
                *d
            }
            Failure::Stopped(why) => {
                self.stop(why).await;
                STOPPED_WAIT
            }
            Failure::Refused(e) => {
                self.status
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .last_error = Some(e.clone());
                backoff.next_delay()
            }
        };
        sleep_or_stop(shutdown, wait).await
    }

    /// Delivery stops: said in the status, the log, the alerts and the hub ledger.
    async fn stop(&self, why: &str) {
        let new = {
            let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
            let new = st.stopped.as_deref() != Some(why);
            st.stopped = Some(why.to_owned());
            st.last_error = Some(why.to_owned());
            new
        };
        if !new {
            return;
        }
        tracing::error!("QMS delivery stopped: {why}");
        let now = now_micros();
        let due = self.alerts.lock().unwrap_or_else(|p| p.into_inner()).raise(
            &Raised {
                kind: AlertKind::QmsStopped,
                agent_id: "hub".into(),
                message: why.to_owned(),
                seq: None,
            },
            now,
        );
        if let Some(rec) = due {
            let entry = LedgerEntry {
                received_at: now,
                body: Body::StationEvent(StationEvent::Alarm(Alarm {
                    source: "qms".into(),
                    code: "hub.qms_stopped".into(),
                    severity: Severity::Error,
                    message: rec.message,
                })),
            };
            if let Err(e) = self.ledger.append(vec![entry]).await {
                tracing::error!(error = %e, "the QMS alert could not be recorded in the hub ledger");
            }
        }
    }

    fn clear_stop(&self) {
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if st.stopped.take().is_some() {
            tracing::info!("QMS delivery resumed");
        }
    }

    /// `qms retry <event id>` requests: a parked entry goes back on the pending list.
    fn take_retries(&self) {
        let Ok(dir) = std::fs::read_dir(&self.retry_dir) else {
            return;
        };
        for f in dir.flatten() {
            let path = f.path();
            let name = f.file_name().to_string_lossy().into_owned();
            // Anything else is a request still being written.
            if !name.ends_with(".retry") {
                continue;
            }
            if let Some((agent, seq)) = retry_target(&name) {
                let key = keys::outbox(&agent, seq);
                match self
                    .index
                    .get(&key)
                    .ok()
                    .flatten()
                    .and_then(|v| postcard::from_bytes::<OutboxEntry>(&v).ok())
                {
                    Some(mut o) if matches!(o.state, Delivery::Parked { .. }) => {
                        o.state = Delivery::Pending;
                        o.last_error = None;
                        let mut b = IndexBatch::new();
                        if b.insert(&key, &postcard::to_stdvec(&o).expect("an entry encodes"))
                            .is_ok()
                        {
                            let _ = b.insert(&keys::pending(&agent, seq), &[]);
                            b.remove(&keys::parked(&agent, seq));
                            // The QMS may have changed the part (merged, deleted): look again.
                            b.remove(&keys::qms_part(&o.uii));
                            let _ = self.index.apply(b);
                            tracing::info!(agent = %agent, seq, "a parked QMS entry is retried at an operator's request");
                        }
                    }
                    _ => tracing::warn!(request = %name, "qms retry: no parked entry with that id"),
                }
            }
            let _ = std::fs::remove_file(path);
        }
    }

    /// Depth, oldest age and parked count, from the outbox.
    fn count(&self) {
        let now = now_micros();
        let mut depth = 0;
        let mut oldest: Option<i64> = None;
        let mut last_station = String::new();
        for kv in self.index.scan(&[keys::PENDING]).flatten() {
            depth += 1;
            let Some((agent, seq)) = keys::parse_outbox(&kv.0) else {
                continue;
            };
            // Per station the first pending entry is its oldest.
            if agent != last_station {
                if let Some(o) = self
                    .index
                    .get(&keys::outbox(&agent, seq))
                    .ok()
                    .flatten()
                    .and_then(|v| postcard::from_bytes::<OutboxEntry>(&v).ok())
                {
                    oldest = Some(oldest.map_or(o.at, |x| x.min(o.at)));
                }
                last_station = agent;
            }
        }
        // Parked entries have their own list: the outbox itself grows with every result ever
        // delivered and is never scanned whole.
        let parked = self.index.scan(&[keys::PARKED]).flatten().count() as u64;
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        st.depth = depth;
        st.oldest_age_secs = oldest.map(|at| ((now - at) as f64 / 1e6).max(0.0));
        st.parked = parked;
    }

    /// Overdue calibration of a mapped bench raises a finding.
    async fn check_calibrations(&self, c: &mut QmsClient) {
        let today = super::utc(now_micros());
        let today = &today[..10];
        for (station, s) in &self.plan.stations {
            let Some(eq) = &s.equipment else { continue };
            match c.latest_calibration(eq).await {
                Ok(Some(r)) => {
                    let due = r["due_date"].as_str().unwrap_or("");
                    if !due.is_empty() && due < today {
                        let f = Finding::new(
                            Rule::CalibrationOverdue,
                            None,
                            Some(station),
                            &format!("{eq}:{due}"),
                            Vec::new(),
                            format!(
                                "{station}: the QMS says its bench (equipment {eq}) was due for calibration on {due}; results since are under question"
                            ),
                        );
                        self.put_finding(&f);
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(station = %station, "QMS calibration check: {e}"),
            }
        }
    }

    fn put_finding(&self, f: &Finding) {
        let key = keys::qms_finding(&f.id);
        if self.index.get(&key).ok().flatten().is_some() {
            return;
        }
        tracing::warn!(finding = %f.id, rule = f.rule.name(), "{}", f.explanation);
        let mut b = IndexBatch::new();
        if b.insert(&key, &postcard::to_stdvec(f).expect("a finding encodes"))
            .is_ok()
        {
            let _ = self.index.apply(b);
        }
    }

    async fn sync(&self) {
        let l = self.ledger.clone();
        let _ = tokio::task::spawn_blocking(move || l.sync_blocking()).await;
    }
}

/// A retry request's file name: `<agent_id>.<seq>.retry`.
pub fn retry_file(agent_id: &str, seq: u64) -> String {
    format!("{agent_id}.{seq}.retry")
}

fn retry_target(name: &str) -> Option<(String, u64)> {
    let (agent, seq) = name.strip_suffix(".retry")?.rsplit_once('.')?;
    Some((agent.to_owned(), seq.parse().ok()?))
}

/// The (agent, seq) of an event id `proofline:proofline/<site>/<agent>:<seq>`.
pub fn parse_event_id(id: &str) -> Option<(String, u64)> {
    let rest = id.strip_prefix("proofline:proofline/")?;
    let (origin_tail, seq) = rest.rsplit_once(':')?;
    let (_, agent) = origin_tail.split_once('/')?;
    Some((agent.to_owned(), seq.parse().ok()?))
}

fn report_ids(r: &serde_json::Value) -> (String, String) {
    (
        r["id"].as_str().unwrap_or_default().to_owned(),
        r["report_number"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Sleeps; true when the hub is stopping.
async fn sleep_or_stop(shutdown: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.cancelled() => true,
    }
}
