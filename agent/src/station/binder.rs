//! The station binder: which injector a result belongs to, and how each characteristic is
//! judged.
//!
//! The station works scan-then-test: the operator scans the injector, then the device tests it.
//! The binder keeps the current part (its UII and the seq of the `PartScanned` record that made
//! it current) and the logged-in operator, and turns each device result into a [`Binding`]:
//! - bound to the current part;
//! - bound but flagged as a mismatch when the device reports a different identifier (the result
//!   is kept: it is evidence that the wrong part may have been tested);
//! - unbound, with the reason, when no part is current, the scan has expired, or the part was
//!   already tested and the station wants one scan per test.
//!
//! It is a pure state machine; time comes in as arguments so it can be tested exhaustively.

use proofline_common::record::{Binding, UnboundReason, Verdict};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinderConfig {
    /// A scan older than this binds nothing (µs); `None`: a scan stays current until the next.
    pub scan_valid_micros: Option<i64>,
    /// Each scan binds one result only (a retest needs a new scan).
    pub one_result_per_scan: bool,
}

impl Default for BinderConfig {
    fn default() -> Self {
        BinderConfig {
            scan_valid_micros: Some(10 * 60 * 1_000_000),
            one_result_per_scan: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Current {
    uii: String,
    scan_seq: u64,
    scanned_at: i64,
    results: u32,
}

/// What the binder noticed that the station should record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A scanned part was replaced by another scan without any result bound to it.
    ScannedNotTested { uii: String, scan_seq: u64 },
    /// A scanned part went past its validity window without a result.
    ScanExpired { uii: String, scan_seq: u64 },
}

#[derive(Debug, Clone, Default)]
pub struct Binder {
    cfg: BinderConfig,
    current: Option<Current>,
    operator: Option<String>,
}

impl Binder {
    pub fn new(cfg: BinderConfig) -> Self {
        Binder {
            cfg,
            current: None,
            operator: None,
        }
    }

    /// A part scan was recorded at `scan_seq`: it becomes the current part.
    pub fn part_scanned(&mut self, uii: &str, scan_seq: u64, at: i64) -> Option<Notice> {
        let previous = self.current.replace(Current {
            uii: uii.to_owned(),
            scan_seq,
            scanned_at: at,
            results: 0,
        });
        match previous {
            Some(p) if p.results == 0 && !self.expired(&p, at) => Some(Notice::ScannedNotTested {
                uii: p.uii,
                scan_seq: p.scan_seq,
            }),
            _ => None,
        }
    }

    /// A part scan was refused (unreadable, malformed) or could not be stored: the operator
    /// has moved on to another injector, so the previous part is no longer current and the next
    /// result binds to nothing rather than to the wrong injector.
    pub fn part_scan_refused(&mut self, at: i64) -> Option<Notice> {
        match self.current.take() {
            Some(p) if p.results == 0 && !self.expired(&p, at) => Some(Notice::ScannedNotTested {
                uii: p.uii,
                scan_seq: p.scan_seq,
            }),
            _ => None,
        }
    }

    /// An operator badge was scanned: logs the operator in, or out if it is the same badge.
    /// Returns the badge that was logged out, if any.
    pub fn badge(&mut self, badge: &str) -> (Option<String>, bool) {
        match self.operator.take() {
            Some(b) if b == badge => (Some(b), false),
            previous => {
                self.operator = Some(badge.to_owned());
                (previous, true)
            }
        }
    }

    pub fn operator(&self) -> Option<&str> {
        self.operator.as_deref()
    }

    pub fn current_uii(&self) -> Option<&str> {
        self.current.as_ref().map(|c| c.uii.as_str())
    }

    fn expired(&self, c: &Current, now: i64) -> bool {
        self.cfg
            .scan_valid_micros
            .is_some_and(|valid| now.saturating_sub(c.scanned_at) > valid)
    }

    /// Periodic check: reports (once) a scan that expired untested.
    pub fn tick(&mut self, now: i64) -> Option<Notice> {
        let c = self.current.as_ref()?;
        if self.expired(c, now) {
            let c = self.current.take().expect("checked above");
            if c.results == 0 {
                return Some(Notice::ScanExpired {
                    uii: c.uii,
                    scan_seq: c.scan_seq,
                });
            }
        }
        None
    }

    /// Binds a device result received at `at`. `device_identifier` is the part identifier the
    /// device itself reported, if it reports one.
    pub fn bind(&mut self, device_identifier: Option<&str>, at: i64) -> Binding {
        let expired = self.current.as_ref().is_some_and(|c| self.expired(c, at));
        let Some(c) = self.current.as_mut() else {
            return Binding::Unbound {
                reason: UnboundReason::NoCurrentPart,
            };
        };
        if expired {
            return Binding::Unbound {
                reason: UnboundReason::ScanExpired,
            };
        }
        if self.cfg.one_result_per_scan && c.results > 0 {
            return Binding::Unbound {
                reason: UnboundReason::PartAlreadyTested,
            };
        }
        c.results += 1;
        match device_identifier.map(str::trim).filter(|d| !d.is_empty()) {
            Some(d) if d != c.uii => Binding::Mismatch {
                uii: c.uii.clone(),
                scan_seq: c.scan_seq,
                device_identifier: d.to_owned(),
            },
            _ => Binding::Bound {
                uii: c.uii.clone(),
                scan_seq: c.scan_seq,
            },
        }
    }
}

/// Judges a value against optional limits (inclusive; one-sided limits are normal).
pub fn judge(value: f64, lower: Option<f64>, upper: Option<f64>) -> Verdict {
    if lower.is_none() && upper.is_none() {
        return Verdict::NotEvaluated;
    }
    if !value.is_finite() {
        return Verdict::Nok;
    }
    let low_ok = lower.is_none_or(|l| value >= l);
    let high_ok = upper.is_none_or(|u| value <= u);
    if low_ok && high_ok {
        Verdict::Ok
    } else {
        Verdict::Nok
    }
}

/// The overall verdict: NOK if any characteristic is NOK, OK if at least one is OK and none NOK.
pub fn overall(verdicts: impl IntoIterator<Item = Verdict>) -> Verdict {
    let mut any_ok = false;
    for v in verdicts {
        match v {
            Verdict::Nok => return Verdict::Nok,
            Verdict::Ok => any_ok = true,
            Verdict::NotEvaluated => {}
        }
    }
    if any_ok {
        Verdict::Ok
    } else {
        Verdict::NotEvaluated
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: i64 = 60_000_000;

    #[test]
    fn scan_then_test_binds_to_the_scanned_part() {
        let mut b = Binder::default();
        assert_eq!(
            b.bind(None, 0),
            Binding::Unbound {
                reason: UnboundReason::NoCurrentPart
            }
        );
        assert_eq!(b.part_scanned("D1ABC5A1", 7, 0), None);
        assert_eq!(
            b.bind(None, MIN),
            Binding::Bound {
                uii: "D1ABC5A1".into(),
                scan_seq: 7
            }
        );
        // A retest of the same part stays bound unless one result per scan is required.
        assert!(matches!(b.bind(None, 2 * MIN), Binding::Bound { .. }));
    }

    #[test]
    fn a_different_device_identifier_is_flagged_but_kept() {
        let mut b = Binder::default();
        b.part_scanned("D1ABC5A1", 3, 0);
        assert_eq!(
            b.bind(Some("D1ABC5A2 "), 1),
            Binding::Mismatch {
                uii: "D1ABC5A1".into(),
                scan_seq: 3,
                device_identifier: "D1ABC5A2".into()
            }
        );
        assert!(matches!(b.bind(Some("D1ABC5A1"), 2), Binding::Bound { .. }));
        assert!(matches!(b.bind(Some("  "), 3), Binding::Bound { .. }));
    }

    #[test]
    fn expired_and_reused_scans_bind_nothing_and_are_reported() {
        let mut b = Binder::new(BinderConfig {
            scan_valid_micros: Some(5 * MIN),
            one_result_per_scan: true,
        });
        b.part_scanned("A1", 1, 0);
        assert!(matches!(b.bind(None, MIN), Binding::Bound { .. }));
        assert_eq!(
            b.bind(None, 2 * MIN),
            Binding::Unbound {
                reason: UnboundReason::PartAlreadyTested
            }
        );
        b.part_scanned("A2", 2, 3 * MIN);
        assert_eq!(
            b.bind(None, 9 * MIN),
            Binding::Unbound {
                reason: UnboundReason::ScanExpired
            }
        );
        b.part_scanned("A3", 3, 10 * MIN);
        assert_eq!(
            b.tick(16 * MIN),
            Some(Notice::ScanExpired {
                uii: "A3".into(),
                scan_seq: 3
            })
        );
        assert_eq!(b.tick(17 * MIN), None, "reported once");
        b.part_scanned("A4", 4, 20 * MIN);
        assert_eq!(
            b.part_scanned("A5", 5, 21 * MIN),
            Some(Notice::ScannedNotTested {
                uii: "A4".into(),
                scan_seq: 4
            })
        );
    }

    #[test]
    fn a_refused_part_scan_ends_the_previous_part() {
        let mut b = Binder::new(BinderConfig::default());
        b.part_scanned("A", 1, 0);
        assert!(matches!(b.bind(None, 10), Binding::Bound { .. }));
        // The next injector's scan is unreadable: its result must not go to A.
        assert_eq!(b.part_scan_refused(20), None);
        assert_eq!(
            b.bind(None, 30),
            Binding::Unbound {
                reason: UnboundReason::NoCurrentPart
            }
        );
        // A scanned part replaced by a refused scan before any result is reported as such.
        b.part_scanned("B", 5, 40);
        assert_eq!(
            b.part_scan_refused(50),
            Some(Notice::ScannedNotTested {
                uii: "B".into(),
                scan_seq: 5
            })
        );
        assert_eq!(b.current_uii(), None);
    }

    #[test]
    fn badges_log_in_switch_and_log_out() {
        let mut b = Binder::default();
        assert_eq!(b.badge("B1"), (None, true));
        assert_eq!(b.operator(), Some("B1"));
        assert_eq!(b.badge("B2"), (Some("B1".into()), true));
        assert_eq!(b.badge("B2"), (Some("B2".into()), false));
        assert_eq!(b.operator(), None);
    }

    #[test]
    fn limits_are_inclusive_and_may_be_one_sided() {
        assert_eq!(judge(5.0, Some(5.0), Some(6.0)), Verdict::Ok);
        assert_eq!(judge(6.0, Some(5.0), Some(6.0)), Verdict::Ok);
        assert_eq!(judge(6.01, Some(5.0), Some(6.0)), Verdict::Nok);
        assert_eq!(judge(35.0, None, Some(35.0)), Verdict::Ok);
        assert_eq!(judge(36.0, None, Some(35.0)), Verdict::Nok);
        assert_eq!(judge(-1.0, Some(0.0), None), Verdict::Nok);
        assert_eq!(judge(1.0, None, None), Verdict::NotEvaluated);
        assert_eq!(judge(f64::NAN, Some(0.0), None), Verdict::Nok);
        assert_eq!(overall([Verdict::Ok, Verdict::NotEvaluated]), Verdict::Ok);
        assert_eq!(overall([Verdict::Ok, Verdict::Nok]), Verdict::Nok);
        assert_eq!(overall([]), Verdict::NotEvaluated);
    }

    proptest! {
        /// Whatever the sequence of scans and results, a bound result names the latest scan
        /// made before it, and never a part scanned after it.
        #[test]
        fn results_bind_to_the_latest_earlier_scan(ops in proptest::collection::vec(any::<bool>(), 1..60)) {
            let mut b = Binder::new(BinderConfig { scan_valid_micros: None, one_result_per_scan: false });
            let mut last_scan: Option<u64> = None;
            for (i, is_scan) in ops.into_iter().enumerate() {
                let seq = i as u64;
                if is_scan {
                    b.part_scanned(&format!("P{seq}"), seq, i as i64);
                    last_scan = Some(seq);
                } else {
                    match (b.bind(None, i as i64), last_scan) {
                        (Binding::Bound { scan_seq, uii }, Some(s)) => {
                            prop_assert_eq!(scan_seq, s);
                            prop_assert_eq!(uii, format!("P{s}"));
                        }
                        (Binding::Unbound { reason: UnboundReason::NoCurrentPart }, None) => {}
                        (other, s) => prop_assert!(false, "{:?} after scan {:?}", other, s),
                    }
                }
            }
        }

        #[test]
        fn judging_agrees_with_the_limits(v in -1e6f64..1e6, l in proptest::option::of(-1e6f64..1e6), u in proptest::option::of(-1e6f64..1e6)) {
            let verdict = judge(v, l, u);
            let inside = l.is_none_or(|l| v >= l) && u.is_none_or(|u| v <= u);
            match (l, u) {
                (None, None) => prop_assert_eq!(verdict, Verdict::NotEvaluated),
                _ => prop_assert_eq!(verdict == Verdict::Ok, inside),
            }
        }
    }
}
