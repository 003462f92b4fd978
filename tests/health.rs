//! Health-check behaviour that takes real time: thresholds, reaping, IPv6 answers.

mod support;

use hickory_proto::rr::RecordType;
use serde_json::json;
use support::*;

#[tokio::test]
async fn success_before_passing_holds_the_check_critical_until_reached() {
    let target = http_target(200).await;
    let s = Server::start(&[]);
    register(
        &s,
        json!({"Name": "slow", "Address": "10.4.0.1", "Port": 80,
               "Check": {"HTTP": format!("http://{target}/"), "Interval": "2s", "SuccessBeforePassing": 2}}),
    )
    .await;
    // The first successful probe records its output but does not pass the check yet.
    let status = eventually("first probe recorded", || async {
        let (_, checks) = get_json(&s.url("/v1/agent/checks")).await;
        let c = &checks["service:slow"];
        (!c["Output"].as_str().unwrap_or("").is_empty())
            .then(|| c["Status"].as_str().unwrap().to_string())
    })
    .await;
    assert_eq!(status, "critical");
    assert!(
        ask(s.dns, "slow.service.consul.", RecordType::A)
            .await
            .answers
            .is_empty()
    );
    eventually("second success passes the check", || async {
        let r = ask(s.dns, "slow.service.consul.", RecordType::A).await;
        (a_records(&r) == ["10.4.0.1"]).then_some(())
    })
    .await;
}

#[tokio::test]
async fn ipv6_addresses_answer_aaaa() {
    let s = Server::start(&[]);
    register(
        &s,
        json!({"Name": "v6", "Address": "2001:db8::1", "Port": 443}),
    )
    .await;
    let aaaa = ask(s.dns, "v6.service.consul.", RecordType::AAAA).await;
    assert_eq!(a_records(&aaaa), ["2001:db8::1"]);
    let a = ask(s.dns, "v6.service.consul.", RecordType::A).await;
    assert!(
        a.answers.is_empty(),
        "no A record for an IPv6-only instance"
    );
    let srv = ask(s.dns, "v6.service.consul.", RecordType::SRV).await;
    assert_eq!(
        srv_records(&srv),
        [(
            443,
            "20010db8000000000000000000000001.addr.dc1.consul.".to_string()
        )]
    );
    let addr = ask(
        s.dns,
        "20010db8000000000000000000000001.addr.dc1.consul.",
        RecordType::AAAA,
    )
    .await;
    assert_eq!(a_records(&addr), ["2001:db8::1"]);
}
