//! `agent`: from drop-in files and the node's own files (boot.env, os-release, the kernel
//! command line) to the engine's configuration, the release source and the HTTP clients —
//! each value's precedence, and every start-up refusal naming the key, the file that set it
//! and the node file that was read.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::path::{Path, PathBuf};

use basalt_updater::agent::{self, AgentError, HostPaths, NodeFacts};
use basalt_updater::config::{self, Settings};
use basalt_updater::pipeline::{BackendKind, EspLocation};

struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        Node {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    fn host(&self) -> HostPaths {
        HostPaths {
            cmdline: self.path("cmdline"),
            boot_env: self.path("boot.env"),
            os_release: self.path("os-release"),
            state_dir: self.path("state"),
            ..HostPaths::default()
        }
    }

    /// Settings from `/etc/basalt/updater.d/50-admin.toml` under this node's folder.
    fn settings(&self, toml: &str) -> (Settings, PathBuf) {
        let dirs = config::default_dirs(Some(&self.path("root")));
        std::fs::create_dir_all(&dirs[1]).unwrap();
        let file = dirs[1].join("50-admin.toml");
        std::fs::write(&file, toml).unwrap();
        (config::load(&dirs).unwrap(), file)
    }

    fn facts(&self) -> NodeFacts {
        NodeFacts::read(&self.host())
    }
}

fn standard(node: &Node) {
    node.write("boot.env", "BASALT_USRHASH=00\nBASALT_DISK=/dev/vda\n");
    node.write(
        "os-release",
        "NAME=Basalt\nID=basalt\nVERSION_ID=1.0.0\nBASALT_CHANNEL=beta\n",
    );
    node.write(
        "cmdline",
        "initrd=\\basalt\\1.0.0\\initrd console=ttyS0 systemd.verity=no usrhash=00 basalt.slot=a\n",
    );
}

#[test]
fn values_come_from_the_node_unless_configured() {
    let node = Node::new();
    standard(&node);
    let (s, _) = node.settings("[repository]\nurl = \"/srv/repo\"\n");
    let c = agent::engine_config(&s, &node.facts(), &node.host()).unwrap();
    assert_eq!(c.disk, Path::new("/dev/vda"));
    assert_eq!((c.os.as_str(), c.channel.as_str()), ("basalt", "beta"));
    assert_eq!(c.arch, std::env::consts::ARCH);
    assert_eq!(c.kernel_options, "console=ttyS0 systemd.verity=no");
    assert_eq!(c.backend, BackendKind::Bls);
    assert_eq!(c.esp, EspLocation::Partition);
    assert_eq!(c.state_dir, node.path("state"));
    assert_eq!(c.trust_root, Path::new(config::DEFAULT_TRUST_ROOT));
    assert_eq!(c.cmdline, node.path("cmdline"));
    assert_eq!(c.boot_env, node.path("boot.env"));

    // Every value configured: the configuration wins.
    let esp = node.path("esp");
    std::fs::create_dir_all(&esp).unwrap();
    let (s, _) = node.settings(&format!(
        "[repository]\nurl = \"/srv/repo\"\nchannel = \"stable\"\nos = \"other\"\narch = \"aarch64\"\ntrust_root = \"/etc/root.json\"\n\
         [boot]\nbackend = \"gptprio\"\ndisk = \"/dev/nvme0n1\"\nesp = \"{}\"\nkernel_options = \" console=tty0 \"\n",
        esp.display()
    ));
    let c = agent::engine_config(&s, &node.facts(), &node.host()).unwrap();
    assert_eq!(c.disk, Path::new("/dev/nvme0n1"));
    assert_eq!(
        (c.os.as_str(), c.arch.as_str(), c.channel.as_str()),
        ("other", "aarch64", "stable")
    );
    assert_eq!(c.backend, BackendKind::GptPrio);
    assert_eq!(c.esp, EspLocation::Mounted(esp));
    assert_eq!(c.kernel_options, "console=tty0");
    assert_eq!(c.trust_root, Path::new("/etc/root.json"));

    // No BASALT_CHANNEL: stable.
    node.write("os-release", "ID=basalt\n");
    let (s, _) = node.settings("");
    let c = agent::engine_config(&s, &node.facts(), &node.host()).unwrap();
    assert_eq!(c.channel, config::DEFAULT_CHANNEL);
}

#[test]
fn what_cannot_work_on_this_node_is_refused_naming_key_and_file() {
    let node = Node::new();
    let (s, file) = node.settings("[metrics]\nlisten = \"off\"\n");
    // Nothing on the node.
    let e = agent::engine_config(&s, &node.facts(), &node.host()).unwrap_err();
    assert!(matches!(e, AgentError::NoDisk { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("boot.disk"), "{msg}");
    assert!(
        msg.contains(&node.path("boot.env").display().to_string()),
        "{msg}"
    );
    // A relative BASALT_DISK is not a disk either.
    node.write("boot.env", "BASALT_DISK=vda\n");
    let e = agent::engine_config(&s, &node.facts(), &node.host()).unwrap_err();
    assert!(matches!(e, AgentError::NoDisk { .. }), "{e}");
    node.write("boot.env", "BASALT_DISK=/dev/vda\n");
    let e = agent::engine_config(&s, &node.facts(), &node.host()).unwrap_err();
    assert!(matches!(e, AgentError::NoOs { .. }), "{e}");
    assert!(e.to_string().contains("repository.os"), "{e}");
    node.write("os-release", "ID=\"Basalt OS\"\n");
    let e = agent::engine_config(&s, &node.facts(), &node.host()).unwrap_err();
    assert!(e.to_string().contains("ID=\"Basalt OS\""), "{e}");
    node.write("os-release", "ID=basalt\nBASALT_CHANNEL=../x\n");
    let e = agent::engine_config(&s, &node.facts(), &node.host()).unwrap_err();
    assert!(e.to_string().contains("BASALT_CHANNEL"), "{e}");
    node.write("os-release", "ID=basalt\n");
    agent::engine_config(&s, &node.facts(), &node.host()).unwrap();

    let file = file.display().to_string();
    let refused = |toml: &str, key: &str, words: &str| {
        let (s, _) = node.settings(toml);
        let e = match agent::engine(&s, &node.facts(), &node.host()) {
            Ok(_) => agent::fleet_lock(&s, &node.path("machine-id"))
                .and_then(|_| agent::health_client(&s))
                .err()
                .unwrap_or_else(|| panic!("{toml}: accepted")),
            Err(e) => e,
        };
        let msg = e.to_string();
        for w in [key, file.as_str(), words] {
            assert!(msg.contains(w), "{toml}: {w:?} not in {msg}");
        }
    };
    refused(
        "[boot]\nesp = \"/nonexistent/esp\"\n",
        "boot.esp",
        "not a folder",
    );
    refused(
        "[repository]\nurl = \"/srv/repo\"\ntrust_root = \"/nonexistent/root.json\"\n",
        "repository.trust_root",
        "/nonexistent/root.json",
    );
    let junk = node.write("junk.json", "{not a trust root");
    refused(
        &format!(
            "[repository]\nurl = \"/srv/repo\"\ntrust_root = \"{}\"\n",
            junk.display()
        ),
        "repository.trust_root",
        "junk.json",
    );
    // CA files: missing, and not PEM — for each request family.
    let trust = node.write("trust.json", "");
    let not_pem = node.write("ca.pem", "hello\n");
    let anchor = basalt_manifest::sign_trust_root(
        &basalt_manifest::TrustRootDocument::new(
            1,
            1,
            &[basalt_manifest::SigningKey::from_seed(&[1; 32])
                .unwrap()
                .public_key()],
            None,
        ),
        &[&basalt_manifest::SigningKey::from_seed(&[1; 32]).unwrap()],
    )
    .unwrap();
    std::fs::write(&trust, anchor).unwrap();
    for ca in ["/nonexistent/ca.pem", not_pem.to_str().unwrap()] {
        refused(
            &format!(
                "[repository]\nurl = \"https://updates.example.com/\"\ntrust_root = \"{}\"\nca_file = \"{ca}\"\n",
                trust.display()
            ),
            "repository.ca_file",
            ca,
        );
        refused(
            &format!("[reboot]\nstrategy = \"fleet-lock\"\n[reboot.fleet_lock]\nurl = \"https://lock:1\"\nid = \"n1\"\nca_file = \"{ca}\"\n"),
            "reboot.fleet_lock.ca_file",
            ca,
        );
        refused(
            &format!("[health]\nca_file = \"{ca}\"\n"),
            "health.ca_file",
            ca,
        );
    }
    // The fleet-lock node id needs a machine id when none is configured.
    refused(
        "[reboot]\nstrategy = \"fleet-lock\"\n[reboot.fleet_lock]\nurl = \"http://lock:1\"\n",
        "reboot.fleet_lock",
        "machine-id",
    );
    // With a good trust root, the engine and its source come up.
    let (s, _) = node.settings(&format!(
        "[repository]\nurl = \"http://127.0.0.1:1/repo\"\ntrust_root = \"{}\"\n",
        trust.display()
    ));
    let engine = agent::engine(&s, &node.facts(), &node.host()).unwrap();
    assert_eq!(engine.config().trust_root, trust);
}

#[test]
fn sources_follow_the_repository_setting() {
    let node = Node::new();
    let (s, _) = node.settings("");
    let src = agent::source(&s).unwrap();
    assert!(format!("{src:?}").contains("NoRepository"), "{src:?}");
    let e = src.open("channels/stable/x86_64/head.signed", None, None);
    assert!(e
        .err()
        .unwrap()
        .to_string()
        .contains("no repository is configured"),);
    let (s, _) = node.settings("[repository]\nurl = \"file:///srv/repo\"\n");
    let src = agent::source(&s).unwrap();
    assert_eq!(
        src.location("roots/1.root.json"),
        "file:///srv/repo/roots/1.root.json"
    );
    let (s, _) = node.settings("[repository]\nurl = \"/srv/repo\"\n");
    assert!(format!("{:?}", agent::source(&s).unwrap()).contains("FileSource"));
    let (s, _) = node.settings("[repository]\nurl = \"https://updates.example.com/basalt\"\n");
    let src = agent::source(&s).unwrap();
    assert_eq!(
        src.location("roots/1.root.json"),
        "https://updates.example.com/basalt/roots/1.root.json"
    );
}
