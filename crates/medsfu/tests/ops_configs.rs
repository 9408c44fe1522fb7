//! The operators' files: the Prometheus alert rules pass `promtool check rules` and their
//! own `promtool test rules` cases, the scrape configuration passes `promtool check
//! config`, and the Grafana dashboard is importable JSON whose panels all query something.
//! (That every metric they name exists in `/metrics` is checked in tests/vehicle.rs, with
//! a vehicle streaming.)

use std::path::PathBuf;
use std::process::Command;

fn config_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(config_dir().join("prometheus"))
        .output()
        .expect("promtool (Debian package prometheus; scripts/test.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_alert_rules_are_valid_and_their_unit_tests_pass() {
    let out = promtool(&["check", "rules", "medsfu-alerts.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = promtool(&["test", "rules", "medsfu-alerts.test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = promtool(&["check", "config", "prometheus.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn the_dashboard_is_importable_and_every_panel_queries_medsfu() {
    let path = config_dir().join("grafana/medsfu-dashboard.json");
    let text = std::fs::read_to_string(&path).expect("dashboard file");
    let d: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    assert_eq!(d["uid"], "medsfu");
    assert!(d["title"].is_string());
    let mut panels = Vec::new();
    let mut stack: Vec<&serde_json::Value> =
        d["panels"].as_array().expect("panels").iter().collect();
    while let Some(p) = stack.pop() {
        if let Some(inner) = p["panels"].as_array() {
            stack.extend(inner);
        }
        if p["type"] != "row" {
            panels.push(p);
        }
    }
    assert!(panels.len() >= 15, "{} panels", panels.len());
    for p in panels {
        let exprs: Vec<&str> = p["targets"]
            .as_array()
            .map(|t| t.iter().filter_map(|t| t["expr"].as_str()).collect())
            .unwrap_or_default();
        assert!(
            !exprs.is_empty() && exprs.iter().all(|e| e.contains("medsfu_")),
            "panel {:?} queries {exprs:?}",
            p["title"]
        );
    }
}
