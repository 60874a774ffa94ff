//! `cargo xtask bench --only rollout`: the fleet server's figures, release builds only.
//!
//! 1. **Check-ins per second** of `basalt-rollout serve` (SQLite, a real child process on
//!    127.0.0.1) against nginx serving the very same answer as a static file, both driven by
//!    `wrk` (2 threads, 16 keep-alive connections) for N seconds, best of N interleaved
//!    rounds, ratio printed. Like for like: nginx runs one worker process (the test
//!    harness's configuration), so the server runs one request thread (`--threads 1`; its
//!    database writes still go to blocking threads). A second line gives the server at its
//!    default (one request thread per core) against the same nginx: on a 2-core machine
//!    that also runs `wrk`, more threads mostly add context switches. The check-in is the steady-state one: a node with nothing to
//!    report is told "not yet" (a write transaction: the node's last-seen and report are
//!    stored). nginx's answer is a GET of a file; ours a POST with JSON parsing, token check,
//!    a database transaction and the policy. Every answer must be a 2xx.
//! 2. **The 10,000-node fleet simulation** (in-process server on 127.0.0.1, manual clock,
//!    a good release converging in waves with max-unavailable 5 % and max-surge 5 %): wall
//!    time and check-ins per second, the limits checked.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::sh;

/// Kills the server child by PID when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wrk(args: &[String]) -> Result<f64> {
    let out = sh::output(Command::new("wrk").args(args)).context("wrk (apt-get install wrk)")?;
    ensure!(
        !out.contains("Non-2xx or 3xx responses"),
        "wrk saw error answers:\n{out}"
    );
    out.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{out}"))
}

pub fn run(runs: u32, seconds: u32, nodes: usize) -> Result<()> {
    let root = sh::root();
    sh::run(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "basalt-rollout",
        "--bin",
        "basalt-rollout",
        "--example",
        "rollout-bench",
    ]))?;
    let release = root.join("target").join("release");
    let server_bin = release.join("basalt-rollout");
    let driver = release.join("examples").join("rollout-bench");
    let work = root.join("target").join("bench").join("rollout");
    sh::run(Command::new(&driver).arg("prepare").arg(&work))?;

    let start = |threads: Option<u16>| -> Result<(Guard, u16)> {
        let port = basalt_tests::web::free_port()?;
        let mut cmd = Command::new(&server_bin);
        cmd.args(["serve", "--db"])
            .arg(work.join("fleet.db"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--trust-root"])
            .arg(work.join("root.json"))
            .env("BASALT_LOG", "warn")
            .stdin(Stdio::null());
        if let Some(n) = threads {
            cmd.args(["--threads", &n.to_string()]);
        }
        let server = Guard(cmd.spawn().context("starting basalt-rollout serve")?);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            ensure!(
                started.elapsed() < Duration::from_secs(30),
                "basalt-rollout serve did not listen on port {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok((server, port))
    };
    let (one, port) = start(Some(1))?;
    let (default, port_default) = start(None)?;
    let nginx = basalt_tests::web::Nginx::start(&work.join("nginx"), &work.join("www"))?;

    let token = std::fs::read_to_string(work.join("node.token"))?;
    let body = std::fs::read_to_string(work.join("check-in.json"))?;
    let script = work.join("check-in.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = {}\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"Authorization\"] = \"Bearer {}\"\n",
            serde_json::to_string(&body)?,
            token.trim()
        ),
    )?;
    let common = |url: String| {
        vec![
            "-t2".to_owned(),
            "-c16".to_owned(),
            format!("-d{seconds}s"),
            url,
        ]
    };
    println!(
        "rollout: check-ins/s of basalt-rollout serve (SQLite) vs nginx serving the same answer, wrk -t2 -c16 -d{seconds}s, best of {runs} interleaved rounds; nginx: 1 worker process, the server: --threads 1 (and its default, one per core)"
    );
    let check_in = |port: u16| -> Result<f64> {
        let mut args = common(format!("http://127.0.0.1:{port}/v1/check-in"));
        args.insert(0, script.display().to_string());
        args.insert(0, "-s".into());
        wrk(&args)
    };
    let (mut ours, mut ours_default, mut theirs) = (0f64, 0f64, 0f64);
    let mut ratios = Vec::new();
    for round in 1..=runs {
        let o = check_in(port)?;
        let d = check_in(port_default)?;
        let t = wrk(&common(format!("{}answer.json", nginx.url())))?;
        println!(
            "  round {round}: basalt-rollout {o:.0}/s (default threads {d:.0}/s), nginx {t:.0}/s ({:.0} %)",
            o * 100.0 / t.max(1.0)
        );
        ratios.push(o / t.max(1.0));
        ours = ours.max(o);
        ours_default = ours_default.max(d);
        theirs = theirs.max(t);
    }
    drop(one);
    drop(default);
    if theirs <= 0.0 {
        bail!("nginx served nothing");
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "  best: basalt-rollout {ours:.0} check-ins/s, nginx {theirs:.0}/s: {:.0} % of nginx; median of the per-round ratios {:.0} % (target ≥ 50 %)",
        ours * 100.0 / theirs,
        ratios[ratios.len() / 2] * 100.0
    );
    println!(
        "  the server at its default threads: best {ours_default:.0} check-ins/s, {:.0} % of nginx",
        ours_default * 100.0 / theirs
    );

    if nodes == 0 {
        return Ok(());
    }
    println!("rollout: fleet simulation, {nodes} simulated nodes against the server on 127.0.0.1");
    let started = Instant::now();
    let out = sh::output(Command::new(&driver).args(["simulate", &nodes.to_string()]))?;
    println!("  {}", out.trim());
    println!(
        "  total wall time (enrolment included): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
