//! The server over 127.0.0.1 (SQLite): credentials, every class of bad input, the node
//! protocol end to end for one node, FleetLock, publishing, the repository, metrics.

mod support;

use basalt_manifest::chrono::Duration;
use basalt_manifest::semver::Version;
use basalt_rollout::clock::Clock;
use basalt_rollout_wire::{
    AgentState, Booted, CheckIn, Directive, Event, EventKind, FleetLockRequest, NodeId, PoolName,
    Slot, PROTOCOL_VERSION,
};
use hyper::Method;
use serde_json::{json, Value};
use support::{manifest, raw, t0, Harness, Keys};

fn v(s: &str) -> Version {
    Version::parse(s).expect("version")
}

fn enroll(h: &Harness, token: &str, id: &str) -> String {
    let (status, body) = h.call(
        Method::POST,
        "v1/enroll",
        Some(token),
        format!(r#"{{"protocol":1,"node_id":"{id}"}}"#).as_bytes(),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).expect("json");
    answer["node_token"].as_str().expect("token").to_owned()
}

fn report(id: &str, pool: &str, booted: &str, events: Vec<Event>) -> CheckIn {
    CheckIn {
        protocol: PROTOCOL_VERSION,
        node_id: NodeId::new(id).expect("id"),
        pool: PoolName::new(pool).expect("pool"),
        booted: Booted {
            version: v(booted),
            slot: Slot::A,
        },
        state: AgentState::Idle,
        events,
    }
}

fn event(seq: u64, kind: EventKind, version: &str, reason: Option<&str>) -> Event {
    Event {
        seq,
        at: t0(),
        kind,
        version: v(version),
        reason: reason.map(str::to_owned),
    }
}

fn check_in(h: &Harness, token: &str, c: &CheckIn) -> Directive {
    let (status, body) = h.call(Method::POST, "v1/check-in", Some(token), &c.to_json());
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    Directive::from_json(&body).expect("directive")
}

fn error_kind(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).expect("error json");
    format!(
        "{}: {}",
        v["error"]["kind"].as_str().unwrap_or("?"),
        v["error"]["message"].as_str().unwrap_or("?")
    )
}

/// The status of a pool without its clock field (to compare before and after).
fn state_of(h: &Harness, pool: &str) -> Value {
    let mut s = h.status(pool);
    s.as_object_mut().expect("object").remove("now");
    let nodes = h.op(
        Method::GET,
        &format!("api/v1/pools/{pool}/nodes"),
        &Value::Null,
    );
    json!({"status": s, "nodes": nodes})
}

#[test]
fn credentials_are_checked_for_every_endpoint_class() {
    let h = Harness::sqlite();
    let enroll_token = h.pool("web", 60);
    let node = enroll(&h, &enroll_token, "n1");
    let c = report("n1", "web", "1.0.0", vec![]).to_json();

    // No token, garbage, a well-formed unknown token, each kind on the wrong endpoint.
    let unknown_operator = format!("bro_{}", "A".repeat(43));
    type Case<'a> = (Method, &'a str, Option<&'a str>, Vec<u8>, u16);
    let cases: Vec<Case> = vec![
        (Method::GET, "api/v1/pools", None, vec![], 401),
        (Method::GET, "api/v1/pools", Some("garbage"), vec![], 401),
        (
            Method::GET,
            "api/v1/pools",
            Some(&unknown_operator),
            vec![],
            401,
        ),
        (Method::GET, "api/v1/pools", Some(&node), vec![], 403),
        (
            Method::GET,
            "api/v1/pools",
            Some(&enroll_token),
            vec![],
            403,
        ),
        (Method::GET, "metrics", None, vec![], 401),
        (Method::GET, "metrics", Some(&node), vec![], 403),
        (Method::POST, "v1/check-in", None, c.clone(), 401),
        (
            Method::POST,
            "v1/check-in",
            Some(&h.operator),
            c.clone(),
            403,
        ),
        (
            Method::POST,
            "v1/check-in",
            Some(&enroll_token),
            c.clone(),
            403,
        ),
        (
            Method::POST,
            "v1/enroll",
            Some(&node),
            br#"{"protocol":1,"node_id":"n9"}"#.to_vec(),
            403,
        ),
        (
            Method::POST,
            "v1/enroll",
            Some(&h.operator),
            br#"{"protocol":1,"node_id":"n9"}"#.to_vec(),
            403,
        ),
        (
            Method::POST,
            "v1/enroll",
            None,
            br#"{"protocol":1,"node_id":"n9"}"#.to_vec(),
            401,
        ),
        (
            Method::POST,
            "api/v1/channels/stable/x86_64/releases",
            Some(&node),
            h.keys.release("2.0.0", 2),
            403,
        ),
    ];
    for (method, path, token, body, expected) in cases {
        let (status, answer) = h.call(method.clone(), path, token, &body);
        assert_eq!(
            status,
            expected,
            "{method} {path} with {token:?}: {}",
            String::from_utf8_lossy(&answer)
        );
        let kind = error_kind(&answer);
        assert!(
            kind.starts_with(if expected == 401 {
                "unauthenticated"
            } else {
                "forbidden"
            }),
            "{kind}"
        );
    }
    // A token's text with another kind's prefix is refused even though its hash is known.
    let swapped = node.replacen("brn_", "bro_", 1);
    assert_eq!(
        h.call(Method::GET, "api/v1/pools", Some(&swapped), &[]).0,
        401
    );

    // Revoked operator tokens stop working at once.
    basalt_rollout::service::revoke_operator(h.backend.as_ref(), "alice").expect("revoke");
    let (status, _) = h.call(Method::GET, "api/v1/pools", Some(&h.operator), &[]);
    assert_eq!(status, 401);
}

#[test]
fn malformed_check_ins_are_refused_and_change_nothing() {
    let h = Harness::sqlite();
    let enroll_token = h.pool("web", 60);
    let node = enroll(&h, &enroll_token, "n1");
    h.publish("2.0.0", 2);
    h.op(
        Method::POST,
        "api/v1/pools/web/upgrade",
        &json!({"node_image_only": true, "waves": [{"after_secs":0,"percent":100}]}),
    );
    let before = state_of(&h, "web");
    let good = String::from_utf8(
        report(
            "n1",
            "web",
            "1.0.0",
            vec![event(1, EventKind::Staged, "2.0.0", None)],
        )
        .to_json(),
    )
    .expect("utf8");
    let cases = [
        ("not json".to_owned(), 400),
        ("{}".to_owned(), 400),
        (good.replace(r#""protocol":1"#, r#""protocol":9"#), 400),
        (
            good.replace(r#""state":"idle""#, r#""state":"idle","extra":true"#),
            400,
        ),
        (good.replace(r#""slot":"a""#, r#""slot":"z""#), 400),
        (
            good.replace(r#""version":"1.0.0""#, r#""version":"1.0""#),
            400,
        ),
        (
            good.replace(r#""kind":"staged""#, r#""kind":"rolled-back""#),
            400,
        ),
        (good.replace(r#""pool":"web""#, r#""pool":"Web""#), 400),
        (format!("{}{}", good, " ".repeat(70_000)), 400),
        // Another node's id, another pool: refused as forbidden, not as malformed.
        (good.replace(r#""node_id":"n1""#, r#""node_id":"n2""#), 403),
        (good.replace(r#""pool":"web""#, r#""pool":"db""#), 403),
    ];
    for (body, expected) in cases {
        let (status, answer) = h.call(Method::POST, "v1/check-in", Some(&node), body.as_bytes());
        assert_eq!(
            status,
            expected,
            "{}: {}",
            &body[..body.len().min(120)],
            String::from_utf8_lossy(&answer)
        );
        let kind = error_kind(&answer);
        assert!(!kind.contains('?'), "a clear error: {kind}");
    }
    assert_eq!(
        state_of(&h, "web"),
        before,
        "refused check-ins changed nothing"
    );
}

#[test]
fn one_node_goes_through_a_rollout_and_events_count_once() {
    let h = Harness::sqlite();
    let enroll_token = h.pool("web", 60);
    let node = enroll(&h, &enroll_token, "n1");
    // No rollout yet: wait with the pool's interval.
    let d = check_in(&h, &node, &report("n1", "web", "1.0.0", vec![]));
    assert_eq!(
        (d.action, d.retry_after_secs),
        (basalt_rollout_wire::Action::Wait, 60)
    );
    assert!(d.reason.contains("no rollout"), "{}", d.reason);

    h.publish("2.0.0", 2);
    let rollout = h.op(Method::POST, "api/v1/pools/web/upgrade", &json!({"node_image_only": true, "waves": [{"after_secs":0,"percent":100}], "soak_secs": 120}));
    assert_eq!(rollout["target"]["version"], "2.0.0");

    let d = check_in(&h, &node, &report("n1", "web", "1.0.0", vec![]));
    assert_eq!(
        d.action,
        basalt_rollout_wire::Action::Update,
        "{}",
        d.reason
    );
    let offer = d.release.expect("offer");
    assert_eq!(
        (offer.version.to_string(), offer.sequence),
        ("2.0.0".into(), 2)
    );
    assert_eq!(
        offer.node_image_only,
        Some(true),
        "the rollout's mode goes with the offer"
    );
    // The node verifies the offered bytes itself, with its own trust root and policy.
    let envelope = offer.envelope_bytes().expect("base64");
    let mut policy = basalt_manifest::Policy::new(t0());
    policy.installed_version = Some(v("1.0.0"));
    policy.highest_sequence_seen = Some(1);
    policy.channel = Some("stable".into());
    let verified = basalt_manifest::verify_release(&envelope, &h.keys.root(), &policy)
        .expect("node accepts it");
    assert_eq!(verified.manifest.version, v("2.0.0"));
    // …and a node with other keys refuses the same offer: the server cannot widen trust.
    let other = Keys::new(77).root();
    assert!(basalt_manifest::verify_release(&envelope, &other, &policy).is_err());

    let staged = vec![
        event(1, EventKind::Downloaded, "2.0.0", None),
        event(2, EventKind::Staged, "2.0.0", None),
    ];
    let d = check_in(&h, &node, &report("n1", "web", "1.0.0", staged.clone()));
    assert_eq!(
        d.action,
        basalt_rollout_wire::Action::Reboot,
        "{}",
        d.reason
    );
    assert_eq!(d.drain_timeout_secs, Some(1800));
    assert_eq!(d.acked_event_seq, Some(2));
    // The answer was lost: the node sends the same events again; nothing changes twice.
    let d = check_in(&h, &node, &report("n1", "web", "1.0.0", staged));
    assert_eq!(d.action, basalt_rollout_wire::Action::Wait, "{}", d.reason);
    assert!(d.reason.contains("rebooting into 2.0.0"), "{}", d.reason);
    let s = h.status("web");
    assert_eq!(s["rollout"]["unavailable"], 1);
    assert_eq!(s["lock_holders"], json!(["n1"]));

    h.clock.advance(Duration::seconds(90));
    let back = vec![
        event(3, EventKind::Rebooted, "2.0.0", None),
        event(4, EventKind::Healthy, "2.0.0", None),
    ];
    let d = check_in(&h, &node, &report("n1", "web", "2.0.0", back));
    assert!(d.reason.contains("up to date"), "{}", d.reason);
    let s = h.status("web");
    assert_eq!(s["rollout"]["stages"]["healthy"], 1);
    assert_eq!(s["rollout"]["in_flight"], 1, "soaking for 120 s");
    assert_eq!(s["rollout"]["unavailable"], 0);
    assert_eq!(s["lock_holders"], json!([]));
    assert_eq!(s["rollout"]["touched"], 1);
    assert_eq!(s["rollout"]["complete"], false);
    h.clock.advance(Duration::seconds(121));
    let s = h.status("web");
    assert_eq!(s["rollout"]["in_flight"], 0);
    assert_eq!(s["rollout"]["complete"], true);
    assert_eq!(s["versions"], json!({"2.0.0": 1}));
    assert_eq!(
        s["recent_events"].as_array().map(Vec::len),
        Some(4),
        "each event recorded once"
    );
}

#[test]
fn enrolment_cannot_take_over_an_existing_node() {
    let h = Harness::sqlite();
    let t = h.pool("web", 60);
    enroll(&h, &t, "n1");
    let (status, body) = h.call(
        Method::POST,
        "v1/enroll",
        Some(&t),
        br#"{"protocol":1,"node_id":"n1"}"#,
    );
    assert_eq!(status, 409, "{}", String::from_utf8_lossy(&body));
    for bad in [
        &br#"{"protocol":1,"node_id":"../x"}"#[..],
        br#"{"protocol":2,"node_id":"n2"}"#,
        br#"{"node_id":"n2"}"#,
    ] {
        assert_eq!(h.call(Method::POST, "v1/enroll", Some(&t), bad).0, 400);
    }
    assert_eq!(h.status("web")["pool"]["nodes"], 1);
}

#[test]
fn only_releases_signed_by_the_trusted_keys_enter_a_channel() {
    let h = Harness::sqlite();
    h.pool("web", 60);
    let path = "api/v1/channels/stable/x86_64/releases";
    let keys = &h.keys;
    let m = manifest("2.0.0", 5, "stable", t0());
    let stranger = Keys::new(99);
    let good = keys.release_by(&m, &[0, 1]);
    let mut tampered: Value = serde_json::from_slice(&good).expect("json");
    tampered["payload"] = json!(base64_of(
        &manifest("9.9.9", 5, "stable", t0())
            .to_json()
            .expect("json")
    ));
    let expired = keys.release_by(
        &manifest("2.0.0", 5, "stable", t0() - Duration::days(4000)),
        &[0, 1],
    );
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("one key of a 2-of-3 root", keys.release_by(&m, &[0]), 422),
        ("the same key twice", keys.release_by(&m, &[1, 1]), 422),
        ("unknown keys", stranger.release_by(&m, &[0, 1]), 422),
        (
            "a tampered payload",
            serde_json::to_vec(&tampered).expect("json"),
            422,
        ),
        (
            "a trust root instead of a release",
            keys.root_envelope.clone(),
            422,
        ),
        ("an expired release", expired, 422),
        ("garbage", b"{\"payload\":1}".to_vec(), 422),
        (
            "another channel",
            keys.release_by(&manifest("2.0.0", 5, "beta", t0()), &[0, 1]),
            400,
        ),
    ];
    for (what, body, expected) in cases {
        let (status, answer) = h.call(Method::POST, path, Some(&h.operator), &body);
        assert_eq!(
            status,
            expected,
            "{what}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert_eq!(
        h.op(Method::GET, path, &Value::Null),
        json!([]),
        "nothing entered the channel"
    );
    assert_eq!(h.call(Method::POST, path, Some(&h.operator), &good).0, 200);
    // Replays and older sequences are refused.
    assert_eq!(h.call(Method::POST, path, Some(&h.operator), &good).0, 409);
    assert_eq!(
        h.call(
            Method::POST,
            path,
            Some(&h.operator),
            &keys.release_by(&manifest("2.1.0", 4, "stable", t0()), &[0, 2])
        )
        .0,
        409
    );
    assert_eq!(
        h.op(Method::GET, path, &Value::Null)
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn upgrade_plans_are_validated() {
    let h = Harness::sqlite();
    h.pool("web", 60);
    let path = "api/v1/pools/web/upgrade";
    let (status, body) = h.call(
        Method::POST,
        path,
        Some(&h.operator),
        br#"{"node_image_only":true}"#,
    );
    assert_eq!(
        status,
        404,
        "no release yet: {}",
        String::from_utf8_lossy(&body)
    );
    h.publish("2.0.0", 2);
    for (body, expected) in [
        (
            json!({"node_image_only": true, "max_unavailable": "0"}),
            400,
        ),
        (
            json!({"node_image_only": true, "max_unavailable": "0%"}),
            400,
        ),
        (json!({"node_image_only": true, "max_surge": "150%"}), 400),
        (json!({"node_image_only": true, "halt_at_percent": 0}), 400),
        (
            json!({"node_image_only": true, "windows": ["Caturday 01:00-02:00 UTC"]}),
            400,
        ),
        (
            json!({"node_image_only": true, "waves": [{"after_secs": 5, "percent": 100}]}),
            400,
        ),
        (json!({"node_image_only": true, "to": "3.0.0"}), 404),
        (json!({"node_image_only": true, "bogus": 1}), 400),
    ] {
        let (status, answer) = h.call(
            Method::POST,
            path,
            Some(&h.operator),
            &serde_json::to_vec(&body).expect("json"),
        );
        assert_eq!(
            status,
            expected,
            "{body}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert_eq!(
        h.op(Method::GET, "api/v1/pools", &Value::Null)[0]["rollout"],
        Value::Null
    );
    h.op(Method::POST, path, &json!({"node_image_only": true, "to": "2.0.0", "windows": ["Sat,Sun 02:00-06:00 Europe/Berlin"]}));
    h.op(
        Method::POST,
        "api/v1/pools/web/pause",
        &json!({"reason": "checking dashboards"}),
    );
    let (status, _) = h.call(
        Method::POST,
        path,
        Some(&h.operator),
        br#"{"node_image_only":true}"#,
    );
    assert_eq!(status, 409, "a paused rollout blocks a new one");
    let s = h.status("web");
    assert_eq!(s["rollout"]["info"]["reason"], "checking dashboards");
    h.op(Method::POST, "api/v1/pools/web/abort", &Value::Null);
    assert_eq!(
        h.call(
            Method::POST,
            "api/v1/pools/web/resume",
            Some(&h.operator),
            &[]
        )
        .0,
        409,
        "aborted is final"
    );
    h.op(Method::POST, path, &json!({"node_image_only": true}));
}

#[test]
fn fleetlock_shares_the_rollouts_reboot_slots() {
    let h = Harness::sqlite();
    let t = h.pool("web", 60);
    let a = enroll(&h, &t, "a");
    let b = enroll(&h, &t, "b");
    let flag = [("fleet-lock-protocol", "true")];
    let lock = |token: &str, id: &str, group: &str, step: &str, headers: &[(&str, &str)]| {
        let url = format!("{}v1/{step}", h.url());
        h.rt.block_on(raw(
            Method::POST,
            &url,
            Some(token),
            FleetLockRequest::body(id, group),
            headers,
        ))
    };
    // Without the protocol header, for another node, or another group: refused.
    assert_eq!(lock(&a, "a", "web", "pre-reboot", &[]).0, 400);
    assert_eq!(lock(&a, "b", "web", "pre-reboot", &flag).0, 403);
    assert_eq!(lock(&a, "a", "db", "pre-reboot", &flag).0, 403);
    assert_eq!(lock(&h.operator, "a", "web", "pre-reboot", &flag).0, 403);
    // One slot by default: a takes it (twice is fine), b is refused with FleetLock's body.
    assert_eq!(lock(&a, "a", "web", "pre-reboot", &flag).0, 200);
    assert_eq!(lock(&a, "a", "web", "pre-reboot", &flag).0, 200);
    let (status, body) = lock(&b, "b", "web", "pre-reboot", &flag);
    assert_eq!(status, 409);
    let refusal: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(refusal["kind"], "failed_lock", "{refusal}");

    // A rollout with max-unavailable 1: a staged node waits while a holds the slot.
    h.publish("2.0.0", 2);
    h.op(Method::POST, "api/v1/pools/web/upgrade", &json!({"node_image_only": true, "waves": [{"after_secs":0,"percent":100}], "max_surge": "5"}));
    let d = check_in(&h, &b, &report("b", "web", "1.0.0", vec![]));
    assert_eq!(d.action, basalt_rollout_wire::Action::Update);
    let d = check_in(
        &h,
        &b,
        &report(
            "b",
            "web",
            "1.0.0",
            vec![event(1, EventKind::Staged, "2.0.0", None)],
        ),
    );
    assert_eq!(d.action, basalt_rollout_wire::Action::Wait);
    assert!(d.reason.contains("max-unavailable reached"), "{}", d.reason);
    // a gives the slot back (path-token form, for agents that cannot send a header).
    let url = format!("{}fleetlock/{a}/v1/steady-state", h.url());
    let (status, _) = h.rt.block_on(raw(
        Method::POST,
        &url,
        None,
        FleetLockRequest::body("a", "web"),
        &flag,
    ));
    assert_eq!(status, 200);
    let d = check_in(&h, &b, &report("b", "web", "1.0.0", vec![]));
    assert_eq!(
        d.action,
        basalt_rollout_wire::Action::Reboot,
        "{}",
        d.reason
    );
    // Now b holds the slot through the rollout: a FleetLock client cannot take it.
    assert_eq!(lock(&a, "a", "web", "pre-reboot", &flag).0, 409);
    // A wrong path token is refused.
    let url = format!("{}fleetlock/brn_{}/v1/pre-reboot", h.url(), "x".repeat(43));
    assert_eq!(
        h.rt.block_on(raw(
            Method::POST,
            &url,
            None,
            FleetLockRequest::body("a", "web"),
            &flag
        ))
        .0,
        401
    );
}

#[test]
fn halts_pauses_pins_and_floors_through_the_api() {
    let h = Harness::sqlite();
    let t = h.pool("web", 60);
    let tokens: Vec<String> = (0..4).map(|i| enroll(&h, &t, &format!("n{i}"))).collect();
    h.publish("1.5.0", 2);
    h.publish("2.0.0", 3);
    h.op(
        Method::POST,
        "api/v1/channels/stable/x86_64/releases/2/floor",
        &json!({"floor": true}),
    );
    h.op(
        Method::POST,
        "api/v1/pools/web/pin",
        &json!({"node": "n3", "version": "1.0.0"}),
    );
    h.op(
        Method::POST,
        "api/v1/pools/web/upgrade",
        &json!({"node_image_only": true, "waves": [{"after_secs":0,"percent":100}], "max_unavailable": "2", "max_surge": "2", "halt_at_percent": 50}),
    );
    // Below the floor: nodes go to 1.5.0 first; the pinned node waits.
    let d = check_in(&h, &tokens[0], &report("n0", "web", "1.0.0", vec![]));
    assert_eq!(
        d.release.as_ref().map(|r| r.version.to_string()),
        Some("1.5.0".into()),
        "{}",
        d.reason
    );
    let d = check_in(&h, &tokens[3], &report("n3", "web", "1.0.0", vec![]));
    assert!(d.reason.contains("pinned at 1.0.0"), "{}", d.reason);
    let d = check_in(&h, &tokens[1], &report("n1", "web", "1.5.0", vec![]));
    assert_eq!(
        d.release.as_ref().map(|r| r.version.to_string()),
        Some("2.0.0".into())
    );
    // n0 fails its download: 1 of 2 touched = 50 % → halt, with the reason.
    check_in(
        &h,
        &tokens[0],
        &report(
            "n0",
            "web",
            "1.0.0",
            vec![event(1, EventKind::Failed, "1.5.0", Some("disk full"))],
        ),
    );
    let s = h.status("web");
    assert_eq!(s["rollout"]["info"]["state"], "halted");
    let why = s["rollout"]["info"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(why.contains("1 of 2") && why.contains("disk full"), "{why}");
    assert_eq!(s["rollout"]["failures"][0]["reason"], "disk full");
    let d = check_in(&h, &tokens[2], &report("n2", "web", "1.5.0", vec![]));
    assert!(d.reason.contains("halted"), "{}", d.reason);
    // Resume acknowledges the failure; admissions continue.
    h.op(Method::POST, "api/v1/pools/web/resume", &Value::Null);
    let d = check_in(&h, &tokens[2], &report("n2", "web", "1.5.0", vec![]));
    assert_eq!(
        d.action,
        basalt_rollout_wire::Action::Update,
        "{}",
        d.reason
    );
    // Abort: the admitted nodes are told to cancel; nobody new starts.
    h.op(
        Method::POST,
        "api/v1/pools/web/abort",
        &json!({"reason": "bad canary"}),
    );
    let d = check_in(&h, &tokens[2], &report("n2", "web", "1.5.0", vec![]));
    assert_eq!(
        d.action,
        basalt_rollout_wire::Action::Cancel,
        "{}",
        d.reason
    );
    let nodes = h.op(Method::GET, "api/v1/pools/web/nodes", &Value::Null);
    assert_eq!(nodes.as_array().map(Vec::len), Some(4));
    assert_eq!(nodes[3]["pin"], "1.0.0");
}

#[test]
fn the_repository_is_served_with_ranges_and_nothing_outside_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    let blob: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    support::write(&repo.join("blobs/sha256/abc"), &blob);
    support::write(&dir.path().join("secret"), b"secret");
    let backend = std::sync::Arc::new(
        basalt_rollout::store::sqlite::Sqlite::open(&dir.path().join("db")).expect("db"),
    );
    let h = Harness::with(backend, dir, Some(repo.clone()));
    let (status, body) = h.call(Method::GET, "repo/blobs/sha256/abc", None, &[]);
    assert_eq!((status, body.len()), (200, blob.len()));
    assert_eq!(body, blob);
    let url = format!("{}repo/blobs/sha256/abc", h.url());
    let (status, body) = h.rt.block_on(raw(
        Method::GET,
        &url,
        None,
        vec![],
        &[("range", "bytes=99990-")],
    ));
    assert_eq!((status, body.as_slice()), (206, &blob[99_990..]));
    let (status, _) = h.rt.block_on(raw(
        Method::GET,
        &url,
        None,
        vec![],
        &[("range", "bytes=200000-")],
    ));
    assert_eq!(status, 416);
    for bad in [
        "repo/../secret",
        "repo/%2e%2e/secret",
        "repo/blobs/sha256/.abc",
        "repo/",
        "repo/blobs/sha256/missing",
    ] {
        let (status, body) = h.call(Method::GET, bad, None, &[]);
        assert_eq!(status, 404, "{bad}");
        assert!(!String::from_utf8_lossy(&body).contains("secret\n"));
    }
    // Publishing a release whose blobs are not in the served repository is refused.
    h.pool("web", 60);
    let (status, body) = h.call(
        Method::POST,
        "api/v1/channels/stable/x86_64/releases",
        Some(&h.operator),
        &h.keys.release("2.0.0", 2),
    );
    assert_eq!(status, 409, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("not in the served repository"));
}

#[test]
fn metrics_and_state_survive_a_restart() {
    let mut h = Harness::sqlite();
    let t = h.pool("web", 60);
    let n = enroll(&h, &t, "n1");
    h.publish("2.0.0", 2);
    h.op(
        Method::POST,
        "api/v1/pools/web/upgrade",
        &json!({"node_image_only": true, "waves": [{"after_secs":0,"percent":100}]}),
    );
    check_in(&h, &n, &report("n1", "web", "1.0.0", vec![]));
    let before = state_of(&h, "web");
    h.stop();
    h.start();
    assert_eq!(state_of(&h, "web"), before);
    let (status, text) = h.call(Method::GET, "metrics", Some(&h.operator), &[]);
    let text = String::from_utf8(text).expect("utf8");
    assert_eq!(status, 200);
    for line in [
        "basalt_rollout_pool_nodes{pool=\"web\"} 1",
        "basalt_rollout_nodes_by_stage{pool=\"web\",rollout=\"1\",stage=\"admitted\"} 1",
        "basalt_rollout_state{pool=\"web\",rollout=\"1\",state=\"active\"} 1",
        "basalt_rollout_touched{pool=\"web\",rollout=\"1\"} 1",
        "# TYPE basalt_rollout_in_flight gauge",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    let (status, page) = h.call(Method::GET, "", None, &[]);
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&page).contains("basalt-rollout"));
}

/// The stored last-seen time of `id`, read straight from the database.
fn stored_last_seen(
    h: &Harness,
    id: &str,
) -> Option<basalt_manifest::chrono::DateTime<basalt_manifest::chrono::Utc>> {
    let mut tx = basalt_rollout::store::Tx::begin_read(h.backend.as_ref()).expect("read");
    tx.node(&NodeId::new(id).expect("id"))
        .expect("node query")
        .expect("node stored")
        .last_seen
}

#[test]
fn steady_state_check_ins_only_read_and_buffer_their_last_seen_time() {
    let h = Harness::sqlite();
    let enroll_token = h.pool("web", 60);
    let node = enroll(&h, &enroll_token, "n1");
    let svc = h.service();
    let body = report("n1", "web", "1.0.0", vec![]).to_json();

    // The first check-in stores the node's report (version, slot, state): a write.
    let d = svc
        .check_in_with_token(Some(&node), &body)
        .expect("first check-in");
    assert_eq!(d.action, basalt_rollout_wire::Action::Wait);
    assert_eq!(stored_last_seen(&h, "n1"), Some(t0()));

    // The same report later: answered from what is stored, the time only buffered.
    h.clock.advance(Duration::seconds(30));
    let d = svc
        .check_in_with_token(Some(&node), &body)
        .expect("steady check-in");
    assert_eq!(d.action, basalt_rollout_wire::Action::Wait);
    assert_eq!(stored_last_seen(&h, "n1"), Some(t0()), "not written yet");
    assert_eq!(svc.flush_last_seen().expect("flush"), 1);
    assert_eq!(
        stored_last_seen(&h, "n1"),
        Some(t0() + Duration::seconds(30))
    );
    assert_eq!(
        svc.flush_last_seen().expect("second flush"),
        0,
        "nothing left"
    );

    // A changed report (another agent state) is written at once, with its time…
    h.clock.advance(Duration::seconds(30));
    let steady_at = h.clock.now();
    svc.check_in_with_token(Some(&node), &body)
        .expect("steady again");
    h.clock.advance(Duration::seconds(30));
    let mut busy = report("n1", "web", "1.0.0", vec![]);
    busy.state = AgentState::Downloading;
    svc.check_in_with_token(Some(&node), &busy.to_json())
        .expect("changed check-in");
    let written = t0() + Duration::seconds(90);
    assert_eq!(stored_last_seen(&h, "n1"), Some(written));
    // …and a buffered, older time flushed after it never moves the time back.
    assert!(steady_at < written);
    assert_eq!(svc.flush_last_seen().expect("flush"), 1);
    assert_eq!(stored_last_seen(&h, "n1"), Some(written));

    // An event is never only buffered: it is stored before the answer.
    h.clock.advance(Duration::seconds(30));
    let with_event = report(
        "n1",
        "web",
        "1.0.0",
        vec![event(1, EventKind::Failed, "2.0.0", Some("disk full"))],
    );
    let mut checking = with_event.clone();
    checking.state = AgentState::Downloading;
    let d = svc
        .check_in_with_token(Some(&node), &checking.to_json())
        .expect("check-in with an event");
    assert_eq!(d.acked_event_seq, Some(1));
    let s = h.status("web");
    assert_eq!(s["recent_events"].as_array().map(Vec::len), Some(1), "{s}");

    // The operator's listing writes the buffer first: it shows the newest time.
    h.clock.advance(Duration::seconds(30));
    let same = checking.to_json();
    svc.check_in_with_token(Some(&node), &same)
        .expect("steady with the old event");
    let listed = svc
        .nodes(
            &basalt_rollout::service::Caller::Operator("alice".into()),
            "web",
        )
        .expect("nodes");
    assert_eq!(listed[0].last_seen, Some(h.clock.now()));
}

/// Without `--node-image-only` a rollout moves the release's extension set with the OS: its
/// offers say so, so a node set to node-image-only by default still takes the full set.
#[test]
fn a_full_upgrade_offers_the_release_with_its_extensions() {
    let h = Harness::sqlite();
    let enroll_token = h.pool("web", 60);
    let node = enroll(&h, &enroll_token, "n1");
    h.publish("2.0.0", 2);
    let rollout = h.op(
        Method::POST,
        "api/v1/pools/web/upgrade",
        &json!({"node_image_only": false, "waves": [{"after_secs":0,"percent":100}]}),
    );
    assert_eq!(rollout["plan"]["node_image_only"], false, "{rollout:#}");
    let d = check_in(&h, &node, &report("n1", "web", "1.0.0", vec![]));
    assert_eq!(
        d.action,
        basalt_rollout_wire::Action::Update,
        "{}",
        d.reason
    );
    assert_eq!(d.release.expect("offer").node_image_only, Some(false));
}
