//! Order statistics of a set of samples: what every bench table reports.

use serde::{Deserialize, Serialize};

/// Median, p90, min and max of some samples (nearest-rank percentiles).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub p90: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// `None` for no samples; NaN and infinities are left out.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        let mut s: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
        if s.is_empty() {
            return None;
        }
        s.sort_by(f64::total_cmp);
        Some(Summary {
            n: s.len(),
            median: percentile(&s, 50),
            p90: percentile(&s, 90),
            min: s[0],
            max: s[s.len() - 1],
        })
    }
}

/// Nearest-rank percentile of sorted, non-empty samples; the median of an
/// even count is the mean of the middle two.
fn percentile(sorted: &[f64], p: usize) -> f64 {
    let n = sorted.len();
    if p == 50 && n.is_multiple_of(2) {
        return (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0;
    }
    let rank = (p * n).div_ceil(100).clamp(1, n);
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_of_known_sets() {
        let s = Summary::of(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!(
            (s.n, s.median, s.p90, s.min, s.max),
            (3, 3.0, 5.0, 1.0, 5.0)
        );
        let ten: Vec<f64> = (1..=10).rev().map(f64::from).collect();
        let s = Summary::of(&ten).unwrap();
        assert_eq!((s.median, s.p90, s.min, s.max), (5.5, 9.0, 1.0, 10.0));
        let s = Summary::of(&[7.0]).unwrap();
        assert_eq!((s.median, s.p90, s.min, s.max), (7.0, 7.0, 7.0, 7.0));
    }

    #[test]
    fn empty_and_non_finite_samples() {
        assert!(Summary::of(&[]).is_none());
        assert!(Summary::of(&[f64::NAN, f64::INFINITY]).is_none());
        assert_eq!(
            Summary::of(&[f64::NAN, 2.0]).map(|s| (s.n, s.median)),
            Some((1, 2.0))
        );
    }
}
