//! Modems whose session another gateway instance holds. With N instances behind a UDP load
//! balancer, every instance reads every switch request, and only the one holding the
//! modem's session (its NAT mapping points there) sends the Perform. The others learn who
//! holds what from `device-sessions`: the latest record of a modem names its holder. A
//! request for a modem held elsewhere is left to that instance: this one neither sends it
//! nor reports it undeliverable.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use switchyard_schemas::records::DeviceSession;

#[derive(Debug)]
pub struct Elsewhere {
    me: String,
    /// Instance names, interned: a modem costs a map entry of 16 bytes, not a string.
    instances: Vec<String>,
    /// Modem (hashed id) -> index into `instances`.
    holder: HashMap<u64, u16>,
}

fn key(modem_id: &str) -> u64 {
    let mut h = DefaultHasher::new();
    modem_id.hash(&mut h);
    h.finish()
}

impl Elsewhere {
    pub fn new(me: &str) -> Self {
        Elsewhere {
            me: me.to_string(),
            instances: Vec::new(),
            holder: HashMap::new(),
        }
    }

    /// A record from `device-sessions`: its writer held the modem when it wrote it.
    pub fn apply(&mut self, record: &DeviceSession) {
        let modem = key(&record.modem_id);
        if record.gateway == self.me {
            self.holder.remove(&modem);
            return;
        }
        let index = match self.instances.iter().position(|i| *i == record.gateway) {
            Some(i) => i,
            None => {
                self.instances.push(record.gateway.clone());
                self.instances.len() - 1
            }
        };
        if let Ok(index) = u16::try_from(index) {
            self.holder.insert(modem, index);
        }
    }

    /// A tombstone of `modem_id`'s session: nobody holds it.
    pub fn forget(&mut self, modem_id: &str) {
        self.holder.remove(&key(modem_id));
    }

    /// The other instance holding `modem_id`'s session, if one does.
    pub fn holder(&self, modem_id: &str) -> Option<&str> {
        self.holder
            .get(&key(modem_id))
            .and_then(|i| self.instances.get(usize::from(*i)))
            .map(String::as_str)
    }

    /// Modems held by other instances.
    pub fn len(&self) -> usize {
        self.holder.len()
    }

    pub fn is_empty(&self) -> bool {
        self.holder.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::test_record as record;

    #[test]
    fn the_latest_record_names_the_holder_and_this_instance_holds_its_own() {
        let mut e = Elsewhere::new("a");
        e.apply(&record("1", "b"));
        e.apply(&record("2", "c"));
        e.apply(&record("3", "a"));
        assert_eq!(
            (e.holder("1"), e.holder("2"), e.holder("3")),
            (Some("b"), Some("c"), None)
        );
        // Modem 1 moves here, modem 3 moves to c.
        e.apply(&record("1", "a"));
        e.apply(&record("3", "c"));
        assert_eq!((e.holder("1"), e.holder("3")), (None, Some("c")));
        assert_eq!(e.len(), 2);
    }
}
