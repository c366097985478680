//! BER-TLV as ETSI TS 101 220 uses it for proactive commands: one-byte tags, lengths in
//! one byte below 0x80 and as `81 xx` up to 255.

/// Append one TLV.
pub fn push(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    out.push(tag);
    push_len(out, value.len());
    out.extend_from_slice(value);
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        out.push(0x81);
        out.push(len.min(255) as u8);
    }
}

/// Wrap TLVs in a proactive command template (tag D0).
pub fn proactive(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 3);
    push(&mut out, 0xD0, body);
    out
}

/// Split a run of TLVs into (tag, value) pairs; `None` if the lengths do not add up.
pub fn parse(mut bytes: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    while let Some((&tag, rest)) = bytes.split_first() {
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = match first {
            0x81 => {
                let (&len, rest) = rest.split_first()?;
                (usize::from(len), rest)
            }
            l if l < 0x80 => (usize::from(l), rest),
            _ => return None,
        };
        if rest.len() < len {
            return None;
        }
        out.push((tag, &rest[..len]));
        bytes = &rest[len..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_lengths_round_trip() {
        let mut out = Vec::new();
        push(&mut out, 0x81, &[1, 0x43, 1]);
        push(&mut out, 0xB6, &[7; 200]);
        assert_eq!(&out[..5], &[0x81, 3, 1, 0x43, 1]);
        assert_eq!(&out[5..8], &[0xB6, 0x81, 200]);
        let parsed = parse(&out).expect("parses");
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[1].1.len(), 200);
        assert!(parse(&[0x81, 5, 1]).is_none());
    }
}
