//! The per-device statistics and rules, free of any framework.
//!
//! **Method.** Each device (modem + sensor) keeps an exponentially weighted moving mean and
//! variance (West's incremental form, smoothing `alpha`): O(1) memory per device (a few
//! dozen bytes), O(1) work per reading, and it follows slow drift. A reading is a
//! **spike** when it lies more than `threshold` standard deviations from the mean *before*
//! it; the standard deviation is floored at `min_std` so a flat, noiseless signal does not
//! turn every one-unit change into an alarm. A spike enters the statistics clipped to the
//! threshold, so one outlier cannot widen the band and hide the next. A device is **stuck**
//! after `stuck_readings` identical readings in a row (reported once per run), and
//! **silent** when nothing arrived for `silence` (reported once per silence, by a timer).
//! Nothing is flagged during the first `warmup` readings of a device.
//!
//! **False positives.** For Gaussian noise, a 6σ threshold is exceeded with probability
//! about 2e-9 per reading; the EWMA's own estimation noise (alpha 0.02) widens that, and the
//! tests assert at most 1 false alarm in 100,000 clean readings (documented bound: 1e-5 per
//! reading).

pub use switchyard_schemas::records::DeviceStats;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    pub alpha: f64,
    pub threshold: f64,
    pub min_std: f64,
    pub warmup: i64,
    pub stuck_readings: i64,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            alpha: 0.02,
            threshold: 6.0,
            min_std: 1.0,
            warmup: 30,
            stuck_readings: 60,
        }
    }
}

/// A finding about one reading.
#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    Spike { low: f64, high: f64, score: f64 },
    Stuck { run: i64 },
}

/// The detector's rules over one device's statistics ([`DeviceStats`] is generated from
/// `schemas/avro/anomaly-detector-stats.avsc`, the `stats` store's value schema).
pub trait Observe {
    /// The band a reading is expected in, once warmed up.
    fn expected(&self, rules: &Rules) -> Option<(f64, f64)>;
    /// Take one reading; returns what it reveals.
    fn observe(&mut self, value: i64, rules: &Rules) -> Vec<Finding>;
}

fn std(stats: &DeviceStats, rules: &Rules) -> f64 {
    stats.variance.max(0.0).sqrt().max(rules.min_std)
}

impl Observe for DeviceStats {
    fn expected(&self, rules: &Rules) -> Option<(f64, f64)> {
        (self.count >= rules.warmup).then(|| {
            let half = rules.threshold * std(self, rules);
            (self.mean - half, self.mean + half)
        })
    }

    fn observe(&mut self, value: i64, rules: &Rules) -> Vec<Finding> {
        let mut findings = Vec::new();
        let x = value as f64;
        let mut learn = x;
        if let Some((low, high)) = self.expected(rules) {
            if x < low || x > high {
                let score = (x - self.mean).abs() / std(self, rules);
                findings.push(Finding::Spike { low, high, score });
                learn = x.clamp(low, high);
            }
        }
        if self.count == 0 {
            self.mean = learn;
            self.variance = 0.0;
        } else {
            let diff = learn - self.mean;
            let incr = rules.alpha * diff;
            self.mean += incr;
            self.variance = (1.0 - rules.alpha) * (self.variance + diff * incr);
        }
        self.count += 1;

        if self.last_value == Some(value) {
            self.same_run += 1;
        } else {
            self.same_run = 1;
            self.stuck_reported = false;
        }
        self.last_value = Some(value);
        if self.count >= rules.warmup
            && self.same_run >= rules.stuck_readings
            && !self.stuck_reported
        {
            self.stuck_reported = true;
            findings.push(Finding::Stuck { run: self.same_run });
        }
        findings
    }
}

/// A deterministic source of test series (xorshift64* and Box-Muller), so the tests are
/// reproducible without a random-number crate.
#[cfg(test)]
pub(crate) struct Noise(u64);

#[cfg(test)]
impl Noise {
    pub(crate) fn new(seed: u64) -> Self {
        Noise(seed.max(1))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// A normal sample.
    pub(crate) fn gaussian(&mut self, mean: f64, std: f64) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        mean + std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_noisy_series_of_100k_points_raises_at_most_one_false_alarm() {
        let rules = Rules::default();
        for (seed, mean, std) in [(1, 1000.0, 10.0), (7, 0.0, 3.0), (42, -500.0, 50.0)] {
            let mut noise = Noise::new(seed);
            let mut stats = DeviceStats::default();
            let mut alarms = 0;
            for _ in 0..100_000 {
                let x = noise.gaussian(mean, std).round() as i64;
                alarms += stats.observe(x, &rules).len();
            }
            assert!(
                alarms <= 1,
                "seed {seed}: {alarms} false alarms in 100,000 clean readings"
            );
        }
    }

    #[test]
    fn every_injected_spike_and_stuck_run_is_found() {
        let rules = Rules::default();
        let mut noise = Noise::new(3);
        let mut stats = DeviceStats::default();
        let spikes: Vec<usize> = (1..20).map(|k| k * 997).collect();
        let stuck_runs = [(5_000usize, 100usize), (12_345, 80)];
        let mut found_spikes = Vec::new();
        let mut found_stuck = Vec::new();
        let mut frozen = 0;
        for i in 0..20_000 {
            let mut x = noise.gaussian(200.0, 5.0).round() as i64;
            if spikes.contains(&i) {
                x += if i % 2 == 0 { 60 } else { -60 }; // 12σ up or down
            }
            // A stuck sensor freezes at the value it read when it stuck.
            match stuck_runs.iter().find(|(s, len)| i >= *s && i < s + len) {
                Some((start, _)) if i == *start => frozen = x,
                Some(_) => x = frozen,
                None => {}
            }
            for f in stats.observe(x, &rules) {
                match f {
                    Finding::Spike { .. } => found_spikes.push(i),
                    Finding::Stuck { .. } => found_stuck.push(i),
                }
            }
        }
        for s in &spikes {
            assert!(
                found_spikes.contains(s),
                "spike at {s} missed; found {found_spikes:?}"
            );
        }
        for (start, _) in stuck_runs {
            assert!(
                found_stuck.contains(&(start + rules.stuck_readings as usize - 1)),
                "stuck run at {start} missed; found {found_stuck:?}"
            );
        }
        assert_eq!(
            found_stuck.len(),
            stuck_runs.len(),
            "each run reported once"
        );
        let unexplained: Vec<usize> = found_spikes
            .iter()
            .copied()
            .filter(|i| !spikes.contains(i))
            .collect();
        assert!(unexplained.len() <= 1, "false alarms at {unexplained:?}");
    }

    #[test]
    fn nothing_is_flagged_during_warm_up() {
        let rules = Rules::default();
        let mut stats = DeviceStats::default();
        for i in 0..rules.warmup - 1 {
            assert!(stats
                .observe(if i % 2 == 0 { 0 } else { 1_000_000 }, &rules)
                .is_empty());
        }
    }

    #[test]
    fn a_flat_signal_tolerates_small_steps_thanks_to_the_floor() {
        let rules = Rules::default();
        let mut stats = DeviceStats::default();
        for i in 0..200 {
            // Alternates 100/101: variance tiny, but within min_std * threshold.
            assert!(stats
                .observe(100 + (i % 2), &rules)
                .iter()
                .all(|f| !matches!(f, Finding::Spike { .. })));
        }
        assert!(matches!(
            stats.observe(150, &rules)[..],
            [Finding::Spike { .. }]
        ));
    }
}
