//! The rollout server's bench driver, built in release mode by `cargo xtask bench --only
//! rollout` (it signs test releases, so it lives beside the tests, not in the product):
//!
//! - `rollout-bench prepare DIR`: a SQLite fleet database in DIR with an operator, a pool
//!   `bench` with one enrolled node, a published release and a running rollout whose waves
//!   keep that node waiting — so every check-in is the steady-state "not yet" — plus the trust
//!   root (`root.json`), the node's token (`node.token`), its check-in body (`check-in.json`)
//!   and the exact answer the server gives it (`www/answer.json`, for nginx to serve as a
//!   static file).
//! - `rollout-bench simulate NODES`: the fleet simulation (in-process server on 127.0.0.1,
//!   SQLite, a good release) with NODES nodes; prints one JSON line of figures.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use basalt_manifest::chrono::{DateTime, Duration, Utc};
use basalt_manifest::semver::Version;
use basalt_manifest::{Manifest, PublicKey, SigningKey, TrustRootDocument};
use basalt_rollout::auth::SystemRandom;
use basalt_rollout::clock::{Clock, ManualClock, SystemClock};
use basalt_rollout::server::{Running, Server};
use basalt_rollout::service::{self, Caller, Config, Service};
use basalt_rollout::sim::{Fleet, Outcome, RunConfig};
use basalt_rollout::store::{self, sqlite::Sqlite, Backend};
use basalt_rollout_wire::{AgentState, Booted, CheckIn, NodeId, PoolName, Slot, PROTOCOL_VERSION};

fn keys() -> Result<(Vec<SigningKey>, Vec<u8>)> {
    let keys: Vec<SigningKey> = (0..3u8)
        .map(|i| SigningKey::from_seed(&[40 + i; 32]))
        .collect::<Result<_, _>>()?;
    let public: Vec<PublicKey> = keys.iter().map(SigningKey::public_key).collect();
    let refs: Vec<&SigningKey> = keys.iter().collect();
    let root =
        basalt_manifest::sign_trust_root(&TrustRootDocument::new(1, 2, &public, None), &refs)?;
    Ok((keys, root))
}

fn release(
    keys: &[SigningKey],
    version: &str,
    sequence: u64,
    now: DateTime<Utc>,
) -> Result<Vec<u8>> {
    let json = format!(
        r#"{{"schema_version":1,"os":"basalt","version":"{version}","channel":"stable","arch":"x86_64","sequence":{sequence},
        "issued_at":"{}","expires_at":"{}",
        "artifacts":[{{"kind":"kernel","name":"vmlinuz","size":5000,"sha256":"{}"}}]}}"#,
        (now - Duration::hours(1)).to_rfc3339(),
        (now + Duration::days(365)).to_rfc3339(),
        "44".repeat(32)
    );
    let manifest = Manifest::from_json(json.as_bytes())?;
    Ok(basalt_manifest::sign_release(
        &manifest,
        &[&keys[0], &keys[1]],
    )?)
}

fn service(
    backend: Arc<dyn Backend>,
    clock: Arc<dyn Clock>,
    root: &[u8],
    url: &str,
) -> Result<Service> {
    Ok(Service::new(
        backend,
        clock,
        Arc::new(SystemRandom::default()),
        Config {
            repository_url: url.to_owned(),
            repository_dir: None,
            trust_root: basalt_manifest::TrustRoot::from_initial_envelope(root)?,
        },
    ))
}

fn prepare(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir.join("www"))?;
    let db = dir.join("fleet.db");
    let _ = std::fs::remove_file(&db);
    let backend: Arc<dyn Backend> = Arc::new(Sqlite::open(&db)?);
    let now = Utc::now();
    store::migrations::migrate(backend.as_ref(), now)?;
    let (keys, root) = keys()?;
    std::fs::write(dir.join("root.json"), &root)?;
    let svc = service(
        backend.clone(),
        Arc::new(SystemClock),
        &root,
        "http://127.0.0.1:1/repo/",
    )?;
    let op = Caller::Operator(
        service::create_operator_token(backend.as_ref(), &SystemRandom::default(), "bench")?
            .subject,
    );
    svc.create_pool(
        &op,
        br#"{"name":"bench","channel":"stable","arch":"x86_64","check_in_interval_secs":300}"#,
    )?;
    svc.publish(
        &op,
        "stable",
        "x86_64",
        &release(&keys, "2.0.0", 2, now)?,
        false,
    )?;
    let node = svc.register_node(&op, "bench", br#"{"node_id":"bench-node"}"#)?;
    // Waves that keep every node waiting for a day: each check-in is "not yet".
    svc.upgrade(
        &op,
        "bench",
        br#"{"node_image_only":true,"waves":[{"after_secs":0,"percent":0},{"after_secs":86400,"percent":100}]}"#,
    )?;
    let body = CheckIn {
        protocol: PROTOCOL_VERSION,
        node_id: NodeId::new("bench-node").map_err(anyhow::Error::msg)?,
        pool: PoolName::new("bench").map_err(anyhow::Error::msg)?,
        booted: Booted {
            version: Version::new(1, 0, 0),
            slot: Slot::A,
        },
        state: AgentState::Idle,
        events: vec![],
    }
    .to_json();
    let answer = svc.check_in_with_token(Some(&node.token), &body)?;
    std::fs::write(dir.join("node.token"), &node.token)?;
    std::fs::write(dir.join("check-in.json"), &body)?;
    std::fs::write(dir.join("www/answer.json"), answer.to_json())?;
    println!("prepared {}", dir.display());
    Ok(())
}

async fn simulate(nodes: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let backend: Arc<dyn Backend> = Arc::new(Sqlite::open(&dir.path().join("fleet.db"))?);
    let t0 = DateTime::parse_from_rfc3339("2026-12-02T08:00:00Z")?.with_timezone(&Utc);
    store::migrations::migrate(backend.as_ref(), t0)?;
    let (keys, root) = keys()?;
    let clock = Arc::new(ManualClock::new(t0));
    let svc = service(
        backend.clone(),
        clock.clone(),
        &root,
        "http://127.0.0.1:1/repo/",
    )?;
    let op = Caller::Operator(
        service::create_operator_token(backend.as_ref(), &SystemRandom::default(), "bench")?
            .subject,
    );
    svc.create_pool(
        &op,
        br#"{"name":"web","channel":"stable","arch":"x86_64","check_in_interval_secs":300}"#,
    )?;
    svc.publish(
        &op,
        "stable",
        "x86_64",
        &release(&keys, "2.0.0", 2, t0)?,
        false,
    )?;
    let enroll = svc.enroll_token(&op, "web")?.token;
    let running = Running::start(Server::new(svc.clone(), None), "127.0.0.1:0").await?;
    let mut fleet = Fleet::enroll(
        &running.url(),
        &enroll,
        "node",
        nodes,
        &Version::new(1, 0, 0),
        t0,
    )
    .await?;
    svc.upgrade(
        &op,
        "web",
        br#"{"node_image_only":true,"max_unavailable":"5%","max_surge":"5%","soak_secs":300,
            "waves":[{"after_secs":0,"percent":1},{"after_secs":1200,"percent":10},{"after_secs":2400,"percent":50},{"after_secs":3600,"percent":100}]}"#,
    )?;
    let limit = (nodes as u64 * 5).div_ceil(100);
    let cfg = RunConfig {
        servers: vec![running.url()],
        download_secs: 240,
        reboot_secs: 120,
        outcome: Outcome::Healthy,
        unavailable_limit: limit,
        in_flight_limit: limit * 2,
        soak_secs: 300,
        concurrency: 64,
        max_rounds: 20_000,
        until: t0 + Duration::days(3),
        tick_secs: 15,
    };
    let target = Version::new(2, 0, 0);
    let report = fleet
        .run(&clock, &cfg, |f| f.at_least(&target) == nodes && f.quiet())
        .await?;
    running.stop().await;
    if !report.violations.is_empty() {
        bail!("limits broken: {:?}", report.violations);
    }
    if fleet.at_least(&target) != nodes {
        bail!("did not converge: {report:?}");
    }
    println!(
        "{}",
        serde_json::json!({
            "nodes": nodes,
            "check_ins": report.check_ins,
            "wall_secs": report.wall.as_secs_f64(),
            "check_ins_per_sec": report.check_ins as f64 / report.wall.as_secs_f64(),
            "simulated_minutes": report.sim_secs / 60,
            "rounds": report.rounds,
            "max_unavailable": report.max_unavailable,
            "unavailable_limit": limit,
            "max_in_flight": report.max_in_flight,
            "in_flight_limit": limit * 2,
            "errors": report.errors,
        })
    );
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("prepare") => prepare(Path::new(args.get(2).context("prepare DIR")?)),
        Some("simulate") => {
            let nodes: usize = args.get(2).context("simulate NODES")?.parse()?;
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(simulate(nodes))
        }
        _ => bail!("usage: rollout-bench prepare DIR | simulate NODES"),
    }
}
