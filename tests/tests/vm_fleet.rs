//! Issue 11's VM scenario: a node in QEMU follows the fleet server on the host and is
//! upgraded by `basalt-rollout pool upgrade --node-image-only`.
//!
//! On the host: releases 1.0.0 and 2.0.0 of the container-host **test** image (one Debian
//! staging), published with `basalt release publish` into a repository that nginx serves on
//! 127.0.0.1; the real `basalt-rollout serve` (its own SQLite file, a free 127.0.0.1 port, an
//! operator token made with `basalt-rollout operator add`) knows that repository and tells
//! nodes to fetch from `http://10.0.2.100/`. The guest's only NIC is QEMU user-mode in
//! restricted mode with two `guestfwd`s: 10.0.2.100:80 → nginx and 10.0.2.101:80 → the
//! server, each through `socat`.
//!
//! 1. The operator creates pool `web` (check-ins every 5 s) and an enrolment token, and
//!    publishes 1.0.0's signed channel head into the server (`release publish`).
//! 2. 1.0.0 boots under OVMF + systemd-boot; the node's operator writes the server-mode
//!    drop-in and the token (`story::Node::join_fleet`). The node enrols and checks in: the
//!    server (`status --json`, `nodes --json`) shows one node on 1.0.0 in slot A, and nothing
//!    moves without a rollout.
//! 3. 2.0.0's head is published into the server; `basalt-rollout pool upgrade web
//!    --node-image-only --to 2.0.0 --waves 100%@0` admits the node at once. The node downloads
//!    2.0.0 from nginx, stages it, runs its drain command on the server's word and reboots;
//!    systemd-boot starts 2.0.0 on trial, the health gate passes, the node reports healthy.
//! 4. The test waits until the server says the rollout is complete with the node on 2.0.0
//!    (stages and events checked), and `basaltctl status --json` in the guest says slot B
//!    runs 2.0.0, blessed. nginx's access log: 2.0.0's blobs were served whole, nothing of
//!    1.0.0 was fetched.
//!
//! One QEMU run, two boots (≈25–40 s each under TCG) and one download over the guest NIC.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use basalt_image::build::Variant;
use basalt_tests::artifacts::{container_host, test_keys};
use basalt_tests::fleet::RolloutServer;
use basalt_tests::story::{
    booted_version, restricted_nic_to, Narrator, Node, Repository, Stderr, FLEET_DRAIN_MARK,
    GUEST_FLEET_ADDR, GUEST_REPO_ADDR,
};
use basalt_tests::vm::{scale, scenario_dir};
use basalt_tests::web::Nginx;
use serde_json::{json, Value};

/// The pool of the scenario.
const POOL: &str = "web";
/// Enrolment and the first check-in after the agent's restart.
const ENROL: Duration = Duration::from_secs(120);
/// Admission → download of 2.0.0 over the guest NIC → staged → drained → reboot.
const UPDATE: Duration = Duration::from_secs(600);
/// Up again on 2.0.0 → health gate → healthy reported → rollout complete.
const SETTLE: Duration = Duration::from_secs(300);

/// The signed channel head `basalt release publish` just wrote, kept as `dir/head-VERSION`
/// (the repository's head moves on with the next publish).
fn keep_head(repo: &Path, dir: &Path, version: &str) -> Result<std::path::PathBuf> {
    let head = repo.join(basalt_manifest::repo::head_path("stable", "x86_64")?);
    let kept = dir.join(format!("head-{version}.signed"));
    std::fs::copy(&head, &kept).with_context(|| format!("copying {}", head.display()))?;
    Ok(kept)
}

/// Polls `basalt-rollout status POOL --json` until `done` holds (bounded, scaled).
fn wait_server(
    server: &RolloutServer,
    node: &mut Node,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + scale(timeout);
    loop {
        let status = server.json(&["status", POOL])?;
        if done(&status) {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let journal = node
                .run("journalctl -b -u basalt-updated --no-pager | tail -n 40")
                .unwrap_or_else(|e| format!("(journal unreadable: {e})"));
            bail!(
                "waiting for the server to show {what}: last status {status:#}\n\
                 server log:\n{}\nnode's agent:\n{journal}",
                server.log_tail(30)
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The repository paths of the blobs a node installs from a signed channel head (verified
/// against the trust root first): the stored (compressed) blob and the frame index of its
/// `/usr`, kernel and initramfs. The SBOM is a published artifact the node never fetches.
/// The blobs a node may fetch to install a release: per artifact (usr, kernel, initrd) the
/// full stream and its frame index, and for an artifact with an adaptive reference the
/// alternative the agent takes when its booted slot shares blocks (the block index in full,
/// then ranges of the frame store).
struct Fetchable {
    stream: Vec<String>,
    adaptive: Option<(String, String)>,
}

fn blobs_of(head: &Path, trust: &Path) -> Result<Vec<Fetchable>> {
    let root = basalt_manifest::TrustRoot::from_initial_envelope(&std::fs::read(trust)?)?;
    let verified = basalt_manifest::verify_release(
        &std::fs::read(head)?,
        &root,
        &basalt_manifest::Policy::new(basalt_manifest::chrono::Utc::now()),
    )?;
    let mut out = Vec::new();
    for artifact in &verified.manifest.artifacts {
        use basalt_manifest::ArtifactKind::{Initrd, Kernel, Usr};
        if !matches!(artifact.kind, Usr | Kernel | Initrd) {
            continue;
        }
        let compression = artifact.compression.as_ref();
        let mut stream = vec![basalt_manifest::repo::blob_path(
            &compression.map_or(artifact.sha256, |c| c.compressed_sha256),
        )];
        if let Some(index) = compression.and_then(|c| c.frame_index.as_ref()) {
            stream.push(basalt_manifest::repo::blob_path(&index.sha256));
        }
        let adaptive = compression.and_then(|c| c.adaptive.as_ref()).map(|a| {
            (
                basalt_manifest::repo::blob_path(&a.block_index.sha256),
                basalt_manifest::repo::blob_path(&a.frame_store.sha256),
            )
        });
        out.push(Fetchable { stream, adaptive });
    }
    Ok(out)
}

fn event_kinds(status: &Value) -> Vec<String> {
    status["recent_events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["kind"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_node_in_qemu_is_upgraded_by_pool_upgrade_node_image_only() -> Result<()> {
    let started = Instant::now();
    let n = &mut Stderr;
    let v1 = container_host(Variant::Test, "1.0.0")?;
    let v2 = container_host(Variant::Test, "2.0.0")?;
    ensure!(
        v1.report.facts.staging_key.is_some()
            && v1.report.facts.staging_key == v2.report.facts.staging_key,
        "1.0.0 and 2.0.0 should share one Debian staging"
    );
    let built = started.elapsed();
    let dir = scenario_dir("vm-fleet")?;

    let repo = Repository::create(&dir.join("repo"), n)?;
    repo.publish(&v1, n)?;
    let head_v1 = keep_head(&repo.dir, &dir, "1.0.0")?;
    repo.publish(&v2, n)?;
    let head_v2 = keep_head(&repo.dir, &dir, "2.0.0")?;
    let published = started.elapsed();

    n.say(
        "Serve the repository with nginx on 127.0.0.1, and start the fleet server \
         (basalt-rollout serve, its own SQLite file) knowing the same repository and the \
         release keys' trust root. Nodes are told to fetch from http://10.0.2.100/ (nginx, \
         as the guest sees it).",
    );
    let nginx = Nginx::start(&dir.join("nginx"), &repo.dir)?;
    let keys = test_keys()?;
    let server = RolloutServer::start(
        &dir.join("fleet"),
        &keys.trust,
        &repo.dir,
        &format!("http://{GUEST_REPO_ADDR}/"),
    )?;
    n.show(&format!(
        "nginx at {}, basalt-rollout at {} (pid {})",
        nginx.url(),
        server.url(),
        server.pid()
    ));

    n.say("The operator creates pool web, an enrolment token, and publishes 1.0.0.");
    n.show(&server.cli(&[
        "pool",
        "create",
        POOL,
        "--channel",
        "stable",
        "--interval",
        "5s",
    ])?);
    let enroll = server.cli(&["pool", "enroll-token", POOL])?;
    let enroll = enroll.trim().to_owned();
    ensure!(!enroll.is_empty(), "pool enroll-token printed nothing");
    n.show(&server.cli(&[
        "release",
        "publish",
        "stable",
        "x86_64",
        &head_v1.display().to_string(),
    ])?);

    let disk = dir.join("disk.img");
    v1.copy_disk(&disk)?;
    n.say(
        "Boot 1.0.0 with one restricted NIC: http://10.0.2.100/ is nginx, \
         http://10.0.2.101/ is the fleet server; nothing else is reachable.",
    );
    let config = Node::config(&dir, &disk)
        .arg("-nic")
        .arg(restricted_nic_to(&[
            (GUEST_REPO_ADDR, nginx.port()),
            (GUEST_FLEET_ADDR, server.port()),
        ])?);
    let mut node = Node::boot(&config, &disk, n)?;
    let status = node.status()?;
    ensure!(
        booted_version(&status) == Some(("A".into(), "1.0.0".into(), "good".into())),
        "1.0.0 should run from slot A, blessed: {status:#}"
    );
    node.join_fleet(&format!("http://{GUEST_FLEET_ADDR}/"), POOL, &enroll, n)?;

    n.say("The node enrols and checks in; the server shows it on 1.0.0.");
    let st = wait_server(&server, &mut node, "the node on 1.0.0", ENROL, |s| {
        s["versions"] == json!({"1.0.0": 1})
    })?;
    ensure!(st["pool"]["nodes"] == 1, "one node in the pool: {st:#}");
    ensure!(st["rollout"].is_null(), "no rollout yet: {st:#}");
    let nodes = server.json(&["nodes", POOL])?;
    n.show(&server.cli(&["nodes", POOL])?);
    let node_id = match nodes.as_array().map(Vec::as_slice) {
        Some([one]) => {
            ensure!(
                one["booted_version"] == "1.0.0" && one["booted_slot"] == "a",
                "the node as the server sees it: {one:#}"
            );
            one["id"].as_str().unwrap_or_default().to_owned()
        }
        _ => bail!("one node expected: {nodes:#}"),
    };
    // Without a rollout nothing moves, whatever the node's check-ins (every 5 s).
    std::thread::sleep(Duration::from_secs(12));
    let quiet = node.status()?;
    ensure!(
        quiet["slots"][1]["state"] == "empty" && quiet["state"] == "idle",
        "slot B stays empty without a rollout: {quiet:#}"
    );
    let nothing = nginx.access_log()?;
    ensure!(
        nothing.is_empty(),
        "nothing fetched without a rollout: {nothing:?}"
    );

    n.say(
        "Publish 2.0.0 into the server and roll it across the pool: basalt-rollout pool \
         upgrade web --node-image-only --to 2.0.0, one wave of 100 % at once.",
    );
    n.show(&server.cli(&[
        "release",
        "publish",
        "stable",
        "x86_64",
        &head_v2.display().to_string(),
    ])?);
    n.show(&server.cli(&[
        "pool",
        "upgrade",
        POOL,
        "--node-image-only",
        "--to",
        "2.0.0",
        "--waves",
        "100%@0",
        "--max-unavailable",
        "1",
        "--halt-at",
        "50",
    ])?);
    let upgrade_at = node.elapsed();

    n.say(
        "The node is told to update at its next check-in: it downloads 2.0.0 from nginx, \
         verifies it against its own trust root, stages it, runs its drain command when the \
         server grants the reboot, and reboots. We only watch the console.",
    );
    node.expect_restart(UPDATE)?;
    let rebooted_at = node.elapsed();
    node.wait_up(n)?;
    let st = wait_server(
        &server,
        &mut node,
        "the rollout complete, the node healthy on 2.0.0",
        SETTLE,
        |s| {
            s["versions"] == json!({"2.0.0": 1})
                && s["rollout"]["complete"] == true
                && s["rollout"]["stages"]["healthy"] == 1
        },
    )?;
    let complete_at = node.elapsed();
    n.show(&server.cli(&["status", POOL])?);
    ensure!(
        st["rollout"]["info"]["target"]["version"] == "2.0.0"
            && st["rollout"]["failed"] == 0
            && st["rollout"]["at_target"] == 1,
        "{st:#}"
    );
    ensure!(
        st["lock_holders"] == json!([]),
        "the reboot slot is given back: {st:#}"
    );
    let kinds = event_kinds(&st);
    for k in ["downloaded", "staged", "rebooted", "healthy"] {
        ensure!(
            kinds.iter().filter(|x| *x == k).count() == 1,
            "{k} reported once by the node: {kinds:?}"
        );
    }
    ensure!(
        st["recent_events"]
            .as_array()
            .is_some_and(|e| e.iter().all(|e| e["node"] == node_id.as_str())),
        "every event is the node's own: {st:#}"
    );
    let nodes = server.json(&["nodes", POOL])?;
    n.show(&server.cli(&["nodes", POOL])?);
    ensure!(
        nodes[0]["booted_version"] == "2.0.0"
            && nodes[0]["booted_slot"] == "b"
            && nodes[0]["stage"] == "healthy",
        "the server's view of the node: {nodes:#}"
    );

    let status = node.status()?;
    n.show(&node.run("basaltctl status")?);
    ensure!(
        booted_version(&status) == Some(("B".into(), "2.0.0".into(), "good".into()))
            && status["current_version"] == "2.0.0",
        "the node should run 2.0.0 from slot B, committed: {status:#}"
    );
    let drained = node.run(&format!("cat {FLEET_DRAIN_MARK}"))?;
    n.show(&format!("drain command ran at {}", drained.trim()));
    let history = node.history()?;
    ensure!(
        history
            .iter()
            .any(|h| h["kind"] == "committed" && h["to"] == "2.0.0"),
        "the history records the commit of 2.0.0: {history:#?}"
    );

    // nginx: 2.0.0's own blobs (those 1.0.0 does not share) were served, in full — or, for
    // /usr, adaptively: the block index in full and ranges of the frame store, the blocks
    // the booted 1.0.0 slot lacks; nothing of 1.0.0's own was fetched. Blobs both releases
    // share (an unchanged kernel) may be taken from the node's disk, so they are not required.
    let log = nginx.access_log()?;
    let manifest = blobs_of(&head_v2, &keys.trust)?;
    let v1_manifest = blobs_of(&head_v1, &keys.trust)?;
    let ok = |a: &&basalt_tests::web::Access| a.status == 200 || a.status == 206;
    let served: u64 = log.iter().filter(ok).map(|a| a.body_bytes).sum();
    let mut wanted = BTreeSet::new();
    let mut wanted_bytes = 0u64;
    let mut adaptive_installs = 0;
    let served_of = |blob: &str| -> u64 {
        log.iter()
            .filter(ok)
            .filter(|a| a.request.contains(&format!("/{blob} ")))
            .map(|a| a.body_bytes)
            .sum()
    };
    let size_of = |blob: &str| -> Result<u64> {
        let path = repo.dir.join(blob);
        Ok(std::fs::metadata(&path)
            .with_context(|| format!("{}", path.display()))?
            .len())
    };
    let v1_blobs: BTreeSet<&String> = v1_manifest.iter().flat_map(|f| &f.stream).collect();
    for fetchable in &manifest {
        let own: Vec<&String> = fetchable
            .stream
            .iter()
            .filter(|b| !v1_blobs.contains(b))
            .collect();
        if own.is_empty() {
            continue;
        }
        let streamed = own
            .iter()
            .all(|b| size_of(b).is_ok_and(|s| served_of(b) >= s));
        let patched = fetchable.adaptive.as_ref().is_some_and(|(index, store)| {
            size_of(index).is_ok_and(|s| served_of(index) >= s) && served_of(store) > 0
        });
        ensure!(
            streamed || patched,
            "2.0.0's {own:?} were neither served in full nor installed adaptively: {log:#?}"
        );
        if patched && !streamed {
            adaptive_installs += 1;
            if let Some((index, store)) = &fetchable.adaptive {
                wanted_bytes += served_of(index) + served_of(store);
                wanted.insert(index.clone());
                wanted.insert(store.clone());
            }
        } else {
            for b in own {
                wanted_bytes += size_of(b)?;
                wanted.insert(b.clone());
            }
        }
    }
    ensure!(!wanted.is_empty(), "2.0.0 shares every blob with 1.0.0?");
    let v2_blobs: BTreeSet<&String> = manifest.iter().flat_map(|f| &f.stream).collect();
    for blob in v1_blobs.iter().filter(|b| !v2_blobs.contains(*b)) {
        ensure!(
            !log.iter().any(|a| a.request.contains(blob.as_str())),
            "1.0.0's blob {blob} should not be fetched: {log:#?}"
        );
    }
    println!("vm_fleet: {adaptive_installs} artifact(s) installed adaptively (block index + frame-store ranges)");
    let vm_time = node.poweroff()?;
    println!(
        "vm_fleet: releases ready in {:.0} s, published at {:.0} s; VM {:.0} s (upgrade \
         started at {:.0} s, reboot at {:.0} s, rollout complete at {:.0} s); total {:.0} s; \
         nginx {} requests, {} bytes ({} in 2.0.0's own {} blobs)",
        built.as_secs_f64(),
        published.as_secs_f64(),
        vm_time.as_secs_f64(),
        upgrade_at.as_secs_f64(),
        rebooted_at.as_secs_f64(),
        complete_at.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        log.len(),
        served,
        wanted_bytes,
        wanted.len(),
    );
    Ok(())
}
