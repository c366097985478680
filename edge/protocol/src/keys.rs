//! Modem keys files: `MODEM_ID HEX_KEY` per line, `#` starts a comment. The gateway reads
//! one to authenticate envelopes, the modem simulator to sign them.

/// A line of a keys file that cannot be used, by its 1-based number.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("keys file line {line}: {reason}")]
pub struct KeysFileError {
    pub line: usize,
    pub reason: String,
}

/// Modem id -> key, as read from a keys file. Held compactly, since a gateway holds one for
/// every modem of the fleet: the ids sorted, each with where its key lies in one buffer of
/// all the keys (a 16-byte key costs 32 bytes, against about 100 in a `HashMap` of `Vec`s).
/// Looked up by binary search, a few dozen nanoseconds beside the HMAC it serves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModemKeys {
    ids: Vec<u64>,
    /// Where key `i` ends in `bytes` (it starts where key `i - 1` ends).
    ends: Vec<usize>,
    bytes: Vec<u8>,
}

impl ModemKeys {
    /// The key of `modem`, if it has one.
    pub fn get(&self, modem: u64) -> Option<&[u8]> {
        self.key_at(self.position(modem)?)
    }

    /// Where `modem` lies among the keyed modems, `0..len()`: a dense index for whoever
    /// keeps something per keyed modem (a slot per key instead of a map entry per modem).
    pub fn position(&self, modem: u64) -> Option<usize> {
        self.ids.binary_search(&modem).ok()
    }

    /// The modem at `position`.
    pub fn id_at(&self, position: usize) -> Option<u64> {
        self.ids.get(position).copied()
    }

    /// The key of the modem at `position`.
    pub fn key_at(&self, position: usize) -> Option<&[u8]> {
        let end = *self.ends.get(position)?;
        let start = match position.checked_sub(1) {
            Some(before) => self.ends[before],
            None => 0,
        };
        self.bytes.get(start..end)
    }

    pub fn contains(&self, modem: u64) -> bool {
        self.ids.binary_search(&modem).is_ok()
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// One line of a keys file (`MODEM_ID HEX_KEY` and its newline), as [`parse_keys`] reads it.
pub fn key_line(modem: u64, key: &[u8]) -> String {
    format!("{modem} {}\n", hex::encode(key))
}

/// Parse a keys file's text into modem id -> key. Keys are decoded into one buffer as they
/// are read (no allocation per key: at a million modems, a million small allocations would
/// stay in the process's memory long after they were freed).
pub fn parse_keys(text: &str) -> Result<ModemKeys, KeysFileError> {
    // (modem, where its key starts in `decoded`, its length), in file order.
    let mut entries: Vec<(u64, usize, usize)> = Vec::new();
    let mut decoded: Vec<u8> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let fail = |reason: String| KeysFileError {
            line: n + 1,
            reason,
        };
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(modem), Some(key), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(fail("expected `MODEM_ID HEX_KEY`".into()));
        };
        let modem: u64 = modem
            .parse()
            .map_err(|_| fail(format!("modem id {modem:?} is not a number")))?;
        if key.is_empty() {
            return Err(fail("empty key".into()));
        }
        let start = decoded.len();
        decoded.resize(start + key.len() / 2, 0);
        hex::decode_to_slice(key, &mut decoded[start..])
            .map_err(|e| fail(format!("key is not hex: {e}")))?;
        entries.push((modem, start, key.len() / 2));
    }
    // A modem named twice keeps its last key (the sort is stable: keep the last of a run).
    entries.sort_by_key(|(modem, _, _)| *modem);
    let mut keys = ModemKeys {
        ids: Vec::with_capacity(entries.len()),
        ends: Vec::with_capacity(entries.len()),
        bytes: Vec::with_capacity(decoded.len()),
    };
    for (n, (modem, start, len)) in entries.iter().enumerate() {
        if entries.get(n + 1).is_some_and(|(next, _, _)| next == modem) {
            continue;
        }
        keys.ids.push(*modem);
        keys.bytes.extend_from_slice(&decoded[*start..start + len]);
        keys.ends.push(keys.bytes.len());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_files_parse_and_bad_lines_are_named() {
        let keys = parse_keys("# fleet keys\n42 00ff\n\n7 0102 # spare\n9 03\n42 0a0b0c\n")
            .expect("parses");
        assert_eq!(keys.len(), 3);
        assert_eq!(keys.get(7), Some(&[1, 2][..]));
        assert_eq!(keys.get(9), Some(&[3][..]));
        // Named twice: the last line wins.
        assert_eq!(keys.get(42), Some(&[10, 11, 12][..]));
        assert_eq!(keys.get(8), None);
        assert!(keys.contains(9) && !keys.contains(43));
        // Positions follow the sorted ids, and lead back to the same modem and key.
        assert_eq!(
            [7, 9, 42].map(|m| keys.position(m)),
            [Some(0), Some(1), Some(2)]
        );
        assert_eq!(
            (keys.position(8), keys.id_at(1), keys.id_at(3)),
            (None, Some(9), None)
        );
        assert_eq!((keys.key_at(0), keys.key_at(3)), (Some(&[1, 2][..]), None));
        assert_eq!(parse_keys("42").expect_err("missing key").line, 1);
        assert!(parse_keys("x 00").is_err());
        assert_eq!(
            parse_keys(&key_line(5, &[1, 2, 250]))
                .expect("a written line parses")
                .get(5),
            Some(&[1, 2, 250][..])
        );
        assert!(parse_keys("1 abc").is_err(), "odd number of digits");
        assert!(parse_keys("\n1 zz")
            .expect_err("not hex")
            .to_string()
            .contains("line 2"));
    }
}
