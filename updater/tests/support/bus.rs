//! A private `dbus-daemon` with the shipped bus policy, a fake `org.freedesktop.systemd1` on
//! it, and `basaltctl` run as the real binary against it — shared by the D-Bus API tests and
//! the host integration tests of the real `basalt-updated`.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Proc, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zbus::zvariant::OwnedObjectPath;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

pub fn need(tool: &str, package: &str) {
    let ok = Proc::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(ok, "{tool} is missing: apt-get install {package}");
}

// ───────────────────────────── a private bus ─────────────────────────────

pub struct Bus {
    pub dir: tempfile::TempDir,
    child: Child,
    pub address: String,
}

impl Bus {
    /// A bus with the system bus's default policy, our policy file included, and root allowed
    /// to own org.freedesktop.systemd1 (the fake systemd).
    pub fn start() -> Bus {
        need("dbus-daemon", "dbus");
        let dir = tempfile::Builder::new()
            .prefix("basalt-bus-")
            .tempdir()
            .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("bus");
        let policy = repo_root().join("dist/dbus/org.basalt.Updater1.conf");
        let config = format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>custom</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
  </policy>
  <policy user="root">
    <allow own="org.freedesktop.systemd1"/>
    <allow send_destination="org.freedesktop.systemd1"/>
  </policy>
  <include>{policy}</include>
</busconfig>
"#,
            socket = socket.display(),
            policy = policy.display()
        );
        let cfg = dir.path().join("bus.conf");
        std::fs::write(&cfg, config).unwrap();
        let mut child = Proc::new("dbus-daemon")
            .arg(format!("--config-file={}", cfg.display()))
            .args(["--nofork", "--print-address"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start dbus-daemon");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line.trim().to_owned();
        assert!(
            address.starts_with("unix:"),
            "dbus-daemon printed {address:?}"
        );
        Bus {
            dir,
            child,
            address,
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        // Only the process this test started, by its PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ───────────────────────────── a fake systemd ─────────────────────────────

#[derive(Clone, Default)]
pub struct Systemd {
    pub units: Arc<Mutex<HashMap<String, String>>>,
    pub started: Arc<Mutex<Vec<(String, String)>>>,
}

pub fn unit_path(name: &str) -> String {
    let mut out = String::from("/org/freedesktop/systemd1/unit/");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

pub struct Manager(Systemd);

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl Manager {
    fn load_unit(&self, name: String) -> OwnedObjectPath {
        OwnedObjectPath::try_from(unit_path(&name)).unwrap()
    }
    fn start_unit(&self, name: String, mode: String) -> OwnedObjectPath {
        self.0.started.lock().unwrap().push((name, mode));
        OwnedObjectPath::try_from("/org/freedesktop/systemd1/job/1").unwrap()
    }
}

pub struct Unit {
    name: String,
    sd: Systemd,
}

#[zbus::interface(name = "org.freedesktop.systemd1.Unit")]
impl Unit {
    #[zbus(property)]
    fn active_state(&self) -> String {
        self.sd
            .units
            .lock()
            .unwrap()
            .get(&self.name)
            .cloned()
            .unwrap_or_else(|| "inactive".into())
    }
}

pub async fn serve_systemd(address: &str, sd: Systemd, units: &[&str]) -> zbus::Connection {
    let conn = zbus::connection::Builder::address(address)
        .unwrap()
        .build()
        .await
        .unwrap();
    conn.object_server()
        .at("/org/freedesktop/systemd1", Manager(sd.clone()))
        .await
        .unwrap();
    for u in units {
        conn.object_server()
            .at(
                unit_path(u),
                Unit {
                    name: (*u).to_owned(),
                    sd: sd.clone(),
                },
            )
            .await
            .unwrap();
    }
    conn.request_name("org.freedesktop.systemd1").await.unwrap();
    conn
}

// ───────────────────────────── basaltctl ─────────────────────────────

pub fn basaltctl(bus: &Bus, user: Option<&str>, args: &[&str]) -> Output {
    let exe = env!("CARGO_BIN_EXE_basaltctl");
    let mut cmd = match user {
        None => Proc::new(exe),
        Some(u) => {
            need("runuser", "util-linux");
            let mut c = Proc::new("runuser");
            c.args(["-u", u, "--", exe]);
            c
        }
    };
    cmd.arg("--bus-address")
        .arg(&bus.address)
        .args(args)
        .env_remove("BASALT_LOG");
    cmd.output().expect("run basaltctl")
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// Wait (bounded) until `basaltctl status --json` satisfies `f`.
pub fn wait_status(
    bus: &Bus,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let o = basaltctl(bus, None, &["status", "--json"]);
        if o.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            if f(&v) {
                return v;
            }
            if Instant::now() > end {
                panic!("never reached {what}: {v}");
            }
        } else if Instant::now() > end {
            panic!("status failed: {}", text(&o));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
