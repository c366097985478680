//! Modem keys files: `MODEM_ID HEX_KEY` per line, `#` starts a comment. The gateway reads
//! one to authenticate envelopes, the modem simulator to sign them.

use std::collections::HashMap;

/// A line of a keys file that cannot be used, by its 1-based number.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("keys file line {line}: {reason}")]
pub struct KeysFileError {
    pub line: usize,
    pub reason: String,
}

/// Parse a keys file's text into modem id -> key.
pub fn parse_keys(text: &str) -> Result<HashMap<u64, Vec<u8>>, KeysFileError> {
    let mut keys = HashMap::new();
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
        let key = hex::decode(key).map_err(|e| fail(format!("key is not hex: {e}")))?;
        if key.is_empty() {
            return Err(fail("empty key".into()));
        }
        keys.insert(modem, key);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_files_parse_and_bad_lines_are_named() {
        let keys = parse_keys("# fleet keys\n42 00ff\n\n7 0102 # spare\n").expect("parses");
        assert_eq!(keys.get(&42), Some(&vec![0, 255]));
        assert_eq!(keys.get(&7), Some(&vec![1, 2]));
        assert_eq!(parse_keys("42").expect_err("missing key").line, 1);
        assert!(parse_keys("x 00").is_err());
        assert!(parse_keys("\n1 zz")
            .expect_err("not hex")
            .to_string()
            .contains("line 2"));
    }
}
