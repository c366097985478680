//! carrier-state on a real broker and registry.

use std::time::Duration;
use switchyard_schemas::records::now_us;

use switchyard_schemas::records::{
    AckStatus, Carrier, CarrierState, CarrierSwitchAck, CarrierSwitchRequest, DeliveryEvent,
    DownlinkDelivery, RequestState,
};
use switchyard_testkit::{wait_for, Stack};

fn latest_state(stack: &Stack, modem: &str) -> Option<CarrierState> {
    stack
        .read_to_end::<CarrierState>("carrier-state")
        .ok()?
        .into_iter()
        .rfind(|r| r.raw.key.as_deref() == Some(modem.as_bytes()))
        .map(|r| r.value)
}

#[test]
fn switches_are_tracked_to_their_end_and_deadlines_fire_without_traffic() {
    let stack = Stack::start().expect("stack");
    let (_processor, _) = stack
        .start_processor(
            "carrier-state",
            "carrier-state",
            &[("SWITCHYARD_DEADLINE_CHECK_MS", "200".into())],
        )
        .expect("healthy");

    // Acknowledged switch.
    let t = now_us();
    let acked = CarrierSwitchRequest {
        request_id: "00000000000000a1".into(),
        modem_id: "1001".into(),
        carrier: Carrier::Verizon,
        requested_at: t,
        deadline: t + 60_000_000,
        requested_by: Some("test".into()),
    };
    stack
        .produce(
            "downstream-request",
            &[("1001".into(), acked.clone(), t / 1000)],
        )
        .expect("produce");
    let sent = DownlinkDelivery {
        request_id: acked.request_id.clone(),
        modem_id: "1001".into(),
        event: DeliveryEvent::Sent,
        attempt: 1,
        address: Some("127.0.0.1:40000".into()),
        reason: None,
        at: t + 1000,
    };
    stack
        .produce("downlink-delivery", &[("1001".into(), sent, t / 1000)])
        .expect("produce");
    let ack = CarrierSwitchAck {
        modem_id: "1001".into(),
        request_id: Some(acked.request_id.clone()),
        status: AckStatus::Ack,
        carrier: Carrier::Verizon,
        received_at: t + 2000,
        sequence: Some(1),
        reason: None,
    };
    stack
        .produce("carrier-switch-ack", &[("1001".into(), ack, t / 1000)])
        .expect("produce");

    // A switch nobody answers, with a 2 s deadline.
    let unanswered = CarrierSwitchRequest {
        request_id: "00000000000000b2".into(),
        modem_id: "1002".into(),
        carrier: Carrier::TMobile,
        requested_at: t,
        deadline: t + 2_000_000,
        requested_by: None,
    };
    stack
        .produce(
            "downstream-request",
            &[("1002".into(), unanswered, t / 1000)],
        )
        .expect("produce");

    wait_for(
        "the switch to be acknowledged",
        Duration::from_secs(90),
        || {
            latest_state(&stack, "1001").is_some_and(|s| {
                s.carrier == Some(Carrier::Verizon)
                    && s.requests.first().is_some_and(|r| {
                        r.state == RequestState::Acked && r.sent_at == Some(t + 1000)
                    })
            })
        },
    )
    .expect("acked");
    wait_for(
        "the unanswered switch to time out",
        Duration::from_secs(90),
        || {
            latest_state(&stack, "1002").is_some_and(|s| {
                s.requests
                    .first()
                    .is_some_and(|r| r.state == RequestState::TimedOut)
            })
        },
    )
    .expect("timed out");
}
