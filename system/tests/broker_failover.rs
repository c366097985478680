//! Broker failover on a three-node Apache Kafka cluster (three JVMs, every topic replicated
//! three times with `min.insync.replicas=2`): the node leading `imu`'s partitions is killed
//! (SIGKILL) while readings flow, and the gateway, grafana-projector and carrier-state carry
//! on by themselves.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use switchyard_schemas::records::{
    now_us, Carrier, CarrierState, CarrierSwitchRequest, RequestState, SensorReading,
};
use switchyard_testkit::{http_get_text, metric_sum, wait_for, Stack};

const WAIT: Duration = Duration::from_secs(180);
const FIRST_MODEM: u64 = 7000;
const FLEET: u64 = 5;
/// Readings per second of the whole fleet (imu only).
const RATE: u64 = FLEET * 20;

fn leaders(bootstrap: &str, topic: &str) -> HashMap<i32, i32> {
    switchyard_testkit::kafka::leaders(bootstrap, topic).expect("metadata")
}

#[test]
fn killing_the_leader_of_the_readings_loses_nothing_the_gateway_acknowledged() {
    let mut stack = Stack::start_cluster().expect("a three-node cluster");
    let bootstrap = stack.broker.bootstrap();
    let switchyard_testkit::Gateway {
        service: _gateway,
        udp,
        metrics: gateway_metrics,
    } = stack.start_gateway(&[]).expect("gateway");
    let (_projector, _) = stack
        .start_processor("grafana-projector", "grafana-projector", &[])
        .expect("projector");
    let (_carrier_state, _) = stack
        .start_processor("carrier-state", "carrier-state", &[])
        .expect("carrier-state");
    let mut modems = stack
        .start_fleet(udp, FIRST_MODEM, FLEET, "20,0,0", 2)
        .expect("modems");
    wait_for("readings to flow through the projector", WAIT, || {
        switchyard_testkit::kafka::read_to_end(&bootstrap, "imu-grafana")
            .is_ok_and(|r| r.len() >= 300)
    })
    .expect("flowing");
    wait_for("every modem known to carrier-state", WAIT, || {
        let seen = stack.modems_in_carrier_state();
        (FIRST_MODEM..FIRST_MODEM + FLEET).all(|m| seen.contains(&m.to_string()))
    })
    .expect("modems heard");

    // The node leading most of imu's partitions, checked as the leader just before the kill.
    let before = leaders(&bootstrap, "imu");
    let mut count: HashMap<i32, usize> = HashMap::new();
    for leader in before.values() {
        *count.entry(*leader).or_default() += 1;
    }
    let (victim, led) = count
        .into_iter()
        .max_by_key(|(id, n)| (*n, -id))
        .expect("imu has leaders");
    let victim_partitions: Vec<i32> = before
        .iter()
        .filter(|(_, l)| **l == victim)
        .map(|(p, _)| *p)
        .collect();
    assert!(led > 0 && victim > 0, "{before:?}");
    let victim_addr = stack
        .broker
        .node_addr(victim as u32)
        .expect("node")
        .to_string();
    stack
        .broker
        .kill_node(victim as u32)
        .expect("kill the leader");
    eprintln!("killed node {victim}, leader of imu partitions {victim_partitions:?}");

    // A switch requested during the failover.
    let t = now_us();
    let request_id = "00000000f0f0f0f0".to_string();
    let modem = FIRST_MODEM.to_string();
    let request = CarrierSwitchRequest {
        request_id: request_id.clone(),
        modem_id: modem.clone(),
        carrier: Carrier::Verizon,
        requested_at: t,
        deadline: t + 120_000_000,
        requested_by: Some("failover-test".into()),
    };
    stack
        .produce("downstream-request", &[(modem.clone(), request, t / 1000)])
        .expect("the request is written with a node down");

    // The partitions moved to the surviving nodes.
    let surviving: String = bootstrap
        .split(',')
        .filter(|a| *a != victim_addr)
        .collect::<Vec<_>>()
        .join(",");
    wait_for("new leaders for the killed node's partitions", WAIT, || {
        let now = leaders(&surviving, "imu");
        victim_partitions
            .iter()
            .all(|p| now.get(p).is_some_and(|l| *l > 0 && *l != victim))
    })
    .expect("failover");
    // Readings go on flowing for a while, then stop.
    let metric = |name: &str| {
        metric_sum(
            &http_get_text(gateway_metrics, "/metrics").unwrap_or_default(),
            name,
        )
    };
    let at_kill = metric("switchyard_gateway_packets_total{type=\"iot_data\"}");
    wait_for("more readings accepted after the failover", WAIT, || {
        metric("switchyard_gateway_packets_total{type=\"iot_data\"}") >= at_kill + 2.0 * RATE as f64
    })
    .expect("the gateway goes on");
    modems.kill();

    wait_for("the switch to be acked", WAIT, || {
        stack
            .read_to_end::<CarrierState>("carrier-state")
            .unwrap_or_default()
            .into_iter()
            .rev()
            .find(|r| r.value.modem_id == modem)
            .is_some_and(|r| {
                r.value
                    .requests
                    .iter()
                    .any(|q| q.request_id == request_id && q.state == RequestState::Acked)
            })
    })
    .expect("a switch requested during the failover ends acked");

    // Every reading the gateway had acknowledged by the broker is on imu, and projected.
    wait_for("the gateway's buffer to drain", WAIT, || {
        metric("switchyard_gateway_buffered_records") == 0.0
    })
    .expect("drained");
    let accepted = metric("switchyard_gateway_packets_total{type=\"iot_data\"}");
    let counted_lost = metric("switchyard_gateway_backpressure_total")
        + metric("switchyard_gateway_produce_failures_total");
    assert_eq!(
        counted_lost, 0.0,
        "nothing lost: the cluster had a quorum throughout"
    );
    let expected = accepted as usize;
    let on_imu = stack.read_to_end::<SensorReading>("imu").expect("imu");
    let distinct: HashSet<(String, i64)> = on_imu
        .iter()
        .map(|r| (r.value.modem_id.clone(), r.value.timestamp))
        .collect();
    assert_eq!(
        distinct.len(),
        expected,
        "every accepted reading on imu, once the topic is read to its end"
    );
    // The readings' producer is not idempotent (one request in flight per connection): a
    // request the dead leader had written but not acknowledged is sent again. That is at
    // most one request's records, far less than a second of readings.
    let duplicates = on_imu.len() - distinct.len();
    assert!(
        duplicates <= RATE as usize,
        "{duplicates} duplicates on imu exceed one second of readings ({RATE})"
    );
    let projected = stack
        .projected("imu-grafana", distinct.len(), WAIT)
        .unwrap_or_else(|e| panic!("every reading projected: {e:#}"));
    let on_imu_ms: HashSet<(String, i64)> = distinct
        .iter()
        .map(|(m, t)| (m.clone(), t.div_euclid(1000)))
        .collect();
    assert_eq!(
        projected, on_imu_ms,
        "imu-grafana holds exactly imu's readings"
    );
}
