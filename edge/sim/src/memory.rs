//! The SIM's non-volatile memory for its counters: what survives a power-off.
//!
//! The uplink sequence number must never repeat for a key, or the gateway's replay window
//! refuses the SIM after a reboot. Writing the counter on every packet would wear a real
//! SIM's EEPROM out, so the SIM reserves numbers in blocks, as OSCORE does with its sender
//! sequence number (RFC 8613, appendix B.1.1): the memory holds the highest number the SIM
//! may have used; at power-on it starts above it and reserves the next block before using
//! any of it. A reboot skips at most one block, which the replay window takes as a jump
//! forward.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Uplink numbers reserved per write of the memory: one write per this many packets sent.
pub const UPLINK_BLOCK: u32 = 1024;

/// What the memory holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Uplink sequence numbers up to this one may have been used (0: none).
    pub uplink_reserved: u32,
    /// The downlink sequence number of the last Perform executed (0: none): a Perform not
    /// above it is refused, so a captured one cannot be replayed.
    pub downlink_executed: u32,
}

/// The SIM's counters could not be read or written: the SIM then refuses to sign, as a
/// real one whose memory fails does, rather than risk a number the gateway saw before.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("SIM memory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("SIM memory {path} is not a counters file ({reason}); move it aside only if the SIM's key is changed too, or the gateway will refuse its numbers as replays")]
    Corrupt { path: PathBuf, reason: String },
    #[error("the uplink counter is exhausted (2^32 numbers used under one key): re-key the modem")]
    Exhausted,
}

/// Where a SIM keeps its counters.
pub trait CounterMemory: fmt::Debug + Send {
    /// The counters as last written; a memory never written holds zeros.
    fn read(&mut self) -> Result<Counters, MemoryError>;
    fn write(&mut self, counters: &Counters) -> Result<(), MemoryError>;
}

/// The process's RAM: lost when the process ends, like a SIM whose memory is wiped. For
/// unit tests, and for SIMs that never sign (v1, or no key), whose numbers nobody checks.
#[derive(Debug, Default)]
pub struct Volatile(Counters);

impl CounterMemory for Volatile {
    fn read(&mut self) -> Result<Counters, MemoryError> {
        Ok(self.0)
    }

    fn write(&mut self, counters: &Counters) -> Result<(), MemoryError> {
        self.0 = *counters;
        Ok(())
    }
}

/// A file of `name value` lines (`uplink_reserved N`, `downlink_executed N`),
/// replaced atomically (written beside it, synced, renamed),
/// so a crash mid-write leaves the old value or the new one, never neither.
#[derive(Debug)]
pub struct CounterFile {
    path: PathBuf,
}

impl CounterFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        CounterFile { path: path.into() }
    }

    /// The file for `modem_id` in `dir` (made if missing), for a fleet of SIMs.
    pub fn in_dir(dir: &Path, modem_id: u64) -> Result<Self, MemoryError> {
        std::fs::create_dir_all(dir).map_err(|source| MemoryError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(CounterFile::new(dir.join(format!("{modem_id}.counters"))))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: io::Error) -> MemoryError {
        MemoryError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

impl CounterMemory for CounterFile {
    fn read(&mut self) -> Result<Counters, MemoryError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Counters::default()),
            Err(e) => return Err(self.io(e)),
        };
        let corrupt = |reason: &str| MemoryError::Corrupt {
            path: self.path.clone(),
            reason: reason.to_string(),
        };
        let mut counters = Counters::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["uplink_reserved", n] => {
                    counters.uplink_reserved = n.parse().map_err(|_| corrupt(line))?;
                }
                ["downlink_executed", n] => {
                    counters.downlink_executed = n.parse().map_err(|_| corrupt(line))?;
                }
                _ => return Err(corrupt(line)),
            }
        }
        Ok(counters)
    }

    fn write(&mut self, counters: &Counters) -> Result<(), MemoryError> {
        use std::io::Write;
        let mut next = self.path.clone().into_os_string();
        next.push(".next");
        let next = PathBuf::from(next);
        let mut file = std::fs::File::create(&next).map_err(|e| self.io(e))?;
        let text = format!(
            "uplink_reserved {}\ndownlink_executed {}\n",
            counters.uplink_reserved, counters.downlink_executed
        );
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| self.io(e))?;
        std::fs::rename(&next, &self.path).map_err(|e| self.io(e))
    }
}

/// Where the simulated SIMs keep their counters unless told: `$XDG_STATE_HOME/switchyard/sims`
/// (`~/.local/state/switchyard/sims`), so a SIM restarted by hand is not refused.
pub fn default_dir() -> PathBuf {
    std::env::var_os("XDG_STATE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir)
        .join("switchyard/sims")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counters_file_reads_back_what_was_written_and_starts_at_zero() {
        let dir = std::env::temp_dir().join(format!("sim-memory-{}", std::process::id()));
        let mut file = CounterFile::in_dir(&dir, 42).expect("dir");
        assert_eq!(file.read().expect("fresh"), Counters::default());
        let written = Counters {
            uplink_reserved: 4096,
            downlink_executed: 17,
        };
        file.write(&written).expect("write");
        assert_eq!(
            CounterFile::in_dir(&dir, 42)
                .expect("dir")
                .read()
                .expect("read"),
            written
        );
        std::fs::write(file.path(), "uplink_reserved many\n").expect("spoil");
        assert!(matches!(file.read(), Err(MemoryError::Corrupt { .. })));
        let _ = std::fs::remove_dir_all(dir);
    }
}
