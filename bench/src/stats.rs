//! The statistics of a report, pure: quantiles, paired differences, the summary of a
//! figure over several runs, and when two gateways' figures are a tie.
//!
//! The machines are shared and noisy: one run's figure says little. Each scenario runs
//! several times per gateway, alternating; a figure is the median over its runs with the
//! spread (min-max) beside it, and a ratio is only claimed when the difference of the
//! medians is larger than both spreads; otherwise it is a tie.

/// The `p`-quantile (0..=1) of sorted `values` (nearest rank).
pub fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied().unwrap_or(f64::NAN)
}

/// `with - without`, pair by pair (each gateway round trip minus the floor round trip
/// measured next to it), sorted: quantiles of these are the added latency, where the
/// difference of two quantiles would compare unrelated moments of a noisy machine.
pub fn paired_differences(with: &[f64], without: &[f64]) -> Vec<f64> {
    let mut out: Vec<f64> = with.iter().zip(without).map(|(a, b)| a - b).collect();
    out.sort_by(f64::total_cmp);
    out
}

/// One figure over several runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// The median of the runs (the mean of the middle two for an even count).
    pub median: f64,
    /// The lowest run.
    pub min: f64,
    /// The highest run.
    pub max: f64,
}

impl Summary {
    /// The summary of `runs` (finite values only); `None` when there are none.
    pub fn of(runs: &[f64]) -> Option<Summary> {
        let mut values: Vec<f64> = runs.iter().copied().filter(|v| v.is_finite()).collect();
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let (&min, &max) = (values.first()?, values.last()?);
        let median = if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 };
        Some(Summary { median, min, max })
    }

    /// How far apart the runs were (max - min).
    pub fn spread(&self) -> f64 {
        self.max - self.min
    }

    /// Whether the difference between the two medians is within the noise: no larger
    /// than the larger of the two spreads.
    pub fn ties(&self, other: &Summary) -> bool {
        (self.median - other.median).abs() <= self.spread().max(other.spread())
    }
}

/// The ratio column: ours/theirs of the medians, or "tie" when a spread is larger than
/// the difference.
pub fn ratio(ours: &Summary, theirs: &Summary) -> String {
    if ours.ties(theirs) {
        return "tie".into();
    }
    if theirs.median.abs() <= f64::EPSILON {
        return "-".into();
    }
    format!("{:.2}", ours.median / theirs.median)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn added_latency_is_the_quantile_of_differences_not_the_difference_of_quantiles() {
        // The machine stalls twice, 8 ms each: once during a floor trip, once during a
        // gateway trip at another step. The gateway adds 0.1 ms to every trip.
        let floor = [1.0, 1.0, 9.0, 1.0];
        let with = [1.1, 9.1, 1.1, 1.1];
        let (mut a, mut b) = (with.to_vec(), floor.to_vec());
        a.sort_by(f64::total_cmp);
        b.sort_by(f64::total_cmp);
        // The difference of p99s subtracts one stall from the other and says 0.1 ms...
        assert!((quantile(&a, 0.99) - quantile(&b, 0.99) - 0.1).abs() < 1e-9);
        // ...while the step whose gateway trip stalled did take 8.1 ms more than the floor
        // measured beside it: that is what the paired p99 reports.
        let added = paired_differences(&with, &floor);
        assert!((quantile(&added, 0.99) - 8.1).abs() < 1e-9, "{added:?}");
        assert!((quantile(&added, 0.5) - 0.1).abs() < 1e-9, "the typical step: the gateway's 0.1 ms");
    }

    #[test]
    fn summaries_take_the_median_and_the_spread() {
        assert_eq!(Summary::of(&[3.0, 1.0, 2.0]), Some(Summary { median: 2.0, min: 1.0, max: 3.0 }));
        assert_eq!(Summary::of(&[4.0, 1.0, 2.0, 3.0]).map(|s| s.median), Some(2.5));
        assert_eq!(Summary::of(&[f64::NAN, 5.0]).map(|s| s.median), Some(5.0));
        assert_eq!(Summary::of(&[]), None);
    }

    #[test]
    fn a_difference_within_a_spread_is_a_tie() {
        let ours = Summary::of(&[1.0, 1.2, 1.4]).unwrap();
        assert_eq!(ratio(&ours, &Summary::of(&[1.3, 1.5, 1.6]).unwrap()), "tie", "0.3 apart, spreads 0.4 and 0.3");
        assert_eq!(ratio(&ours, &Summary::of(&[2.0, 2.2, 2.4]).unwrap()), "0.55");
        // Apart without overlapping, but one spread is wider than the difference.
        let steady = Summary::of(&[1.0, 1.0, 1.0]).unwrap();
        assert_eq!(ratio(&steady, &Summary::of(&[1.05, 1.5, 2.0]).unwrap()), "tie");
        // Both zero (nothing lost on either side): a tie, not a division by zero.
        let zero = Summary::of(&[0.0, 0.0]).unwrap();
        assert_eq!(ratio(&zero, &zero), "tie");
    }
}
