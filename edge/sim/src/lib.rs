//! A software UICC carrying the multi-carrier applet, spoken to with APDUs exactly as a
//! modem speaks to a physical SIM. The same [`Applet`] runs in process (unit tests, the
//! simulator's `--sim in-process`) and behind PC/SC through the vpcd virtual reader.
//!
//! The SIM holds the modem's identity and key: it signs what the modem sends and checks
//! what the network asks of it. Interface (documented with example exchanges in
//! `docs/sim.md`):
//!
//! | APDU | meaning |
//! |---|---|
//! | `00 A4 00 04 02 FID` | SELECT a file: `3F00` MF, `2FE2` EF ICCID, `6F07` EF IMSI |
//! | `00 B0 00 00 Le` | READ BINARY of the selected EF |
//! | `00 F4 00 00 Lc packet` | push a packet (the original system's command): a Carrier Switch Perform from the network, or an IoT packet from the modem to send |
//! | `80 12 00 00 Le` | FETCH the pending proactive command |
//! | `00 F3 00 00 Le` | the original modem client's FETCH: see [`original`] |
//! | `80 14 00 00 Lc TLVs` | TERMINAL RESPONSE to the fetched command |
//! | `80 C2 00 00 Lc D6…` | ENVELOPE (event download): "data available" on the channel |
//!
//! Proactive commands (ETSI TS 102 223, BER-TLV `D0`): OPEN CHANNEL after power-on, then a
//! SEND DATA for each packet the modem must send (the signed uplink envelope, or the ACK
//! of a switch). Downlink follows TS 102 223's BIP flow: the terminal announces received
//! bytes with an ENVELOPE (event download, data available), the SIM answers with RECEIVE
//! DATA, and the terminal's TERMINAL RESPONSE carries the bytes (the original system's push
//! command still works too). A pending command is announced by the status word `91 xx`
//! (xx = its length).

pub mod memory;
pub mod original;
mod tlv;
pub mod vpcd;

use std::collections::VecDeque;

use memory::{CounterMemory, Counters, MemoryError, Volatile, UPLINK_BLOCK};

use switchyard_protocol::{
    peek_envelope, verify, AckStatus, Carrier, DecodeError, Envelope, Frame, Packet,
};

/// The answer to a reset: direct convention, T=0, historical bytes "SWITCHYARD".
pub const ATR: &[u8] = &[
    0x3B, 0x8A, 0x80, 0x01, b'S', b'W', b'I', b'T', b'C', b'H', b'Y', b'A', b'R', b'D', 0x14,
];

const KIND_OPEN_CHANNEL: u8 = 0x40;
const KIND_RECEIVE_DATA: u8 = 0x42;
const KIND_SEND_DATA: u8 = 0x43;
const TAG_CHANNEL_DATA: u8 = 0x36;
const TAG_CHANNEL_DATA_LENGTH: u8 = 0x37;
const EVENT_DATA_AVAILABLE: u8 = 0x09;

const FID_MF: u16 = 0x3F00;
const FID_ICCID: u16 = 0x2FE2;
const FID_IMSI: u16 = 0x6F07;

/// Status words.
pub mod sw {
    pub const OK: [u8; 2] = [0x90, 0x00];
    pub const WRONG_LENGTH: [u8; 2] = [0x67, 0x00];
    pub const SECURITY: [u8; 2] = [0x69, 0x82];
    pub const NOT_ALLOWED: [u8; 2] = [0x69, 0x85];
    pub const NO_EF: [u8; 2] = [0x69, 0x86];
    pub const BAD_DATA: [u8; 2] = [0x6A, 0x80];
    pub const MEMORY_FAILURE: [u8; 2] = [0x65, 0x81];
    pub const FILE_NOT_FOUND: [u8; 2] = [0x6A, 0x82];
    pub const BAD_P1P2: [u8; 2] = [0x6B, 0x00];
    pub const BAD_INS: [u8; 2] = [0x6D, 0x00];
    pub const BAD_CLA: [u8; 2] = [0x6E, 0x00];
}

/// A carrier profile the SIM can switch to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    pub carrier: Carrier,
    /// 15 digits; empty for Disconnect.
    pub imsi: &'static str,
    pub mcc_mnc: &'static str,
}

pub const PROFILES: &[Profile] = &[
    Profile {
        carrier: Carrier::AtAndT,
        imsi: "310410000000001",
        mcc_mnc: "310-410",
    },
    Profile {
        carrier: Carrier::TMobile,
        imsi: "310260000000001",
        mcc_mnc: "310-260",
    },
    Profile {
        carrier: Carrier::Verizon,
        imsi: "311480000000001",
        mcc_mnc: "311-480",
    },
    Profile {
        carrier: Carrier::Disconnect,
        imsi: "",
        mcc_mnc: "",
    },
];

pub fn profile(carrier: Carrier) -> &'static Profile {
    PROFILES
        .iter()
        .find(|p| p.carrier == carrier)
        .unwrap_or(&PROFILES[3])
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    /// 19 or 20 digits.
    pub iccid: String,
    /// The modem identity the SIM speaks for.
    pub modem_id: u64,
    /// The modem's key: with it, uplink envelopes are signed and downlink envelopes must be.
    pub key: Option<Vec<u8>>,
    /// Speak v1 (no envelope), like the original devices.
    pub v1: bool,
    pub carrier: Carrier,
}

#[derive(Debug)]
pub struct Applet {
    config: SimConfig,
    carrier: Carrier,
    selected: Option<u16>,
    pending: VecDeque<Vec<u8>>,
    /// A fetched command awaiting its TERMINAL RESPONSE.
    awaiting_response: bool,
    command_number: u8,
    uplink_sequence: u32,
    /// Uplink numbers up to this one are reserved in `memory`.
    uplink_reserved: u32,
    /// The last Perform executed (its downlink sequence number), as in `memory`.
    downlink_executed: u32,
    memory: Box<dyn CounterMemory>,
    channel_open: bool,
    /// The terminal speaks the original modem client's dialogue (it sent `00 F3`): answers
    /// carry `90 00`, never `91 xx`, until the next reset.
    original_terminal: bool,
}

impl Applet {
    /// A SIM whose counters live in RAM only (see [`memory::Volatile`]): for unit tests and
    /// SIMs that do not sign.
    pub fn new(config: SimConfig) -> Self {
        let mut applet = Applet::unpowered(config, Box::<Volatile>::default(), Counters::default());
        applet.reset();
        applet
    }

    /// A SIM that keeps its counters in `memory`, powered on: it sends above every number
    /// it may have sent before, in this process or an earlier one.
    pub fn with_memory(
        config: SimConfig,
        mut memory: Box<dyn CounterMemory>,
    ) -> Result<Self, MemoryError> {
        let stored = memory.read()?;
        let mut applet = Applet::unpowered(config, memory, stored);
        applet.reset();
        Ok(applet)
    }

    fn unpowered(config: SimConfig, memory: Box<dyn CounterMemory>, stored: Counters) -> Self {
        Applet {
            carrier: config.carrier,
            config,
            selected: None,
            pending: VecDeque::new(),
            awaiting_response: false,
            command_number: 0,
            uplink_sequence: stored.uplink_reserved,
            uplink_reserved: stored.uplink_reserved,
            downlink_executed: stored.downlink_executed,
            memory,
            channel_open: false,
            original_terminal: false,
        }
    }

    /// What the memory holds now.
    fn stored(&self) -> Counters {
        Counters {
            uplink_reserved: self.uplink_reserved,
            downlink_executed: self.downlink_executed,
        }
    }

    /// Switch to `target`; a signed Perform's number (`downlink`) is kept in memory first,
    /// so that Perform cannot be replayed after the next power-off either.
    fn switch_to(&mut self, target: Carrier, downlink: Option<u32>) -> Result<(), MemoryError> {
        if let Some(executed) = downlink {
            self.memory.write(&Counters {
                downlink_executed: executed,
                ..self.stored()
            })?;
            self.downlink_executed = executed;
        }
        self.carrier = target;
        Ok(())
    }

    /// The last uplink sequence number used.
    pub fn uplink_sequence(&self) -> u32 {
        self.uplink_sequence
    }

    /// The next uplink sequence number, reserved in memory first when it is past the block.
    fn next_uplink_sequence(&mut self) -> Result<u32, MemoryError> {
        let next = self
            .uplink_sequence
            .checked_add(1)
            .ok_or(MemoryError::Exhausted)?;
        if next > self.uplink_reserved {
            self.reserve_uplink(next.saturating_add(UPLINK_BLOCK - 1))?;
        }
        self.uplink_sequence = next;
        Ok(next)
    }

    /// Uplink numbers up to `reserved` may be used: kept in memory first.
    fn reserve_uplink(&mut self, reserved: u32) -> Result<(), MemoryError> {
        self.memory.write(&Counters {
            uplink_reserved: reserved,
            ..self.stored()
        })?;
        self.uplink_reserved = reserved;
        Ok(())
    }

    /// Power-on or reset: forget the selection and pending commands, ask for a channel, and
    /// report the carrier: a SEND DATA with an ACK naming the current carrier and no request,
    /// which v1 receivers accept, so the network knows the carrier from the first packets.
    pub fn reset(&mut self) -> &'static [u8] {
        // What RAM held is gone: numbers resume above the reserved block.
        self.uplink_sequence = self.uplink_reserved;
        self.selected = None;
        self.pending.clear();
        self.awaiting_response = false;
        self.channel_open = false;
        self.original_terminal = false;
        let cmd = self.command(KIND_OPEN_CHANNEL, 0x01, |body| {
            tlv::push(body, 0x82, &[0x81, 0x82]);
            tlv::push(body, 0x35, &[0x02, 0x03, 0x04, 0x03, 0x04, 0x1F, 0x02]);
            tlv::push(body, 0x39, &[0x05, 0xDC]);
            tlv::push(body, 0x3C, &[0x01, 0x17, 0x71]);
        });
        self.pending.push_back(cmd);
        self.queue_send(
            Packet::CarrierSwitchAck {
                status: AckStatus::Ack,
                carrier: self.carrier,
            },
            None,
        );
        ATR
    }

    pub fn carrier(&self) -> Carrier {
        self.carrier
    }

    pub fn imsi(&self) -> &'static str {
        profile(self.carrier).imsi
    }

    /// Handle one C-APDU; returns the R-APDU (data, SW1, SW2). Never panics.
    pub fn transmit(&mut self, apdu: &[u8]) -> Vec<u8> {
        let [cla, ins, p1, p2] = match apdu.get(..4) {
            Some(&[cla, ins, p1, p2]) => [cla, ins, p1, p2],
            _ => return sw::WRONG_LENGTH.to_vec(),
        };
        let body = &apdu[4..];
        let (data, le) = match body {
            [] => (&[][..], None),
            [le] => (&[][..], Some(usize::from(*le))),
            [lc, rest @ ..] if rest.len() == usize::from(*lc) => (rest, None),
            [lc, rest @ ..] if rest.len() == usize::from(*lc) + 1 => (
                &rest[..rest.len() - 1],
                rest.last().map(|l| usize::from(*l)),
            ),
            _ => return sw::WRONG_LENGTH.to_vec(),
        };
        let (mut out, status) = match (cla, ins) {
            (0x00, 0xA4) => (Vec::new(), self.select(p1, p2, data)),
            (0x00, 0xB0) => self.read_binary(p1, p2, le),
            (0x00, 0xF4) => (Vec::new(), self.push(data)),
            (0x80, 0x12) => self.fetch(le),
            (0x00, 0xF3) => self.original_fetch(),
            (0x80, 0x14) => (Vec::new(), self.terminal_response(data)),
            (0x80, 0xC2) => (Vec::new(), self.envelope(data)),
            (0x00 | 0x80, _) => (Vec::new(), sw::BAD_INS),
            _ => (Vec::new(), sw::BAD_CLA),
        };
        let status = match (status, self.pending.front()) {
            (sw::OK, Some(next)) if !self.awaiting_response && !self.original_terminal => {
                [0x91, next.len().min(255) as u8]
            }
            (s, _) => s,
        };
        out.extend_from_slice(&status);
        out
    }

    fn select(&mut self, p1: u8, p2: u8, data: &[u8]) -> [u8; 2] {
        if p1 != 0x00 || !matches!(p2, 0x04 | 0x0C | 0x00) {
            return sw::BAD_P1P2;
        }
        let [a, b] = data else {
            return sw::WRONG_LENGTH;
        };
        match u16::from_be_bytes([*a, *b]) {
            fid @ (FID_MF | FID_ICCID | FID_IMSI) => {
                self.selected = Some(fid);
                sw::OK
            }
            _ => sw::FILE_NOT_FOUND,
        }
    }

    fn read_binary(&self, p1: u8, p2: u8, le: Option<usize>) -> (Vec<u8>, [u8; 2]) {
        let content = match self.selected {
            Some(FID_ICCID) => bcd(&self.config.iccid, 10),
            Some(FID_IMSI) => ef_imsi(self.imsi()),
            _ => return (Vec::new(), sw::NO_EF),
        };
        let offset = usize::from(u16::from_be_bytes([p1 & 0x7F, p2]));
        if offset > content.len() {
            return (Vec::new(), sw::BAD_P1P2);
        }
        let available = &content[offset..];
        let n = le
            .filter(|l| *l > 0)
            .unwrap_or(available.len())
            .min(available.len());
        (available[..n].to_vec(), sw::OK)
    }

    fn push(&mut self, packet: &[u8]) -> [u8; 2] {
        match Frame::decode(packet) {
            Ok(frame) => match frame.packet {
                Packet::CarrierSwitchPerform(target) => {
                    // A signed Perform's number must be above the last one executed.
                    let mut downlink = None;
                    if let Some(env) = &frame.envelope {
                        if env.modem_id != self.config.modem_id {
                            return sw::SECURITY;
                        }
                        if let Some(key) = &self.config.key {
                            if verify(packet, key).is_err() {
                                return sw::SECURITY;
                            }
                            if env.sequence <= self.downlink_executed {
                                tracing::warn!(
                                    modem = self.config.modem_id,
                                    sequence = env.sequence,
                                    executed = self.downlink_executed,
                                    "a Perform not newer than the last one executed (a replay?): refused"
                                );
                                return self.refuse_stale(env.request_id);
                            }
                            downlink = Some(env.sequence);
                        }
                    }
                    let request_id = frame.envelope.as_ref().and_then(|e| e.request_id);
                    if let Err(e) = self.switch_to(target, downlink) {
                        tracing::error!(modem = self.config.modem_id, error = %e, "the SIM cannot keep the Perform's number; not switched");
                        return sw::MEMORY_FAILURE;
                    }
                    self.queue_send(
                        Packet::CarrierSwitchAck {
                            status: AckStatus::Ack,
                            carrier: target,
                        },
                        request_id,
                    )
                }
                Packet::SequenceResync { above } => match &frame.envelope {
                    Some(env) => self.resync(packet, env, above),
                    None => sw::BAD_DATA,
                },
                Packet::CarrierSwitchAck { .. } => sw::BAD_DATA,
                uplink => self.queue_send(uplink, None),
            },
            // A Perform naming a carrier this SIM has no profile for: refuse, keep the carrier.
            Err(DecodeError::UnknownCarrier(_)) if packet.first() == Some(&0x10) => self.nack(None),
            Err(DecodeError::Inner(inner)) if matches!(*inner, DecodeError::UnknownCarrier(_)) => {
                match peek_envelope(packet) {
                    Some((modem, _, request_id)) if modem == self.config.modem_id => {
                        self.nack(request_id)
                    }
                    _ => sw::SECURITY,
                }
            }
            Err(_) => sw::BAD_DATA,
        }
    }

    /// A signed resync from the network: the gateway refused a number as not fresh, so the
    /// counter moves above `above` (reserved in memory first). Only forward: a resync that is
    /// old, or replayed, changes nothing, so it needs no freshness of its own. Unsigned, or
    /// for another modem: refused.
    fn resync(&mut self, packet: &[u8], env: &Envelope, above: u32) -> [u8; 2] {
        let Some(key) = &self.config.key else {
            return sw::SECURITY;
        };
        if env.modem_id != self.config.modem_id || verify(packet, key).is_err() {
            return sw::SECURITY;
        }
        if above <= self.uplink_sequence {
            return sw::OK;
        }
        let reserved = above.saturating_add(UPLINK_BLOCK);
        if reserved > self.uplink_reserved {
            if let Err(e) = self.reserve_uplink(reserved) {
                tracing::error!(modem = self.config.modem_id, error = %e, "the SIM cannot keep the resynchronised counter; not moved");
                return sw::MEMORY_FAILURE;
            }
        }
        tracing::info!(
            modem = self.config.modem_id,
            from = self.uplink_sequence,
            above,
            "the network refused this SIM's numbers as not fresh: counter moved above its highest"
        );
        self.uplink_sequence = above;
        sw::OK
    }

    fn nack(&mut self, request_id: Option<u64>) -> [u8; 2] {
        let current = self.carrier;
        self.queue_send(
            Packet::CarrierSwitchAck {
                status: AckStatus::Nack,
                carrier: current,
            },
            request_id,
        )
    }

    /// Answer a Perform numbered at or below the last one executed: a Perform Refused
    /// naming that number (so the cloud ends the request NACKed with the reason and numbers
    /// its next Perform above it); a plain NACK from a SIM that speaks only v1.
    fn refuse_stale(&mut self, request_id: Option<u64>) -> [u8; 2] {
        if self.config.v1 {
            return self.nack(request_id);
        }
        let (carrier, executed) = (self.carrier, self.downlink_executed);
        self.queue_send(Packet::PerformRefused { carrier, executed }, request_id)
    }

    /// Queue a SEND DATA carrying `packet`, enveloped (and signed) unless the SIM speaks v1.
    fn queue_send(&mut self, packet: Packet, request_id: Option<u64>) -> [u8; 2] {
        let bytes = if self.config.v1 {
            packet.encode()
        } else {
            let sequence = match self.next_uplink_sequence() {
                Ok(sequence) => sequence,
                Err(e) => {
                    tracing::error!(modem = self.config.modem_id, error = %e, "the SIM cannot keep its counter; nothing is sent");
                    return sw::MEMORY_FAILURE;
                }
            };
            let frame = Frame {
                envelope: Some(Envelope {
                    modem_id: self.config.modem_id,
                    sequence,
                    request_id,
                    auth_tag: None,
                }),
                packet,
            };
            match &self.config.key {
                Some(key) => frame.encode_signed(key),
                None => frame.encode(),
            }
        };
        let Ok(bytes) = bytes else {
            return sw::BAD_DATA;
        };
        let cmd = self.command(KIND_SEND_DATA, 0x01, |body| {
            tlv::push(body, 0x82, &[0x81, 0x21]);
            tlv::push(body, 0xB6, &bytes);
        });
        self.pending.push_back(cmd);
        sw::OK
    }

    fn next_command_number(&mut self) -> u8 {
        self.command_number = self.command_number.wrapping_add(1).max(1);
        self.command_number
    }

    fn command(&mut self, kind: u8, qualifier: u8, add: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let number = self.next_command_number();
        let mut body = Vec::new();
        tlv::push(&mut body, 0x81, &[number, kind, qualifier]);
        add(&mut body);
        tlv::proactive(&body)
    }

    fn fetch(&mut self, le: Option<usize>) -> (Vec<u8>, [u8; 2]) {
        if self.awaiting_response {
            return (Vec::new(), sw::NOT_ALLOWED);
        }
        let Some(cmd) = self.pending.front() else {
            return (Vec::new(), sw::NOT_ALLOWED);
        };
        if let Some(le) = le.filter(|l| *l > 0) {
            if le < cmd.len() {
                return (Vec::new(), [0x6C, cmd.len().min(255) as u8]);
            }
        }
        self.awaiting_response = true;
        (cmd.clone(), sw::OK)
    }

    fn terminal_response(&mut self, data: &[u8]) -> [u8; 2] {
        if !self.awaiting_response {
            return sw::NOT_ALLOWED;
        }
        let Some(tlvs) = tlv::parse(data) else {
            return sw::BAD_DATA;
        };
        // Command details (81) must echo the fetched command; result (83) 00 = performed.
        let fetched = self.pending.front().cloned().unwrap_or_default();
        let details = find_tlv(&tlvs, 0x01);
        if details.is_none() || details != fetched.get(4..7) {
            return sw::BAD_DATA;
        }
        let performed = find_tlv(&tlvs, 0x03).is_some_and(|result| result.first() == Some(&0x00));
        let received = match fetched.get(5) {
            Some(&KIND_OPEN_CHANNEL) => {
                self.channel_open |= performed;
                None
            }
            Some(&KIND_RECEIVE_DATA) if performed => {
                find_tlv(&tlvs, TAG_CHANNEL_DATA).map(<[u8]>::to_vec)
            }
            _ => None,
        };
        self.pending.pop_front();
        self.awaiting_response = false;
        match received {
            // The bytes a RECEIVE DATA asked for: a packet from the network.
            Some(packet) => self.push(&packet),
            None => sw::OK,
        }
    }

    /// ENVELOPE: an event download (`D6`). "Data available" (event 09) with a channel data
    /// length (`37`) above zero makes the SIM ask for the bytes with RECEIVE DATA; other
    /// events are acknowledged and ignored.
    fn envelope(&mut self, data: &[u8]) -> [u8; 2] {
        let Some(outer) = tlv::parse(data) else {
            return sw::BAD_DATA;
        };
        let Some((0xD6, body)) = outer.first().copied() else {
            return sw::BAD_DATA;
        };
        let Some(inner) = tlv::parse(body) else {
            return sw::BAD_DATA;
        };
        let data_available = inner
            .iter()
            .any(|(t, v)| *t & 0x7F == 0x19 && v.contains(&EVENT_DATA_AVAILABLE));
        if !data_available {
            return sw::OK;
        }
        if !self.channel_open {
            return sw::NOT_ALLOWED;
        }
        let available = find_tlv(&inner, TAG_CHANNEL_DATA_LENGTH)
            .and_then(|v| v.first().copied())
            .unwrap_or(0);
        if available == 0 {
            return sw::OK;
        }
        let cmd = self.command(KIND_RECEIVE_DATA, 0x00, |body| {
            tlv::push(body, 0x82, &[0x81, 0x21]);
            tlv::push(body, 0xB7, &[available]);
        });
        self.pending.push_back(cmd);
        sw::OK
    }

    pub fn channel_open(&self) -> bool {
        self.channel_open
    }
}

/// Digits as swapped-nibble BCD, padded with F, `len` bytes (EF ICCID).
fn bcd(digits: &str, len: usize) -> Vec<u8> {
    let nibbles: Vec<u8> = digits
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|d| d - b'0')
        .collect();
    (0..len)
        .map(|i| {
            let lo = nibbles.get(2 * i).copied().unwrap_or(0xF);
            let hi = nibbles.get(2 * i + 1).copied().unwrap_or(0xF);
            hi << 4 | lo
        })
        .collect()
}

/// EF IMSI per TS 31.102: length byte, then the parity nibble and digits, swapped.
fn ef_imsi(imsi: &str) -> Vec<u8> {
    if imsi.is_empty() {
        return vec![0xFF; 9];
    }
    let digits: Vec<u8> = imsi.bytes().map(|d| d - b'0').collect();
    let parity = if digits.len() % 2 == 1 { 0x9 } else { 0x1 };
    let mut nibbles = vec![parity];
    nibbles.extend(digits);
    let mut out = vec![nibbles.len().div_ceil(2) as u8];
    for pair in nibbles.chunks(2) {
        let lo = pair[0];
        let hi = pair.get(1).copied().unwrap_or(0xF);
        out.push(hi << 4 | lo);
    }
    out.resize(9, 0xFF);
    out
}

/// The value of the first TLV with `tag`, ignoring the comprehension-required bit.
fn find_tlv<'a>(tlvs: &[(u8, &'a [u8])], tag: u8) -> Option<&'a [u8]> {
    tlvs.iter()
        .find(|(t, _)| t & 0x7F == tag & 0x7F)
        .map(|(_, v)| *v)
}

/// (tag, value) pairs of a run of TLVs.
type Tlvs<'a> = Vec<(u8, &'a [u8])>;

/// A fetched proactive command: its template tag, its TLVs and its command details (`81`).
fn command_tlvs(command: &[u8]) -> Option<(u8, Tlvs<'_>, &[u8])> {
    let outer = tlv::parse(command)?;
    let (tag, body) = *outer.first()?;
    let inner = tlv::parse(body)?;
    let details = find_tlv(&inner, 0x01)?;
    Some((tag, inner, details))
}

/// The TLVs of a fetched proactive command (`D0`) of the given kind.
fn proactive_of_kind(command: &[u8], kind: u8) -> Option<Tlvs<'_>> {
    let (tag, inner, details) = command_tlvs(command)?;
    (tag == 0xD0 && details.get(1) == Some(&kind)).then_some(inner)
}

/// The packet a fetched SEND DATA carries, if it is one.
pub fn send_data_payload(command: &[u8]) -> Option<Vec<u8>> {
    let inner = proactive_of_kind(command, KIND_SEND_DATA)?;
    find_tlv(&inner, TAG_CHANNEL_DATA).map(<[u8]>::to_vec)
}

/// How many bytes a fetched RECEIVE DATA asks for, if it is one.
pub fn receive_data_length(command: &[u8]) -> Option<usize> {
    let inner = proactive_of_kind(command, KIND_RECEIVE_DATA)?;
    find_tlv(&inner, TAG_CHANNEL_DATA_LENGTH)
        .and_then(<[u8]>::first)
        .map(|n| usize::from(*n))
}

/// The ENVELOPE a terminal sends when `available` bytes arrived on the channel (event
/// download, data available; TS 102 223 §7.5.10).
pub fn data_available_envelope(available: usize) -> Vec<u8> {
    let mut event = Vec::new();
    tlv::push(&mut event, 0x99, &[EVENT_DATA_AVAILABLE]);
    tlv::push(&mut event, 0x82, &[0x82, 0x81]);
    tlv::push(&mut event, 0xB8, &[0x81, 0x00]);
    tlv::push(&mut event, 0xB7, &[available.min(255) as u8]);
    let mut data = Vec::new();
    tlv::push(&mut data, 0xD6, &event);
    let mut apdu = vec![0x80, 0xC2, 0x00, 0x00, data.len() as u8];
    apdu.extend(data);
    apdu
}

/// A TERMINAL RESPONSE to a fetched command, performed successfully (`83 01 00`), with
/// `more` TLVs after the result.
fn terminal_response(command: &[u8], more: impl FnOnce(&mut Vec<u8>)) -> Option<Vec<u8>> {
    let (_, _, details) = command_tlvs(command)?;
    let mut data = Vec::new();
    tlv::push(&mut data, 0x81, details);
    tlv::push(&mut data, 0x82, &[0x82, 0x81]);
    tlv::push(&mut data, 0x83, &[0x00]);
    more(&mut data);
    let len = u8::try_from(data.len()).ok()?;
    let mut apdu = vec![0x80, 0x14, 0x00, 0x00, len];
    apdu.extend(data);
    Some(apdu)
}

/// The TERMINAL RESPONSE to a RECEIVE DATA: the bytes (`B6`) and how many remain (`B7`).
pub fn receive_data_response(command: &[u8], bytes: &[u8]) -> Option<Vec<u8>> {
    terminal_response(command, |data| {
        tlv::push(data, 0xB6, bytes);
        tlv::push(data, 0xB7, &[0x00]);
    })
}

/// The TERMINAL RESPONSE a terminal sends after performing a fetched command successfully.
pub fn terminal_response_for(command: &[u8]) -> Option<Vec<u8>> {
    terminal_response(command, |_| {})
}

#[cfg(test)]
mod tests;
