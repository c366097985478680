//! `switchyard keys generate`: the modem keys file (`MODEM_ID HEX_KEY` per line) that the
//! gateway authenticates with and the simulator signs with. Keys already in the file are
//! kept; missing ones get 16 random bytes. The file is written whole, mode 600.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use switchyard_protocol::keys::{key_line, parse_keys};

use crate::Failure;

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Make sure modems FIRST .. FIRST+COUNT-1 have a key in FILE (kept if they do).
    Generate(GenerateArgs),
}

#[derive(Args)]
pub struct GenerateArgs {
    /// The keys file; created if missing.
    #[arg(long, env = "SWITCHYARD_MODEM_KEYS")]
    file: PathBuf,
    /// First modem id.
    #[arg(
        long,
        env = "SWITCHYARD_FIRST_MODEM",
        default_value_t = 356_938_035_643_809
    )]
    first: u64,
    /// How many modems.
    #[arg(long, env = "SWITCHYARD_FLEET", default_value_t = 3)]
    count: u64,
}

pub fn run(command: KeysCommand) -> Result<(), Failure> {
    match command {
        KeysCommand::Generate(args) => {
            let added = generate(&args.file, args.first, args.count)?;
            crate::emit(format!(
                "{}: {added} key(s) added, {} modem(s) from {}",
                args.file.display(),
                args.count,
                args.first
            ));
            Ok(())
        }
    }
}

/// Add a key for every modem of the range that has none; returns how many were added.
pub fn generate(file: &Path, first: u64, count: u64) -> Result<usize, Failure> {
    let existing = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(anyhow::Error::from(e)
                .context(format!("reading {}", file.display()))
                .into())
        }
    };
    let keys =
        parse_keys(&existing).map_err(|e| Failure::BadInput(format!("{}: {e}", file.display())))?;
    let last = first
        .checked_add(count)
        .ok_or_else(|| Failure::BadInput("--first + --count overflows".into()))?;
    let missing: Vec<u64> = (first..last).filter(|m| !keys.contains(*m)).collect();
    if missing.is_empty() && file.exists() {
        return Ok(0);
    }
    let mut text = if existing.is_empty() {
        "# MODEM_ID HEX_KEY, one modem a line (switchyard keys generate). Keep it secret.\n"
            .to_string()
    } else {
        let mut t = existing;
        if !t.ends_with('\n') {
            t.push('\n');
        }
        t
    };
    let mut random = std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?;
    for modem in &missing {
        let mut key = [0u8; 16];
        std::io::Read::read_exact(&mut random, &mut key).context("reading /dev/urandom")?;
        text.push_str(&key_line(*modem, &key));
    }
    // Written beside the file and renamed over it: a reader never sees half a file.
    let tmp = file.with_extension("tmp");
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    out.write_all(text.as_bytes())
        .and_then(|()| out.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("replacing {}", file.display()))?;
    Ok(missing.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keys_are_added_for_missing_modems_only_and_the_file_is_private() {
        let dir = std::env::temp_dir().join(format!("keys-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("modem-keys");
        let _ = std::fs::remove_file(&file);
        assert!(matches!(generate(&file, 10, 2), Ok(2)));
        let first = parse_keys(&std::fs::read_to_string(&file).expect("read")).expect("parses");
        assert_eq!(first.len(), 2);
        assert_eq!(first.get(10).map(<[u8]>::len), Some(16));
        assert_ne!(first.get(10), first.get(11), "each modem its own key");
        // Again, with the fleet grown by one: the two keys stay, one is added.
        assert!(matches!(generate(&file, 10, 3), Ok(1)));
        let second = parse_keys(&std::fs::read_to_string(&file).expect("read")).expect("parses");
        assert_eq!(
            (second.get(10), second.get(11)),
            (first.get(10), first.get(11))
        );
        assert_eq!(second.len(), 3);
        assert!(matches!(generate(&file, 10, 3), Ok(0)));
        let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&file, "not a keys file\n").expect("write");
        assert!(matches!(generate(&file, 10, 1), Err(Failure::BadInput(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
