//! The registry's REST API against a real broker: Confluent's answers and error codes,
//! persistence across restarts, and two instances agreeing.

mod common;

use common::{record, start_registry, Http};
use serde_json::{json, Value};
use switchyard_testkit::Broker;

fn error_code(body: &Value) -> i64 {
    body["error_code"]
        .as_i64()
        .unwrap_or_else(|| panic!("no error_code in {body}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn confluent_api_contract() {
    let broker = Broker::start().expect("broker");
    let registry = start_registry(&broker, "registry");
    let http = Http::new(&registry.url);
    let v1 = record("Reading", r#"{"name":"value","type":"int"}"#);
    let v2 = record(
        "Reading",
        r#"{"name":"value","type":"int"},{"name":"unit","type":"string","default":"C"}"#,
    );
    // int -> string cannot be resolved: no reader of one can read the other.
    let breaking = record("Reading", r#"{"name":"value","type":"string"}"#);

    // Empty registry; Grafana's datasource health check expects exactly this 404.
    assert_eq!(http.get("/subjects").await, (200, json!([])));
    let (status, body) = http
        .get("/subjects/_test_connectivity_subject_/versions/latest")
        .await;
    assert_eq!((status, error_code(&body)), (404, 40401));

    // Register, idempotently; the same schema under another subject shares the id.
    let (status, body) = http
        .post("/subjects/temp-value/versions", json!({"schema": v1}))
        .await;
    assert_eq!(status, 200, "{body}");
    let id1 = body["id"].as_i64().expect("id");
    assert_eq!(
        http.post(
            "/subjects/temp-value/versions",
            json!({"schema": v1, "schemaType": "AVRO"})
        )
        .await
        .1["id"],
        json!(id1)
    );
    assert_eq!(
        http.post("/subjects/imu-value/versions", json!({"schema": v1}))
            .await
            .1["id"],
        json!(id1)
    );

    // Reads.
    let (status, body) = http.get("/subjects/temp-value/versions/latest").await;
    assert_eq!(status, 200);
    assert_eq!(body["subject"], "temp-value");
    assert_eq!(body["version"], 1);
    assert_eq!(body["id"], json!(id1));
    assert_eq!(body["schema"], json!(v1));
    assert_eq!(
        http.get(&format!("/schemas/ids/{id1}")).await,
        (200, json!({"schema": v1}))
    );
    let (status, body) = http.get("/schemas/ids/999").await;
    assert_eq!((status, error_code(&body)), (404, 40403));
    let (status, body) = http.get("/subjects/temp-value/versions/7").await;
    assert_eq!((status, error_code(&body)), (404, 40402));
    let (status, body) = http.get("/subjects/temp-value/versions/0").await;
    assert_eq!((status, error_code(&body)), (422, 42202));
    assert_eq!(
        http.get(&format!("/schemas/ids/{id1}/subjects")).await,
        (200, json!(["imu-value", "temp-value"]))
    );
    assert_eq!(http.get("/schemas/types").await, (200, json!(["AVRO"])));

    // BACKWARD by default: a compatible evolution registers, a breaking one is refused.
    let (status, body) = http
        .post("/subjects/temp-value/versions", json!({"schema": v2}))
        .await;
    assert_eq!(status, 200, "{body}");
    let id2 = body["id"].as_i64().expect("id");
    assert_ne!(id1, id2);
    let (status, body) = http
        .post("/subjects/temp-value/versions", json!({"schema": breaking}))
        .await;
    assert_eq!((status, error_code(&body)), (409, 409), "{body}");
    assert_eq!(
        http.get("/subjects/temp-value/versions").await,
        (200, json!([1, 2]))
    );

    // Compatibility checks.
    let (status, body) = http
        .post(
            "/compatibility/subjects/temp-value/versions/latest?verbose=true",
            json!({"schema": breaking}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["is_compatible"], false);
    assert!(!body["messages"].as_array().expect("messages").is_empty());
    let (_, body) = http
        .post(
            "/compatibility/subjects/temp-value/versions/1",
            json!({"schema": v2}),
        )
        .await;
    assert_eq!(body, json!({"is_compatible": true}));

    // Bad input.
    let (status, body) = http
        .post(
            "/subjects/temp-value/versions",
            json!({"schema": "{not avro"}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (422, 42201));
    let (status, body) = http
        .post(
            "/subjects/temp-value/versions",
            json!({"schema": v1, "schemaType": "PROTOBUF"}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (422, 42201));
    let (status, body) = http
        .put("/config", json!({"compatibility": "SIDEWAYS"}))
        .await;
    assert_eq!((status, error_code(&body)), (422, 42203));
    let (status, body) = http.get("/no/such/route").await;
    assert_eq!((status, error_code(&body)), (404, 404));

    // Lookup.
    let (status, body) = http
        .post("/subjects/temp-value", json!({"schema": v1}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (body["version"].clone(), body["id"].clone()),
        (json!(1), json!(id1))
    );
    let (status, body) = http
        .post("/subjects/temp-value", json!({"schema": breaking}))
        .await;
    assert_eq!((status, error_code(&body)), (404, 40403));
    let (status, body) = http
        .post("/subjects/nope-value", json!({"schema": v1}))
        .await;
    assert_eq!((status, error_code(&body)), (404, 40401));

    // Config: global and per subject.
    assert_eq!(
        http.get("/config").await,
        (200, json!({"compatibilityLevel": "BACKWARD"}))
    );
    let (status, body) = http.get("/config/temp-value").await;
    assert_eq!((status, error_code(&body)), (404, 40408));
    assert_eq!(
        http.get("/config/temp-value?defaultToGlobal=true").await.1,
        json!({"compatibilityLevel": "BACKWARD"})
    );
    assert_eq!(
        http.put("/config/temp-value", json!({"compatibility": "NONE"}))
            .await,
        (200, json!({"compatibility": "NONE"}))
    );
    assert_eq!(
        http.get("/config/temp-value").await.1,
        json!({"compatibilityLevel": "NONE"})
    );
    let (status, body) = http
        .post("/subjects/temp-value/versions", json!({"schema": breaking}))
        .await;
    assert_eq!(status, 200, "NONE lets anything in: {body}");
    assert_eq!(
        http.delete("/config/temp-value").await,
        (200, json!({"compatibilityLevel": "NONE"}))
    );
    assert_eq!(
        http.put("/config", json!({"compatibility": "FULL"})).await,
        (200, json!({"compatibility": "FULL"}))
    );
    assert_eq!(
        http.get("/config").await.1,
        json!({"compatibilityLevel": "FULL"})
    );

    // Soft and hard deletes of versions.
    assert_eq!(
        http.delete("/subjects/temp-value/versions/3").await,
        (200, json!(3))
    );
    let (status, body) = http.get("/subjects/temp-value/versions/3").await;
    assert_eq!((status, error_code(&body)), (404, 40402));
    assert_eq!(
        http.get("/subjects/temp-value/versions/3?deleted=true")
            .await
            .0,
        200
    );
    let (status, body) = http.delete("/subjects/temp-value/versions/3").await;
    assert_eq!((status, error_code(&body)), (404, 40406));
    let (status, body) = http
        .delete("/subjects/temp-value/versions/2?permanent=true")
        .await;
    assert_eq!((status, error_code(&body)), (404, 40407));
    assert_eq!(
        http.delete("/subjects/temp-value/versions/3?permanent=true")
            .await,
        (200, json!(3))
    );
    assert_eq!(
        http.get("/subjects/temp-value/versions?deleted=true")
            .await
            .1,
        json!([1, 2])
    );

    // Soft and hard deletes of subjects.
    let (status, body) = http.delete("/subjects/imu-value?permanent=true").await;
    assert_eq!((status, error_code(&body)), (404, 40405));
    assert_eq!(http.delete("/subjects/imu-value").await, (200, json!([1])));
    let (status, body) = http.delete("/subjects/imu-value").await;
    assert_eq!((status, error_code(&body)), (404, 40404));
    assert_eq!(http.get("/subjects").await.1, json!(["temp-value"]));
    assert_eq!(
        http.get("/subjects?deleted=true").await.1,
        json!(["imu-value", "temp-value"])
    );
    assert_eq!(
        http.delete("/subjects/imu-value?permanent=true").await,
        (200, json!([1]))
    );
    assert_eq!(
        http.get("/subjects?deleted=true").await.1,
        json!(["temp-value"])
    );
    let (status, body) = http.get("/subjects/imu-value/versions").await;
    assert_eq!((status, error_code(&body)), (404, 40401));

    // Prometheus sees each answer under its route pattern and status.
    let metrics = reqwest::get(format!("{}/metrics", registry.url))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    let registrations = r#"switchyard_registry_requests_total{method="POST",route="/subjects/{subject}/versions",status="200"}"#;
    assert!(
        metrics.lines().any(|l| l.starts_with(registrations)),
        "no {registrations} in:\n{metrics}"
    );
    let not_found = r#"switchyard_registry_requests_total{method="GET",route="/subjects/{subject}/versions",status="404"}"#;
    assert!(
        metrics.lines().any(|l| l.starts_with(not_found)),
        "no {not_found} in:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ids_survive_a_restart_and_two_instances_agree() {
    let broker = Broker::start().expect("broker");
    let mut first = start_registry(&broker, "registry-a");
    let a = Http::new(&first.url);
    let schemas: Vec<String> = (0..4)
        .map(|i| record(&format!("R{i}"), r#"{"name":"x","type":"int"}"#))
        .collect();
    let mut ids = Vec::new();
    for (i, s) in schemas.iter().enumerate() {
        let (status, body) = a
            .post(
                &format!("/subjects/s{i}-value/versions"),
                json!({"schema": s}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        ids.push(body["id"].clone());
    }

    // A second instance reads the same topic and agrees.
    let second = start_registry(&broker, "registry-b");
    let b = Http::new(&second.url);
    for (i, s) in schemas.iter().enumerate() {
        let (_, body) = b
            .get(&format!("/subjects/s{i}-value/versions/latest"))
            .await;
        assert_eq!(body["id"], ids[i]);
        assert_eq!(body["schema"], json!(s));
    }

    // Concurrent registrations of distinct schemas through both instances: every schema gets
    // one id, no id is given to two schemas, and both instances see the same registry.
    let new: Vec<String> = (0..12)
        .map(|i| record(&format!("C{i}"), r#"{"name":"y","type":"long"}"#))
        .collect();
    let mut tasks = Vec::new();
    for (i, s) in new.iter().enumerate() {
        let http = Http::new(if i % 2 == 0 { &first.url } else { &second.url });
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            http.post(
                &format!("/subjects/c{i}-value/versions"),
                json!({"schema": s}),
            )
            .await
        }));
    }
    let mut new_ids = Vec::new();
    for t in tasks {
        let (status, body) = t.await.expect("task");
        assert_eq!(status, 200, "{body}");
        new_ids.push(body["id"].as_i64().expect("id"));
    }
    let mut unique = new_ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        new.len(),
        "each distinct schema has its own id: {new_ids:?}"
    );
    for (i, id) in new_ids.iter().enumerate() {
        for http in [&a, &b] {
            let (status, body) = http.get(&format!("/schemas/ids/{id}")).await;
            assert_eq!(status, 200, "{} lacks id {id}: {body}", http.base);
            assert_eq!(body["schema"], json!(new[i]));
        }
    }

    // Restart the first instance: everything is still there, with the same ids.
    first.service.kill();
    first = start_registry(&broker, "registry-a2");
    let a = Http::new(&first.url);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            a.get(&format!("/subjects/s{i}-value/versions/1")).await.1["id"],
            *id
        );
    }
    assert_eq!(
        a.get("/subjects").await.1.as_array().map(Vec::len),
        Some(16)
    );
}
