//! Pure policy tests: one per rule, and a property test of the limits against a model of the
//! store's bookkeeping.

use super::*;
use basalt_rollout_wire::EventKind;
use proptest::prelude::*;

fn v(text: &str) -> Version {
    Version::parse(text).expect("version")
}

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-12-02T10:00:00Z")
        .expect("time")
        .with_timezone(&Utc)
}

fn at(secs: i64) -> DateTime<Utc> {
    t0() + Duration::seconds(secs)
}

fn rel(sequence: u64, version: &str) -> ReleaseRef {
    ReleaseRef {
        sequence,
        version: v(version),
    }
}

fn rollout(plan: Plan) -> Rollout {
    Rollout {
        id: 7,
        target: rel(20, "2.0.0"),
        plan,
        started_at: t0(),
        state: RolloutState::Active,
        reason: None,
        acknowledged_failed: 0,
        acknowledged_touched: 0,
    }
}

fn all_at_once() -> Plan {
    Plan {
        waves: vec![Wave {
            after_secs: 0,
            percent: 100,
        }],
        ..Plan::default()
    }
}

fn ctx(now: DateTime<Utc>) -> Context<'static> {
    Context {
        now,
        interval_secs: 300,
        floors: &[],
        pool_pin: None,
    }
}

fn id(n: u32) -> NodeId {
    NodeId::new(&format!("node-{n}")).expect("id")
}

fn fleet(pool_size: u64) -> Fleet {
    Fleet {
        pool_size,
        ..Fleet::default()
    }
}

fn decide_for(
    r: &Rollout,
    c: &Context<'_>,
    f: &Fleet,
    node: &NodeId,
    booted: &str,
    p: Option<&Progress>,
) -> Decision {
    let booted = v(booted);
    decide(
        r,
        c,
        f,
        &NodeFacts {
            id: node,
            booted: &booted,
            pin: None,
            progress: p,
            reported: AgentState::Idle,
        },
    )
}

fn progress(stage: Stage, since: i64) -> Progress {
    Progress {
        stage,
        since: at(since),
        hop: rel(20, "2.0.0"),
        reason: None,
    }
}

fn reason(d: &Decision) -> &str {
    match d {
        Decision::Wait { reason, .. }
        | Decision::Update { reason, .. }
        | Decision::Reboot { reason }
        | Decision::Cancel { reason } => reason,
    }
}

#[test]
fn limits_parse_and_round_up() {
    assert_eq!("3".parse(), Ok(Limit::Nodes(3)));
    assert_eq!("10%".parse(), Ok(Limit::Percent(10)));
    assert!("101%".parse::<Limit>().is_err());
    assert!("x".parse::<Limit>().is_err());
    assert!("-1".parse::<Limit>().is_err());
    assert_eq!(Limit::Percent(10).resolve(1000), 100);
    assert_eq!(Limit::Percent(10).resolve(11), 2, "AKS rounds up");
    assert_eq!(Limit::Percent(1).resolve(0), 0);
}

#[test]
fn durations_and_waves_parse() {
    assert_eq!(parse_duration("90s"), Ok(90));
    assert_eq!(parse_duration("30m"), Ok(1800));
    assert_eq!(parse_duration("2h"), Ok(7200));
    assert_eq!(parse_duration("1d"), Ok(86_400));
    assert_eq!(parse_duration("15"), Ok(15));
    assert!(parse_duration("1w").is_err());
    assert!(parse_duration("h").is_err());
    let waves = parse_waves("1%@0,10%@1h,100%@6h").expect("waves");
    assert_eq!(waves.len(), 3);
    for bad in [
        "",
        "1%@1h,100%@2h",
        "10%@0,5%@1h,100%@2h",
        "1%@0,50%@1h",
        "1%@0,100%@0",
        "x@0",
    ] {
        assert!(parse_waves(bad).is_err(), "{bad}");
    }
}

#[test]
fn plans_that_cannot_work_are_refused() {
    let bad = [
        Plan {
            max_unavailable: Limit::Nodes(0),
            ..Plan::default()
        },
        Plan {
            max_unavailable: Limit::Percent(0),
            ..Plan::default()
        },
        Plan {
            drain_timeout_secs: 0,
            ..Plan::default()
        },
        Plan {
            halt_at_percent: 0,
            ..Plan::default()
        },
        Plan {
            waves: vec![],
            ..Plan::default()
        },
    ];
    for plan in bad {
        assert!(plan.validate().is_err(), "{plan:?}");
    }
    Plan::default().validate().expect("defaults are valid");
    // A full upgrade (the release's extensions move with the OS) is a plan like any other.
    Plan {
        node_image_only: false,
        ..Plan::default()
    }
    .validate()
    .expect("a full upgrade is valid");
}

#[test]
fn waves_gate_by_seed_and_by_count() {
    let plan = Plan::default(); // 1% now, 10% after 1 h …
    let r = rollout(plan);
    let f = fleet(1000);
    // Find a node whose seed is in the first 1% and one that is not.
    let early = (0..100_000)
        .map(id)
        .find(|n| seed(r.id, n) < 20)
        .expect("an early seed");
    let late = (0..100_000)
        .map(id)
        .find(|n| seed(r.id, n) >= 1024)
        .expect("a late seed");
    assert!(matches!(
        decide_for(&r, &ctx(at(0)), &f, &early, "1.0.0", None),
        Decision::Update { .. }
    ));
    let d = decide_for(&r, &ctx(at(0)), &f, &late, "1.0.0", None);
    assert!(matches!(d, Decision::Wait { .. }), "{d:?}");
    assert!(reason(&d).contains("wave 4 opens"), "{d:?}");
    // The count cap: 1% of 1000 = 10 touched, even for an early seed.
    let full = Fleet { touched: 10, ..f };
    let d = decide_for(&r, &ctx(at(0)), &full, &early, "1.0.0", None);
    assert!(reason(&d).contains("10 of 10 nodes"), "{d:?}");
    // After 6 h, everything is allowed.
    assert!(matches!(
        decide_for(&r, &ctx(at(6 * 3600)), &full, &late, "1.0.0", None),
        Decision::Update { .. }
    ));
}

#[test]
fn seeds_are_stable_per_rollout_and_spread() {
    let n = id(1);
    assert_eq!(seed(7, &n), seed(7, &n));
    let differ = (0..50).filter(|r| seed(*r, &n) != seed(7, &n)).count();
    assert!(differ > 40, "seeds differ between rollouts");
    let early = (0..10_000).filter(|i| seed(7, &id(*i)) < 205).count();
    assert!(
        (800..1200).contains(&early),
        "about 10% of seeds below 10%: {early}"
    );
}

#[test]
fn in_flight_limit_is_unavailable_plus_surge() {
    let plan = Plan {
        max_unavailable: Limit::Nodes(2),
        max_surge: Limit::Percent(10),
        ..all_at_once()
    };
    assert_eq!(plan.in_flight_limit(30), 5);
    let r = rollout(plan);
    let f = Fleet {
        in_flight: 5,
        ..fleet(30)
    };
    let d = decide_for(&r, &ctx(at(0)), &f, &id(1), "1.0.0", None);
    assert!(reason(&d).contains("5 of 5 nodes in flight"), "{d:?}");
    let f = Fleet { in_flight: 4, ..f };
    assert!(matches!(
        decide_for(&r, &ctx(at(0)), &f, &id(1), "1.0.0", None),
        Decision::Update { .. }
    ));
}

#[test]
fn a_lost_reboot_grant_is_repeated_to_a_node_still_staged() {
    let r = rollout(Plan {
        max_unavailable: Limit::Nodes(1),
        ..all_at_once()
    });
    let granted = progress(Stage::Rebooting, 0);
    // The pool is at its limit (this node holds the slot): a staged report still gets the
    // grant again, any other report waits for the node to come back.
    let f = Fleet {
        unavailable: 1,
        ..fleet(10)
    };
    let booted = v("1.0.0");
    let node = id(1);
    let facts = |reported| NodeFacts {
        id: &node,
        booted: &booted,
        pin: None,
        progress: Some(&granted),
        reported,
    };
    assert!(matches!(
        decide(&r, &ctx(at(10)), &f, &facts(AgentState::Staged)),
        Decision::Reboot { .. }
    ));
    for other in [AgentState::Idle, AgentState::Rebooting, AgentState::Trying] {
        let d = decide(&r, &ctx(at(10)), &f, &facts(other));
        assert!(
            reason(&d).contains("report when healthy"),
            "{other:?}: {d:?}"
        );
    }
}

#[test]
fn reboot_is_granted_only_below_max_unavailable() {
    let r = rollout(Plan {
        max_unavailable: Limit::Nodes(2),
        ..all_at_once()
    });
    let staged = progress(Stage::Staged, 0);
    let f = Fleet {
        unavailable: 2,
        in_flight: 3,
        touched: 3,
        ..fleet(10)
    };
    let d = decide_for(&r, &ctx(at(10)), &f, &id(1), "1.0.0", Some(&staged));
    assert!(
        reason(&d).contains("max-unavailable reached (2 of 2"),
        "{d:?}"
    );
    let f = Fleet {
        unavailable: 1,
        ..f
    };
    assert!(matches!(
        decide_for(&r, &ctx(at(10)), &f, &id(1), "1.0.0", Some(&staged)),
        Decision::Reboot { .. }
    ));
}

#[test]
fn soak_holds_the_slot() {
    let plan = Plan {
        soak_secs: 600,
        ..all_at_once()
    };
    let healthy = progress(Stage::Healthy, 100);
    assert!(occupies_slot(&healthy, &plan, at(699)));
    assert!(!occupies_slot(&healthy, &plan, at(700)));
    assert!(!occupies_slot(&progress(Stage::Failed, 0), &plan, at(1)));
    assert!(occupies_slot(
        &progress(Stage::Staged, 0),
        &plan,
        at(1_000_000)
    ));
}

#[test]
fn windows_gate_admission_and_reboot() {
    let r = rollout(Plan {
        windows: vec!["Sat,Sun 02:00-06:00 UTC".parse().expect("window")],
        ..all_at_once()
    });
    // t0 is a Wednesday.
    let d = decide_for(&r, &ctx(at(0)), &fleet(10), &id(1), "1.0.0", None);
    match &d {
        Decision::Wait {
            retry_after,
            reason,
        } => {
            assert!(reason.contains("2026-12-05T02:00:00"), "{reason}");
            // Three days minus 8 h away, capped at the longest retry a directive carries.
            assert_eq!(*retry_after, basalt_rollout_wire::MAX_RETRY_AFTER_SECS);
        }
        other => panic!("{other:?}"),
    }
    let staged = progress(Stage::Staged, 0);
    assert!(matches!(
        decide_for(&r, &ctx(at(0)), &fleet(10), &id(1), "1.0.0", Some(&staged)),
        Decision::Wait { .. }
    ));
    let saturday = at(3 * 86_400 - 7 * 3600);
    assert!(matches!(
        decide_for(
            &r,
            &ctx(saturday),
            &fleet(10),
            &id(1),
            "1.0.0",
            Some(&staged)
        ),
        Decision::Reboot { .. }
    ));
}

#[test]
fn floors_are_visited_in_order_and_pins_cap() {
    let target = rel(30, "3.0.0");
    let floors = [rel(10, "1.5.0"), rel(20, "2.0.0"), rel(31, "3.1.0")];
    let hop = |booted: &str, pin: Option<&str>| {
        let pin = pin.map(v);
        next_hop(&target, &floors, &v(booted), pin.as_ref())
    };
    assert_eq!(hop("1.0.0", None), Ok(Some(rel(10, "1.5.0"))));
    assert_eq!(hop("1.5.0", None), Ok(Some(rel(20, "2.0.0"))));
    assert_eq!(hop("2.0.0", None), Ok(Some(target.clone())));
    assert_eq!(hop("3.0.0", None), Ok(None));
    assert_eq!(hop("3.2.0", None), Ok(None), "never a downgrade");
    assert!(
        hop("1.5.0", Some("1.9.0")).is_err(),
        "pinned below the floor"
    );
    assert_eq!(hop("1.5.0", Some("2.0.0")), Ok(Some(rel(20, "2.0.0"))));
}

#[test]
fn pinned_nodes_and_pools_wait() {
    let r = rollout(all_at_once());
    let pin = v("1.0.0");
    let c = Context {
        pool_pin: Some(&pin),
        ..ctx(at(0))
    };
    let d = decide_for(&r, &c, &fleet(10), &id(1), "1.0.0", None);
    assert!(reason(&d).contains("pinned at 1.0.0"), "{d:?}");
    let booted = v("1.0.0");
    let node_pin = v("2.0.0");
    let d = decide(
        &r,
        &c,
        &fleet(10),
        &NodeFacts {
            id: &id(1),
            booted: &booted,
            pin: Some(&node_pin),
            progress: None,
            reported: AgentState::Idle,
        },
    );
    assert!(
        matches!(d, Decision::Update { .. }),
        "a node pin wins: {d:?}"
    );
}

#[test]
fn pause_halt_and_abort() {
    let mut r = rollout(all_at_once());
    r.state = RolloutState::Paused;
    r.reason = Some("operator".into());
    let staged = progress(Stage::Staged, 0);
    for p in [None, Some(&staged)] {
        let d = decide_for(&r, &ctx(at(0)), &fleet(10), &id(1), "1.0.0", p);
        assert!(reason(&d).contains("paused: operator"), "{d:?}");
    }
    r.state = RolloutState::Aborted;
    for stage in [Stage::Admitted, Stage::Staged] {
        let p = progress(stage, 0);
        assert!(matches!(
            decide_for(&r, &ctx(at(0)), &fleet(10), &id(1), "1.0.0", Some(&p)),
            Decision::Cancel { .. }
        ));
    }
    for p in [
        None,
        Some(progress(Stage::Healthy, 0)),
        Some(progress(Stage::Rebooting, 0)),
    ] {
        assert!(matches!(
            decide_for(&r, &ctx(at(0)), &fleet(10), &id(1), "1.0.0", p.as_ref()),
            Decision::Wait { .. }
        ));
    }
}

#[test]
fn auto_halt_counts_failures_against_touched_since_resume() {
    let mut r = rollout(Plan {
        halt_at_percent: 20,
        ..all_at_once()
    });
    let f = Fleet {
        touched: 10,
        failed: 1,
        ..fleet(100)
    };
    assert_eq!(halt_reason(&r, &f, None), None, "10% < 20%");
    let f = Fleet { failed: 2, ..f };
    let why = halt_reason(&r, &f, Some("node-3: rolled back")).expect("halts");
    assert!(why.contains("2 of 10") && why.contains("node-3"), "{why}");
    r.acknowledged_failed = 2;
    r.acknowledged_touched = 10;
    assert_eq!(halt_reason(&r, &f, None), None, "acknowledged at resume");
    let f = Fleet {
        touched: 12,
        failed: 3,
        ..f
    };
    assert!(
        halt_reason(&r, &f, None).is_some(),
        "1 of 2 since the resume"
    );
    r.state = RolloutState::Halted;
    assert_eq!(halt_reason(&r, &f, None), None, "halts once");
}

#[test]
fn timeouts_fail_admitted_and_rebooting_nodes_only() {
    let plan = Plan {
        node_timeout_secs: 100,
        drain_timeout_secs: 50,
        ..all_at_once()
    };
    assert!(timed_out(&progress(Stage::Admitted, 0), &plan, at(99)).is_none());
    assert!(timed_out(&progress(Stage::Admitted, 0), &plan, at(100)).is_some());
    assert!(timed_out(&progress(Stage::Rebooting, 0), &plan, at(149)).is_none());
    let why = timed_out(&progress(Stage::Rebooting, 0), &plan, at(150)).expect("timed out");
    assert!(why.contains("drain timeout 50 s"), "{why}");
    assert!(
        timed_out(&progress(Stage::Staged, 0), &plan, at(1_000_000)).is_none(),
        "waiting for a slot is not the node's fault"
    );
}

#[test]
fn events_move_progress_only_for_the_current_hop() {
    let p = progress(Stage::Admitted, 0);
    assert_eq!(
        apply_event(&p, EventKind::Staged, &v("2.0.0")),
        Some(Stage::Staged)
    );
    assert_eq!(apply_event(&p, EventKind::Staged, &v("1.9.0")), None);
    assert_eq!(apply_event(&p, EventKind::Downloaded, &v("2.0.0")), None);
    let p = progress(Stage::Rebooting, 0);
    assert_eq!(
        apply_event(&p, EventKind::Healthy, &v("2.0.0")),
        Some(Stage::Healthy)
    );
    assert_eq!(
        apply_event(&p, EventKind::RolledBack, &v("2.0.0")),
        Some(Stage::Failed)
    );
    let p = progress(Stage::Healthy, 0);
    assert_eq!(
        apply_event(&p, EventKind::RolledBack, &v("2.0.0")),
        Some(Stage::Failed),
        "a late rollback counts"
    );
    let p = progress(Stage::Failed, 0);
    assert_eq!(
        apply_event(&p, EventKind::Healthy, &v("2.0.0")),
        None,
        "failed is final in a rollout"
    );
}

#[test]
fn admitted_nodes_get_the_same_update_again() {
    let r = rollout(all_at_once());
    let p = progress(Stage::Admitted, 0);
    let d = decide_for(&r, &ctx(at(5)), &fleet(10), &id(1), "1.0.0", Some(&p));
    assert_eq!(
        d,
        Decision::Update {
            release: rel(20, "2.0.0"),
            reason: "move to 2.0.0 (sequence 20)".into()
        }
    );
}

// --- The limits under any sequence of events: a model of the store's bookkeeping. ---

#[derive(Debug, Clone)]
enum Op {
    /// Node checks in; with a report of what it did since, by its own state.
    CheckIn { node: usize, fail: bool },
    /// An external FleetLock client asks for a slot.
    ForeignLock { holder: usize },
    /// A FleetLock client gives its slot back.
    ForeignUnlock { holder: usize },
    /// The clock moves.
    Step { secs: i64 },
}

fn op(nodes: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..nodes, proptest::bool::weighted(0.2)).prop_map(|(node, fail)| Op::CheckIn { node, fail }),
        1 => (0..3usize).prop_map(|holder| Op::ForeignLock { holder }),
        1 => (0..3usize).prop_map(|holder| Op::ForeignUnlock { holder }),
        2 => (1i64..4000).prop_map(|secs| Op::Step { secs }),
    ]
}

struct Model {
    rollout: Rollout,
    progress: Vec<Option<Progress>>,
    booted: Vec<Version>,
    locks: std::collections::BTreeSet<String>,
    touched: std::collections::BTreeSet<usize>,
    now: DateTime<Utc>,
}

impl Model {
    fn fleet(&self) -> Fleet {
        let plan = &self.rollout.plan;
        Fleet {
            pool_size: self.progress.len() as u64,
            touched: self.touched.len() as u64,
            failed: self
                .progress
                .iter()
                .flatten()
                .filter(|p| p.stage == Stage::Failed)
                .count() as u64,
            in_flight: self
                .progress
                .iter()
                .flatten()
                .filter(|p| occupies_slot(p, plan, self.now))
                .count() as u64,
            unavailable: self.locks.len() as u64,
        }
    }

    fn set(&mut self, i: usize, stage: Stage, reason: Option<String>) {
        if let Some(p) = self.progress[i].as_mut() {
            p.stage = stage;
            p.since = self.now;
            p.reason = reason;
        }
        if matches!(stage, Stage::Healthy | Stage::Failed) {
            self.locks.remove(&format!("n{i}"));
        }
    }

    fn check_in(&mut self, i: usize, fail: bool) {
        // The node reports what its stage implies it did since its last check-in.
        if let Some(p) = self.progress[i].clone() {
            let event = match (p.stage, fail) {
                (Stage::Admitted, false) => Some((EventKind::Staged, None)),
                (Stage::Admitted, true) => Some((EventKind::Failed, Some("disk".to_owned()))),
                (Stage::Rebooting, false) => Some((EventKind::Healthy, None)),
                (Stage::Rebooting, true) => {
                    Some((EventKind::RolledBack, Some("health".to_owned())))
                }
                _ => None,
            };
            if let Some((kind, reason)) = event {
                if let Some(stage) = apply_event(&p, kind, &p.hop.version) {
                    if stage == Stage::Healthy {
                        self.booted[i] = p.hop.version.clone();
                    }
                    self.set(i, stage, reason);
                }
            }
        }
        // Timeouts of every node are recorded before deciding.
        for j in 0..self.progress.len() {
            if let Some(reason) = self.progress[j]
                .as_ref()
                .and_then(|p| timed_out(p, &self.rollout.plan, self.now))
            {
                self.set(j, Stage::Failed, Some(reason));
            }
        }
        let fleet = self.fleet();
        if let Some(reason) = halt_reason(&self.rollout, &fleet, None) {
            self.rollout.state = RolloutState::Halted;
            self.rollout.reason = Some(reason);
        }
        let id = id(i as u32);
        let c = ctx(self.now);
        let booted = self.booted[i].clone();
        let d = decide(
            &self.rollout,
            &c,
            &fleet,
            &NodeFacts {
                id: &id,
                booted: &booted,
                pin: None,
                progress: self.progress[i].as_ref(),
                reported: AgentState::Idle,
            },
        );
        match d {
            Decision::Update { release, .. } => {
                self.touched.insert(i);
                self.progress[i] = Some(Progress {
                    stage: Stage::Admitted,
                    since: self.now,
                    hop: release,
                    reason: None,
                });
            }
            Decision::Reboot { .. } => {
                self.locks.insert(format!("n{i}"));
                self.set(i, Stage::Rebooting, None);
            }
            Decision::Cancel { .. } => self.set(i, Stage::Failed, Some("cancelled".into())),
            Decision::Wait { .. } => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn max_unavailable_and_in_flight_hold_for_any_sequence(
        nodes in 1usize..40,
        max_unavailable in 1u64..4,
        surge in 0u32..30,
        soak in 0u64..3000,
        halt in 1u32..100,
        ops in proptest::collection::vec(op(40), 1..300),
    ) {
        let plan = Plan {
            max_unavailable: Limit::Nodes(max_unavailable),
            max_surge: Limit::Percent(surge),
            soak_secs: soak,
            halt_at_percent: halt,
            node_timeout_secs: 2000,
            drain_timeout_secs: 600,
            waves: parse_waves("5%@0,30%@1h,100%@3h").expect("waves"),
            ..Plan::default()
        };
        let mut m = Model {
            rollout: rollout(plan.clone()),
            progress: vec![None; nodes],
            booted: vec![v("1.0.0"); nodes],
            locks: Default::default(),
            touched: Default::default(),
            now: t0(),
        };
        let limit = plan.unavailable_limit(nodes as u64);
        for op in ops {
            match op {
                Op::CheckIn { node, fail } => m.check_in(node % nodes, fail),
                Op::ForeignLock { holder } => {
                    // The FleetLock endpoint's rule: a free slot, or already held.
                    let key = format!("f{holder}");
                    if m.locks.contains(&key) || (m.locks.len() as u64) < limit {
                        m.locks.insert(key);
                    }
                }
                Op::ForeignUnlock { holder } => {
                    m.locks.remove(&format!("f{holder}"));
                }
                Op::Step { secs } => m.now += Duration::seconds(secs),
            }
            let fleet = m.fleet();
            prop_assert!(fleet.unavailable <= limit, "{} unavailable > {limit}", fleet.unavailable);
            let rebooting = m.progress.iter().flatten().filter(|p| p.stage == Stage::Rebooting).count() as u64;
            prop_assert!(rebooting <= limit);
            // Admissions respect the in-flight limit at the time they are made; a node
            // moving back to a slot (none here) would be the only way above it.
            prop_assert!(fleet.in_flight <= plan.in_flight_limit(nodes as u64));
            let share = u64::from(plan.allowed_percent((m.now - t0()).num_seconds()));
            prop_assert!(fleet.touched <= (share * nodes as u64).div_ceil(100));
        }
    }
}
