//! The floor under the gateway's CPU per datagram: the least a process spends to take a
//! datagram off a UDP socket and have librdkafka deliver its bytes as a record, with the
//! gateway's producer settings for readings. One thread receives (blocking `recv_from`, one
//! call per datagram) and hands each datagram's bytes to a `ThreadedProducer` whose delivery
//! reports only count. No decoding, no registry, no sessions, no metrics.
//!
//! It runs inside the bench process; its CPU is read per thread (the receiving thread,
//! rust-rdkafka's polling thread, librdkafka's broker threads) from `/proc/self/task`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use switchyard_testkit::free_port;

use crate::gateway_bench::{
    raw_producer_config, raw_route, send_paced, settle, Counts, UDP_BUFFER,
};
use crate::idle_bench::threads_cpu_seconds;

const RECEIVE_THREAD: &str = "raw-floor";

/// CPU per datagram, µs, by thread group.
pub(crate) struct Floor {
    pub receive: f64,
    pub delivery: f64,
    pub broker_threads: f64,
}

impl Floor {
    pub(crate) fn total(&self) -> f64 {
        self.receive + self.delivery + self.broker_threads
    }
}

#[derive(Default)]
struct Counting {
    acked: AtomicU64,
    failed: AtomicU64,
}

struct CountingContext(Arc<Counting>);

impl ClientContext for CountingContext {}

impl ProducerContext for CountingContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let counter = match result {
            Ok(_) => &self.0.acked,
            Err(_) => &self.0.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Offer `packets` at `rate` per second to a fresh floor loop; its CPU per datagram.
pub(crate) fn measure(bootstrap: &str, packets: &[Vec<u8>], rate: u64) -> anyhow::Result<Floor> {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let socket = switchyard_gateway::bind_udp(addr, UDP_BUFFER)?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let counting = Arc::new(Counting::default());
    let producer: ThreadedProducer<CountingContext> = raw_producer_config(bootstrap)
        .create_with_context(CountingContext(Arc::clone(&counting)))?;
    let producer = Arc::new(producer);
    let tally = Arc::clone(&counting);
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let receiver = {
        let (producer, stop, received) = (producer.clone(), stop.clone(), received.clone());
        std::thread::Builder::new()
            .name(RECEIVE_THREAD.into())
            .spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, _)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    let nth = received.fetch_add(1, Ordering::Relaxed) as usize;
                    let (topic, key) = raw_route(&buf[..n], nth);
                    let record = BaseRecord::to(topic).key(key).payload(&buf[..n]);
                    if producer.send(record).is_err() {
                        counting.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })?
    };
    let pid = std::process::id();
    let threads = || -> anyhow::Result<[f64; 3]> {
        Ok([
            threads_cpu_seconds(pid, RECEIVE_THREAD)?,
            threads_cpu_seconds(pid, "producer poll")?,
            threads_cpu_seconds(pid, "rdk:broker")?,
        ])
    };
    let before = threads()?;
    let (_, last) = send_paced(addr, packets, rate)?;
    let counts = || Counts {
        received: received.load(Ordering::Relaxed) as f64,
        acked: tally.acked.load(Ordering::Relaxed) as f64,
        lost: tally.failed.load(Ordering::Relaxed) as f64,
        held: 0.0,
    };
    let (c, _) = settle(counts, last)?;
    let after = threads()?;
    stop.store(true, Ordering::Relaxed);
    receiver
        .join()
        .map_err(|_| anyhow::anyhow!("the floor's receiving thread panicked"))?;
    let per = |i: usize| (after[i] - before[i]) * 1e6 / c.received.max(1.0);
    Ok(Floor {
        receive: per(0),
        delivery: per(1),
        broker_threads: per(2),
    })
}
