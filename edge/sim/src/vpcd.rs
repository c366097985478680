//! Serve an [`Applet`] as the card in vsmartcard's `vpcd` virtual reader, so the real PC/SC
//! stack (`pcscd`, and any PC/SC client such as the `pcsc` crate) sees it as a smart card.
//!
//! vpcd listens (TCP 127.0.0.1:35963 for its first slot); the card connects. Every message
//! either way is a u16 big-endian length and a payload. From the reader: `00` power off,
//! `01` power on, `02` reset (no reply), `04` get ATR (reply: the ATR); anything longer is a
//! C-APDU, answered with the R-APDU. Closing the connection removes the card.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::Applet;

/// Answer the reader on one connection until it closes. Returns how many APDUs were served.
pub fn serve(stream: &mut TcpStream, applet: &mut Applet) -> std::io::Result<u64> {
    let mut served = 0;
    loop {
        let mut len = [0u8; 2];
        match stream.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(served),
            Err(e) => return Err(e),
        }
        let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut message)?;
        let reply: Option<Vec<u8>> = match message.as_slice() {
            [0x00] => {
                debug!("power off");
                None
            }
            [0x01] | [0x02] => {
                debug!("power on / reset");
                applet.reset();
                None
            }
            [0x04] => Some(crate::ATR.to_vec()),
            [other] => {
                warn!(control = other, "unknown vpcd control byte; ignored");
                None
            }
            apdu => {
                served += 1;
                Some(applet.transmit(apdu))
            }
        };
        if let Some(reply) = reply {
            let len = u16::try_from(reply.len()).unwrap_or(u16::MAX);
            stream.write_all(&len.to_be_bytes())?;
            stream.write_all(&reply[..usize::from(len)])?;
        }
    }
}

/// Connect to vpcd and serve the card, reconnecting whenever the reader goes away.
pub fn run(vpcd: SocketAddr, mut applet: Applet) -> ! {
    let mut announced = false;
    loop {
        match TcpStream::connect_timeout(&vpcd, Duration::from_secs(2)) {
            Ok(mut stream) => {
                let _ = stream.set_nodelay(true);
                info!(%vpcd, "card inserted in the virtual reader");
                announced = false;
                match serve(&mut stream, &mut applet) {
                    Ok(n) => info!(apdus = n, "the reader closed the connection; reconnecting"),
                    Err(e) => warn!(error = %e, "connection to vpcd failed; reconnecting"),
                }
            }
            Err(e) => {
                if !announced {
                    warn!(%vpcd, error = %e, "vpcd not reachable (is pcscd running with vsmartcard-vpcd?); retrying every second");
                    announced = true;
                }
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    use switchyard_protocol::Carrier;

    use crate::SimConfig;

    /// Play vpcd's side against `serve` over a real TCP connection.
    #[test]
    fn speaks_vpcd_framing() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let card = std::thread::spawn(move || {
            let mut stream = TcpStream::connect(addr).expect("connect");
            let mut applet = Applet::new(SimConfig {
                iccid: "8901260000000000042".into(),
                modem_id: 42,
                key: None,
                v1: true,
                carrier: Carrier::AtAndT,
            });
            serve(&mut stream, &mut applet).expect("serve")
        });
        let (mut reader, _) = listener.accept().expect("accept");
        let mut send = |payload: &[u8], expect_reply: bool| -> Option<Vec<u8>> {
            reader
                .write_all(&(payload.len() as u16).to_be_bytes())
                .expect("write");
            reader.write_all(payload).expect("write");
            expect_reply.then(|| {
                let mut len = [0u8; 2];
                reader.read_exact(&mut len).expect("len");
                let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
                reader.read_exact(&mut reply).expect("reply");
                reply
            })
        };
        send(&[0x01], false);
        assert_eq!(send(&[0x04], true), Some(crate::ATR.to_vec()));
        let r = send(&[0x00, 0xA4, 0x00, 0x04, 0x02, 0x2F, 0xE2], true).expect("reply");
        assert_eq!(r[0], 0x91, "OPEN CHANNEL pending after power-on");
        send(&[0x00], false);
        drop(reader);
        assert_eq!(
            card.join().expect("card thread"),
            1,
            "one APDU served, then the reader closed"
        );
    }
}
