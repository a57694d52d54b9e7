//! Key layout of the reconciler's index (`x/reconcile` in the hub store). Every variable part is
//! length-prefixed, so no UII or station id can run into the next part of a key.
//!
//! - `S` station → [`StationCursor`](super::StationCursor)
//! - `T` uii, time, station, seq → the timeline [`Entry`](super::Entry)
//! - `U` time, station, seq → an unbound result's entry
//! - `E` station, seq → a station list entry (refused scans, alarms, station events)
//! - `R` uii → the injector's [`RouteState`](super::rules::RouteState)
//! - `F` finding id → [`Finding`](super::rules::Finding)
//! - `f` uii, finding id → (): the findings derived from that injector's timeline
//! - `V` signature, uii, station, seq → (): results with identical measurements
//!
//! The QMS outbox shares the index, so an entry goes in with the record that makes it (one
//! atomic batch); it is operational state, not derived, so a digest or a reset leaves it out:
//! - `Q` station, seq → [`OutboxEntry`](crate::qms::OutboxEntry)
//! - `P` station, seq → (): entries still to deliver
//! - `K` station, seq → (): entries parked (refused by the QMS), until `qms retry`
//! - `N` uii → the injector's part id in the QMS
//! - `G` finding id → a [`Finding`](super::rules::Finding) the QMS gave rise to

pub const STATION: u8 = b'S';
pub const TIMELINE: u8 = b'T';
pub const UNBOUND: u8 = b'U';
pub const EVENT: u8 = b'E';
pub const ROUTE: u8 = b'R';
pub const FINDING: u8 = b'F';
pub const DERIVED: u8 = b'f';
pub const SIGNATURE: u8 = b'V';
pub const OUTBOX: u8 = b'Q';
pub const PENDING: u8 = b'P';
pub const PARKED: u8 = b'K';
pub const QMS_PART: u8 = b'N';
pub const QMS_FINDING: u8 = b'G';

/// What the projection is made of (digested, compared, reset); the rest is the outbox's.
pub const DERIVED_TAGS: [u8; 8] = [
    STATION, TIMELINE, UNBOUND, EVENT, ROUTE, FINDING, DERIVED, SIGNATURE,
];

pub fn outbox(agent_id: &str, seq: u64) -> Vec<u8> {
    with(OUTBOX, |k| {
        lp(k, agent_id);
        k.extend_from_slice(&seq.to_be_bytes());
    })
}

pub fn pending(agent_id: &str, seq: u64) -> Vec<u8> {
    with(PENDING, |k| {
        lp(k, agent_id);
        k.extend_from_slice(&seq.to_be_bytes());
    })
}

pub fn parked(agent_id: &str, seq: u64) -> Vec<u8> {
    with(PARKED, |k| {
        lp(k, agent_id);
        k.extend_from_slice(&seq.to_be_bytes());
    })
}

/// The (station, seq) of an outbox, pending or parked key.
pub fn parse_outbox(k: &[u8]) -> Option<(String, u64)> {
    let (agent, rest) = take_lp(k.get(1..)?)?;
    Some((agent.to_owned(), u64::from_be_bytes(rest.try_into().ok()?)))
}

pub fn qms_part(uii: &str) -> Vec<u8> {
    with(QMS_PART, |k| lp(k, uii))
}

pub fn qms_finding(id: &str) -> Vec<u8> {
    with(QMS_FINDING, |k| k.extend_from_slice(id.as_bytes()))
}

pub fn lp(k: &mut Vec<u8>, s: &str) {
    let n = u16::try_from(s.len()).unwrap_or(u16::MAX);
    k.extend_from_slice(&n.to_be_bytes());
    k.extend_from_slice(&s.as_bytes()[..n as usize]);
}

/// Reads a length-prefixed part at the start of `k`; the rest after it.
pub fn take_lp(k: &[u8]) -> Option<(&str, &[u8])> {
    let n = u16::from_be_bytes(k.get(..2)?.try_into().ok()?) as usize;
    let s = std::str::from_utf8(k.get(2..2 + n)?).ok()?;
    Some((s, &k[2 + n..]))
}

/// A signed time in an order-preserving 8 bytes.
pub fn time(at: i64) -> [u8; 8] {
    ((at as u64) ^ (1 << 63)).to_be_bytes()
}

pub fn with(tag: u8, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut k = vec![tag];
    f(&mut k);
    k
}

pub fn station(agent_id: &str) -> Vec<u8> {
    with(STATION, |k| lp(k, agent_id))
}

pub fn timeline_prefix(uii: &str) -> Vec<u8> {
    with(TIMELINE, |k| lp(k, uii))
}

pub fn timeline(uii: &str, at: i64, agent_id: &str, seq: u64) -> Vec<u8> {
    let mut k = timeline_prefix(uii);
    k.extend_from_slice(&time(at));
    lp(&mut k, agent_id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn unbound(at: i64, agent_id: &str, seq: u64) -> Vec<u8> {
    with(UNBOUND, |k| {
        k.extend_from_slice(&time(at));
        lp(k, agent_id);
        k.extend_from_slice(&seq.to_be_bytes());
    })
}

pub fn event_prefix(agent_id: &str) -> Vec<u8> {
    with(EVENT, |k| lp(k, agent_id))
}

pub fn event(agent_id: &str, seq: u64) -> Vec<u8> {
    let mut k = event_prefix(agent_id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn route(uii: &str) -> Vec<u8> {
    with(ROUTE, |k| lp(k, uii))
}

pub fn finding(id: &str) -> Vec<u8> {
    with(FINDING, |k| k.extend_from_slice(id.as_bytes()))
}

pub fn derived_prefix(uii: &str) -> Vec<u8> {
    with(DERIVED, |k| lp(k, uii))
}

pub fn derived(uii: &str, id: &str) -> Vec<u8> {
    let mut k = derived_prefix(uii);
    k.extend_from_slice(id.as_bytes());
    k
}

pub fn signature_prefix(sig: &[u8; 32]) -> Vec<u8> {
    with(SIGNATURE, |k| k.extend_from_slice(sig))
}

pub fn signature(sig: &[u8; 32], uii: &str, agent_id: &str, seq: u64) -> Vec<u8> {
    let mut k = signature_prefix(sig);
    lp(&mut k, uii);
    lp(&mut k, agent_id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The (uii, station, seq) of a signature key.
pub fn parse_signature(k: &[u8]) -> Option<(String, String, u64)> {
    let rest = k.get(33..)?;
    let (uii, rest) = take_lp(rest)?;
    let (agent, rest) = take_lp(rest)?;
    let seq = u64::from_be_bytes(rest.try_into().ok()?);
    Some((uii.to_owned(), agent.to_owned(), seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_sort_as_numbers_and_parts_cannot_run_together() {
        let mut t = [-5i64, i64::MIN, 0, 7, i64::MAX, -1];
        let mut k: Vec<_> = t.iter().map(|&a| time(a)).collect();
        t.sort();
        k.sort();
        assert_eq!(k, t.iter().map(|&a| time(a)).collect::<Vec<_>>());
        // "AB" + "C" and "A" + "BC" are different keys.
        assert_ne!(timeline("AB", 0, "C", 1), timeline("A", 0, "BC", 1));
        let sig = [7u8; 32];
        let key = signature(&sig, "D1ABC5X", "bench-1", 42);
        assert_eq!(
            parse_signature(&key),
            Some(("D1ABC5X".into(), "bench-1".into(), 42))
        );
    }
}
