//! The modem simulator: a device as the original system's devices are. Sensors produce
//! readings; every packet goes through the SIM (pushed with `00 F4`, sent when the SIM's
//! SEND DATA says so) over one UDP socket to the gateway; a downlink packet from the gateway
//! is pushed to the SIM, which switches carrier and produces the ACK.
//!
//! The SIM is reached through a [`SimLink`]: the software SIM in process, or any card behind
//! PC/SC (the `pcsc` crate), such as `switchyard-sim` in vpcd's virtual reader.
//!
//! [`Dialogue::Original`] is the original modem client instead: readings go straight to the
//! socket, and the SIM is polled with `00 F3` about once a second (`switchyard_sim::original`).

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use switchyard_protocol::{IotData, IotStatus, Packet};
use switchyard_sim::{
    data_available_envelope, original, receive_data_length, receive_data_response,
    send_data_payload, terminal_response_for, Applet,
};
use tracing::{debug, info, warn};

/// Something that answers APDUs: a SIM.
pub trait SimLink: Send {
    fn transmit(&mut self, apdu: &[u8]) -> anyhow::Result<Vec<u8>>;
}

/// The software SIM, in this process.
pub struct InProcess(pub Applet);

impl SimLink for InProcess {
    fn transmit(&mut self, apdu: &[u8]) -> anyhow::Result<Vec<u8>> {
        Ok(self.0.transmit(apdu))
    }
}

/// A card in a PC/SC reader.
pub struct PcscCard {
    card: pcsc::Card,
}

impl PcscCard {
    /// Connect (shared) to the first reader whose name contains `reader`.
    pub fn connect(reader: &str) -> anyhow::Result<Self> {
        let ctx = pcsc::Context::establish(pcsc::Scope::User)
            .context("no PC/SC service (is pcscd running?)")?;
        let readers = ctx.list_readers_owned().context("listing PC/SC readers")?;
        let name = readers
            .iter()
            .find(|r| r.to_string_lossy().contains(reader))
            .with_context(|| format!("no PC/SC reader named like {reader:?} among {readers:?}"))?;
        let card = ctx
            .connect(name, pcsc::ShareMode::Shared, pcsc::Protocols::ANY)
            .with_context(|| format!("no card in {name:?}"))?;
        info!(reader = %name.to_string_lossy(), "SIM connected over PC/SC");
        Ok(PcscCard { card })
    }
}

impl SimLink for PcscCard {
    fn transmit(&mut self, apdu: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut buf = [0u8; pcsc::MAX_BUFFER_SIZE];
        Ok(self
            .card
            .transmit(apdu, &mut buf)
            .context("PC/SC transmit")?
            .to_vec())
    }
}

/// Fractions of packets to drop, duplicate or delay, each way.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    pub drop: f64,
    pub duplicate: f64,
    pub delay: f64,
    pub delay_by: Duration,
}

/// The span a sensor's values move in, inclusive: `MIN:MAX` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueRange {
    pub min: i32,
    pub max: i32,
}

impl ValueRange {
    /// The original devices' spans: imu -1000..1000, gyro -60..60, temp 20..22 (°C).
    pub fn default_for(device_id: u32) -> ValueRange {
        match device_id {
            1 => ValueRange {
                min: -1000,
                max: 1000,
            },
            2 => ValueRange { min: -60, max: 60 },
            _ => ValueRange { min: 20, max: 22 },
        }
    }
}

impl std::str::FromStr for ValueRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (min, max) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: expected MIN:MAX, e.g. -60:60"))?;
        let parse = |v: &str| {
            v.trim()
                .parse::<i32>()
                .map_err(|e| format!("{s:?}: {v:?} is not a whole number ({e})"))
        };
        let (min, max) = (parse(min)?, parse(max)?);
        if min > max {
            return Err(format!("{s:?}: MIN is above MAX"));
        }
        Ok(ValueRange { min, max })
    }
}

impl std::fmt::Display for ValueRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.min, self.max)
    }
}

/// A sensor: device id, how often it reads, and the span its values move in.
#[derive(Debug, Clone)]
pub struct Sensor {
    pub device_id: u32,
    pub period: Duration,
    pub next: Instant,
    pub range: ValueRange,
    phase: f64,
}

impl Sensor {
    /// A sensor with the original devices' value span for its device id.
    pub fn new(device_id: u32, rate_hz: f64) -> Self {
        Self::with_range(device_id, rate_hz, ValueRange::default_for(device_id))
    }

    pub fn with_range(device_id: u32, rate_hz: f64, range: ValueRange) -> Self {
        let period = Duration::from_secs_f64(1.0 / rate_hz.max(0.001));
        Sensor {
            device_id,
            period,
            next: Instant::now(),
            range,
            phase: 0.0,
        }
    }

    /// The original's signal shapes, scaled into the range: 1 imu a sine, 2 gyro a wobble,
    /// 3 temp (and any other) a slow drift.
    pub fn read(&mut self) -> i32 {
        self.phase += 0.05;
        let shape = match self.device_id {
            1 => self.phase.sin(),
            2 => (5.0 * (self.phase * 3.0).sin() + (self.phase * 7.0).cos()) / 6.0,
            _ => (self.phase / 10.0).sin(),
        };
        let (min, max) = (f64::from(self.range.min), f64::from(self.range.max));
        let value = (min + max) / 2.0 + shape * (max - min) / 2.0;
        value.round().clamp(min, max) as i32
    }
}

/// How the modem talks to its SIM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Dialogue {
    /// ETSI TS 102 223: every packet through the SIM, FETCH and TERMINAL RESPONSE while
    /// the SIM announces commands (`91 xx`), downlink by event download and RECEIVE DATA.
    #[default]
    Etsi,
    /// The original modem client: readings straight to the socket, no status packets, the
    /// SIM polled with `00 F3` every `poll_every`; a downlink packet waits for the SIM's
    /// RECEIVE DATA and is pushed with `00 F4`, a SEND DATA's bytes go out as they are.
    Original { poll_every: Duration },
}

/// Downlink packets an original client holds while it waits for the SIM's RECEIVE DATA.
const ORIGINAL_CHANNEL_PACKETS: usize = 16;

const SELECT_MF: [u8; 7] = [0x00, 0xA4, 0x00, 0x04, 0x02, 0x3F, 0x00];

/// The simulator's pseudo-random faults: xorshift64, seeded (by modem id) through a
/// splitmix64 step, so that small and neighbouring seeds start far apart. Unmixed, a seed
/// near 5,000 made every modem's first draw about 3e-7: its first packet was always
/// dropped, whatever the drop rate.
struct FaultDice {
    state: u64,
}

impl FaultDice {
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        FaultDice {
            state: (z ^ (z >> 31)).max(1),
        }
    }

    /// True with probability `p`.
    fn roll(&mut self, p: f64) -> bool {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }
}

pub struct Modem<S: SimLink> {
    sim: S,
    dialogue: Dialogue,
    socket: UdpSocket,
    gateway: SocketAddr,
    faults: Faults,
    dice: FaultDice,
    delayed: Vec<(Instant, Vec<u8>)>,
    /// Bytes received from the network that the SIM has not asked for yet (BIP channel).
    channel: std::collections::VecDeque<Vec<u8>>,
    pub sent: u64,
    pub received: u64,
}

fn sw(r: &[u8]) -> [u8; 2] {
    match r {
        [.., a, b] => [*a, *b],
        _ => [0, 0],
    }
}

impl<S: SimLink> Modem<S> {
    pub fn new(sim: S, gateway: SocketAddr, faults: Faults, seed: u64) -> anyhow::Result<Self> {
        let socket = UdpSocket::bind("0.0.0.0:0").context("binding the modem's UDP socket")?;
        Ok(Modem {
            sim,
            dialogue: Dialogue::Etsi,
            socket,
            gateway,
            faults,
            dice: FaultDice::new(seed),
            delayed: Vec::new(),
            channel: std::collections::VecDeque::new(),
            sent: 0,
            received: 0,
        })
    }

    pub fn with_dialogue(mut self, dialogue: Dialogue) -> Self {
        self.dialogue = dialogue;
        self
    }

    fn chance(&mut self, p: f64) -> bool {
        self.dice.roll(p)
    }

    /// Power on: talk to the SIM until it has no proactive command left (OPEN CHANNEL).
    pub fn power_on(&mut self) -> anyhow::Result<()> {
        let r = self.sim.transmit(&SELECT_MF)?;
        match self.dialogue {
            Dialogue::Etsi => self.drain(sw(&r)),
            // The original client does not read the status: it polls.
            Dialogue::Original { .. } => Ok(()),
        }
    }

    /// One poll of the original client: `00 F3`, then act on the command's first bytes.
    pub fn poll_original(&mut self) -> anyhow::Result<()> {
        let r = self.sim.transmit(&original::FETCH)?;
        if sw(&r) != [0x90, 0x00] {
            warn!(sw = ?sw(&r), "the SIM refused the original FETCH");
            return Ok(());
        }
        let command = &r[..r.len() - 2];
        match original::read(command) {
            original::Command::SendData(packet) => {
                let packet = packet.to_vec();
                self.send(&packet)?;
            }
            original::Command::ReceiveData => {
                if let Some(packet) = self.channel.pop_front() {
                    let apdu = original::push_apdu(&packet)
                        .context("downlink packet too long for one APDU")?;
                    let status = sw(&self.sim.transmit(&apdu)?);
                    if status != [0x90, 0x00] {
                        warn!(sw = ?status, "the SIM refused a downlink packet");
                    }
                }
            }
            original::Command::Other => {}
        }
        Ok(())
    }

    /// A packet from the network: to the SIM now (ETSI), or held for its RECEIVE DATA.
    fn downlink(&mut self, packet: &[u8]) -> anyhow::Result<()> {
        match self.dialogue {
            Dialogue::Etsi => self.deliver(packet),
            Dialogue::Original { .. } => {
                if self.channel.len() >= ORIGINAL_CHANNEL_PACKETS {
                    warn!("downlink buffer full: the oldest packet is dropped");
                    self.channel.pop_front();
                }
                self.channel.push_back(packet.to_vec());
                Ok(())
            }
        }
    }

    /// FETCH and perform proactive commands while the SIM announces them (`91 xx`).
    fn drain(&mut self, mut status: [u8; 2]) -> anyhow::Result<()> {
        let mut guard = 0;
        while status[0] == 0x91 {
            guard += 1;
            if guard > 64 {
                bail!("the SIM keeps announcing proactive commands");
            }
            let mut r = self.sim.transmit(&[0x80, 0x12, 0x00, 0x00, status[1]])?;
            if sw(&r)[0] == 0x6C {
                r = self.sim.transmit(&[0x80, 0x12, 0x00, 0x00, sw(&r)[1]])?;
            }
            if sw(&r) != [0x90, 0x00] {
                bail!("FETCH failed: {:02X?}", sw(&r));
            }
            let command = &r[..r.len() - 2];
            if let Some(payload) = send_data_payload(command) {
                self.send(&payload)?;
            }
            let response = match receive_data_length(command) {
                // RECEIVE DATA: hand over what the channel holds.
                Some(_) => {
                    let bytes = self.channel.pop_front().unwrap_or_default();
                    receive_data_response(command, &bytes)
                }
                None => terminal_response_for(command),
            }
            .context("the SIM sent something that is not a proactive command")?;
            status = sw(&self.sim.transmit(&response)?);
        }
        Ok(())
    }

    /// A packet from the network, handed to the SIM the ETSI way (TS 102 223 BIP): the
    /// bytes wait in the channel buffer, an ENVELOPE announces them (event download, data
    /// available), the SIM asks for them with RECEIVE DATA, and answers (the ACK) with SEND DATA.
    pub fn deliver(&mut self, packet: &[u8]) -> anyhow::Result<()> {
        self.channel.push_back(packet.to_vec());
        let status = sw(&self.sim.transmit(&data_available_envelope(packet.len()))?);
        let result = match status {
            [0x90, 0x00] | [0x91, _] => self.drain(status),
            other => {
                warn!(sw = ?other, "the SIM refused the data-available event");
                Ok(())
            }
        };
        self.channel.clear();
        result
    }

    /// Give a packet to the SIM with the original system's push command (`00 F4`): an
    /// uplink reading to sign and send, or (as the original modems did) a downlink packet.
    pub fn push(&mut self, packet: &[u8]) -> anyhow::Result<()> {
        let len = u8::try_from(packet.len()).context("packet too long for one APDU")?;
        let mut apdu = vec![0x00, 0xF4, 0x00, 0x00, len];
        apdu.extend_from_slice(packet);
        let status = sw(&self.sim.transmit(&apdu)?);
        match status {
            [0x90, 0x00] | [0x91, _] => self.drain(status),
            other => {
                warn!(sw = ?other, "the SIM refused a packet");
                Ok(())
            }
        }
    }

    fn send(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        if self.chance(self.faults.drop) {
            debug!("fault: uplink dropped");
            return Ok(());
        }
        if self.chance(self.faults.delay) {
            self.delayed
                .push((Instant::now() + self.faults.delay_by, payload.to_vec()));
            return Ok(());
        }
        let copies = if self.chance(self.faults.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            self.socket
                .send_to(payload, self.gateway)
                .context("UDP send")?;
            self.sent += 1;
        }
        Ok(())
    }

    /// The IMSI the SIM currently holds (EF IMSI), or empty when disconnected.
    pub fn read_imsi(&mut self) -> anyhow::Result<String> {
        self.sim
            .transmit(&[0x00, 0xA4, 0x00, 0x04, 0x02, 0x6F, 0x07])?;
        let r = self.sim.transmit(&[0x00, 0xB0, 0x00, 0x00, 0x09])?;
        let data = &r[..r.len().saturating_sub(2)];
        Ok(decode_imsi(data))
    }

    /// Run: readings from `sensors`, a status every `status_every`, downlink as it comes.
    pub fn run(
        &mut self,
        sensors: &mut [Sensor],
        status_every: Duration,
        until: Option<Instant>,
    ) -> anyhow::Result<()> {
        self.power_on()?;
        let original_poll = match self.dialogue {
            Dialogue::Original { poll_every } => Some(poll_every),
            Dialogue::Etsi => None,
        };
        let mut next_poll = Instant::now();
        // The original devices never send their status packet.
        let mut next_status = match original_poll {
            Some(_) => until.unwrap_or(Instant::now() + Duration::from_secs(86_400 * 365)),
            None => Instant::now(),
        };
        let mut buf = [0u8; 1500];
        loop {
            let now = Instant::now();
            if until.is_some_and(|u| now >= u) {
                return Ok(());
            }
            let due: Vec<(Instant, Vec<u8>)> =
                self.delayed.extract_if(.., |(at, _)| *at <= now).collect();
            for (_, payload) in due {
                self.socket
                    .send_to(&payload, self.gateway)
                    .context("UDP send")?;
                self.sent += 1;
            }
            if let Some(poll_every) = original_poll.filter(|_| now >= next_poll) {
                self.poll_original()?;
                next_poll = now + poll_every;
            }
            if now >= next_status {
                self.push(&Packet::IotStatus(IotStatus::Nominal).encode()?)?;
                next_status = now + status_every;
            }
            for sensor in sensors.iter_mut().filter(|s| s.next <= now) {
                sensor.next += sensor.period;
                let value = sensor.read();
                let micros = chrono::Utc::now().timestamp_micros();
                let timestamp = chrono::DateTime::from_timestamp_micros(micros).unwrap_or_default();
                let packet =
                    Packet::IotData(IotData::with_value(sensor.device_id, timestamp, value))
                        .encode()?;
                match self.dialogue {
                    Dialogue::Etsi => self.push(&packet)?,
                    Dialogue::Original { .. } => self.send(&packet)?,
                }
            }
            let next_tick = sensors
                .iter()
                .map(|s| s.next)
                .min()
                .unwrap_or(now + status_every)
                .min(next_status)
                .min(original_poll.map_or(next_status, |_| next_poll));
            let wait = next_tick
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), Duration::from_millis(200));
            self.socket
                .set_read_timeout(Some(wait))
                .context("socket timeout")?;
            match self.socket.recv_from(&mut buf) {
                Ok((n, from)) if from == self.gateway => {
                    self.received += 1;
                    if self.chance(self.faults.drop) {
                        debug!("fault: downlink dropped");
                        continue;
                    }
                    let packet = buf[..n].to_vec();
                    self.downlink(&packet)?;
                    if self.chance(self.faults.duplicate) {
                        self.downlink(&packet)?;
                    }
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => warn!(error = %e, "UDP receive failed"),
            }
        }
    }
}

/// EF IMSI (TS 31.102) back to digits.
pub fn decode_imsi(ef: &[u8]) -> String {
    let Some((&len, rest)) = ef.split_first() else {
        return String::new();
    };
    if len == 0xFF || len == 0 {
        return String::new();
    }
    let mut digits = String::new();
    for (i, b) in rest.iter().take(usize::from(len)).enumerate() {
        for (j, nibble) in [b & 0x0F, b >> 4].into_iter().enumerate() {
            if i == 0 && j == 0 {
                continue; // parity nibble
            }
            if nibble <= 9 {
                digits.push(char::from(b'0' + nibble));
            }
        }
    }
    digits
}

#[cfg(test)]
mod tests {
    #[test]
    fn fault_draws_do_not_depend_on_the_seed_being_small() {
        // Each modem's first draw at a 30% drop rate, over a fleet numbered like the tests'.
        let dropped = (5000..6000)
            .filter(|seed| super::FaultDice::new(*seed).roll(0.3))
            .count();
        assert!(
            (250..350).contains(&dropped),
            "{dropped} of 1000 first packets dropped"
        );
        // And along one modem's draws.
        let mut dice = super::FaultDice::new(5000);
        let dropped = (0..10_000).filter(|_| dice.roll(0.3)).count();
        assert!(
            (2_800..3_200).contains(&dropped),
            "{dropped} of 10000 dropped"
        );
    }

    #[test]
    fn sensor_values_stay_in_their_configured_range_and_cover_it() {
        for (device, range) in [(1, "-1000:1000"), (2, "-60:60"), (3, "20:22"), (3, "-5:-5")] {
            let range: ValueRange = range.parse().expect("range");
            let mut sensor = Sensor::with_range(device, 10.0, range);
            let values: Vec<i32> = (0..5_000).map(|_| sensor.read()).collect();
            let (lo, hi) = (
                *values.iter().min().expect("values"),
                *values.iter().max().expect("values"),
            );
            assert!(
                lo >= range.min && hi <= range.max,
                "{device} {range}: {lo}..{hi}"
            );
            let span = i64::from(range.max) - i64::from(range.min);
            assert!(
                i64::from(hi) - i64::from(lo) >= span * 8 / 10,
                "{device} {range}: only {lo}..{hi} used"
            );
        }
        assert_eq!(
            Sensor::new(2, 1.0).range,
            ValueRange { min: -60, max: 60 },
            "defaults are the original devices' spans"
        );
    }

    #[test]
    fn value_ranges_parse_and_bad_ones_say_why() {
        assert_eq!(
            "-3:7".parse::<ValueRange>(),
            Ok(ValueRange { min: -3, max: 7 })
        );
        for bad in ["7", "a:3", "5:1", "1:99999999999"] {
            let err = bad.parse::<ValueRange>().expect_err(bad);
            assert!(err.contains(bad), "{err}");
        }
    }

    use super::*;
    use switchyard_protocol::{AckStatus, Carrier, Frame};
    use switchyard_sim::SimConfig;

    fn modem(v1: bool) -> (Modem<InProcess>, UdpSocket) {
        let gateway = UdpSocket::bind("127.0.0.1:0").expect("bind");
        gateway
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let applet = Applet::new(SimConfig {
            iccid: "8901260000000000042".into(),
            modem_id: 42,
            key: None,
            v1,
            carrier: Carrier::AtAndT,
        });
        let m = Modem::new(
            InProcess(applet),
            gateway.local_addr().expect("addr"),
            Faults::default(),
            7,
        )
        .expect("modem");
        (m, gateway)
    }

    #[test]
    fn readings_go_through_the_sim_to_the_gateway() {
        let (mut m, gateway) = modem(false);
        let mut sensors = vec![Sensor::new(3, 50.0)];
        m.run(
            &mut sensors,
            Duration::from_secs(60),
            Some(Instant::now() + Duration::from_millis(200)),
        )
        .expect("runs");
        let mut buf = [0u8; 512];
        let (n, _) = gateway.recv_from(&mut buf).expect("a packet");
        assert_eq!(
            Frame::decode(&buf[..n]).expect("decodes").packet,
            Packet::CarrierSwitchAck {
                status: AckStatus::Ack,
                carrier: Carrier::AtAndT
            },
            "at power-on the SIM reports its carrier"
        );
        let (n, _) = gateway.recv_from(&mut buf).expect("a packet");
        let status = Frame::decode(&buf[..n]).expect("decodes");
        assert_eq!(
            status.envelope.map(|e| e.modem_id),
            Some(42),
            "the SIM enveloped it"
        );
        assert_eq!(status.packet, Packet::IotStatus(IotStatus::Nominal));
        let (n, _) = gateway.recv_from(&mut buf).expect("a reading");
        assert!(
            matches!(Frame::decode(&buf[..n]).expect("decodes").packet, Packet::IotData(ref d) if d.device_id == 3)
        );
    }

    #[test]
    fn a_perform_from_the_gateway_switches_the_sim_and_the_ack_goes_back() {
        let (mut m, gateway) = modem(true);
        m.power_on().expect("power on");
        let mut buf = [0u8; 64];
        let (n, _) = gateway.recv_from(&mut buf).expect("the carrier report");
        assert_eq!(
            Packet::decode(&buf[..n]).expect("v1"),
            Packet::CarrierSwitchAck {
                status: AckStatus::Ack,
                carrier: Carrier::AtAndT
            }
        );
        // The ETSI path (ENVELOPE data available, RECEIVE DATA) the simulator uses, then the
        // original system's push command: both reach the applet.
        for (carrier, via_push) in [(Carrier::Verizon, false), (Carrier::TMobile, true)] {
            let perform = Packet::CarrierSwitchPerform(carrier)
                .encode()
                .expect("encode");
            if via_push {
                m.push(&perform).expect("push");
            } else {
                m.deliver(&perform).expect("deliver");
            }
            let (n, _) = gateway.recv_from(&mut buf).expect("the ACK");
            assert_eq!(
                Packet::decode(&buf[..n]).expect("v1"),
                Packet::CarrierSwitchAck {
                    status: AckStatus::Ack,
                    carrier
                }
            );
            assert_eq!(
                m.read_imsi().expect("imsi"),
                switchyard_sim::profile(carrier).imsi
            );
        }
    }

    #[test]
    fn an_original_client_sends_readings_itself_and_answers_a_perform_through_its_polls() {
        let (m, gateway) = modem(true);
        let mut m = m.with_dialogue(Dialogue::Original {
            poll_every: Duration::from_millis(20),
        });
        let device = m.socket.local_addr().expect("addr");
        let perform = Packet::CarrierSwitchPerform(Carrier::Verizon)
            .encode()
            .expect("encode");
        // Queued before the run: the modem reads it in its first receive.
        gateway.send_to(&perform, device).expect("send");
        let mut sensors = vec![Sensor::new(1, 20.0)];
        m.run(
            &mut sensors,
            Duration::from_millis(10),
            Some(Instant::now() + Duration::from_millis(400)),
        )
        .expect("runs");
        let mut buf = [0u8; 512];
        let (mut readings, mut acks) = (0, Vec::new());
        gateway
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        while let Ok((n, _)) = gateway.recv_from(&mut buf) {
            match Packet::decode(&buf[..n]).expect("bare v1 packets only") {
                Packet::IotData(_) => readings += 1,
                ack @ Packet::CarrierSwitchAck { .. } => acks.push(ack),
                other => panic!("the original devices send no {other:?}"),
            }
        }
        assert!(readings >= 4, "{readings} readings in 400 ms at 20 Hz");
        let ack = |carrier| Packet::CarrierSwitchAck {
            status: AckStatus::Ack,
            carrier,
        };
        assert_eq!(
            acks,
            vec![ack(Carrier::AtAndT), ack(Carrier::Verizon)],
            "the power-on carrier report, then the switch's ACK"
        );
        assert_eq!(
            m.read_imsi().expect("imsi"),
            switchyard_sim::profile(Carrier::Verizon).imsi
        );
    }

    #[test]
    fn imsi_decoding_matches_the_sim() {
        assert_eq!(
            decode_imsi(&[0x08, 0x39, 0x01, 0x14, 0, 0, 0, 0, 0x10]),
            "310410000000001"
        );
        assert_eq!(decode_imsi(&[0xFF; 9]), "");
    }
}
