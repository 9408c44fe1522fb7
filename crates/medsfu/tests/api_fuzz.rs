//! The control API fuzzed from its own OpenAPI document with schemathesis: no server
//! errors, and every response documented (status, content type, body schema).

mod support;

use std::path::PathBuf;
use std::process::Command;

use serde_json::{json, Value};
use support::{user_add, Server};

/// schemathesis' `st`, installed by scripts/test.sh into target/schemathesis.
fn schemathesis() -> PathBuf {
    if let Ok(p) = std::env::var("MEDSFU_SCHEMATHESIS") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/schemathesis/bin/st");
    assert!(
        p.exists(),
        "schemathesis is not installed at {}: run scripts/test.sh (it installs it) or set \
         MEDSFU_SCHEMATHESIS",
        p.display()
    );
    p
}

async fn login(http: &str, user: &str) -> String {
    let r = reqwest::Client::new()
        .post(format!("{http}/api/login"))
        .header("content-type", "application/json")
        .body(json!({ "user": user, "password": "correct horse battery" }).to_string())
        .send()
        .await
        .expect("login");
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = serde_json::from_str(&r.text().await.expect("body")).expect("JSON");
    v["token"].as_str().expect("token").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_errors_and_no_undocumented_responses() {
    let st = schemathesis();
    let server = Server::start(&[]);
    for (name, role) in [("root", "admin"), ("ana", "consultant")] {
        user_add(&server.data.0, name, role, "correct horse battery");
    }
    let doc = format!("{}/api/openapi.json", server.http);
    // As an operator (who may do most) and as a consultant (who is refused much).
    for user in ["root", "ana"] {
        let token = login(&server.http, user).await;
        let out = tokio::task::spawn_blocking({
            let (st, doc) = (st.clone(), doc.clone());
            move || {
                Command::new(st)
                    .args(["run", &doc])
                    .args(["-H", &format!("Authorization: Bearer {token}")])
                    .args([
                        "-c",
                        "not_a_server_error,response_schema_conformance,\
                         status_code_conformance,content_type_conformance",
                    ])
                    // The call feed streams until the client leaves: tested in control.rs.
                    .args(["--exclude-path", "/api/calls/events"])
                    .args(["--phases", "examples,coverage,fuzzing"])
                    .args(["-n", "25", "--seed", "7", "--no-color"])
                    .args(["--request-timeout", "10"])
                    .output()
                    .expect("run schemathesis")
            }
        })
        .await
        .expect("schemathesis task");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let tail: Vec<&str> = text.lines().rev().take(12).collect();
        println!(
            "schemathesis as {user}: exit {:?}\n{}",
            out.status.code(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        assert!(
            out.status.success(),
            "schemathesis as {user} found problems:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !server.logs().contains("panicked"),
            "the server panicked:\n{}",
            server.logs()
        );
    }
}
