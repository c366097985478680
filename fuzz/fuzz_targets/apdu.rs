//! Any sequence of APDUs (each prefixed with a length byte) sent to the software SIM, as a
//! modem or a hostile terminal could: the applet never panics, always answers with a status
//! word, and keeps a carrier it has a profile for. Covers its BER-TLV parsing (TERMINAL
//! RESPONSE, ENVELOPE) and the packets it is handed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_protocol::Carrier;
use switchyard_sim::{profile, Applet, SimConfig};

fuzz_target!(|data: &[u8]| {
    let key = data.first().is_some_and(|b| b & 1 == 1);
    let mut applet = Applet::new(SimConfig {
        iccid: "8901260000000000042".into(),
        modem_id: 42,
        key: key.then(|| b"fuzz-key".to_vec()),
        v1: data.first().is_some_and(|b| b & 2 == 2),
        carrier: Carrier::AtAndT,
    });
    let mut rest = data.get(1..).unwrap_or_default();
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let (apdu, next) = tail.split_at(n);
        let answer = applet.transmit(apdu);
        assert!(answer.len() >= 2, "every answer ends with a status word");
        assert_eq!(profile(applet.carrier()).carrier, applet.carrier());
        rest = next;
    }
});
