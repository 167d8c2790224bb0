//! The API over HTTPS (`[http] tls`), with a certificate from a test CA: `outpost device enroll` and an agent's
//! sample uploads trust that CA through their config; plain HTTP to the TLS port is refused without harm; idle TCP
//! connections that never start a handshake delay nobody.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use outpost_tests::pki::TestCa;

use crate::agent::{Agent, AgentSetup};
use crate::fleet::{Fleet, FleetOptions, defect_images, device, frames};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_over_https_serves_enrollment_and_sample_uploads_and_refuses_plain_http() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(tmp.path(), "fleet-test").expect("CA");
    let server = ca.server("fleet").expect("server certificate");
    let mut fleet =
        Fleet::start(tmp.path(), &FleetOptions { tls: Some((&server, ca.cert.as_path())), ..FleetOptions::default() })
            .await;
    assert!(fleet.base.starts_with("https://"), "{}", fleet.base);
    let port: u16 = fleet.base.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");

    // Connections that never send a ClientHello (the test fleet's handshake timeout is 120 s, clients give up after
    // 30 s): were handshakes done in the accept loop, every request below would wait behind them and fail.
    let idle: Vec<TcpStream> =
        (0..3).map(|_| TcpStream::connect(("127.0.0.1", port)).expect("idle connection")).collect();

    // Enrollment through the CLI (OUTPOST_CA_FILE), an agent trusting the CA (`[fleet] ca_file`) that flags every
    // frame and uploads it.
    let mut setup = AgentSetup::new("secure-1", "plant-a");
    setup.flagging = "random = 1.0\nrate = {}\ndedup = { enabled = false }\n".into();
    let mut agent = Agent::enroll_and_start(&fleet, tmp.path(), &setup);
    let written = std::fs::read_to_string(tmp.path().join("secure-1/agent.toml")).expect("agent config");
    assert!(written.contains(&format!("url = \"{}\"", fleet.base)), "enrollment names the HTTPS URL: {written}");
    assert!(written.contains("# ca_file"), "and hints at the CA: {written}");
    let images = defect_images("val");
    agent.feed("", &images[..6]);
    let devices = fleet
        .wait_for("the agent's frames", "/fleet/devices", |d| {
            device(d, "secure-1")["online"] == true && frames(d, "secure-1") == 6
        })
        .await;
    assert_eq!(device(&devices, "secure-1")["tags"]["site"], "plant-a", "{devices}");
    fleet
        .wait_for("samples uploaded over HTTPS", "/annotate/counts?model=defect", |c| {
            c["queued"].as_u64().unwrap_or(0) >= 3
        })
        .await;
    assert_eq!(agent.metric("outpost_samples_rejected_total").await, 0.0, "{}", agent.log());

    // Plain HTTP to the TLS port: refused (the client sees an error, not an answer), and the fleet keeps serving.
    let plain = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
    let answer = plain.get(format!("http://127.0.0.1:{port}/healthz")).send().await;
    assert!(answer.is_err(), "plain HTTP must not be answered: {answer:?}");
    let mut raw = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    raw.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    raw.write_all(b"GET /healthz HTTP/1.1\r\nHost: fleet\r\n\r\n").expect("write");
    let mut reply = Vec::new();
    let _ = raw.read_to_end(&mut reply);
    assert!(!reply.starts_with(b"HTTP/1.1 200"), "no HTTP answer on the TLS port");
    // A client that does not trust the test CA refuses the fleet.
    let untrusting = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
    assert!(untrusting.get(format!("{}/healthz", fleet.base)).send().await.is_err());
    let (status, _) = fleet.call(reqwest::Method::GET, "/fleet/devices", &fleet.admin, None).await;
    assert_eq!(status, 200);
    drop(idle);

    let status = agent.terminate();
    assert!(status.success(), "exited with {status}:\n{}", agent.log());
    // SIGTERM stops the HTTPS server as cleanly as the plain one.
    fleet.terminate();
}
