//! Anti-replay for authenticated envelopes: the IPsec sliding window (RFC 4303 §3.4.3).
//! A sequence number is accepted if it is newer than the highest seen, or within the
//! 64 numbers below it and not seen yet; so UDP reordering is tolerated and replays are not.

const WINDOW: u32 = 64;

#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    highest: Option<u32>,
    /// Bit i set: `highest - i` was seen.
    seen: u64,
}

impl ReplayWindow {
    /// A window that refuses `seq` and everything before it: what a restarted gateway
    /// knows from the session record (which numbers below it were seen is not kept).
    pub fn raise_to(&mut self, seq: u32) {
        if self.highest.is_none_or(|h| seq > h) {
            self.highest = Some(seq);
            self.seen = u64::MAX;
        } else if let Some(h) = self.highest {
            // Numbers up to `seq`, below the highest, count as seen too.
            let behind = h - seq;
            if behind < WINDOW {
                self.seen |= u64::MAX << behind;
            }
        }
    }

    /// The highest number accepted, if any.
    pub fn highest(&self) -> Option<u32> {
        self.highest
    }

    /// Whether `seq` is acceptable; records it if so.
    pub fn accept(&mut self, seq: u32) -> bool {
        let Some(highest) = self.highest else {
            self.highest = Some(seq);
            self.seen = 1;
            return true;
        };
        if seq > highest {
            let shift = seq - highest;
            self.seen = if shift >= WINDOW {
                1
            } else {
                (self.seen << shift) | 1
            };
            self.highest = Some(seq);
            return true;
        }
        let behind = highest - seq;
        if behind >= WINDOW {
            return false;
        }
        let bit = 1u64 << behind;
        if self.seen & bit != 0 {
            return false;
        }
        self.seen |= bit;
        true
    }
}

/// A window for each keyed modem, at its position among the keys
/// ([`ModemKeys::position`](switchyard_protocol::keys::ModemKeys::position)): 16 bytes a
/// modem in one array, where a map would take about 50 at a million.
#[derive(Debug, Default)]
pub struct ReplayWindows {
    by_position: Vec<ReplayWindow>,
}

impl ReplayWindows {
    /// Windows for `modems` keyed modems, none of which has been heard.
    pub fn new(modems: usize) -> Self {
        ReplayWindows {
            by_position: vec![ReplayWindow::default(); modems],
        }
    }

    /// [`ReplayWindow::accept`] for the modem at `position`; false for a position beyond
    /// the keys.
    pub fn accept(&mut self, position: usize, seq: u32) -> bool {
        self.by_position
            .get_mut(position)
            .is_some_and(|w| w.accept(seq))
    }

    /// [`ReplayWindow::raise_to`] for the modem at `position`.
    pub fn raise_to(&mut self, position: usize, seq: u32) {
        if let Some(w) = self.by_position.get_mut(position) {
            w.raise_to(seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_numbers_pass_repeats_fail_reordering_within_the_window_passes() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(10));
        assert!(!w.accept(10), "replay");
        assert!(w.accept(12));
        assert!(w.accept(11), "late but unseen");
        assert!(!w.accept(11), "late replay");
        assert!(w.accept(100));
        assert!(w.accept(37), "63 behind: still in the window");
        assert!(!w.accept(36), "64 behind: too old");
        assert!(w.accept(1000));
        assert!(!w.accept(100), "far behind after a jump");
    }

    #[test]
    fn a_raised_window_refuses_the_number_and_all_before_it() {
        let mut w = ReplayWindow::default();
        w.raise_to(50);
        assert!(!w.accept(50) && !w.accept(49) && !w.accept(1));
        assert!(w.accept(51));
        assert!(w.accept(53));
        // Raised below the highest: 52 counted as seen, 54 still new.
        w.raise_to(52);
        assert!(!w.accept(52));
        assert!(w.accept(54));
        assert_eq!(w.highest(), Some(54));
    }

    #[test]
    fn each_position_has_its_own_window() {
        let mut windows = ReplayWindows::new(2);
        assert!(windows.accept(0, 5) && windows.accept(1, 5));
        assert!(!windows.accept(0, 5));
        windows.raise_to(1, 9);
        assert!(!windows.accept(1, 9) && windows.accept(0, 9));
        assert!(!windows.accept(2, 1), "no window beyond the keys");
        windows.raise_to(2, 1);
    }
}
