//! `outpost-fleet serve` as an operator meets it: the real binary, the `outpost device` CLI against it, and the API's
//! answers to every role and to malformed requests (4xx, never 5xx).

use std::process::Command;
use std::time::Duration;

#[path = "processes/fleet.rs"]
mod processes;

/// The real fleet, in its own temp dir (see `processes/fleet.rs`).
type Fleet = processes::Owned;

fn client() -> reqwest::blocking::Client {
    // No connection reuse: a server refusing an oversized body closes the connection while the body is still sent.
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

fn start() -> Fleet {
    processes::Owned::start_blocking(&processes::FleetOptions::default())
}

fn outpost(fleet: &Fleet, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(args)
        .env("OUTPOST_FLEET_URL", &fleet.base)
        .env("OUTPOST_TOKEN", &fleet.admin)
        .current_dir(fleet.dir.as_path())
        .output()
        .expect("outpost runs")
}

#[test]
fn devices_are_enrolled_listed_and_revoked_from_the_cli() {
    let fleet = start();
    let out = outpost(&fleet, &["device", "enroll", "press-7", "--tag", "site=plant-a", "--tag", "line=3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = std::fs::read_to_string(fleet.dir.as_path().join("press-7.agent.toml")).expect("agent config written");
    let mode = std::fs::metadata(fleet.dir.as_path().join("press-7.agent.toml")).expect("meta");
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600, "secrets stay private");
    for needle in ["id = \"press-7\"", "key = \"", "broker = \"mqtt://127.0.0.1:", "token = \"", "password = \""] {
        assert!(config.contains(needle), "`{needle}` missing from:\n{config}");
    }
    let out = outpost(&fleet, &["device", "list"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("press-7") && listed.contains("site=plant-a") && listed.contains("enrolled"), "{listed}");
    let again = outpost(&fleet, &["device", "enroll", "press-7"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already enrolled"));
    let out = outpost(&fleet, &["device", "revoke", "press-7"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed = String::from_utf8_lossy(&outpost(&fleet, &["device", "list"]).stdout).into_owned();
    assert!(listed.contains("revoked"), "{listed}");
    // The device's token died with it.
    let token = config.lines().find_map(|l| l.strip_prefix("token = \"")).expect("token").trim_end_matches('"');
    let r = client().get(format!("{}/api/v1/devices", fleet.base)).bearer_auth(token).send().expect("answer");
    assert_eq!(r.status(), 401);
}

#[test]
fn each_role_is_refused_what_it_may_not_do_and_bad_requests_are_4xx() {
    let fleet = start();
    let c = client();
    let url = |p: &str| format!("{}/api/v1{p}", fleet.base);
    let token = |role: &str| -> String {
        let r = c
            .post(url("/users"))
            .bearer_auth(&fleet.admin)
            .json(&serde_json::json!({"name": role, "role": role}))
            .send()
            .expect("answer");
        assert_eq!(r.status(), 200);
        r.json::<serde_json::Value>().expect("json")["token"].as_str().expect("token").to_string()
    };
    let (operator, annotator) = (token("operator"), token("annotator"));
    let enrolled: serde_json::Value = c
        .post(url("/devices"))
        .bearer_auth(&fleet.admin)
        .json(&serde_json::json!({"name": "cam-1"}))
        .send()
        .expect("answer")
        .json()
        .expect("json");
    let device = enrolled["credentials"]["http_token"].as_str().expect("token").to_string();

    let status = |r: reqwest::blocking::RequestBuilder| r.send().expect("answer").status().as_u16();
    let enroll =
        |t: &str, name: &str| status(c.post(url("/devices")).bearer_auth(t).json(&serde_json::json!({"name": name})));
    assert_eq!(enroll(&operator, "x1"), 403, "operators do not enroll");
    assert_eq!(enroll(&annotator, "x2"), 403);
    assert_eq!(enroll(&device, "x3"), 403, "devices do not enroll");
    assert_eq!(status(c.get(url("/devices")).bearer_auth(&operator)), 200);
    assert_eq!(status(c.get(url("/devices")).bearer_auth(&annotator)), 403, "annotators do not list devices");
    assert_eq!(status(c.get(url("/devices")).bearer_auth(&device)), 403);
    assert_eq!(status(c.post(url("/devices/cam-1/revoke")).bearer_auth(&operator)), 403);
    assert_eq!(status(c.get(url("/devices"))), 401, "no token");
    assert_eq!(status(c.get(url("/devices")).bearer_auth("nonsense")), 401);
    assert_eq!(
        status(c.post(url("/users")).bearer_auth(&operator).json(&serde_json::json!({"name": "y", "role": "admin"}))),
        403
    );

    // Malformed requests: 4xx with a JSON error, never 5xx.
    let admin = &fleet.admin;
    let bad = [
        c.post(url("/devices")).bearer_auth(admin).header("content-type", "application/json").body("{not json"),
        c.post(url("/devices")).bearer_auth(admin).header("content-type", "text/plain").body("{\"name\":\"z\"}"),
        c.post(url("/devices")).bearer_auth(admin).json(&serde_json::json!({"name": "z", "color": "red"})),
        c.post(url("/devices")).bearer_auth(admin).json(&serde_json::json!({"name": "a/b"})),
        c.post(url("/devices"))
            .bearer_auth(admin)
            .json(&serde_json::json!({"name": "big", "pad": "x".repeat(2 << 20)})),
        c.get(url("/devices/nobody")).bearer_auth(admin),
        c.get(url("/no/such/endpoint")).bearer_auth(admin),
    ];
    for request in bad {
        let r = request.send().expect("answer");
        let code = r.status().as_u16();
        assert!((400..500).contains(&code), "expected 4xx, got {code}");
        let body: serde_json::Value = r.json().expect("a JSON error body");
        assert!(body["error"]["code"].is_string(), "{body}");
    }
    let doc: serde_json::Value = c.get(url("/openapi.json")).send().expect("answer").json().expect("json");
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/devices"]["post"]["x-outpost-role"] == "admin");
    for path in ["/fleet/devices", "/drift", "/samples/{sha256}", "/annotate/claim", "/exports", "/users"] {
        assert!(doc["paths"][path].is_object(), "{path} documented");
    }
    // Every documented operation states its role, and a token without it is refused.
    let annotator_claim =
        c.post(url("/annotate/claim")).bearer_auth(&operator).json(&serde_json::json!({"model": "m"}));
    assert_eq!(status(annotator_claim), 200, "operators may do what annotators do");
    assert_eq!(
        status(c.post(url("/annotate/claim")).bearer_auth(&device).json(&serde_json::json!({"model": "m"}))),
        403
    );
    let export = serde_json::json!({"model": "m", "format": "yolo", "out_dir": fleet.dir.as_path().join("x")});
    assert_eq!(status(c.post(url("/exports")).bearer_auth(&annotator).json(&export)), 403);
    assert_eq!(status(c.put(url("/samples/00")).bearer_auth(&annotator)), 403, "only devices upload");
}

#[test]
fn sigterm_stops_the_fleet_cleanly() {
    let mut fleet = start();
    // Exits 0 (asserted by `terminate`) after the last step of its shutdown, within its 10 s deadline and a margin.
    let took = fleet.terminate();
    assert!(took < Duration::from_secs(15), "stopped after {took:?}");
    assert!(fleet.log().contains("fleet stopped"), "{}", fleet.log());
}
