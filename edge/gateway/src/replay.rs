//! Anti-replay for authenticated envelopes: the IPsec sliding window (RFC 4303 §3.4.3).
//! A sequence number is accepted if it is newer than the highest seen, or within the
//! 64 numbers below it and not seen yet; so UDP reordering is tolerated and replays are not.

use crate::arbiter::Arbiter;

const WINDOW: u32 = 64;

/// A modem is sent at most one sequence resync this often (seconds): enough for a device
/// that is behind, too little to make the gateway a reflector.
pub const RESYNC_INTERVAL_S: u32 = 1;

/// One modem's window, 16 bytes.
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    /// The highest number accepted or raised to; meaningless while `seen` is 0.
    highest: u32,
    /// When this modem was last sent a sequence resync (seconds since the epoch; 0: never).
    resynced_s: u32,
    /// Bit i set: `highest - i` was seen. 0 only before the first number.
    seen: u64,
}

impl ReplayWindow {
    /// A window that refuses `seq` and everything before it: what a restarted gateway
    /// knows from the session record (which numbers below it were seen is not kept).
    pub fn raise_to(&mut self, seq: u32) {
        if self.seen == 0 || seq > self.highest {
            self.highest = seq;
            self.seen = u64::MAX;
        } else {
            // Numbers up to `seq`, below the highest, count as seen too.
            let behind = self.highest - seq;
            if behind < WINDOW {
                self.seen |= u64::MAX << behind;
            }
        }
    }

    /// The highest number accepted, if any.
    pub fn highest(&self) -> Option<u32> {
        (self.seen != 0).then_some(self.highest)
    }

    /// Whether `seq` is acceptable; records it if so. Numbers start at 1: 0 is never
    /// accepted (records and sessions take 0 for "none", so it could not be reserved).
    pub fn accept(&mut self, seq: u32) -> bool {
        if seq == 0 {
            return false;
        }
        if self.seen == 0 {
            self.highest = seq;
            self.seen = 1;
            return true;
        }
        let highest = self.highest;
        if seq > highest {
            let shift = seq - highest;
            self.seen = if shift >= WINDOW {
                1
            } else {
                (self.seen << shift) | 1
            };
            self.highest = seq;
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

    /// After a refused number, at `now_s`: the number a resync should move the modem's
    /// counter above, unless one went out less than [`RESYNC_INTERVAL_S`] ago.
    pub fn resync_due(&mut self, now_s: u32) -> Option<u32> {
        let highest = self.highest()?;
        if self.resynced_s != 0 && now_s.saturating_sub(self.resynced_s) < RESYNC_INTERVAL_S {
            return None;
        }
        self.resynced_s = now_s.max(1);
        Some(highest)
    }
}

/// What this instance knows of which numbers are fresh: a window per keyed modem, and the
/// packets whose freshness the log is still deciding ([`Arbiter`]). Under the gateway's one
/// lock with the sessions ([`crate::service::Modems`]), so a record read from the log
/// raises the windows, contests the waiting packets and settles the session at once.
#[derive(Default)]
pub struct Freshness {
    pub windows: ReplayWindows,
    pub arbiter: Arbiter,
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

    /// [`ReplayWindow::resync_due`] for the modem at `position`.
    pub fn resync_due(&mut self, position: usize, now_s: u32) -> Option<u32> {
        self.by_position.get_mut(position)?.resync_due(now_s)
    }

    /// The modem at `position` refuses `seq` and everything before it, and nothing after,
    /// whatever it refused before ([`RestoringFloors`] decides when that is right).
    fn reset_to(&mut self, position: usize, seq: u32) {
        if let Some(w) = self.by_position.get_mut(position) {
            *w = ReplayWindow::default();
            w.raise_to(seq);
        }
    }

    fn highest(&self, position: usize) -> Option<u32> {
        self.by_position.get(position)?.highest()
    }

    /// [`ReplayWindow::raise_to`] for the modem at `position`.
    pub fn raise_to(&mut self, position: usize, seq: u32) {
        if let Some(w) = self.by_position.get_mut(position) {
            w.raise_to(seq);
        }
    }
}

/// Reading `device-sessions` back at start, record by record in log order (a modem's
/// records are in one partition): each keyed modem's window refuses up to its records'
/// floor. A record may lower the floor only if its writer set it: a clean stop's exact
/// number after that instance's own reservation. Another instance's record with a lower
/// floor (its claim lost the race for a number, and its record landed after the winner's)
/// only raises it, so whatever the winner may have accepted stays refused. Who set each
/// floor is kept only while restoring: 2 bytes a keyed modem.
pub struct RestoringFloors<'a> {
    windows: &'a mut ReplayWindows,
    writers: Vec<String>,
    /// By position: index into `writers` of the floor's writer; `NO_WRITER` before any.
    floor_writer: Vec<u16>,
}

const NO_WRITER: u16 = u16::MAX;

impl<'a> RestoringFloors<'a> {
    pub fn new(windows: &'a mut ReplayWindows) -> Self {
        let modems = windows.by_position.len();
        RestoringFloors {
            windows,
            writers: Vec::new(),
            floor_writer: vec![NO_WRITER; modems],
        }
    }

    /// A record of the modem at `position`, written by `writer`, refusing up to `floor`.
    pub fn apply(&mut self, position: usize, writer: &str, floor: u32) {
        let Some(set_by) = self.floor_writer.get(position).copied() else {
            return;
        };
        let writer = match self.writers.iter().position(|w| w == writer) {
            Some(i) => i,
            None => {
                self.writers.push(writer.to_string());
                self.writers.len() - 1
            }
        };
        // More writers than a u16 names (never, in practice) only raise.
        let writer = u16::try_from(writer).unwrap_or(NO_WRITER);
        let own = writer != NO_WRITER && (set_by == writer || set_by == NO_WRITER);
        if own {
            self.windows.reset_to(position, floor);
        } else if self.windows.highest(position).is_none_or(|h| floor > h) {
            self.windows.raise_to(position, floor);
        } else {
            return;
        }
        self.floor_writer[position] = writer;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_numbers_pass_repeats_fail_reordering_within_the_window_passes() {
        let mut w = ReplayWindow::default();
        assert!(!w.accept(0), "numbers start at 1");
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
    fn a_window_is_16_bytes() {
        assert_eq!(std::mem::size_of::<ReplayWindow>(), 16);
    }

    #[test]
    fn a_resync_names_the_highest_number_at_most_once_an_interval() {
        let mut w = ReplayWindow::default();
        assert_eq!(
            w.resync_due(100),
            None,
            "nothing to resync to before any number"
        );
        w.raise_to(4000);
        assert!(!w.accept(7), "a counter far behind is refused");
        assert_eq!(w.resync_due(100), Some(4000));
        assert_eq!(w.resync_due(100), None, "not twice in one interval");
        assert_eq!(w.resync_due(100 + RESYNC_INTERVAL_S), Some(4000));
        assert!(w.accept(4001), "the counter moved above it is accepted");
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

    /// Issue 25: restoring took the latest record of a modem as the truth whoever wrote it,
    /// so a losing claim's record (lower, but after the winner's in the log) lowered the
    /// floor, and after a restart the winner's accepted numbers above it were fresh again.
    #[test]
    fn restoring_only_the_floors_writer_lowers_it() {
        let mut windows = ReplayWindows::new(2);
        let mut floors = RestoringFloors::new(&mut windows);
        floors.apply(0, "a", 2048); // a's reservation
        floors.apply(0, "b", 1034); // b's losing claim, read after it
        floors.apply(1, "a", 9);
        floors.apply(1, "a", 7); // a clean stop's exact number after a's own reservation
        floors.apply(2, "a", 1); // beyond the keys: nothing
        assert!(!windows.accept(0, 2048) && windows.accept(0, 2049));
        assert!(!windows.accept(1, 7) && windows.accept(1, 8));

        let mut windows = ReplayWindows::new(1);
        let mut floors = RestoringFloors::new(&mut windows);
        floors.apply(0, "a", 2048);
        floors.apply(0, "b", 3072); // the modem moved to b: b's floor now
        floors.apply(0, "a", 1500); // a's late exact number: not below b's
        floors.apply(0, "b", 2500); // b's clean stop: its own floor, lowered
        assert!(!windows.accept(0, 2500) && windows.accept(0, 2501));
    }
}
