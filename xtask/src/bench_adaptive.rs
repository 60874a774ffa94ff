//! `cargo xtask bench --only adaptive`: how many bytes a node fetches for a patch release of
//! the real container-host image (issue 12), side by side with the full install and with a
//! RAUC-style fixed-block scheme, on real builds.
//!
//! **Builds.** Five releases of `image/definitions/container-host.toml` that differ only in
//! Debian `include` pins (the scenarios of `/work/shared/notes/adaptive-updates.md`): the
//! base pins containerd, libssl3 and libexpat1 one update behind (versions the archive still
//! carries), and each variant changes one thing against it: the version only, libssl3's
//! security update, `jq` added (with libjq1 and libonig5), containerd's update. Each variant
//! is a copy of the definition written under `target/bench/adaptive/defs` with its `include`
//! list changed, `[[files]]` sources made absolute and **without `packages.list`**: the bench
//! varies the package set on purpose (jq), which the list exists to refuse. Built with the
//! library call of `cargo xtask image` (fixed TEST key), so reruns come from the image cache
//! (`build/cache`); each resolved package set has its own Debian staging, so the first run
//! stages five times.
//!
//! **Publishing.** All five go into one channel of one repository with `basalt release
//! publish` (the CLI, as an operator runs it): the base first, then each variant in turn.
//! Frames are cut against the channel's last [`basalt_image::release::adaptive::HISTORY`]
//! releases, so the later variants are cut against earlier variants (which share the base's
//! blocks except the superblock and os-release), the way a channel a few releases ahead of a
//! node is.
//!
//! **(b) ours**, measured: after each variant is published (it is then the channel head), a
//! copy of the base's `disk.img` (slot A = base, booted per its command-line file) runs the
//! updater's real engine (`NodeEngine::check` + `download`: the adaptive install of
//! `updater/src/pipeline/adaptive.rs`, with its full re-verification) against nginx on
//! 127.0.0.1, and the bytes are what nginx's access log says it sent for the usr image's
//! block index and frame store. A fallback to the full stream shows as a request for the
//! stream and is printed. The prediction of `basalt release inspect --repo` is printed next
//! to it.
//!
//! **(a) full**: the compressed size of the usr image's zstd stream (the full install).
//!
//! **(c) RAUC-style**: the new `usr.img` (data and hash tree: what a RAUC slot image holds)
//! cut into fixed 4 KiB blocks; a block whose SHA-256 is in the base's `usr.img` (anywhere)
//! or earlier in the new image is copied, every other one is fetched uncompressed by HTTP
//! Range (adjacent blocks coalesced into one range), plus a 32-byte hash per block of index
//! ([`fixed_block_plan`]).
//!
//! **(b) ours** includes the binary deltas the publisher made against the channel's last
//! releases (`image/src/release/delta.rs`; the node uses those from the base). The table also
//! prints what `basalt release inspect` predicts **without** them (block reuse alone), so the
//! deltas' share is visible.
//!
//! **Changed files** (a reference point for the deltas): the changed regular files of each
//! pair are found by loop-mounting both erofs images read-only (needs root, as the builds
//! do), and each changed file of ≥ 1 MiB is compressed with `zstd -19` alone and with
//! `zstd -19 --patch-from=<old file>`: what a delta over the files' raw bytes would cost
//! (docs/ARCHITECTURE.md, "Binary deltas", says why Basalt's are over the stored blocks).
//!
//! Targets (issue 12): ≤ 2 % for the library update, ≤ 5 % for containerd.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use basalt_image::build::workspace::find_or_build_init;
use basalt_image::build::{build_with_progress, BuildReport, BuildRequest, Variant};
use basalt_updater::engine::{CancelFlag, CheckOutcome, CheckRequest, Engine};
use basalt_updater::http::HttpConfig;
use basalt_updater::pipeline::{BackendKind, EngineConfig, EspLocation, NodeEngine};
use basalt_updater::source::http::HttpSource;
use ring::digest::{digest, SHA256};

use crate::sh;

const BLOCK: usize = 4096;

/// Debian versions one update behind the archive's current ones, still in the archive
/// (bookworm / bookworm-security), as measured in the notes.
const OLD_PINS: [(&str, &str); 3] = [
    ("containerd", "containerd=1.6.20~ds1-1+deb12u2"),
    ("libssl3", "libssl3=3.0.20-1~deb12u2"),
    ("libexpat1", "libexpat1=2.5.0-1+deb12u2"),
];

/// One release of the bench: the base or a variant of it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scenario {
    pub(crate) name: &'static str,
    pub(crate) what: &'static str,
    pub(crate) version: &'static str,
    pub(crate) sequence: u64,
    /// The pinned package this scenario takes at the archive's current version.
    pub(crate) unpin: Option<&'static str>,
    pub(crate) extra: &'static [&'static str],
    /// The target, in % of the full compressed stream.
    pub(crate) target: Option<f64>,
}

pub(crate) const SCENARIOS: [Scenario; 5] = [
    Scenario {
        name: "base",
        what: "base (containerd, libssl3, libexpat1 one update behind)",
        version: "1.0.0",
        sequence: 1,
        unpin: None,
        extra: &[],
        target: None,
    },
    // The two cases with targets first: each variant is built, published and measured
    // before the next one is built, so a short run still has them.
    Scenario {
        name: "libssl3",
        what: "libssl3 security update",
        version: "1.0.1",
        sequence: 2,
        unpin: Some("libssl3"),
        extra: &[],
        target: Some(2.0),
    },
    Scenario {
        name: "containerd",
        what: "containerd update",
        version: "1.0.2",
        sequence: 3,
        unpin: Some("containerd"),
        extra: &[],
        target: Some(5.0),
    },
    Scenario {
        name: "bump",
        what: "version bump only",
        version: "1.0.3",
        sequence: 4,
        unpin: None,
        extra: &[],
        target: None,
    },
    Scenario {
        name: "jq",
        what: "jq added (+ libjq1, libonig5)",
        version: "1.0.4",
        sequence: 5,
        unpin: None,
        extra: &["jq"],
        target: None,
    },
];

/// The `include` list of `s`: the definition's, with every old pin but `s.unpin` replacing
/// its package name, and `s.extra` appended.
pub(crate) fn scenario_include(base: &[String], s: &Scenario) -> Vec<String> {
    let mut out: Vec<String> = base
        .iter()
        .filter(|p| {
            !OLD_PINS
                .iter()
                .any(|(name, _)| p.as_str() == *name && s.unpin != Some(name))
        })
        .cloned()
        .collect();
    for (name, pin) in OLD_PINS {
        if s.unpin != Some(name) {
            out.push(pin.to_owned());
        }
    }
    out.extend(s.extra.iter().map(|e| (*e).to_owned()));
    out
}

/// The `include = [...]` list of a definition's text.
pub(crate) fn parse_include(src: &str) -> Result<Vec<String>> {
    let lines: Vec<&str> = src
        .lines()
        .filter(|l| l.trim_start().starts_with("include = ["))
        .collect();
    ensure!(
        lines.len() == 1,
        "the definition has {} `include = [` lines, expected one on a single line",
        lines.len()
    );
    let inner = lines[0]
        .trim()
        .strip_prefix("include = [")
        .and_then(|r| r.strip_suffix(']'))
        .context("the include list does not end on its line with `]`")?;
    Ok(inner
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_owned())
        .filter(|s| !s.is_empty())
        .collect())
}

/// A copy of the definition `src` (read from folder `def_dir`) with `include` replaced,
/// relative `source = "…"` paths made absolute and `list = …` dropped (see the module docs).
pub(crate) fn variant_definition(src: &str, def_dir: &Path, include: &[String]) -> Result<String> {
    let mut out = String::with_capacity(src.len());
    let mut replaced = 0;
    for line in src.lines() {
        let t = line.trim_start();
        if t.starts_with("include = [") {
            let items: Vec<String> = include.iter().map(|i| format!("\"{i}\"")).collect();
            out.push_str(&format!("include = [{}]\n", items.join(", ")));
            replaced += 1;
        } else if t.starts_with("list = ") {
            out.push_str("# packages.list dropped by the adaptive bench (it varies the set)\n");
        } else if let Some(rest) = t.strip_prefix("source = \"") {
            let rel = rest
                .strip_suffix('"')
                .with_context(|| format!("unexpected source line {line:?}"))?;
            let abs = if Path::new(rel).is_absolute() {
                PathBuf::from(rel)
            } else {
                def_dir.join(rel)
            };
            out.push_str(&format!("source = \"{}\"\n", abs.display()));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    ensure!(replaced == 1, "no include list to replace");
    Ok(out)
}

/// `part` as a percentage of `whole`.
pub(crate) fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    part as f64 * 100.0 / whole as f64
}

/// What a RAUC-style fixed-block install of the new image fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FixedBlockPlan {
    pub(crate) blocks: u64,
    pub(crate) missing: u64,
    /// Range requests after coalescing adjacent missing blocks.
    pub(crate) ranges: u64,
    /// The hash index (32 bytes per block of the new image).
    pub(crate) index_bytes: u64,
}

impl FixedBlockPlan {
    pub(crate) fn fetched(&self) -> u64 {
        self.missing * BLOCK as u64 + self.index_bytes
    }
}

/// The RAUC-style plan (module docs): `old` are the SHA-256 of the blocks the node holds,
/// `new` the new image's in order. A block seen earlier in the new image counts as present.
pub(crate) fn fixed_block_plan(old: &HashSet<[u8; 32]>, new: &[[u8; 32]]) -> FixedBlockPlan {
    let mut seen: HashSet<[u8; 32]> = HashSet::new();
    let (mut missing, mut ranges, mut previous_missing) = (0u64, 0u64, false);
    for h in new {
        let have = old.contains(h) || !seen.insert(*h);
        if !have {
            missing += 1;
            if !previous_missing {
                ranges += 1;
            }
        }
        previous_missing = !have;
    }
    FixedBlockPlan {
        blocks: new.len() as u64,
        missing,
        ranges,
        index_bytes: new.len() as u64 * 32,
    }
}

/// SHA-256 of every whole 4 KiB block of `path`.
fn block_digests(path: &Path) -> Result<Vec<[u8; 32]>> {
    use std::io::Read;
    let mut f = fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 256 * BLOCK];
    loop {
        let mut n = 0;
        while n < buf.len() {
            let k = f
                .read(&mut buf[n..])
                .with_context(|| format!("read {}", path.display()))?;
            if k == 0 {
                break;
            }
            n += k;
        }
        for block in buf[..n].chunks_exact(BLOCK) {
            let mut d = [0u8; 32];
            d.copy_from_slice(digest(&SHA256, block).as_ref());
            out.push(d);
        }
        if n < buf.len() {
            return Ok(out);
        }
    }
}

/// One built and published release.
struct Built {
    s: Scenario,
    report: BuildReport,
    dir: PathBuf,
}

/// The figures of one pair base → variant.
#[derive(Debug)]
struct Row {
    s: Scenario,
    full: u64,
    ours: u64,
    predicted: Option<u64>,
    /// What inspect predicts without binary deltas (block reuse alone), and how many deltas
    /// the node uses.
    block_reuse: Option<u64>,
    deltas_used: usize,
    fell_back: bool,
    requests: usize,
    reused: u64,
    rauc: FixedBlockPlan,
    deltas: Option<Deltas>,
}

/// Binary deltas of the changed files ≥ [`DELTA_MIN`] of a pair.
#[derive(Debug, Default)]
struct Deltas {
    files: Vec<ChangedFile>,
}

/// A changed file of a pair (sizes in bytes).
#[derive(Debug)]
struct ChangedFile {
    path: String,
    raw: u64,
    /// What it occupies in the new erofs image (`st_blocks`: lz4hc pclusters).
    on_disk: u64,
    zstd: u64,
    patch: u64,
}

impl Deltas {
    fn plain(&self) -> u64 {
        self.files.iter().map(|f| f.zstd).sum()
    }
    fn patch(&self) -> u64 {
        self.files.iter().map(|f| f.patch).sum()
    }
}

/// Files from this size on get a delta in the design that was measured.
const DELTA_MIN: u64 = 1 << 20;

pub fn run() -> Result<()> {
    for tool in ["nginx", "zstd", "mount", "umount"] {
        ensure!(
            sh::have(tool),
            "{tool} not found: install the Debian package {}",
            if tool == "nginx" { "nginx-light" } else { tool }
        );
    }
    let root = sh::root();
    let work = root.join("target").join("bench").join("adaptive");
    fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
    let keys = basalt_tests::artifacts::test_keys()?;
    let builder = Builder::new(&root, &work, &keys)?;
    let base = builder.build(SCENARIOS[0])?;
    let cli = basalt_tests::artifacts::basalt_cli()?;

    let repo = work.join("repo");
    if repo.exists() {
        fs::remove_dir_all(&repo).with_context(|| format!("remove {}", repo.display()))?;
    }
    let mut publish_root = Command::new(&cli);
    publish_root
        .args(["release", "publish-root"])
        .arg(&keys.trust)
        .arg("--repo")
        .arg(&repo);
    sh::output(&mut publish_root)?;
    let nginx = basalt_tests::web::Nginx::start(&work.join("nginx"), &repo)?;

    let base = &base;
    publish(&cli, &repo, &keys.key, base)?;
    eprintln!("bench adaptive: hashing the base's usr.img in 4 KiB blocks (RAUC-style model)");
    let base_usr = base.dir.join("usr.img");
    let base_blocks: HashSet<[u8; 32]> = block_digests(&base_usr)?.into_iter().collect();
    let mut rows = Vec::new();
    for s in &SCENARIOS[1..] {
        let b = &builder.build(*s)?;
        let published = publish(&cli, &repo, &keys.key, b)?;
        let row = measure_pair(&work, &repo, &nginx, base, b, &published, &base_blocks)?;
        print_row(&row);
        rows.push(row);
    }
    print_table(&rows);
    Ok(())
}

/// Builds the scenarios' releases (module docs).
struct Builder {
    src: String,
    def_dir: PathBuf,
    include: Vec<String>,
    defs: PathBuf,
    releases: PathBuf,
    init: basalt_image::build::workspace::Program,
    keys: basalt_tests::artifacts::TestKeys,
}

impl Builder {
    fn new(root: &Path, work: &Path, keys: &basalt_tests::artifacts::TestKeys) -> Result<Self> {
        let definition = basalt_tests::artifacts::container_host_definition();
        let def_dir = definition
            .parent()
            .context("the definition has no folder")?
            .to_path_buf();
        let src = fs::read_to_string(&definition)
            .with_context(|| format!("read {}", definition.display()))?;
        let include = parse_include(&src)?;
        let defs = work.join("defs");
        fs::create_dir_all(&defs)?;
        let init = find_or_build_init(None, root, &root.join("basalt"), &mut |m| {
            eprintln!("bench adaptive: {m}")
        })?;
        Ok(Builder {
            src,
            def_dir,
            include,
            defs,
            releases: work.join("releases"),
            init,
            keys: keys.clone(),
        })
    }

    fn build(&self, s: Scenario) -> Result<Built> {
        let text = variant_definition(
            &self.src,
            &self.def_dir,
            &scenario_include(&self.include, &s),
        )?;
        let path = self.defs.join(format!("{}.toml", s.name));
        if fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            fs::write(&path, &text).with_context(|| format!("write {}", path.display()))?;
        }
        let dir = self.releases.join(s.name);
        let mut req = BuildRequest::new(
            path,
            vec![self.keys.key.clone()],
            self.keys.trust.clone(),
            self.init.path.clone(),
            dir.clone(),
        );
        req.init_revision = self.init.revision.clone();
        req.variant = Variant::Product;
        req.version = Some(s.version.parse()?);
        req.sequence = Some(s.sequence);
        eprintln!("bench adaptive: building {} ({})", s.name, s.what);
        let report = build_with_progress(&req, &mut |m| eprintln!("bench adaptive: {m}"))
            .with_context(|| format!("building the {} release", s.name))?;
        eprintln!(
            "bench adaptive: {} {} — /usr erofs {:.1} MB, {}",
            s.name,
            report.facts.version,
            report.facts.hash_offset as f64 / 1e6,
            if report.from_cache {
                "from the image cache"
            } else {
                "built"
            }
        );
        Ok(Built { s, report, dir })
    }
}

/// What `basalt release publish --json` said about the usr image.
#[derive(Debug)]
struct PublishedUsr {
    compressed: u64,
    stream_blob: String,
    block_index: String,
    frame_store: String,
    history: u64,
    deltas: u64,
    delta_bytes: u64,
}

fn publish(cli: &Path, repo: &Path, key: &Path, b: &Built) -> Result<PublishedUsr> {
    eprintln!(
        "bench adaptive: basalt release publish {} ({})",
        b.s.name, b.s.version
    );
    let mut cmd = Command::new(cli);
    cmd.args(["release", "publish"])
        .arg(&b.dir)
        .arg("--repo")
        .arg(repo)
        .args(["--channel", "stable", "--key"])
        .arg(key)
        .arg("--json");
    let text = sh::output(&mut cmd)?;
    let v: serde_json::Value =
        serde_json::from_str(&text).context("basalt release publish --json output")?;
    let usr = v["artifacts"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == "usr.img"))
        .context("the publish report has no usr.img")?;
    let s = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    let ad = &usr["adaptive"];
    Ok(PublishedUsr {
        compressed: usr["compressed_size"]
            .as_u64()
            .context("compressed_size of usr.img")?,
        stream_blob: s(&usr["blob"]).context("blob of usr.img")?,
        block_index: s(&ad["block_index"]).unwrap_or_default(),
        frame_store: s(&ad["frame_store"]).unwrap_or_default(),
        history: ad["history"].as_u64().unwrap_or(0),
        deltas: ad["deltas"].as_u64().unwrap_or(0),
        delta_bytes: ad["delta_bytes"].as_u64().unwrap_or(0),
    })
}

fn measure_pair(
    work: &Path,
    repo: &Path,
    nginx: &basalt_tests::web::Nginx,
    base: &Built,
    b: &Built,
    published: &PublishedUsr,
    base_blocks: &HashSet<[u8; 32]>,
) -> Result<Row> {
    ensure!(
        !published.block_index.is_empty(),
        "{} was published without a block index",
        b.s.name
    );
    // The node: a copy of the base's disk, slot A booted.
    let node = work.join("node");
    if node.exists() {
        fs::remove_dir_all(&node)?;
    }
    fs::create_dir_all(&node)?;
    let disk = node.join("disk.img");
    basalt_image::build::image::copy_sparse(&base.dir.join("disk.img"), &disk)?;
    let cmdline = node.join("cmdline");
    fs::write(
        &cmdline,
        format!(
            "{} usrhash={} basalt.slot=a\n",
            base.report.facts.cmdline, base.report.facts.root_hash
        ),
    )?;
    let keys = basalt_tests::artifacts::test_keys()?;
    let mut config = EngineConfig::new(&disk, "basalt", "x86_64", "stable");
    config.backend = BackendKind::Bls;
    config.esp = EspLocation::Partition;
    config.state_dir = node.join("state");
    config.trust_root = keys.trust.clone();
    config.kernel_options = base.report.facts.cmdline.clone();
    config.cmdline = cmdline;
    config.boot_env = node.join("boot.env");
    let source = HttpSource::new(&nginx.url(), HttpConfig::default())
        .map_err(|e| anyhow::anyhow!("HTTP source {}: {e}", nginx.url()))?;
    let mut engine = NodeEngine::new(config, Box::new(source));
    let before = nginx.access_log()?.len();
    let request = CheckRequest {
        now: basalt_manifest::chrono::Utc::now(),
        installed_version: Some(base.s.version.parse()?),
        last_seen: None,
        allow_downgrade: false,
    };
    let candidate = match engine.check(&request)? {
        CheckOutcome::Available(c) => c,
        other => bail!("the node on {} sees no update: {other:?}", base.s.version),
    };
    eprintln!(
        "bench adaptive: node on {} installs {} from nginx (adaptive, then full re-verify)",
        base.s.version, b.s.version
    );
    let d = engine.download(&candidate, &mut |_| {}, &CancelFlag::new())?;
    let log = nginx.access_log()?;
    let new = &log[before.min(log.len())..];
    let sum = |digest: &str| -> (u64, usize) {
        new.iter()
            .filter(|a| !digest.is_empty() && a.request.contains(digest))
            .fold((0, 0), |(b, n), a| (b + a.body_bytes, n + 1))
    };
    let (index_bytes, index_requests) = sum(&published.block_index);
    let (store_bytes, store_requests) = sum(&published.frame_store);
    let (stream_bytes, _) = sum(&published.stream_blob);
    drop(engine);
    fs::remove_dir_all(&node)?;

    let predicted = basalt_image::release::adaptive::expected_downloads(
        &basalt_image::release::Repo::read_only(repo),
        "stable",
        "x86_64",
        &b.s.version.parse()?,
    )
    .map_err(|e| anyhow::anyhow!("expected downloads: {e}"))?
    .and_then(|v| {
        v.into_iter()
            .find(|e| e.from_version.to_string() == base.s.version)
    });
    eprintln!(
        "bench adaptive: {} frames cut against {} earlier release(s); {} binary deltas ({} bytes) in its store",
        b.s.name, published.history, published.deltas, published.delta_bytes
    );
    let rauc = fixed_block_plan(base_blocks, &block_digests(&b.dir.join("usr.img"))?);
    let deltas = changed_file_deltas(work, &base.dir.join("usr.img"), &b.dir.join("usr.img"))
        .map_err(|e| {
            eprintln!(
                "bench adaptive: binary deltas of {} not measured: {e:#}",
                b.s.name
            )
        })
        .ok();
    Ok(Row {
        s: b.s,
        full: published.compressed,
        ours: index_bytes + store_bytes + stream_bytes,
        predicted: predicted.as_ref().map(|e| e.adaptive_bytes),
        block_reuse: predicted.as_ref().map(|e| e.block_reuse_bytes),
        deltas_used: predicted.as_ref().map_or(0, |e| e.deltas_used),
        fell_back: stream_bytes > 0,
        requests: index_requests + store_requests,
        reused: d.reused,
        rauc,
        deltas,
    })
}

/// A read-only loop mount, unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn erofs(image: &Path, at: &Path) -> Result<Mount> {
        fs::create_dir_all(at)?;
        sh::output(
            Command::new("mount")
                .args(["-t", "erofs", "-o", "loop,ro"])
                .arg(image)
                .arg(at),
        )?;
        Ok(Mount(at.to_owned()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = sh::output(Command::new("umount").arg(&self.0)) {
            eprintln!("bench adaptive: {e:#}");
        }
    }
}

/// The regular files of `root`, relative, with their sizes.
fn regular_files(root: &Path) -> Result<Vec<(PathBuf, u64)>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for e in fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let e = e?;
            let ty = e.file_type()?;
            let r = rel.join(e.file_name());
            if ty.is_dir() {
                stack.push(r);
            } else if ty.is_file() {
                out.push((r, e.metadata()?.len()));
            }
        }
    }
    Ok(out)
}

/// `zstd -19` of `file` alone and with `--patch-from=old`: compressed sizes.
fn zstd_sizes(file: &Path, old: &Path) -> Result<(u64, u64)> {
    let size = |args: &[&str]| -> Result<u64> {
        let out = Command::new("zstd")
            .args(args)
            .args(["-q", "-c", "-T1"])
            .arg(file)
            .output()
            .context("run zstd")?;
        ensure!(
            out.status.success(),
            "zstd {args:?} {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out.stdout.len() as u64)
    };
    let plain = size(&["-19"])?;
    let patch_from = format!("--patch-from={}", old.display());
    let patch = size(&["-19", &patch_from])?;
    Ok((plain, patch))
}

fn changed_file_deltas(work: &Path, old: &Path, new: &Path) -> Result<Deltas> {
    let old_m = Mount::erofs(old, &work.join("mnt-old"))?;
    let new_m = Mount::erofs(new, &work.join("mnt-new"))?;
    let mut deltas = Deltas::default();
    for (rel, len) in regular_files(&new_m.0)? {
        if len < DELTA_MIN {
            continue;
        }
        let (o, n) = (old_m.0.join(&rel), new_m.0.join(&rel));
        let Ok(meta) = fs::metadata(&o) else {
            continue; // a new file: nothing to patch from
        };
        if meta.len() == len && fs::read(&o)? == fs::read(&n)? {
            continue;
        }
        let on_disk = {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(&n)?.blocks() * 512
        };
        let (zstd, patch) = zstd_sizes(&n, &o)?;
        deltas.files.push(ChangedFile {
            path: rel.display().to_string(),
            raw: len,
            on_disk,
            zstd,
            patch,
        });
    }
    Ok(deltas)
}

fn mb(b: u64) -> String {
    if b < 100_000 {
        return format!("{:.1} kB", b as f64 / 1e3);
    }
    format!("{:.2} MB", b as f64 / 1e6)
}

fn print_row(r: &Row) {
    println!(
        "{} ({}): full {}; ours {} ({:.2} %, {} requests{}); RAUC-style {} ({:.2} %, {} missing blocks in {} ranges)",
        r.s.name,
        r.s.what,
        mb(r.full),
        mb(r.ours),
        percent(r.ours, r.full),
        r.requests,
        if r.fell_back {
            ", FELL BACK to the full stream"
        } else {
            ""
        },
        mb(r.rauc.fetched()),
        percent(r.rauc.fetched(), r.full),
        r.rauc.missing,
        r.rauc.ranges
    );
    if let Some(d) = &r.deltas {
        for f in &d.files {
            println!(
                "    changed file /usr/{}: {} raw, {} in the erofs image, zstd -19 {}, zstd -19 --patch-from=old {}",
                f.path,
                mb(f.raw),
                mb(f.on_disk),
                mb(f.zstd),
                mb(f.patch)
            );
        }
    }
}

fn print_table(rows: &[Row]) {
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!();
    println!("bytes fetched for /usr, % of the full compressed stream (base 1.0.0 → variant)");
    println!(
        "| variant | (a) full stream | (b) ours: index + frames + deltas (nginx log) | predicted (inspect) | block reuse alone (inspect) | reused from slot A | (c) RAUC-style 4 KiB + Range | changed files ≥ 1 MiB: zstd -19 / --patch-from | target |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let target = match r.s.target {
            Some(t) => format!(
                "≤ {t} %: {}",
                if !r.fell_back && percent(r.ours, r.full) <= t {
                    "met"
                } else {
                    "NOT met"
                }
            ),
            None => "–".to_owned(),
        };
        println!(
            "| {} | {} (100 %) | **{} ({:.2} %)**{}, {} deltas | {} | {} | {} | {} ({:.2} %, {} ranges) | {} | {} |",
            r.s.what,
            mb(r.full),
            mb(r.ours),
            percent(r.ours, r.full),
            if r.fell_back { " FELL BACK" } else { "" },
            r.deltas_used,
            r.predicted
                .map(|p| format!("{} ({:.2} %)", mb(p), percent(p, r.full)))
                .unwrap_or_else(|| "–".into()),
            r.block_reuse
                .map(|p| format!("{} ({:.2} %)", mb(p), percent(p, r.full)))
                .unwrap_or_else(|| "–".into()),
            mb(r.reused),
            mb(r.rauc.fetched()),
            percent(r.rauc.fetched(), r.full),
            r.rauc.ranges,
            r.deltas
                .as_ref()
                .filter(|d| !d.files.is_empty())
                .map(|d| format!("{} / {}", mb(d.plain()), mb(d.patch())))
                .unwrap_or_else(|| "–".into()),
            target
        );
    }
    println!(
        "load average at the end: {} (2 cores shared with other builds)",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn h(n: u8) -> [u8; 32] {
        [n; 32]
    }

    #[test]
    fn fixed_blocks_count_missing_blocks_and_coalesce_ranges() {
        let old: HashSet<_> = [h(1), h(2), h(3)].into_iter().collect();
        // present, missing, missing, present, missing, a repeat of a fetched block, missing
        let new = [h(1), h(9), h(8), h(2), h(7), h(9), h(6)];
        let p = fixed_block_plan(&old, &new);
        assert_eq!(p.blocks, 7);
        assert_eq!(p.missing, 4, "9, 8, 7, 6; the second 9 is copied");
        assert_eq!(p.ranges, 3, "[9 8], [7], [6]");
        assert_eq!(p.index_bytes, 7 * 32);
        assert_eq!(p.fetched(), 4 * 4096 + 7 * 32);
    }

    #[test]
    fn fixed_blocks_of_an_identical_image_fetch_only_the_index() {
        let old: HashSet<_> = [h(1), h(2)].into_iter().collect();
        let p = fixed_block_plan(&old, &[h(2), h(1), h(1)]);
        assert_eq!((p.missing, p.ranges), (0, 0));
        assert_eq!(p.fetched(), 3 * 32);
    }

    #[test]
    fn percent_of_the_full_stream() {
        assert!((percent(1, 200) - 0.5).abs() < 1e-9);
        assert!((percent(174_200_000, 174_200_000) - 100.0).abs() < 1e-9);
        assert_eq!(percent(5, 0), 0.0);
    }

    #[test]
    fn scenarios_pin_all_but_their_package() {
        let base: Vec<String> = ["systemd", "containerd", "runc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let ssl = scenario_include(&base, &SCENARIOS[1]);
        assert_eq!(
            ssl,
            [
                "systemd",
                "runc",
                "containerd=1.6.20~ds1-1+deb12u2",
                "libexpat1=2.5.0-1+deb12u2"
            ]
        );
        let ctr = scenario_include(&base, &SCENARIOS[2]);
        assert!(ctr.contains(&"containerd".to_string()));
        assert!(ctr.contains(&"libssl3=3.0.20-1~deb12u2".to_string()));
        assert!(!ctr.iter().any(|p| p.starts_with("containerd=")));
        let jq = scenario_include(&base, &SCENARIOS[4]);
        assert_eq!(jq.last().unwrap(), "jq");
        assert_eq!(jq.len(), 6);
    }

    #[test]
    fn variant_definitions_rewrite_include_sources_and_list() {
        let src = "[packages]\nsuite = \"bookworm\"\ninclude = [\"a\", \"b\"]\nlist = \"x.packages\"\n\n[[files]]\nsource = \"../../dist/u.service\"\ndest = \"/usr/u\"\nsource = \"/abs/f\"\n";
        assert_eq!(parse_include(src).unwrap(), ["a", "b"]);
        let out = variant_definition(
            src,
            Path::new("/ws/image/definitions"),
            &["a".into(), "c=1".into()],
        )
        .unwrap();
        assert!(out.contains("include = [\"a\", \"c=1\"]\n"), "{out}");
        assert!(!out.contains("list = "), "{out}");
        assert!(
            out.contains("source = \"/ws/image/definitions/../../dist/u.service\"\n"),
            "{out}"
        );
        assert!(out.contains("source = \"/abs/f\"\n"), "{out}");
        assert!(out.contains("dest = \"/usr/u\"\n"));
        assert!(variant_definition("x = 1\n", Path::new("/"), &[]).is_err());
    }

    #[test]
    fn the_real_definition_has_the_packages_the_scenarios_change() {
        let src = fs::read_to_string(basalt_tests::artifacts::container_host_definition()).unwrap();
        let include = parse_include(&src).unwrap();
        assert!(include.contains(&"containerd".to_string()), "{include:?}");
        let def = basalt_tests::artifacts::container_host_definition();
        let text = variant_definition(
            &src,
            def.parent().unwrap(),
            &scenario_include(&include, &SCENARIOS[0]),
        )
        .unwrap();
        assert!(text.contains("containerd=1.6.20~ds1-1+deb12u2"));
    }
}
