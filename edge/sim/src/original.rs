//! The original modem client's SIM dialogue, which the applet speaks beside TS 102 223's.
//!
//! The original client polls about once a second with its own FETCH, `00 F3 00 00 15`, and
//! takes the whole command back whatever Le says, with `90 00`. It never sends a TERMINAL
//! RESPONSE, so every FETCH moves on to the next command. It tells commands apart by their
//! first two bytes only:
//!
//! | first bytes | command | what the client does |
//! |---|---|---|
//! | `D0 0E` | RECEIVE DATA: the SIM is ready for a downlink packet | pushes its packet, if it holds one, with `00 F4 00 00 Lc packet` |
//! | `D0 29` | SEND DATA | sends bytes 15.. of the response, exactly the packet, as one datagram |
//! | anything else | (OPEN CHANNEL after power-on) | nothing |
//!
//! With nothing pending, the SIM answers RECEIVE DATA; after a switch, its next FETCH
//! answers the ACK as SEND DATA. The `D0 29` header is a fixed 15 bytes the client does not
//! read past its first two, so its length byte says 0x29 whatever the packet's length:
//! the layout the client expects, not well-formed BER-TLV.

use super::{send_data_payload, sw, tlv, Applet, KIND_RECEIVE_DATA, KIND_SEND_DATA};

/// The original client's FETCH, as it sends it (Le 0x15, which the SIM ignores).
pub const FETCH: [u8; 5] = [0x00, 0xF3, 0x00, 0x00, 0x15];
/// What the client reads a RECEIVE DATA by.
pub const RECEIVE_DATA_PREFIX: [u8; 2] = [0xD0, 0x0E];
/// What the client reads a SEND DATA by.
pub const SEND_DATA_PREFIX: [u8; 2] = [0xD0, 0x29];
/// Where the packet of a SEND DATA starts.
pub const SEND_DATA_HEADER_LEN: usize = 15;

/// A fetched command, read the way the original client reads it.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// The SIM takes a downlink packet now.
    ReceiveData,
    /// Send these bytes to the network.
    SendData(&'a [u8]),
    /// Anything else: the client moves on.
    Other,
}

/// Read a FETCH answer (without its status word) as the original client does.
pub fn read(command: &[u8]) -> Command<'_> {
    match command.get(..2) {
        Some(p) if p == RECEIVE_DATA_PREFIX => Command::ReceiveData,
        Some(p) if p == SEND_DATA_PREFIX => {
            Command::SendData(command.get(SEND_DATA_HEADER_LEN..).unwrap_or_default())
        }
        _ => Command::Other,
    }
}

/// The client's push of a downlink packet: `00 F4 00 00 Lc packet`.
pub fn push_apdu(packet: &[u8]) -> Option<Vec<u8>> {
    let lc = u8::try_from(packet.len()).ok()?;
    let mut apdu = vec![0x00, 0xF4, 0x00, 0x00, lc];
    apdu.extend_from_slice(packet);
    Some(apdu)
}

impl Applet {
    /// `00 F3`: hand over the next pending command whole and move on, or, with none
    /// pending, a RECEIVE DATA. The terminal will never send a TERMINAL RESPONSE.
    pub(super) fn original_fetch(&mut self) -> (Vec<u8>, [u8; 2]) {
        self.original_terminal = true;
        // An OPEN CHANNEL fetched here is never answered: the client's channel is its own.
        self.channel_open = true;
        self.awaiting_response = false;
        let command = match self.pending.pop_front() {
            // Same command number as the SEND DATA it stands for (command details, `81 03 nn`).
            Some(cmd) => match (send_data_payload(&cmd), cmd.get(4)) {
                (Some(packet), Some(&number)) => original_send_data(number, &packet),
                _ => cmd,
            },
            None => self.original_receive_data(),
        };
        (command, sw::OK)
    }

    /// `D0 0E`: a well-formed RECEIVE DATA of 14 bytes (command details, device identities,
    /// an empty alpha identifier, channel data length 255).
    fn original_receive_data(&mut self) -> Vec<u8> {
        let number = self.next_command_number();
        let mut body = Vec::with_capacity(14);
        tlv::push(&mut body, 0x81, &[number, KIND_RECEIVE_DATA, 0x00]);
        tlv::push(&mut body, 0x82, &[0x81, 0x21]);
        tlv::push(&mut body, 0x85, &[]);
        tlv::push(&mut body, 0xB7, &[0xFF]);
        let command = tlv::proactive(&body);
        debug_assert_eq!(command[..2], RECEIVE_DATA_PREFIX);
        command
    }
}

/// `D0 29`, command details, device identities (SIM to channel 1), an empty transport level
/// (`3C 00`), channel data tag and length, then the packet from byte 15.
fn original_send_data(number: u8, packet: &[u8]) -> Vec<u8> {
    let mut out = SEND_DATA_PREFIX.to_vec();
    out.extend_from_slice(&[0x81, 0x03, number, KIND_SEND_DATA, 0x01]);
    out.extend_from_slice(&[0x82, 0x02, 0x81, 0x21]);
    out.extend_from_slice(&[0x3C, 0x00]);
    out.extend_from_slice(&[0xB6, packet.len().min(255) as u8]);
    debug_assert_eq!(out.len(), SEND_DATA_HEADER_LEN);
    out.extend_from_slice(packet);
    out
}
