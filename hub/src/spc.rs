//! Statistical process control for the benches' characteristics (`reference/traceability.md`,
//! "SPC"): control limits for individuals (I-MR) and subgroups (X̄-R), process capability, and
//! the eight Nelson tests. Pure computation over values in time order; the charts, frozen
//! baselines and findings are built on it.
//!
//! - I-MR: centre X̄, limits X̄ ± E2·MR̄ (E2 = 2.660), MR chart UCL D4(2)·MR̄ (3.267); σ̂ = MR̄/d2(2)
//!   (the average moving range: what statistics packages use for n = 1).
//! - X̄-R: X̿ ± A2·R̄, R chart D3·R̄ .. D4·R̄; σ̂ = R̄/d2 (n = 2..10), or the pooled standard
//!   deviation (the default of some packages for n > 1): both are offered, and named.
//! - Capability: Cp = (USL−LSL)/6σ̂ and Cpk = min(USL−μ, μ−LSL)/3σ̂ with the within σ̂; Pp/Ppk the
//!   same with the overall sample standard deviation. One-sided limits give only the one-sided
//!   index.
//! - Nelson tests with configurable run lengths (defaults: 1 beyond 3σ; 9 on one side; 6
//!   trending; 14 alternating; 2 of 3 beyond 2σ; 4 of 5 beyond 1σ; 15 within 1σ; 8 beyond 1σ).

use serde::Serialize;

/// Control chart factors for subgroups of n = 2..=10 (AIAG SPC manual tables), by n − 2.
const A2: [f64; 9] = [
    1.880, 1.023, 0.729, 0.577, 0.483, 0.419, 0.373, 0.337, 0.308,
];
const D3: [f64; 9] = [0.0, 0.0, 0.0, 0.0, 0.0, 0.076, 0.136, 0.184, 0.223];
const D4: [f64; 9] = [
    3.267, 2.574, 2.282, 2.114, 2.004, 1.924, 1.864, 1.816, 1.777,
];
const D2: [f64; 9] = [
    1.128, 1.693, 2.059, 2.326, 2.534, 2.704, 2.847, 2.970, 3.078,
];
/// I-MR: the individuals chart factor 3/d2(2).
pub const E2: f64 = 2.660;

/// The factors of subgroup size `n` (2..=10): (A2, D3, D4, d2).
pub fn factors(n: usize) -> Option<(f64, f64, f64, f64)> {
    let i = n.checked_sub(2).filter(|&i| i < A2.len())?;
    Some((A2[i], D3[i], D4[i], D2[i]))
}

/// How the within-subgroup σ was estimated (shown beside every capability figure).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SigmaMethod {
    /// MR̄ / d2(2), for individuals.
    AverageMovingRange,
    /// R̄ / d2(n), for subgroups.
    AverageRange,
    /// √(Σ (n_i − 1) s_i² / Σ (n_i − 1)), for subgroups.
    PooledStandardDeviation,
}

impl SigmaMethod {
    pub fn describe(self) -> &'static str {
        match self {
            SigmaMethod::AverageMovingRange => "average moving range / d2 (1.128)",
            SigmaMethod::AverageRange => "average range / d2(n)",
            SigmaMethod::PooledStandardDeviation => "pooled standard deviation",
        }
    }
}

/// Limits of a chart pair: the location chart (individuals or subgroup means) and its spread
/// chart (moving ranges or ranges).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Limits {
    pub center: f64,
    pub ucl: f64,
    pub lcl: f64,
    pub spread_center: f64,
    pub spread_ucl: f64,
    pub spread_lcl: f64,
    /// σ̂ within, and how.
    pub sigma: f64,
    pub method: SigmaMethod,
    /// Subgroup size (1 for individuals).
    pub n: usize,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// The sample standard deviation (n − 1), None below two values.
pub fn sample_sd(v: &[f64]) -> Option<f64> {
    if v.len() < 2 {
        return None;
    }
    let m = mean(v);
    Some((v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt())
}

/// I-MR limits from a baseline of individuals (at least two, all finite).
pub fn imr(values: &[f64]) -> Option<Limits> {
    if values.len() < 2 || values.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let center = mean(values);
    let mr: Vec<f64> = values.windows(2).map(|w| (w[1] - w[0]).abs()).collect();
    let mr_bar = mean(&mr);
    let (_, _, d4, d2) = factors(2)?;
    Some(Limits {
        center,
        ucl: center + E2 * mr_bar,
        lcl: center - E2 * mr_bar,
        spread_center: mr_bar,
        spread_ucl: d4 * mr_bar,
        spread_lcl: 0.0,
        sigma: mr_bar / d2,
        method: SigmaMethod::AverageMovingRange,
        n: 1,
    })
}

/// X̄-R limits from a baseline of subgroups, all of the same size n (2..=10); σ̂ by `method`
/// (`AverageRange` or `PooledStandardDeviation`).
pub fn xbar_r(subgroups: &[Vec<f64>], method: SigmaMethod) -> Option<Limits> {
    let n = subgroups.first()?.len();
    let (a2, d3, d4, d2) = factors(n)?;
    if subgroups
        .iter()
        .any(|g| g.len() != n || g.iter().any(|v| !v.is_finite()))
    {
        return None;
    }
    let means: Vec<f64> = subgroups.iter().map(|g| mean(g)).collect();
    let ranges: Vec<f64> = subgroups
        .iter()
        .map(|g| {
            let (lo, hi) = g
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
                    (lo.min(v), hi.max(v))
                });
            hi - lo
        })
        .collect();
    let center = mean(&means);
    let r_bar = mean(&ranges);
    let sigma = match method {
        SigmaMethod::AverageRange => r_bar / d2,
        SigmaMethod::PooledStandardDeviation => {
            let ss: f64 = subgroups
                .iter()
                .map(|g| {
                    let m = mean(g);
                    g.iter().map(|x| (x - m).powi(2)).sum::<f64>()
                })
                .sum();
            (ss / (subgroups.len() * (n - 1)) as f64).sqrt()
        }
        SigmaMethod::AverageMovingRange => return None,
    };
    Some(Limits {
        center,
        ucl: center + a2 * r_bar,
        lcl: center - a2 * r_bar,
        spread_center: r_bar,
        spread_ucl: d4 * r_bar,
        spread_lcl: d3 * r_bar,
        sigma,
        method,
        n,
    })
}

/// Process capability and performance.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Capability {
    pub mean: f64,
    pub sigma_within: f64,
    pub sigma_overall: f64,
    pub method: SigmaMethod,
    /// Two-sided only.
    pub cp: Option<f64>,
    /// min(CPU, CPL), or the one-sided index when only one limit is given.
    pub cpk: Option<f64>,
    pub pp: Option<f64>,
    pub ppk: Option<f64>,
}

/// Capability of `values` against the specification limits, with the within σ̂ of `limits`.
pub fn capability(
    values: &[f64],
    lsl: Option<f64>,
    usl: Option<f64>,
    limits: &Limits,
) -> Option<Capability> {
    let overall = sample_sd(values)?;
    let mu = mean(values);
    let index = |sigma: f64| -> (Option<f64>, Option<f64>) {
        if sigma <= 0.0 || !sigma.is_finite() {
            return (None, None);
        }
        let upper = usl.map(|u| (u - mu) / (3.0 * sigma));
        let lower = lsl.map(|l| (mu - l) / (3.0 * sigma));
        let spread = match (lsl, usl) {
            (Some(l), Some(u)) => Some((u - l) / (6.0 * sigma)),
            _ => None,
        };
        let k = match (lower, upper) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        (spread, k)
    };
    let (cp, cpk) = index(limits.sigma);
    let (pp, ppk) = index(overall);
    Some(Capability {
        mean: mu,
        sigma_within: limits.sigma,
        sigma_overall: overall,
        method: limits.method,
        cp,
        cpk,
        pp,
        ppk,
    })
}

/// Run lengths of the eight Nelson tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct NelsonRuns {
    /// Test 1: a point beyond this many σ.
    pub beyond_sigmas: u32,
    /// Test 2: this many in a row on one side of the centre.
    pub same_side: usize,
    /// Test 3: this many in a row steadily increasing or decreasing.
    pub trend: usize,
    /// Test 4: this many in a row alternating up and down.
    pub alternating: usize,
    /// Test 5: this many of one more beyond 2σ on one side.
    pub beyond_two: usize,
    /// Test 6: this many of one more beyond 1σ on one side.
    pub beyond_one: usize,
    /// Test 7: this many in a row within 1σ (either side).
    pub within_one: usize,
    /// Test 8: this many in a row beyond 1σ (either side).
    pub outside_one: usize,
}

impl Default for NelsonRuns {
    fn default() -> Self {
        NelsonRuns {
            beyond_sigmas: 3,
            same_side: 9,
            trend: 6,
            alternating: 14,
            beyond_two: 2,
            beyond_one: 4,
            within_one: 15,
            outside_one: 8,
        }
    }
}

/// One test firing: at `at` (the last point of the pattern), over `from..=at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub test: u8,
    pub from: usize,
    pub at: usize,
}

/// Every point at which a Nelson test fires, in point order then test order.
pub fn nelson(points: &[f64], center: f64, sigma: f64, runs: &NelsonRuns) -> Vec<Violation> {
    let mut out = Vec::new();
    if !(sigma > 0.0 && sigma.is_finite()) {
        return out;
    }
    let z: Vec<f64> = points.iter().map(|p| (p - center) / sigma).collect();
    let window = |i: usize, len: usize| (len > 0 && i + 1 >= len).then(|| i + 1 - len);
    for i in 0..z.len() {
        let mut fire = |test: u8, from: usize| out.push(Violation { test, from, at: i });
        if z[i].abs() > f64::from(runs.beyond_sigmas) {
            fire(1, i);
        }
        if let Some(f) = window(i, runs.same_side) {
            let w = &z[f..=i];
            if w.iter().all(|&v| v > 0.0) || w.iter().all(|&v| v < 0.0) {
                fire(2, f);
            }
        }
        if let Some(f) = window(i, runs.trend) {
            let w = &points[f..=i];
            if w.windows(2).all(|p| p[1] > p[0]) || w.windows(2).all(|p| p[1] < p[0]) {
                fire(3, f);
            }
        }
        if let Some(f) = window(i, runs.alternating) {
            let d: Vec<f64> = points[f..=i].windows(2).map(|p| p[1] - p[0]).collect();
            if d.iter().all(|&x| x != 0.0) && d.windows(2).all(|x| x[0].signum() != x[1].signum()) {
                fire(4, f);
            }
        }
        for (test, k, limit) in [(5u8, runs.beyond_two, 2.0), (6u8, runs.beyond_one, 1.0)] {
            if let Some(f) = window(i, k + 1) {
                let w = &z[f..=i];
                let up = w.iter().filter(|&&v| v > limit).count();
                let down = w.iter().filter(|&&v| v < -limit).count();
                // The pattern ends on a point that is itself beyond the limit.
                let last = z[i];
                if (up >= k && last > limit) || (down >= k && last < -limit) {
                    fire(test, f);
                }
            }
        }
        if let Some(f) = window(i, runs.within_one) {
            if z[f..=i].iter().all(|v| v.abs() < 1.0) {
                fire(7, f);
            }
        }
        if let Some(f) = window(i, runs.outside_one) {
            if z[f..=i].iter().all(|v| v.abs() > 1.0) {
                fire(8, f);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn the_factors_are_the_published_ones() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/vectors/spc-constants.json"
        ))
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        for (i, n) in v["n"].as_array().unwrap().iter().enumerate() {
            let n = n.as_u64().unwrap() as usize;
            let (a2, d3, d4, d2) = factors(n).unwrap();
            for (name, ours) in [("A2", a2), ("D3", d3), ("D4", d4), ("d2", d2)] {
                let theirs = v[name][i].as_f64().unwrap();
                assert!(close(ours, theirs, 0.001), "{name}({n}) {ours} vs {theirs}");
            }
        }
        assert!(close(E2, v["I_MR"]["E2"].as_f64().unwrap(), 0.001));
        assert!(close(
            factors(2).unwrap().2,
            v["I_MR"]["D4_n2"].as_f64().unwrap(),
            0.001
        ));
        assert_eq!(factors(1), None);
        assert_eq!(factors(11), None);
    }

    #[test]
    fn imr_limits_by_hand() {
        // Moving ranges 2, 1, 3, 6: MR̄ = 3; mean 11.
        let l = imr(&[10.0, 12.0, 11.0, 8.0, 14.0]).unwrap();
        assert!(close(l.center, 11.0, 1e-12));
        assert!(close(l.spread_center, (2.0 + 1.0 + 3.0 + 6.0) / 4.0, 1e-12));
        let mr = l.spread_center;
        assert!(close(l.ucl, 11.0 + 2.660 * mr, 1e-12));
        assert!(close(l.lcl, 11.0 - 2.660 * mr, 1e-12));
        assert!(close(l.spread_ucl, 3.267 * mr, 1e-12));
        assert!(close(l.sigma, mr / 1.128, 1e-12));
        assert_eq!(imr(&[1.0]), None);
        assert_eq!(imr(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn xbar_r_limits_by_hand() {
        // Subgroups of 3: means 2, 5, 8 (X̿ 5); ranges 2, 4, 6 (R̄ 4).
        let g = vec![
            vec![1.0, 2.0, 3.0],
            vec![3.0, 5.0, 7.0],
            vec![5.0, 8.0, 11.0],
        ];
        let l = xbar_r(&g, SigmaMethod::AverageRange).unwrap();
        assert!(close(l.center, 5.0, 1e-12) && close(l.spread_center, 4.0, 1e-12));
        assert!(close(l.ucl, 5.0 + 1.023 * 4.0, 1e-12));
        assert!(close(l.spread_ucl, 2.574 * 4.0, 1e-12));
        assert!(close(l.spread_lcl, 0.0, 1e-12));
        assert!(close(l.sigma, 4.0 / 1.693, 1e-12));
        // Pooled: variances 1, 4, 9 with 2 degrees of freedom each: √((2+8+18)/6).
        let p = xbar_r(&g, SigmaMethod::PooledStandardDeviation).unwrap();
        assert!(close(p.sigma, (28.0f64 / 6.0).sqrt(), 1e-12));
        assert_eq!(
            xbar_r(&[vec![1.0, 2.0], vec![1.0]], SigmaMethod::AverageRange),
            None
        );
        assert_eq!(xbar_r(&[vec![1.0]], SigmaMethod::AverageRange), None);
    }

    #[test]
    fn capability_two_and_one_sided() {
        let values = [9.0, 10.0, 11.0, 10.0];
        let l = Limits {
            center: 10.0,
            ucl: 0.0,
            lcl: 0.0,
            spread_center: 0.0,
            spread_ucl: 0.0,
            spread_lcl: 0.0,
            sigma: 0.5,
            method: SigmaMethod::AverageMovingRange,
            n: 1,
        };
        let c = capability(&values, Some(7.0), Some(14.0), &l).unwrap();
        assert!(close(c.cp.unwrap(), 7.0 / 3.0, 1e-12));
        assert!(close(c.cpk.unwrap(), 3.0 / 1.5, 1e-12));
        let sd = (2.0f64 / 3.0).sqrt();
        assert!(close(c.sigma_overall, sd, 1e-12));
        assert!(close(c.pp.unwrap(), 7.0 / (6.0 * sd), 1e-12));
        assert!(close(c.ppk.unwrap(), 3.0 / (3.0 * sd), 1e-12));
        // Upper limit only (back leak): only the one-sided index.
        let c = capability(&values, None, Some(14.0), &l).unwrap();
        assert_eq!(c.cp, None);
        assert!(close(c.cpk.unwrap(), 4.0 / 1.5, 1e-12));
    }

    /// Each Nelson test fires on its pattern, at its last point, and not one point earlier.
    #[test]
    fn each_nelson_test_fires_on_its_pattern() {
        let r = NelsonRuns::default();
        let fired = |pts: &[f64], test: u8| -> Vec<usize> {
            nelson(pts, 0.0, 1.0, &r)
                .into_iter()
                .filter(|v| v.test == test)
                .map(|v| v.at)
                .collect()
        };
        // 1: beyond 3σ.
        assert_eq!(fired(&[0.0, 3.5, -0.2, -3.1], 1), [1, 3]);
        // 2: nine on one side.
        let mut p = vec![0.5; 9];
        assert_eq!(fired(&p, 2), [8]);
        p[4] = -0.1;
        assert!(fired(&p, 2).is_empty());
        // 3: six in a row increasing (five increments).
        assert_eq!(fired(&[0.0, 0.1, 0.2, 0.3, 0.4, 0.5], 3), [5]);
        assert!(fired(&[0.0, 0.1, 0.2, 0.3, 0.4], 3).is_empty());
        // 4: fourteen alternating.
        let alt: Vec<f64> = (0..14)
            .map(|i| if i % 2 == 0 { 0.2 } else { -0.2 })
            .collect();
        assert_eq!(fired(&alt, 4), [13]);
        assert!(fired(&alt[..13], 4).is_empty());
        // 5: two of three beyond 2σ on one side.
        assert_eq!(fired(&[2.5, 0.0, 2.1], 5), [2]);
        assert!(fired(&[2.5, 0.0, -2.1], 5).is_empty());
        // 6: four of five beyond 1σ on one side.
        assert_eq!(fired(&[1.5, 1.2, 0.0, 1.1, 1.9], 6), [4]);
        assert!(fired(&[1.5, 1.2, 0.0, 1.1], 6).is_empty());
        // 7: fifteen within 1σ.
        let calm: Vec<f64> = (0..15)
            .map(|i| if i % 2 == 0 { 0.3 } else { -0.4 })
            .collect();
        assert_eq!(fired(&calm, 7), [14]);
        // 8: eight beyond 1σ, either side.
        let wide: Vec<f64> = (0..8)
            .map(|i| if i % 2 == 0 { 1.5 } else { -1.5 })
            .collect();
        assert_eq!(fired(&wide, 8), [7]);
        assert!(fired(&wide[..7], 8).is_empty());
        // A flat σ of zero fires nothing (limits not yet frozen from a usable baseline).
        assert!(nelson(&[1.0, 5.0], 0.0, 0.0, &r).is_empty());
    }
}
