//! Routes and findings (`reference/traceability.md`), judged from the timelines.
//!
//! Three kinds of rule, each deterministic in the witnessed records alone:
//! - **per injector** ([`judge`]): the route state and the findings its timeline supports,
//!   judged again whenever the timeline changes. A finding an earlier, late-arriving record
//!   no longer supports is withdrawn, so the findings never depend on the order stations were
//!   witnessed in;
//! - **per station sequence** ([`station_sequence`]): judged record by record in the station's
//!   own seq order (scan hygiene, results faster than the bench cycle, zero-variance runs);
//! - **across injectors** ([`identical`]): results whose measurements are all identical on
//!   different injectors.
//!
//! Left out: *trim code mismatch* — the bench-reported trim code is not in the record format
//! (results carry characteristics, not the code the bench computed), so there is nothing to
//! compare the verification scan with; the rule needs a record-format change (DESIGN §3).
//! *Manually entered* scans cannot be told apart from scanned ones (a keyboard-wedge scanner
//! types like a person), so scan hygiene counts refused scans only.
//!
//! Timing: stations' clocks are trusted to [`Rules::clock_uncertainty_micros`]; a timing
//! finding whose margin is within it is marked low confidence.

use std::collections::BTreeMap;

use proofline_common::config::Problems;
use proofline_common::record::{ScanRole, Verdict};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Entry, EntryKind, Proof};

/// Most records named as a finding's evidence (the first ones, in order).
pub const MAX_EVIDENCE: usize = 32;
/// Longest explanation kept (a finding stays well within a stored value's 8 KiB).
pub const MAX_EXPLANATION: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    DuplicateFirstOperation,
    ConcurrentPresence,
    ImpossibleSequence,
    OutOfAllocation,
    EnterpriseMismatch,
    PartNumberMismatch,
    FingerprintDrift,
    TooPerfectData,
    ScanHygiene,
    /// Two QMS parts carry the injector's UII as ERP_id: the hub never guesses which.
    QmsDuplicatePart,
    /// The QMS says the bench's calibration is overdue.
    CalibrationOverdue,
    /// A part was tested at an interlocked station without the hub's clearance: released by
    /// the offline policy, or tested although the station held it.
    InterlockBypassed,
}

impl Rule {
    pub const ALL: [Rule; 12] = [
        Rule::DuplicateFirstOperation,
        Rule::ConcurrentPresence,
        Rule::ImpossibleSequence,
        Rule::OutOfAllocation,
        Rule::EnterpriseMismatch,
        Rule::PartNumberMismatch,
        Rule::FingerprintDrift,
        Rule::TooPerfectData,
        Rule::ScanHygiene,
        Rule::QmsDuplicatePart,
        Rule::CalibrationOverdue,
        Rule::InterlockBypassed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rule::DuplicateFirstOperation => "duplicate_first_operation",
            Rule::ConcurrentPresence => "concurrent_presence",
            Rule::ImpossibleSequence => "impossible_sequence",
            Rule::OutOfAllocation => "out_of_allocation",
            Rule::EnterpriseMismatch => "enterprise_mismatch",
            Rule::PartNumberMismatch => "part_number_mismatch",
            Rule::FingerprintDrift => "fingerprint_drift",
            Rule::TooPerfectData => "too_perfect_data",
            Rule::ScanHygiene => "scan_hygiene",
            Rule::QmsDuplicatePart => "qms_duplicate_part",
            Rule::CalibrationOverdue => "calibration_overdue",
            Rule::InterlockBypassed => "interlock_bypassed",
        }
    }

    pub fn parse(s: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.name() == s)
    }

    pub fn severity(self) -> FindingSeverity {
        match self {
            Rule::DuplicateFirstOperation | Rule::ConcurrentPresence | Rule::EnterpriseMismatch => {
                FindingSeverity::Hold
            }
            _ => FindingSeverity::Review,
        }
    }

    /// What the finding suggests: a possibly counterfeit or cloned item, or a nonconformance
    /// of the process (never "DFARS violation": those clauses are written for electronic parts).
    pub fn label(self) -> &'static str {
        match self {
            Rule::DuplicateFirstOperation
            | Rule::ConcurrentPresence
            | Rule::EnterpriseMismatch
            | Rule::TooPerfectData => "suspect_counterfeit",
            _ => "nonconformance",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingSeverity {
    /// Quarantine the part, open a nonconformance.
    Hold,
    Review,
}

/// One finding. Its id is derived from what it is about, so raising it again is the same
/// finding (deduplicated); its triage state is kept apart (it is not derived from records).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub id: String,
    pub rule: Rule,
    pub severity: FindingSeverity,
    pub label: String,
    pub uii: Option<String>,
    pub station: Option<String>,
    /// The station ledger records that show it, in order.
    pub evidence: Vec<Proof>,
    pub explanation: String,
    /// Timing-based, and the stations' clocks cannot settle it.
    pub low_confidence: bool,
}

impl Finding {
    pub fn new(
        rule: Rule,
        uii: Option<&str>,
        station: Option<&str>,
        detail: &str,
        mut evidence: Vec<Proof>,
        explanation: String,
    ) -> Finding {
        let mut h = Sha256::new();
        for part in [
            rule.name(),
            uii.unwrap_or(""),
            station.unwrap_or(""),
            detail,
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        let id = hex::encode(&h.finalize()[..10]);
        let mut explanation = explanation;
        if explanation.len() > MAX_EXPLANATION {
            let mut end = MAX_EXPLANATION;
            while !explanation.is_char_boundary(end) {
                end -= 1;
            }
            explanation.truncate(end);
            explanation.push('…');
        }
        evidence.sort();
        evidence.dedup();
        evidence.truncate(MAX_EVIDENCE);
        Finding {
            id,
            rule,
            severity: rule.severity(),
            label: rule.label().to_owned(),
            uii: uii.map(str::to_owned),
            station: station.map(str::to_owned),
            evidence,
            explanation,
            low_confidence: false,
        }
    }
}

/// Where an injector is on its route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteState {
    /// The part type whose route it follows (None: no configured part type matches it).
    pub part_type: Option<String>,
    /// The operation it must pass next (None when complete or without a route).
    pub next: Option<String>,
    pub complete: bool,
    /// A hold finding stands against it.
    pub on_hold: bool,
    /// Operations passed, in order, with the result that passed each.
    pub passed: Vec<(String, Proof)>,
}

// ---------------------------------------------------------------------------------------------
// Configuration

/// `[reconcile]` in hub.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileSection {
    /// CAGE / DUNS / DoDAAC codes of the plant and its approved suppliers; empty turns the
    /// enterprise rule off.
    #[serde(default)]
    pub enterprises: Vec<String>,
    /// The UII construct the plant mandates (`1`, `2`, `uii`, `gtin-serial`, `giai`).
    #[serde(default)]
    pub construct: Option<String>,
    /// Shortest time a part takes from one station to another.
    #[serde(default = "default_min_transfer_secs")]
    pub min_transfer_secs: f64,
    /// How far the stations' clocks may be trusted (NTP on a plant network: a second or two).
    #[serde(default = "default_clock_uncertainty_secs")]
    pub clock_uncertainty_secs: f64,
    /// Consecutive results of one bench with an identical value of a characteristic.
    #[serde(default = "default_zero_variance_run")]
    pub zero_variance_run: u32,
    /// Numeric values a result needs for "identical on two injectors" to be judged.
    #[serde(default = "default_identical_min_values")]
    pub identical_min_values: usize,
    /// Scan hygiene: refused scans among a station's last `hygiene_window` scans (2-64).
    #[serde(default = "default_hygiene_window")]
    pub hygiene_window: u32,
    #[serde(default = "default_hygiene_max_refused_percent")]
    pub hygiene_max_refused_percent: f64,
    /// Fingerprint drift: a re-test differs from the first by more than k × repeatability.
    #[serde(default = "default_drift_k")]
    pub drift_k: f64,
}

fn default_min_transfer_secs() -> f64 {
    10.0
}
fn default_clock_uncertainty_secs() -> f64 {
    2.0
}
fn default_zero_variance_run() -> u32 {
    5
}
fn default_identical_min_values() -> usize {
    3
}
fn default_hygiene_window() -> u32 {
    50
}
fn default_hygiene_max_refused_percent() -> f64 {
    20.0
}
fn default_drift_k() -> f64 {
    3.0
}

impl Default for ReconcileSection {
    fn default() -> Self {
        toml::from_str("").expect("the defaults read")
    }
}

/// `[[part_type]]`: a part type, how its parts are recognised, and its route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartTypeSection {
    pub name: String,
    /// Marked part numbers (the original part number of a construct #2 UII, or the current
    /// part number) of this type.
    #[serde(default)]
    pub part_numbers: Vec<String>,
    /// Serial ranges allocated to this type (`"000100-000999"`: same width, inclusive);
    /// empty turns the allocation rule off for it.
    #[serde(default)]
    pub serial_ranges: Vec<String>,
    /// Test plan ids its benches may run on it; empty turns the part number rule off for it.
    #[serde(default)]
    pub test_plans: Vec<String>,
    /// The route, in order.
    #[serde(default)]
    pub operation: Vec<OperationSection>,
    /// Allowed rework loops: after a failure at `from`, the part may go back to `to`.
    #[serde(default)]
    pub rework: Vec<ReworkSection>,
    /// Export control of the type's technical data (measurements, raw device data, limits,
    /// SPC): `ITAR` (with `usml_category`) or `EAR` (with `eccn`). Only accounts marked as US
    /// persons see it; others see that an injector exists and where it is on its route.
    #[serde(default)]
    pub export_control: Option<String>,
    /// USML category, e.g. `XIX(f)` (ITAR).
    #[serde(default)]
    pub usml_category: Option<String>,
    /// Export Control Classification Number, e.g. `9A619.x` (EAR).
    #[serde(default)]
    pub eccn: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationSection {
    pub name: String,
    /// Agent ids of the stations that perform it.
    pub stations: Vec<String>,
    /// `ok` (the default: the result must pass) or `any` (any verdict moves on).
    #[serde(default = "default_needs")]
    pub needs: String,
}

fn default_needs() -> String {
    "ok".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReworkSection {
    pub from: String,
    pub to: String,
}

/// `[[station]]`: what the rules know of one station.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StationSection {
    pub agent_id: String,
    /// The bench's shortest test cycle: results closer together are "too perfect".
    #[serde(default)]
    pub min_cycle_secs: Option<f64>,
}

/// `[[characteristic]]`: what the rules know of one characteristic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CharacteristicSection {
    pub name: String,
    /// Repeatability (one standard deviation of re-tests of one part), in its unit.
    pub repeatability: f64,
}

/// The rules, checked and ready.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub enterprises: Vec<String>,
    pub construct: Option<String>,
    pub min_transfer_micros: i64,
    pub clock_uncertainty_micros: i64,
    pub zero_variance_run: u32,
    pub identical_min_values: usize,
    pub hygiene_window: u32,
    pub hygiene_max_refused: f64,
    pub drift_k: f64,
    pub part_types: Vec<PartType>,
    pub min_cycle_micros: BTreeMap<String, i64>,
    pub repeatability: BTreeMap<String, f64>,
    /// Stations whose bound results go to the QMS outbox (`[qms]` maps them to a Step).
    pub qms_stations: std::collections::BTreeSet<String>,
}

#[derive(Debug, Clone)]
pub struct PartType {
    pub name: String,
    pub part_numbers: Vec<String>,
    pub serial_ranges: Vec<(String, String)>,
    pub test_plans: Vec<String>,
    pub operations: Vec<Operation>,
    /// (from, to) operation indexes.
    pub rework: Vec<(usize, usize)>,
    /// `ITAR USML <category>` or `EAR ECCN <eccn>` when its technical data is export-controlled.
    pub export_control: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Operation {
    pub name: String,
    pub stations: Vec<String>,
    pub needs_ok: bool,
}

fn micros(secs: f64) -> i64 {
    (secs * 1e6) as i64
}

impl Rules {
    /// The rules with every default and no part types.
    pub fn defaults() -> Rules {
        let mut p = Problems::default();
        Rules::from_config(&ReconcileSection::default(), &[], &[], &[], &mut p)
    }

    /// Checks the sections, adding every problem with its key path.
    pub fn from_config(
        r: &ReconcileSection,
        part_types: &[PartTypeSection],
        stations: &[StationSection],
        characteristics: &[CharacteristicSection],
        p: &mut Problems,
    ) -> Rules {
        let secs = |p: &mut Problems, key: &str, v: f64, max: f64| {
            if !(0.0..=max).contains(&v) {
                p.add(key, format!("{v} is not between 0 and {max}"));
            }
        };
        secs(
            p,
            "reconcile.min_transfer_secs",
            r.min_transfer_secs,
            86_400.0,
        );
        secs(
            p,
            "reconcile.clock_uncertainty_secs",
            r.clock_uncertainty_secs,
            3_600.0,
        );
        secs(p, "reconcile.drift_k", r.drift_k, 100.0);
        secs(
            p,
            "reconcile.hygiene_max_refused_percent",
            r.hygiene_max_refused_percent,
            100.0,
        );
        if !(2..=64).contains(&r.hygiene_window) {
            p.add("reconcile.hygiene_window", "must be 2 to 64 scans");
        }
        if r.zero_variance_run < 2 {
            p.add("reconcile.zero_variance_run", "must be at least 2");
        }
        if r.identical_min_values < 1 {
            p.add("reconcile.identical_min_values", "must be at least 1");
        }
        for (i, e) in r.enterprises.iter().enumerate() {
            if !valid_enterprise(e) {
                p.add(
                    &format!("reconcile.enterprises[{i}]"),
                    format!("{e:?} is not a CAGE code (5 letters and digits, no I or O), a DUNS number (9 digits) or a DoDAAC (6 letters and digits)"),
                );
            }
        }
        if let Some(c) = &r.construct {
            if !["1", "2", "uii", "gtin-serial", "giai"].contains(&c.as_str()) {
                p.add(
                    "reconcile.construct",
                    format!("{c:?} is not 1, 2, uii, gtin-serial or giai"),
                );
            }
        }
        let mut types = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, t) in part_types.iter().enumerate() {
            let at = format!("part_type[{i}]");
            if !names.insert(t.name.clone()) {
                p.add(
                    &format!("{at}.name"),
                    format!("{:?} is named twice", t.name),
                );
            }
            types.push(part_type(&at, t, p));
        }
        let mut min_cycle = BTreeMap::new();
        for (i, s) in stations.iter().enumerate() {
            if let Some(c) = s.min_cycle_secs {
                secs(p, &format!("station[{i}].min_cycle_secs"), c, 3_600.0);
                min_cycle.insert(s.agent_id.clone(), micros(c));
            }
        }
        let mut repeatability = BTreeMap::new();
        for (i, c) in characteristics.iter().enumerate() {
            if !(c.repeatability.is_finite() && c.repeatability > 0.0) {
                p.add(
                    &format!("characteristic[{i}].repeatability"),
                    "must be a positive number",
                );
            }
            repeatability.insert(c.name.clone(), c.repeatability);
        }
        Rules {
            enterprises: r.enterprises.clone(),
            construct: r.construct.clone(),
            min_transfer_micros: micros(r.min_transfer_secs),
            clock_uncertainty_micros: micros(r.clock_uncertainty_secs),
            zero_variance_run: r.zero_variance_run.max(2),
            identical_min_values: r.identical_min_values.max(1),
            hygiene_window: r.hygiene_window.clamp(2, 64),
            hygiene_max_refused: r.hygiene_max_refused_percent / 100.0,
            drift_k: r.drift_k,
            part_types: types,
            min_cycle_micros: min_cycle,
            repeatability,
            qms_stations: Default::default(),
        }
    }

    fn part_type_of(&self, timeline: &[Entry]) -> Option<&PartType> {
        let marked = marked(timeline, |i| i.part_number.as_deref());
        if let Some(pn) = marked {
            if let Some(t) = self
                .part_types
                .iter()
                .find(|t| t.part_numbers.iter().any(|p| p == pn))
            {
                return Some(t);
            }
        }
        // Else by where it was tested: the one part type whose route has the first station.
        let first = timeline
            .iter()
            .find(|e| matches!(e.kind, EntryKind::Result { .. }))?;
        let mut on = self.part_types.iter().filter(|t| {
            t.operations
                .iter()
                .any(|o| o.stations.contains(&first.proof.agent_id))
        });
        match (on.next(), on.next()) {
            (Some(t), None) => Some(t),
            _ => None,
        }
    }
}

fn part_type(at: &str, t: &PartTypeSection, p: &mut Problems) -> PartType {
    let mut ranges = Vec::new();
    for (i, r) in t.serial_ranges.iter().enumerate() {
        match r.split_once('-') {
            Some((a, b)) if !a.is_empty() && a.len() == b.len() && a <= b => {
                ranges.push((a.to_owned(), b.to_owned()))
            }
            _ => p.add(
                &format!("{at}.serial_ranges[{i}]"),
                format!("{r:?} is not FIRST-LAST with both of the same width and FIRST ≤ LAST"),
            ),
        }
    }
    let ops: Vec<Operation> = t
        .operation
        .iter()
        .enumerate()
        .map(|(i, o)| {
            if o.stations.is_empty() {
                p.add(&format!("{at}.operation[{i}].stations"), "names no station");
            }
            if o.needs != "ok" && o.needs != "any" {
                p.add(
                    &format!("{at}.operation[{i}].needs"),
                    format!("{:?} is not ok or any", o.needs),
                );
            }
            Operation {
                name: o.name.clone(),
                stations: o.stations.clone(),
                needs_ok: o.needs != "any",
            }
        })
        .collect();
    let find = |n: &str| ops.iter().position(|o| o.name == n);
    let mut rework = Vec::new();
    for (i, r) in t.rework.iter().enumerate() {
        match (find(&r.from), find(&r.to)) {
            (Some(f), Some(to)) if to <= f => rework.push((f, to)),
            (Some(_), Some(_)) => p.add(
                &format!("{at}.rework[{i}]"),
                "a rework loop goes back: `to` must come before `from` on the route",
            ),
            _ => p.add(
                &format!("{at}.rework[{i}]"),
                format!(
                    "{:?} or {:?} is not an operation of {}",
                    r.from, r.to, t.name
                ),
            ),
        }
    }
    let printable =
        |v: &str| !v.is_empty() && v.len() <= 32 && v.bytes().all(|b| b.is_ascii_graphic());
    let export_control = match (t.export_control.as_deref(), &t.usml_category, &t.eccn) {
        (None, None, None) => None,
        (Some("ITAR"), Some(c), None) if printable(c) => Some(format!("ITAR USML {c}")),
        (Some("EAR"), None, Some(e)) if printable(e) => Some(format!("EAR ECCN {e}")),
        (Some("ITAR"), _, _) => {
            p.add(
                &format!("{at}.usml_category"),
                "ITAR needs usml_category (e.g. \"XIX(f)\", printable, at most 32 characters) and no eccn",
            );
            Some("ITAR".into())
        }
        (Some("EAR"), _, _) => {
            p.add(
                &format!("{at}.eccn"),
                "EAR needs eccn (e.g. \"9A619.x\", printable, at most 32 characters) and no usml_category",
            );
            Some("EAR".into())
        }
        (Some(other), _, _) => {
            p.add(
                &format!("{at}.export_control"),
                format!("{other:?} is not ITAR or EAR"),
            );
            Some(other.to_owned())
        }
        (None, _, _) => {
            p.add(
                &format!("{at}.export_control"),
                "usml_category or eccn is set: say export_control = \"ITAR\" or \"EAR\"",
            );
            Some("export-controlled".into())
        }
    };
    PartType {
        name: t.name.clone(),
        part_numbers: t.part_numbers.clone(),
        serial_ranges: ranges,
        test_plans: t.test_plans.clone(),
        operations: ops,
        rework,
        export_control,
    }
}

/// CAGE (5 letters and digits, no I or O), DUNS (9 digits) or DoDAAC (6 letters and digits).
fn valid_enterprise(e: &str) -> bool {
    let alnum = e
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    match e.len() {
        5 => alnum && !e.contains(['I', 'O']),
        6 => alnum,
        9 => e.bytes().all(|b| b.is_ascii_digit()),
        _ => false,
    }
}

/// The enterprise that leads a UII: `D` + CAGE, `UN` + DUNS, `LD` + DoDAAC.
pub fn enterprise_of_uii(uii: &str) -> Option<String> {
    let take = |s: &str, n: usize| s.get(..n).map(str::to_owned);
    if let Some(r) = uii.strip_prefix("UN") {
        take(r, 9)
    } else if let Some(r) = uii.strip_prefix("LD") {
        take(r, 6)
    } else if let Some(r) = uii.strip_prefix('D') {
        take(r, 5)
    } else {
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Per injector

/// The first value a part-mark scan of the timeline has for `f`.
fn marked<'a>(
    timeline: &'a [Entry],
    f: impl Fn(&'a super::IdentityView) -> Option<&'a str>,
) -> Option<&'a str> {
    timeline.iter().find_map(|e| match &e.kind {
        EntryKind::Scan {
            identity: Some(i), ..
        } => f(i),
        _ => None,
    })
}

struct ResultRef<'a> {
    e: &'a Entry,
    verdict: Verdict,
    test_plan: Option<&'a str>,
    characteristics: &'a [super::CharacteristicView],
}

fn results(timeline: &[Entry]) -> Vec<ResultRef<'_>> {
    timeline
        .iter()
        .filter_map(|e| match &e.kind {
            EntryKind::Result {
                verdict,
                test_plan,
                characteristics,
                ..
            } => Some(ResultRef {
                e,
                verdict: *verdict,
                test_plan: test_plan.as_ref().map(|(id, _)| id.as_str()),
                characteristics,
            }),
            _ => None,
        })
        .collect()
}

/// The route state of one injector and the findings its timeline supports.
pub fn judge(rules: &Rules, uii: &str, timeline: &[Entry]) -> (RouteState, Vec<Finding>) {
    let mut out = Vec::new();
    let t = rules.part_type_of(timeline);
    let route = match t {
        Some(t) => walk(t, uii, timeline, &mut out).0,
        None => RouteState {
            part_type: None,
            next: None,
            complete: false,
            on_hold: false,
            passed: Vec::new(),
        },
    };
    concurrent_presence(rules, uii, timeline, &mut out);
    enterprise(rules, uii, timeline, &mut out);
    if let Some(t) = t {
        allocation(t, uii, timeline, &mut out);
        part_number(t, uii, timeline, &mut out);
    }
    drift(rules, uii, timeline, &mut out);
    interlock_bypassed(uii, timeline, &mut out);
    let on_hold = out.iter().any(|f| f.severity == FindingSeverity::Hold);
    (RouteState { on_hold, ..route }, out)
}

/// Walks the injector's results along its route, in time order.
fn walk(
    t: &PartType,
    uii: &str,
    timeline: &[Entry],
    out: &mut Vec<Finding>,
) -> (RouteState, Option<usize>) {
    let ops = &t.operations;
    let op_of = |station: &str| {
        ops.iter()
            .position(|o| o.stations.iter().any(|s| s == station))
    };
    let mut next = 0usize;
    let mut failed_at: Option<usize> = None;
    let mut passed: Vec<(usize, Proof)> = Vec::new();
    let mut duplicates = Vec::new();
    let mut sequence = Vec::new();
    let mut why = Vec::new();
    for r in results(timeline) {
        let Some(op) = op_of(&r.e.proof.agent_id) else {
            continue;
        };
        let ok = !ops[op].needs_ok || r.verdict == Verdict::Ok;
        let allowed_back = failed_at.is_some_and(|f| t.rework.contains(&(f, op)));
        if op == next || (op < next && allowed_back) {
            if op < next {
                passed.retain(|(o, _)| *o < op);
            }
            step(op, ok, &r.e.proof, &mut passed, &mut next, &mut failed_at);
        } else if op < next {
            if op == 0 {
                duplicates.push(r.e.proof.clone());
                if let Some((_, first)) = passed.first() {
                    duplicates.push(first.clone());
                }
            }
        } else {
            let missing = &ops[next].name;
            let state = if failed_at == Some(next) {
                "failed"
            } else {
                "missing"
            };
            why.push(format!(
                "{} at {} while {missing} is {state}",
                ops[op].name, r.e.proof.agent_id
            ));
            sequence.push(r.e.proof.clone());
            step(op, ok, &r.e.proof, &mut passed, &mut next, &mut failed_at);
        }
    }
    if !duplicates.is_empty() {
        out.push(Finding::new(
            Rule::DuplicateFirstOperation,
            Some(uii),
            None,
            "",
            duplicates,
            format!(
                "{uii} started its route ({}) again after passing it, with no failure that allows rework: a second part may carry this UII",
                ops[0].name
            ),
        ));
    }
    if !sequence.is_empty() {
        out.push(Finding::new(
            Rule::ImpossibleSequence,
            Some(uii),
            None,
            "",
            sequence,
            format!("{uii}: {}", why.join("; ")),
        ));
    }
    let complete = next >= ops.len() && !ops.is_empty();
    let state = RouteState {
        part_type: Some(t.name.clone()),
        next: ops.get(next).map(|o| o.name.clone()),
        complete,
        on_hold: false,
        passed: passed
            .into_iter()
            .map(|(o, p)| (ops[o].name.clone(), p))
            .collect(),
    };
    (state, failed_at)
}

/// Why the route interlock refuses a part at a station.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No configured part type has an operation at this station.
    NotOnRoute,
    /// The part's type is unknown (its part number is no configured type's).
    UnknownPart,
    /// A hold finding stands against the part.
    OnHold,
    /// Its route is complete.
    Complete,
    /// It is due elsewhere: an earlier operation is missing or failed.
    OutOfSequence,
    /// It passed this operation already, and no failure allows rework here.
    AlreadyPassed,
}

impl Refusal {
    pub fn code(self) -> &'static str {
        match self {
            Refusal::NotOnRoute => "not_on_route",
            Refusal::UnknownPart => "unknown_part",
            Refusal::OnHold => "on_hold",
            Refusal::Complete => "complete",
            Refusal::OutOfSequence => "out_of_sequence",
            Refusal::AlreadyPassed => "already_passed",
        }
    }
}

/// The route interlock: may the part `uii` be tested at `station` now? `part_number` is the
/// one its scan there read, if any (that scan may not be witnessed yet). Ok names the
/// operation it is due for.
pub fn clearance(
    rules: &Rules,
    uii: &str,
    station: &str,
    part_number: Option<&str>,
    timeline: &[Entry],
    closed: &dyn Fn(&str) -> bool,
) -> Result<String, (Refusal, String)> {
    let by_number = part_number
        .or_else(|| marked(timeline, |i| i.part_number.as_deref()))
        .and_then(|pn| {
            rules
                .part_types
                .iter()
                .find(|t| t.part_numbers.iter().any(|p| p == pn))
        });
    let at_station = |t: &&PartType| {
        t.operations
            .iter()
            .any(|o| o.stations.iter().any(|s| s == station))
    };
    let t = match by_number {
        Some(t) => t,
        None => match rules.part_type_of(timeline) {
            Some(t) => t,
            None => {
                let mut here = rules.part_types.iter().filter(at_station);
                match (here.next(), here.next()) {
                    (Some(t), None) => t,
                    (None, _) => {
                        return Err((
                            Refusal::NotOnRoute,
                            format!("{station} performs no operation of any configured part type"),
                        ))
                    }
                    (Some(_), Some(_)) => {
                        return Err((
                            Refusal::UnknownPart,
                            format!("{uii}: its part type cannot be told (no configured part number is marked on it, and {station} serves several part types)"),
                        ))
                    }
                }
            }
        },
    };
    let ops = &t.operations;
    let Some(here) = ops
        .iter()
        .position(|o| o.stations.iter().any(|s| s == station))
    else {
        return Err((
            Refusal::NotOnRoute,
            format!("{station} performs no operation of {}", t.name),
        ));
    };
    let (route, failed_at) = walk(t, uii, timeline, &mut Vec::new());
    let (_, findings) = judge(rules, uii, timeline);
    // A hold finding a quality engineer has closed (with its reason, in the hub ledger) is
    // dispositioned: it holds the part no longer.
    let holds: Vec<&str> = findings
        .iter()
        .filter(|f| f.severity == FindingSeverity::Hold && !closed(&f.id))
        .map(|f| f.rule.name())
        .collect();
    if !holds.is_empty() {
        return Err((
            Refusal::OnHold,
            format!("{uii} is on hold: {}", holds.join(", ")),
        ));
    }
    if route.complete {
        return Err((
            Refusal::Complete,
            format!("{uii} has completed its route ({})", t.name),
        ));
    }
    let next = ops
        .iter()
        .position(|o| Some(&o.name) == route.next.as_ref())
        .unwrap_or(0);
    let op = &ops[here].name;
    if here == next {
        return Ok(op.clone());
    }
    if here < next || failed_at.is_some_and(|f| here < f) {
        if failed_at.is_some_and(|f| t.rework.contains(&(f, here))) {
            return Ok(op.clone());
        }
        return Err((
            Refusal::AlreadyPassed,
            format!("{uii} has passed {op}; it is due for {}", ops[next].name),
        ));
    }
    let state = if failed_at == Some(next) {
        "failed"
    } else {
        "not done"
    };
    Err((
        Refusal::OutOfSequence,
        format!("{uii} is due for {} ({state}) before {op}", ops[next].name),
    ))
}

/// A result at operation `op` taken: passed, the route moves past it; failed, the part stays
/// there (a re-test, or a rework loop from it, comes next).
fn step(
    op: usize,
    ok: bool,
    proof: &Proof,
    passed: &mut Vec<(usize, Proof)>,
    next: &mut usize,
    failed_at: &mut Option<usize>,
) {
    if ok {
        passed.push((op, proof.clone()));
        *next = op + 1;
        *failed_at = None;
    } else {
        *next = op;
        *failed_at = Some(op);
    }
}

/// The same part at two stations closer in time than a transfer takes.
fn concurrent_presence(rules: &Rules, uii: &str, timeline: &[Entry], out: &mut Vec<Finding>) {
    let seen: Vec<&Entry> = timeline
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                EntryKind::Result { .. }
                    | EntryKind::Scan {
                        role: ScanRole::Part,
                        rejected: None,
                        ..
                    }
            )
        })
        .collect();
    let mut evidence = Vec::new();
    let mut closest = i64::MAX;
    let mut pairs = Vec::new();
    for w in seen.windows(2) {
        let (a, b) = (w[0], w[1]);
        if a.proof.agent_id == b.proof.agent_id {
            continue;
        }
        let gap = b.at - a.at;
        if gap < rules.min_transfer_micros {
            evidence.push(a.proof.clone());
            evidence.push(b.proof.clone());
            closest = closest.min(gap);
            pairs.push(format!(
                "{} then {} {:.1} s later",
                a.proof.agent_id,
                b.proof.agent_id,
                gap as f64 / 1e6
            ));
        }
    }
    if evidence.is_empty() {
        return;
    }
    let mut f = Finding::new(
        Rule::ConcurrentPresence,
        Some(uii),
        None,
        "",
        evidence,
        format!(
            "{uii} seen at two stations closer in time than the {:.0} s a transfer takes: {}",
            rules.min_transfer_micros as f64 / 1e6,
            pairs.join("; ")
        ),
    );
    f.low_confidence = rules.min_transfer_micros - closest <= rules.clock_uncertainty_micros;
    out.push(f);
}

fn enterprise(rules: &Rules, uii: &str, timeline: &[Entry], out: &mut Vec<Finding>) {
    let mut evidence = Vec::new();
    let mut why = std::collections::BTreeSet::new();
    for e in timeline {
        let EntryKind::Scan {
            identity: Some(i), ..
        } = &e.kind
        else {
            continue;
        };
        if !rules.enterprises.is_empty() {
            match &i.enterprise {
                Some(ent) if rules.enterprises.contains(ent) => {}
                Some(ent) => {
                    why.insert(format!(
                        "enterprise {ent} is not the plant's or an approved supplier's"
                    ));
                    evidence.push(e.proof.clone());
                }
                None => {
                    why.insert("the mark names no enterprise".to_owned());
                    evidence.push(e.proof.clone());
                }
            }
        }
        if let Some(c) = &rules.construct {
            if &i.construct != c {
                why.insert(format!(
                    "marked with construct {}, the plant mandates {c}",
                    i.construct
                ));
                evidence.push(e.proof.clone());
            }
        }
    }
    if !evidence.is_empty() {
        out.push(Finding::new(
            Rule::EnterpriseMismatch,
            Some(uii),
            None,
            "",
            evidence,
            format!("{uii}: {}", why.into_iter().collect::<Vec<_>>().join("; ")),
        ));
    }
}

fn allocation(t: &PartType, uii: &str, timeline: &[Entry], out: &mut Vec<Finding>) {
    if t.serial_ranges.is_empty() {
        return;
    }
    for e in timeline {
        let EntryKind::Scan {
            identity: Some(i), ..
        } = &e.kind
        else {
            continue;
        };
        let Some(serial) = &i.serial else { continue };
        let inside = t
            .serial_ranges
            .iter()
            .any(|(a, b)| serial.len() == a.len() && serial >= a && serial <= b);
        if !inside {
            out.push(Finding::new(
                Rule::OutOfAllocation,
                Some(uii),
                None,
                "",
                vec![e.proof.clone()],
                format!(
                    "{uii}: serial {serial} is outside the ranges allocated to {} ({})",
                    t.name,
                    t.serial_ranges
                        .iter()
                        .map(|(a, b)| format!("{a}-{b}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
            return;
        }
    }
}

fn part_number(t: &PartType, uii: &str, timeline: &[Entry], out: &mut Vec<Finding>) {
    if t.test_plans.is_empty() {
        return;
    }
    let Some(pn) = marked(timeline, |i| i.part_number.as_deref()) else {
        return;
    };
    let wrong: Vec<_> = results(timeline)
        .into_iter()
        .filter(|r| {
            r.test_plan
                .is_some_and(|p| !t.test_plans.iter().any(|x| x == p))
        })
        .collect();
    if let Some(first) = wrong.first() {
        out.push(Finding::new(
            Rule::PartNumberMismatch,
            Some(uii),
            None,
            "",
            wrong.iter().map(|r| r.e.proof.clone()).collect(),
            format!(
                "{uii} is marked part number {pn} ({}), but {} tested it with plan {}, which is not one of {}",
                t.name,
                first.e.proof.agent_id,
                first.test_plan.unwrap_or(""),
                t.test_plans.join(", ")
            ),
        ));
    }
}

/// A re-test under the same plan that differs from the first by more than k × repeatability.
fn drift(rules: &Rules, uii: &str, timeline: &[Entry], out: &mut Vec<Finding>) {
    if rules.repeatability.is_empty() {
        return;
    }
    let rs = results(timeline);
    let mut firsts: BTreeMap<(Option<&str>, &str), &ResultRef<'_>> = BTreeMap::new();
    let mut evidence = Vec::new();
    let mut why = Vec::new();
    for r in &rs {
        let key = (r.test_plan, r.e.proof.agent_id.as_str());
        let Some(first) = firsts.get(&key) else {
            firsts.insert(key, r);
            continue;
        };
        for c in r.characteristics {
            let (Some(v), Some(rep)) = (c.value, rules.repeatability.get(&c.name)) else {
                continue;
            };
            let Some(v0) = first
                .characteristics
                .iter()
                .find(|x| x.name == c.name)
                .and_then(|x| x.value)
            else {
                continue;
            };
            if (v - v0).abs() > rules.drift_k * rep {
                evidence.push(first.e.proof.clone());
                evidence.push(r.e.proof.clone());
                why.push(format!(
                    "{} {v} against {v0} first (more than {} × {rep})",
                    c.name, rules.drift_k
                ));
            }
        }
    }
    if !evidence.is_empty() {
        out.push(Finding::new(
            Rule::FingerprintDrift,
            Some(uii),
            None,
            "",
            evidence,
            format!("{uii} re-tested unlike its first test: {}", why.join("; ")),
        ));
    }
}

/// At an interlocked station: a release by the offline policy (no hub answer), or a result
/// after the station held the part (refused, or blocked while the hub was unreachable).
fn interlock_bypassed(uii: &str, timeline: &[Entry], out: &mut Vec<Finding>) {
    let mut evidence = Vec::new();
    let mut why = Vec::new();
    // Per station: the last decision seen, with its proof.
    let mut last: BTreeMap<&str, (&Entry, bool)> = BTreeMap::new();
    for e in timeline {
        match &e.kind {
            EntryKind::Interlock {
                outcome, released, ..
            } => {
                if outcome == "unreachable" && *released {
                    evidence.push(e.proof.clone());
                    why.push(format!(
                        "released at {} by its offline policy, without the hub's clearance",
                        e.proof.agent_id
                    ));
                }
                last.insert(&e.proof.agent_id, (e, *released));
            }
            EntryKind::Result { .. } => {
                if let Some((held, false)) = last.get(e.proof.agent_id.as_str()) {
                    evidence.push(held.proof.clone());
                    evidence.push(e.proof.clone());
                    why.push(format!(
                        "tested at {} although the station held it (seq {})",
                        e.proof.agent_id, held.proof.seq
                    ));
                }
            }
            _ => {}
        }
    }
    if !evidence.is_empty() {
        out.push(Finding::new(
            Rule::InterlockBypassed,
            Some(uii),
            None,
            "",
            evidence,
            format!("{uii}: {}", why.join("; ")),
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Per station sequence

/// What the station-sequence rules remember between a station's records.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SeqState {
    /// The last part-mark scans, newest in bit 0 (1 = refused), and how many are counted.
    scans: u64,
    scans_n: u32,
    /// The seq of the first refused scan of the episode above the threshold, while it lasts.
    hygiene_since: Option<u64>,
    /// The last result: when, and its proof.
    last_result: Option<(i64, Proof)>,
    /// Per characteristic: the repeated value's bits, the run length, the run's first proof.
    runs: Vec<(String, u64, u32, Proof)>,
}

/// Most characteristics followed for zero-variance runs.
const MAX_RUNS: usize = 64;

/// Judges one station entry, in the station's seq order.
pub fn station_sequence(
    rules: &Rules,
    s: &mut SeqState,
    e: &Entry,
    uii: Option<&str>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let station = e.proof.agent_id.as_str();
    match &e.kind {
        EntryKind::Scan {
            role: ScanRole::Part,
            rejected,
            ..
        } => hygiene(rules, s, e, rejected.is_some(), &mut out),
        EntryKind::Result {
            characteristics,
            unbound_reason,
            ..
        } => {
            if let (Some(min), Some((at, prev))) =
                (rules.min_cycle_micros.get(station), &s.last_result)
            {
                let gap = e.at - at;
                if gap < *min {
                    let mut f = Finding::new(
                        Rule::TooPerfectData,
                        uii,
                        Some(station),
                        &format!("cycle:{}", e.proof.seq),
                        vec![prev.clone(), e.proof.clone()],
                        format!(
                            "{station} reported a result {:.1} s after the previous one, faster than its {:.1} s test cycle",
                            gap as f64 / 1e6,
                            *min as f64 / 1e6
                        ),
                    );
                    f.low_confidence = min - gap <= rules.clock_uncertainty_micros;
                    out.push(f);
                }
            }
            s.last_result = Some((e.at, e.proof.clone()));
            if unbound_reason.is_none() {
                zero_variance(rules, s, e, characteristics, &mut out);
            }
        }
        _ => {}
    }
    out
}

fn hygiene(rules: &Rules, s: &mut SeqState, e: &Entry, refused: bool, out: &mut Vec<Finding>) {
    let w = rules.hygiene_window;
    let mask = if w >= 64 { u64::MAX } else { (1u64 << w) - 1 };
    s.scans = ((s.scans << 1) | refused as u64) & mask;
    s.scans_n = (s.scans_n + 1).min(w);
    if s.scans_n < w {
        return;
    }
    let bad = s.scans.count_ones();
    let over = bad as f64 / w as f64 > rules.hygiene_max_refused;
    match (over, s.hygiene_since) {
        (true, None) => {
            s.hygiene_since = Some(e.proof.seq);
            let station = e.proof.agent_id.as_str();
            out.push(Finding::new(
                Rule::ScanHygiene,
                None,
                Some(station),
                &format!("since:{}", e.proof.seq),
                vec![e.proof.clone()],
                format!(
                    "{station}: {bad} of its last {w} part scans were refused (more than {:.0} %): check the scanner, the marks and how operators scan",
                    rules.hygiene_max_refused * 100.0
                ),
            ));
        }
        (false, Some(_)) => s.hygiene_since = None,
        _ => {}
    }
}

fn zero_variance(
    rules: &Rules,
    s: &mut SeqState,
    e: &Entry,
    cs: &[super::CharacteristicView],
    out: &mut Vec<Finding>,
) {
    for c in cs {
        let Some(v) = c.value else { continue };
        let bits = v.to_bits();
        let station = e.proof.agent_id.as_str();
        let len = s.runs.len();
        match s.runs.iter_mut().find(|r| r.0 == c.name) {
            Some(r) if r.1 == bits => {
                r.2 += 1;
                if r.2 == rules.zero_variance_run {
                    out.push(Finding::new(
                        Rule::TooPerfectData,
                        None,
                        Some(station),
                        &format!("run:{}:{}", c.name, r.3.seq),
                        vec![r.3.clone(), e.proof.clone()],
                        format!(
                            "{station}: {} results in a row with {} = {v} exactly (from record {} to {}): a bench does not repeat to the last digit",
                            r.2, c.name, r.3.seq, e.proof.seq
                        ),
                    ));
                }
            }
            Some(r) => {
                r.1 = bits;
                r.2 = 1;
                r.3 = e.proof.clone();
            }
            None if len < MAX_RUNS => {
                s.runs.push((c.name.clone(), bits, 1, e.proof.clone()));
            }
            None => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Across injectors

/// The signature of a result's numeric measurements, when it has enough of them to judge.
pub fn signature(rules: &Rules, e: &Entry) -> Option<[u8; 32]> {
    let EntryKind::Result {
        characteristics,
        test_plan,
        ..
    } = &e.kind
    else {
        return None;
    };
    let mut values: Vec<(&str, u64)> = characteristics
        .iter()
        .filter_map(|c| Some((c.name.as_str(), c.value?.to_bits())))
        .collect();
    if values.len() < rules.identical_min_values {
        return None;
    }
    values.sort();
    let mut h = Sha256::new();
    if let Some((id, _)) = test_plan {
        h.update(id.as_bytes());
    }
    h.update([0]);
    for (n, v) in values {
        h.update((n.len() as u64).to_be_bytes());
        h.update(n.as_bytes());
        h.update(v.to_be_bytes());
    }
    Some(h.finalize().into())
}

/// Injectors of one identical-measurement group that get a finding each (the first in key
/// order); a larger group gets one more finding for the whole group. This bounds the work a
/// stuck bench (every result identical) costs per result.
pub const MAX_IDENTICAL: usize = 64;

/// Findings for a group of results with identical measurements, when it spans injectors, from
/// the group's first members in key order (`members`, sorted: at least the first
/// [`MAX_IDENTICAL`] injectors and any this batch added). Returns the findings to raise and the
/// ids of findings to withdraw (injectors pushed out of the first [`MAX_IDENTICAL`]).
pub fn identical(
    _rules: &Rules,
    sig: &[u8; 32],
    members: &[(String, String, u64)],
) -> (Vec<Finding>, Vec<String>) {
    let mut order: Vec<&str> = Vec::new();
    for m in members {
        if order.last() != Some(&m.0.as_str()) {
            order.push(&m.0);
        }
    }
    if order.len() < 2 {
        return (Vec::new(), Vec::new());
    }
    let detail = format!("identical:{}", hex::encode(sig));
    let proofs = |u: Option<&str>, n: usize| -> Vec<Proof> {
        members
            .iter()
            .filter(|m| u.is_none_or(|u| m.0 != u))
            .take(n)
            .map(|(_, a, s)| Proof {
                agent_id: a.clone(),
                seq: *s,
            })
            .collect()
    };
    let mut raise = Vec::new();
    for u in order.iter().take(MAX_IDENTICAL) {
        let other = order.iter().find(|x| *x != u).copied().unwrap_or("");
        let mut evidence: Vec<Proof> = members
            .iter()
            .filter(|m| m.0 == *u)
            .map(|(_, a, s)| Proof {
                agent_id: a.clone(),
                seq: *s,
            })
            .collect();
        evidence.extend(proofs(Some(u), 8));
        raise.push(Finding::new(
            Rule::TooPerfectData,
            Some(u),
            None,
            &detail,
            evidence,
            format!(
                "{u} has every measurement identical to a result of {other} (the evidence names up to 8 such results): copied, not measured?"
            ),
        ));
    }
    if order.len() > MAX_IDENTICAL {
        raise.push(Finding::new(
            Rule::TooPerfectData,
            None,
            None,
            &detail,
            proofs(None, MAX_EVIDENCE),
            format!(
                "more than {MAX_IDENTICAL} injectors have every measurement identical (from {} on): a bench reporting a frozen value, or results copied",
                order[0]
            ),
        ));
    }
    let withdraw = order
        .iter()
        .skip(MAX_IDENTICAL)
        .map(|u| {
            Finding::new(
                Rule::TooPerfectData,
                Some(u),
                None,
                &detail,
                Vec::new(),
                String::new(),
            )
            .id
        })
        .collect();
    (raise, withdraw)
}
