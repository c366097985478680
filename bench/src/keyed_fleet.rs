//! The benches' modems as `make up` and compose run them: each with a key of its own, every
//! datagram signed and numbered above any before it, so the gateway in its default
//! configuration (keys, authentication, replay windows) accepts each one and keeps a window
//! for each modem. Numbers go on rising across rounds: a fresh gateway takes the windows back
//! from `device-sessions` and would refuse a number it has seen.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use switchyard_protocol::keys::key_line;
use switchyard_protocol::{Envelope, Frame, Packet};

pub struct KeyedFleet {
    first: u64,
    keys: Vec<[u8; 16]>,
    next_sequence: Vec<u32>,
    keys_file: PathBuf,
}

impl KeyedFleet {
    /// Modems `first`, `first + 1`, … (`count` of them), each with a random 16-byte key as
    /// `switchyard keys generate` makes them, written to a keys file in `dir`.
    pub fn new(first: u64, count: u64, dir: &Path) -> anyhow::Result<KeyedFleet> {
        let count = usize::try_from(count)?;
        let mut random = vec![0u8; count * 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut random))
            .context("reading /dev/urandom")?;
        let keys: Vec<[u8; 16]> = random
            .chunks_exact(16)
            .map(|c| c.try_into().unwrap_or_default())
            .collect();
        let keys_file = dir.join(format!("bench-modem-keys-{first}-{count}"));
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(&keys_file)
                .with_context(|| format!("writing {}", keys_file.display()))?,
        );
        for (modem, key) in (first..).zip(&keys) {
            out.write_all(key_line(modem, key).as_bytes())?;
        }
        out.flush()?;
        Ok(KeyedFleet {
            first,
            keys,
            next_sequence: vec![1; count],
            keys_file,
        })
    }

    /// The gateway's (or the simulator's) setting for this fleet's keys.
    pub fn keys_env(&self) -> (&'static str, String) {
        (
            "SWITCHYARD_MODEM_KEYS",
            self.keys_file.display().to_string(),
        )
    }

    /// Modem number `index` of the fleet (0-based): its id.
    pub fn modem_id(&self, index: usize) -> u64 {
        self.first + index as u64
    }

    /// `packet` from the fleet's modem number `index`, in an envelope with that modem's next
    /// sequence number, signed with its key.
    pub fn sign(&mut self, index: usize, packet: Packet) -> anyhow::Result<Vec<u8>> {
        let sequence = self.next_sequence[index];
        self.next_sequence[index] += 1;
        let frame = Frame {
            envelope: Some(Envelope {
                modem_id: self.modem_id(index),
                sequence,
                request_id: None,
                auth_tag: None,
            }),
            packet,
        };
        Ok(frame.encode_signed(&self.keys[index])?)
    }
}
