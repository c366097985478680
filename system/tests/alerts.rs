//! The alert rules in `monitoring/alerts.yml`, checked and unit-tested by Prometheus' own
//! `promtool` (Debian's `prometheus` package, installed by `make test`): every rule is fired
//! by series written in `monitoring/alerts_test.yml`, and stays quiet where it must.

use std::path::Path;
use std::process::Command;

fn promtool(args: &[&str]) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitoring");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("promtool runs (Debian's prometheus package; scripts/deps.sh --test installs it)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_are_valid_and_their_unit_tests_pass() {
    let checked = promtool(&["check", "rules", "alerts.yml"]);
    assert!(checked.contains("SUCCESS: 12 rules found"), "{checked}");
    promtool(&["test", "rules", "alerts_test.yml"]);
}

#[test]
fn every_alert_rule_has_a_unit_test() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitoring");
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).expect("alerts.yml");
    let tests = std::fs::read_to_string(dir.join("alerts_test.yml")).expect("alerts_test.yml");
    for name in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!(
                "alertname: {name}\n        exp_alerts:\n          - "
            )),
            "{name} is never shown firing in alerts_test.yml"
        );
    }
}

#[test]
fn alert_rules_use_only_metrics_the_services_export() {
    // promtool's tests feed the rules series named in the test file, so a metric renamed in
    // a service would leave its rule silent without failing them: check the names here.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitoring");
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).expect("alerts.yml");
    let exprs: Vec<&str> = rules
        .lines()
        .skip_while(|l| !l.contains("rules:"))
        .filter(|l| !l.trim_start().starts_with('#') && !l.contains("summary:"))
        .collect();
    let mut checked = 0;
    for line in exprs {
        for metric in switchyard_testkit::metrics_in(line) {
            assert!(
                switchyard_testkit::metric_registered(metric).expect("sources"),
                "alerts.yml uses {metric}, which no service registers"
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "{checked} metric uses checked");
}
