//! The station's counters and gauges for `/metrics` (Prometheus text). Labels are bounded:
//! source names and alarm codes, never a serial number.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

fn locked(m: &Mutex<BTreeMap<String, u64>>) -> BTreeMap<String, u64> {
    m.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Counters for `/metrics`: labels are bounded (source names, never serial numbers).
#[derive(Debug, Default)]
pub struct Metrics {
    pub results: Mutex<BTreeMap<String, u64>>,
    pub scans: Mutex<BTreeMap<String, u64>>,
    pub rejected_scans: Mutex<BTreeMap<String, u64>>,
    pub double_reads: Mutex<BTreeMap<String, u64>>,
    pub unbound_results: AtomicU64,
    pub mismatched_results: AtomicU64,
    pub alarms: Mutex<BTreeMap<String, u64>>,
    pub source_up: Mutex<BTreeMap<String, bool>>,
    pub ledger_size: AtomicU64,
    pub ledger_errors: AtomicU64,
    /// Forwarding to the hub: connected (0/1), last cosigned size, resends, refusals.
    pub hub_connected: AtomicU64,
    pub cosigned_size: AtomicU64,
    pub forward_resends: AtomicU64,
    pub forward_rejected: AtomicU64,
    /// Messages on the ack topic not taken: unsigned, for another station, or for no batch in
    /// flight.
    pub forward_ignored_answers: AtomicU64,
    /// Storage: bytes the ledger takes on disk, 1 while no input is taken (budget exhausted
    /// or free-space reserve breached), and the free bytes of its file system.
    pub storage_bytes: AtomicU64,
    pub storage_full: AtomicU64,
    pub storage_free_bytes: AtomicU64,
    /// 1 while the station is degraded (see `station::health`).
    pub degraded: AtomicU64,
    /// Route interlock decisions.
    pub interlock: crate::interlock::InterlockMetrics,
    /// The `/metrics` and `/healthz` endpoint's connections.
    pub http: std::sync::Arc<proofline_common::http::HttpCounters>,
}

impl Metrics {
    pub fn count(map: &Mutex<BTreeMap<String, u64>>, key: &str) {
        let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(key.to_owned()).or_default() += 1;
    }

    /// Records whether a source is connected (the `source_up` gauge).
    pub fn set_up(&self, source: &str, up: bool) {
        self.source_up
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(source.to_owned(), up);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        self.render_sources(&mut s);
        self.render_station(&mut s);
        self.http.render("proofline_agent", &mut s);
        s
    }

    /// The series labelled by source.
    fn render_sources(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "# HELP proofline_agent_results_total Results recorded, by source."
        );
        let _ = writeln!(s, "# TYPE proofline_agent_results_total counter");
        for (k, v) in locked(&self.results) {
            let _ = writeln!(s, "proofline_agent_results_total{{source=\"{k}\"}} {v}");
        }
        for (name, help, map) in [
            ("scans_total", "Scans recorded, by source.", &self.scans),
            (
                "rejected_scans_total",
                "Scans refused by the parser (recorded with their code), by source.",
                &self.rejected_scans,
            ),
            (
                "double_reads_total",
                "Identical reads within the debounce window, by source.",
                &self.double_reads,
            ),
        ] {
            let _ = writeln!(s, "# HELP proofline_agent_{name} {help}");
            let _ = writeln!(s, "# TYPE proofline_agent_{name} counter");
            for (k, v) in locked(map) {
                let _ = writeln!(s, "proofline_agent_{name}{{source=\"{k}\"}} {v}");
            }
        }
    }

    /// The station-wide series: binding, alarms, links, ledger, forwarding and storage.
    fn render_station(&self, s: &mut String) {
        let _ = writeln!(s, "# TYPE proofline_agent_unbound_results_total counter");
        let _ = writeln!(
            s,
            "proofline_agent_unbound_results_total {}",
            self.unbound_results.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            s,
            "# TYPE proofline_agent_identifier_mismatches_total counter"
        );
        let _ = writeln!(
            s,
            "proofline_agent_identifier_mismatches_total {}",
            self.mismatched_results.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP proofline_agent_alarms_total Alarms recorded, by source and code."
        );
        let _ = writeln!(s, "# TYPE proofline_agent_alarms_total counter");
        for (k, v) in locked(&self.alarms) {
            let (src, code) = k.split_once('|').unwrap_or((&k, ""));
            let _ = writeln!(
                s,
                "proofline_agent_alarms_total{{source=\"{src}\",code=\"{code}\"}} {v}"
            );
        }
        let _ = writeln!(s, "# TYPE proofline_agent_source_up gauge");
        for (k, v) in self
            .source_up
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                s,
                "proofline_agent_source_up{{source=\"{k}\"}} {}",
                u8::from(*v)
            );
        }
        let _ = writeln!(s, "# TYPE proofline_agent_ledger_size gauge");
        let _ = writeln!(
            s,
            "proofline_agent_ledger_size {}",
            self.ledger_size.load(Ordering::Relaxed)
        );
        self.interlock.render(s);
        let _ = writeln!(s, "# TYPE proofline_agent_ledger_errors_total counter");
        let _ = writeln!(
            s,
            "proofline_agent_ledger_errors_total {}",
            self.ledger_errors.load(Ordering::Relaxed)
        );
        for (name, kind, help, v) in [
            (
                "hub_connected",
                "gauge",
                "Connected to the hub's broker.",
                &self.hub_connected,
            ),
            (
                "cosigned_size",
                "gauge",
                "Ledger size the hub last cosigned.",
                &self.cosigned_size,
            ),
            (
                "forward_resends_total",
                "counter",
                "Resends after a gap, timeout or reconnect.",
                &self.forward_resends,
            ),
            (
                "forward_rejected_total",
                "counter",
                "Batches the hub refused.",
                &self.forward_rejected,
            ),
            (
                "forward_ignored_answers_total",
                "counter",
                "Answers on the ack topic not taken (unsigned, another station's, or for no batch in flight).",
                &self.forward_ignored_answers,
            ),
            (
                "storage_bytes",
                "gauge",
                "Bytes the ledger takes on disk.",
                &self.storage_bytes,
            ),
            (
                "storage_full",
                "gauge",
                "1 while devices are not acknowledged: disk budget exhausted or free-space reserve breached.",
                &self.storage_full,
            ),
            (
                "storage_free_bytes",
                "gauge",
                "Bytes free on the ledger's file system.",
                &self.storage_free_bytes,
            ),
            (
                "degraded",
                "gauge",
                "1 while the station is degraded (ledger not writable, free-space reserve breached).",
                &self.degraded,
            ),
        ] {
            let _ = writeln!(s, "# HELP proofline_agent_{name} {help}");
            let _ = writeln!(s, "# TYPE proofline_agent_{name} {kind}");
            let _ = writeln!(s, "proofline_agent_{name} {}", v.load(Ordering::Relaxed));
        }
    }
}

impl crate::interlock::InterlockMetrics {
    /// The route interlock's counters, in the text exposition format.
    fn render(&self, s: &mut String) {
        for (name, help, v) in [
            (
                "allowed",
                "Route interlock: the hub allowed the part.",
                &self.allowed,
            ),
            (
                "refused",
                "Route interlock: the hub refused the part.",
                &self.refused,
            ),
            (
                "unreachable",
                "Route interlock: no answer in time; the offline policy decided.",
                &self.unreachable,
            ),
            (
                "unrecorded",
                "Route interlock: decisions that could not be recorded (part held).",
                &self.unrecorded,
            ),
        ] {
            let _ = writeln!(s, "# HELP proofline_agent_interlock_{name}_total {help}\n# TYPE proofline_agent_interlock_{name}_total counter\nproofline_agent_interlock_{name}_total {}", v.load(Ordering::Relaxed));
        }
    }
}
