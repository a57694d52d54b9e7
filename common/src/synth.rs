//! Synthetic inspection results for benchmarks and tests: a plausible flow-bench result with
//! the five characteristics of a common-rail test plan, padded to a chosen encoded size.

use crate::bytes::Bytes;
use crate::hash::Hash;
use crate::record::{
    Binding, Body, Characteristic, DeviceTime, InspectionResult, Measured, RawData, Record,
    RecordV1, TestPlan, Verdict,
};

fn characteristic(name: &str, value: f64, unit: &str, nominal: f64, tol: f64) -> Characteristic {
    let (lower, upper) = (nominal - tol, nominal + tol);
    Characteristic {
        name: name.into(),
        measured: Measured::Value {
            value,
            unit: unit.into(),
        },
        nominal: Some(nominal),
        lower: Some(lower),
        upper: Some(upper),
        verdict: if (lower..=upper).contains(&value) {
            Verdict::Ok
        } else {
            Verdict::Nok
        },
        device_verdict: None,
    }
}

/// The `i`-th synthetic result with `pad` raw bytes.
pub fn inspection_result(i: u64, pad: usize) -> Body {
    // Deterministic jitter around nominal so values differ from record to record.
    let j = ((i.wrapping_mul(2_654_435_761) >> 7) % 1000) as f64 / 1000.0 - 0.5;
    let characteristics = vec![
        characteristic(
            "full_load_delivery",
            62.0 + 2.0 * j,
            "mm3/stroke",
            62.0,
            1.86,
        ),
        characteristic("idle_delivery", 4.1 + 0.3 * j, "mm3/stroke", 4.1, 0.205),
        characteristic("pilot_delivery", 1.5 + 0.6 * j, "mm3/stroke", 1.5, 0.5),
        Characteristic {
            upper: Some(35.0),
            lower: None,
            nominal: None,
            ..characteristic("back_leak", 20.0 + 10.0 * j, "mm3/stroke", 0.0, 0.0)
        },
        characteristic("opening_pressure", 200.0 + 8.0 * j, "bar", 200.0, 5.0),
    ];
    let verdict = if characteristics.iter().all(|c| c.verdict == Verdict::Ok) {
        Verdict::Ok
    } else {
        Verdict::Nok
    };
    Body::InspectionResult(InspectionResult {
        source: "bench".into(),
        device: "synthetic".into(),
        device_result_id: Some(i.to_string()),
        binding: Binding::Bound {
            uii: format!("D1ABC57734-{:010}", i),
            scan_seq: i,
        },
        device_identifier: None,
        test_plan: Some(TestPlan {
            id: "TP-SYNTH".into(),
            revision: "A".into(),
        }),
        operator: None,
        characteristics,
        verdict,
        device_verdict: Some(verdict),
        device_time: Some(DeviceTime {
            reported: "2026-01-01T00:00:00".into(),
            utc_micros: None,
        }),
        raw: RawData::Other(Bytes(vec![0x5a; pad])),
    })
}

/// Encoded size of the smallest synthetic record (no padding).
pub fn base_record_bytes() -> usize {
    RECORD_BASE.with(|b| *b)
}

thread_local! {
    static RECORD_BASE: usize = probe_size();
}

/// Pad length that makes a synthetic record encode to about `record_bytes` (never less than
/// [`base_record_bytes`]).
pub fn pad_for(record_bytes: usize) -> usize {
    record_bytes.saturating_sub(base_record_bytes())
}

fn probe_size() -> usize {
    let probe = Record::V1(RecordV1 {
        origin: "proofline/site/agent-0000".into(),
        seq: 1 << 20,
        boot: 1,
        received_at: 1 << 50,
        prev: Hash::default(),
        body: inspection_result(0, 0),
    });
    probe.encode().len()
}
