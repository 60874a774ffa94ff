use super::*;
use proptest::prelude::*;

fn v(text: &str) -> Version {
    Version::parse(text).expect("test version")
}

fn at() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
        .expect("test time")
        .with_timezone(&Utc)
}

fn check_in() -> CheckIn {
    CheckIn {
        protocol: PROTOCOL_VERSION,
        node_id: NodeId::new("0123456789abcdef0123456789abcdef").expect("id"),
        pool: PoolName::new("web").expect("pool"),
        booted: Booted {
            version: v("1.0.0"),
            slot: Slot::A,
        },
        state: AgentState::Idle,
        events: vec![
            Event {
                seq: 1,
                at: at(),
                kind: EventKind::Staged,
                version: v("2.0.0"),
                reason: None,
            },
            Event {
                seq: 2,
                at: at(),
                kind: EventKind::RolledBack,
                version: v("2.0.0"),
                reason: Some("health check kubelet failed".into()),
            },
        ],
    }
}

fn refused(json: &str) -> String {
    CheckIn::from_json(json.as_bytes())
        .expect_err(json)
        .to_string()
}

#[test]
fn check_in_round_trips_with_its_wire_names() {
    let body = check_in().to_json();
    let text = String::from_utf8(body.clone()).expect("utf8");
    assert!(text.contains(r#""kind":"rolled-back""#), "{text}");
    assert!(text.contains(r#""slot":"a""#), "{text}");
    assert_eq!(CheckIn::from_json(&body).expect("parses"), check_in());
}

#[test]
fn malformed_check_ins_are_refused_naming_the_field() {
    let good = String::from_utf8(check_in().to_json()).expect("utf8");
    let cases = [
        (
            good.replace(r#""protocol":1"#, r#""protocol":2"#),
            "protocol 2",
        ),
        (
            good.replace(r#""pool":"web""#, r#""pool":"Web""#),
            "pool name",
        ),
        (
            good.replace(r#""pool":"web""#, r#""pool":"../x""#),
            "pool name",
        ),
        (
            good.replace("0123456789abcdef0123456789abcdef", "a/b"),
            "node id",
        ),
        (
            good.replace(r#""slot":"a""#, r#""slot":"c""#),
            "unknown variant",
        ),
        (
            good.replace(r#""version":"1.0.0""#, r#""version":"one""#),
            "malformed",
        ),
        (
            good.replace(r#""state":"idle""#, r#""state":"idle","x":1"#),
            "unknown field",
        ),
        (good.replace(r#""seq":2"#, r#""seq":1"#), "does not follow"),
        (
            good.replace(r#","reason":"health check kubelet failed""#, ""),
            "needs a reason",
        ),
        (
            good.replace(r#""kind":"staged","#, r#""kind":"staged","reason":"x","#),
            "carries no reason",
        ),
        (
            good.replace("health check kubelet failed", "bad\\u0000byte"),
            "control characters",
        ),
        (String::from("{"), "malformed JSON"),
        (String::from("[]"), "malformed JSON"),
    ];
    for (json, expected) in cases {
        let message = refused(&json);
        assert!(message.contains(expected), "{json}\n→ {message}");
    }
}

#[test]
fn check_in_caps_size_events_and_reasons() {
    let mut big = check_in();
    big.events = (0..=MAX_EVENTS as u64)
        .map(|seq| Event {
            seq,
            at: at(),
            kind: EventKind::Downloaded,
            version: v("2.0.0"),
            reason: None,
        })
        .collect();
    assert!(CheckIn::from_json(&big.to_json())
        .expect_err("too many")
        .to_string()
        .contains("over the limit"));

    let mut long = check_in();
    long.events[1].reason = Some("x".repeat(MAX_REASON_BYTES + 1));
    assert!(CheckIn::from_json(&long.to_json())
        .expect_err("long")
        .to_string()
        .contains("byte limit"));

    let huge = vec![b' '; MAX_CHECK_IN_BYTES + 1];
    assert!(matches!(
        CheckIn::from_json(&huge),
        Err(WireError::TooLarge { .. })
    ));
}

fn directive(action: Action) -> Directive {
    Directive {
        protocol: PROTOCOL_VERSION,
        action,
        retry_after_secs: 60,
        reason: "because".into(),
        release: (action == Action::Update).then(|| ReleaseOffer {
            version: v("2.0.0"),
            sequence: 7,
            envelope: ReleaseOffer::encode_envelope(b"{\"payload\":\"x\"}"),
            repository: "http://127.0.0.1:1/repo/".into(),
            node_image_only: Some(true),
        }),
        drain_timeout_secs: (action == Action::Reboot).then_some(1800),
        acked_event_seq: Some(3),
    }
}

#[test]
fn directives_round_trip_and_carry_exactly_what_their_action_needs() {
    for action in [Action::Wait, Action::Update, Action::Reboot, Action::Cancel] {
        let d = directive(action);
        assert_eq!(Directive::from_json(&d.to_json()).expect("parses"), d);
    }
    let mut no_release = directive(Action::Update);
    no_release.release = None;
    let mut stray_release = directive(Action::Wait);
    stray_release.release = directive(Action::Update).release;
    let mut no_drain = directive(Action::Reboot);
    no_drain.drain_timeout_secs = None;
    let mut stray_drain = directive(Action::Cancel);
    stray_drain.drain_timeout_secs = Some(5);
    let mut zero_retry = directive(Action::Wait);
    zero_retry.retry_after_secs = 0;
    let mut long_retry = directive(Action::Wait);
    long_retry.retry_after_secs = MAX_RETRY_AFTER_SECS + 1;
    let mut file_repo = directive(Action::Update);
    if let Some(r) = file_repo.release.as_mut() {
        r.repository = "file:///etc".into();
    }
    let mut bad_base64 = directive(Action::Update);
    if let Some(r) = bad_base64.release.as_mut() {
        r.envelope = "***".into();
    }
    for (d, field) in [
        (no_release, "release"),
        (stray_release, "release"),
        (no_drain, "drain_timeout_secs"),
        (stray_drain, "drain_timeout_secs"),
        (zero_retry, "retry_after_secs"),
        (long_retry, "retry_after_secs"),
        (file_repo, "release.repository"),
        (bad_base64, "release.envelope"),
    ] {
        let message = Directive::from_json(&d.to_json())
            .expect_err(field)
            .to_string();
        assert!(message.contains(&format!("`{field}`")), "{message}");
    }
}

#[test]
fn fleetlock_body_is_zincatis() {
    let body = FleetLockRequest::body("node-1", "web");
    assert_eq!(
        String::from_utf8(body.clone()).expect("utf8"),
        r#"{"client_params":{"id":"node-1","group":"web"}}"#
    );
    let (id, group) = FleetLockRequest::from_json(&body).expect("parses");
    assert_eq!((id.as_str(), group.as_str()), ("node-1", "web"));
    for bad in [
        r#"{"client_params":{"id":"","group":"web"}}"#,
        r#"{"client_params":{"id":"n","group":"../etc"}}"#,
        r#"{"client_params":{"id":"n"}}"#,
    ] {
        assert!(
            FleetLockRequest::from_json(bad.as_bytes()).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn enrolment_documents() {
    let request = EnrollRequest {
        protocol: PROTOCOL_VERSION,
        node_id: NodeId::new("n-1").expect("id"),
    };
    assert_eq!(
        EnrollRequest::from_json(&request.to_json()).expect("parses"),
        request
    );
    assert!(EnrollRequest::from_json(br#"{"protocol":1,"node_id":"-x"}"#).is_err());
    let answer = Enrolled {
        protocol: PROTOCOL_VERSION,
        node_id: NodeId::new("n-1").expect("id"),
        pool: PoolName::new("web").expect("pool"),
        node_token: "node.abc".into(),
        check_in_interval_secs: 0,
    };
    assert!(Enrolled::from_json(&answer.to_json()).is_err());
}

fn arb_version() -> impl Strategy<Value = Version> {
    (0u64..5, 0u64..20, 0u64..20).prop_map(|(a, b, c)| Version::new(a, b, c))
}

fn arb_event(seq: u64) -> impl Strategy<Value = Event> {
    (
        prop_oneof![
            Just(EventKind::Downloaded),
            Just(EventKind::Staged),
            Just(EventKind::Rebooted),
            Just(EventKind::Healthy),
            Just(EventKind::RolledBack),
            Just(EventKind::Failed),
        ],
        arb_version(),
        "[ -~]{1,40}",
        0i64..4_000_000_000,
    )
        .prop_map(move |(kind, version, reason, secs)| Event {
            seq,
            at: DateTime::from_timestamp(secs, 0).unwrap_or_default(),
            kind,
            version,
            reason: kind.is_failure().then_some(reason),
        })
}

proptest! {
    #[test]
    fn any_valid_check_in_round_trips(
        id in "[a-z0-9][a-z0-9._:-]{0,60}",
        pool in "[a-z0-9][a-z0-9._-]{0,30}",
        version in arb_version(),
        events in proptest::collection::vec(arb_event(0), 0..MAX_EVENTS),
    ) {
        let events = events
            .into_iter()
            .enumerate()
            .map(|(i, mut e)| { e.seq = i as u64 * 3 + 1; e })
            .collect();
        let c = CheckIn {
            protocol: PROTOCOL_VERSION,
            node_id: NodeId::new(&id).expect("id"),
            pool: PoolName::new(&pool).expect("pool"),
            booted: Booted { version, slot: Slot::B },
            state: AgentState::Staged,
            events,
        };
        prop_assert_eq!(CheckIn::from_json(&c.to_json()).expect("parses"), c);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = CheckIn::from_json(&bytes);
        let _ = Directive::from_json(&bytes);
        let _ = FleetLockRequest::from_json(&bytes);
    }
}
