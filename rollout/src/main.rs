//! `basalt-rollout`: the fleet server (`serve`), its offline administration (`operator`,
//! `migrate`) and the operator CLI (everything else, over HTTP with an operator token).
//!
//! Exit codes: 0 done; 1 other failure; 2 usage; 3 refused by the server (4xx: bad input,
//! credentials, conflict); 4 server or storage failure (5xx); 5 server unreachable.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use basalt_manifest::semver::Version;
use basalt_rollout::api::{self, Upgrade};
use basalt_rollout::auth::SystemRandom;
use basalt_rollout::client::{Client, ClientError};
use basalt_rollout::clock::SystemClock;
use basalt_rollout::policy::{parse_duration, parse_waves, Limit};
use basalt_rollout::server::Server;
use basalt_rollout::service::{Config, Service};
use basalt_rollout::store::{self, Backend};
use basalt_rollout::window::Window;
use clap::{Args, Parser, Subcommand};
use hyper::Method;

#[derive(Debug, Parser)]
#[command(
    name = "basalt-rollout",
    version,
    about = "Basalt fleet rollouts: server and operator CLI"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Db {
    /// SQLite database file (the default store).
    #[arg(long, conflicts_with = "postgres")]
    db: Option<PathBuf>,
    /// PostgreSQL connection string (several replicas share it).
    #[arg(long)]
    postgres: Option<String>,
}

impl Db {
    fn open(&self) -> Result<Arc<dyn Backend>> {
        Ok(match (&self.db, &self.postgres) {
            (Some(path), None) => Arc::new(store::sqlite::Sqlite::open(path)?),
            (None, Some(params)) => Arc::new(store::postgres::Postgres::connect(params)?),
            _ => bail!("name the store: --db FILE (SQLite) or --postgres CONNINFO"),
        })
    }
}

#[derive(Debug, Args)]
struct Remote {
    /// The server's base URL.
    #[arg(
        long,
        env = "BASALT_ROLLOUT_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    /// A file holding the operator token (else BASALT_ROLLOUT_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
}

impl Remote {
    fn client(&self) -> Result<Client> {
        let token = match &self.token_file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading the token file {}", path.display()))?,
            None => std::env::var("BASALT_ROLLOUT_TOKEN")
                .context("no operator token: pass --token-file or set BASALT_ROLLOUT_TOKEN")?,
        };
        Ok(Client::new(&self.server, token.trim())?)
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        #[command(flatten)]
        db: Db,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// The initial trust root (DSSE envelope) releases must verify against; with --repo,
        /// the repository's newer roots/N.root.json are walked from it.
        #[arg(long)]
        trust_root: PathBuf,
        /// Serve this release repository under /repo/ (as `basalt release publish` wrote it).
        #[arg(long)]
        repo: Option<PathBuf>,
        /// The repository URL nodes are told to fetch from (default: this server's /repo/).
        #[arg(long)]
        repo_url: Option<String>,
        /// This server's public base URL (for the default --repo-url).
        #[arg(long)]
        public_url: Option<String>,
        /// Threads answering requests (default: one per core). Database writes run on
        /// separate blocking threads either way.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
        threads: Option<u16>,
    },
    /// Bring the database schema up to date (serve does this too).
    Migrate {
        #[command(flatten)]
        db: Db,
    },
    /// Operator credentials, made against the database directly (bootstrap).
    Operator {
        #[command(subcommand)]
        command: OperatorCommand,
    },
    /// Pools.
    Pool {
        #[command(subcommand)]
        command: PoolCommand,
    },
    /// List pools and their rollouts.
    Pools {
        #[command(flatten)]
        remote: Remote,
    },
    /// A pool's rollout progress by state and wave, failures with reasons.
    Status {
        pool: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Stop admitting nodes and granting reboots (nodes in flight finish).
    Pause {
        pool: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Continue a paused or halted rollout (its failures so far are acknowledged).
    Resume {
        pool: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// End the rollout: nodes already updated stay, no new ones start, staged ones cancel.
    Abort {
        pool: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Hold a node (or the pool) at a version.
    Pin {
        pool: String,
        /// The node (else the whole pool).
        #[arg(long)]
        node: Option<String>,
        /// The version (a node: default its booted version).
        #[arg(long)]
        version: Option<Version>,
        /// Lift the pin.
        #[arg(long)]
        remove: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// A pool's nodes.
    Nodes {
        pool: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Releases of channels.
    Release {
        #[command(subcommand)]
        command: ReleaseCommand,
    },
}

#[derive(Debug, Subcommand)]
enum OperatorCommand {
    /// Create a token for operator NAME (printed once).
    Add {
        name: String,
        #[command(flatten)]
        db: Db,
    },
    /// Revoke every token of operator NAME.
    Revoke {
        name: String,
        #[command(flatten)]
        db: Db,
    },
}

#[derive(Debug, Subcommand)]
enum PoolCommand {
    /// Create a pool following a channel.
    Create {
        pool: String,
        #[arg(long)]
        channel: String,
        #[arg(long, default_value = "x86_64")]
        arch: String,
        /// Check-in interval (e.g. 5m).
        #[arg(long)]
        interval: Option<String>,
        /// FleetLock slots when no rollout runs.
        #[arg(long)]
        fleetlock_slots: Option<u64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Make an enrolment token for the pool (nodes exchange it for their own token).
    EnrollToken {
        pool: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Register a node by hand and print its node token.
    AddNode {
        pool: String,
        node: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Roll a release across the pool.
    Upgrade {
        pool: String,
        /// Move the OS image only: each node keeps its system extensions (and refuses the
        /// update where they do not fit the new OS). Without it the release's extension set
        /// moves with the OS.
        #[arg(long)]
        node_image_only: bool,
        /// Target version (default: the channel's newest).
        #[arg(long)]
        to: Option<Version>,
        /// Nodes unavailable at once (N or N%).
        #[arg(long)]
        max_unavailable: Option<Limit>,
        /// Nodes prepared ahead on top of those (N or N%).
        #[arg(long)]
        max_surge: Option<Limit>,
        /// How long an upgraded node keeps its slot after it is healthy (e.g. 10m).
        #[arg(long)]
        soak: Option<String>,
        /// How long the node's pre-reboot (drain) command may run (e.g. 30m).
        #[arg(long)]
        drain_timeout: Option<String>,
        /// Maintenance window, e.g. "Sat,Sun 02:00-06:00 Europe/Berlin" (repeatable).
        #[arg(long)]
        window: Vec<String>,
        /// Halt when this percentage of touched nodes failed (e.g. 5 or 5%).
        #[arg(long)]
        halt_at: Option<String>,
        /// Waves, e.g. "1%@0,10%@1h,100%@6h".
        #[arg(long)]
        waves: Option<String>,
        /// How long a node may take to download, or to come back from its reboot.
        #[arg(long)]
        node_timeout: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Subcommand)]
enum ReleaseCommand {
    /// Publish a signed release envelope into its channel (verified by the server).
    Publish {
        channel: String,
        arch: String,
        /// The signed envelope (e.g. REPO/channels/C/A/head.signed).
        file: PathBuf,
        /// Mark it a floor (nodes below go through it).
        #[arg(long)]
        floor: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// List a channel's releases.
    List {
        channel: String,
        arch: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Mark or unmark a release as a floor.
    Floor {
        channel: String,
        arch: String,
        sequence: u64,
        #[arg(long)]
        off: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The one logging setup of every Basalt binary (journal priorities under systemd).
    if let Err(e) = basalt_log::init() {
        eprintln!("basalt-rollout: {e}");
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("basalt-rollout: {e:#}");
            let code = match e.downcast_ref::<ClientError>() {
                Some(ClientError::Refused { status, .. }) if *status < 500 => 3,
                Some(ClientError::Refused { .. }) => 4,
                Some(ClientError::Transport { .. }) => 5,
                _ => 1,
            };
            ExitCode::from(code)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

fn duration(name: &str, text: &Option<String>) -> Result<Option<u64>> {
    text.as_deref()
        .map(|t| parse_duration(t).map_err(|e| anyhow::anyhow!("--{name}: {e}")))
        .transpose()
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve {
            db,
            listen,
            trust_root,
            repo,
            repo_url,
            public_url,
            threads,
        } => serve(
            db,
            listen,
            trust_root,
            (repo, repo_url, public_url),
            threads,
        ),
        Command::Migrate { db } => {
            let backend = db.open()?;
            let before = store::migrations::migrate(backend.as_ref(), chrono_now())?;
            println!(
                "schema at version {} (was {before})",
                store::migrations::LATEST
            );
            Ok(())
        }
        Command::Operator { command } => operator(command),
        other => runtime()?.block_on(remote(other)),
    }
}

fn chrono_now() -> basalt_manifest::chrono::DateTime<basalt_manifest::chrono::Utc> {
    basalt_manifest::chrono::Utc::now()
}

/// The store of an offline command, its schema brought up to date first: the documented
/// bootstrap (`operator add` before the first `serve`) meets a new, empty database.
fn open_migrated(db: &Db) -> Result<Arc<dyn Backend>> {
    let backend = db.open()?;
    store::migrations::migrate(backend.as_ref(), chrono_now())?;
    Ok(backend)
}

fn operator(command: OperatorCommand) -> Result<()> {
    match command {
        OperatorCommand::Add { name, db } => {
            let issued = basalt_rollout::service::create_operator_token(
                open_migrated(&db)?.as_ref(),
                &SystemRandom::default(),
                &name,
            )?;
            println!("{}", issued.token);
            eprintln!("operator token for {name:?} created; it is shown only now");
            Ok(())
        }
        OperatorCommand::Revoke { name, db } => {
            let n = basalt_rollout::service::revoke_operator(open_migrated(&db)?.as_ref(), &name)?;
            println!("{n} token(s) of {name:?} revoked");
            Ok(())
        }
    }
}

/// The repository to serve, the URL nodes are sent to, this server's public URL.
type Repo = (Option<PathBuf>, Option<String>, Option<String>);

fn serve(
    db: Db,
    listen: String,
    trust_root: PathBuf,
    (repo, repo_url, public_url): Repo,
    threads: Option<u16>,
) -> Result<()> {
    let backend = db.open()?;
    let root = basalt_rollout::service::load_trust_root(&trust_root, repo.as_deref())?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(usize::from(n));
    }
    let rt = builder
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let local = listener.local_addr()?;
        let repository_url = match (repo_url, public_url) {
            (Some(url), _) => url,
            (None, Some(public)) => format!("{}/repo/", public.trim_end_matches('/')),
            (None, None) => format!("http://{local}/repo/"),
        };
        store::migrations::migrate(backend.as_ref(), chrono_now())?;
        let service = Service::new(
            backend.clone(),
            Arc::new(SystemClock),
            Arc::new(SystemRandom::default()),
            Config {
                repository_url: repository_url.clone(),
                repository_dir: repo.clone(),
                trust_root: root,
            },
        );
        tracing::info!(
            listen = %local,
            store = %backend.describe(),
            repository = %basalt_rollout::server::describe_repository(repo.as_deref()),
            %repository_url,
            "basalt-rollout serving"
        );
        Server::new(service, repo)
            .serve(listener, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await;
        Ok(())
    })
}

async fn remote(command: Command) -> Result<()> {
    match command {
        Command::Pools { remote } => {
            let pools: Vec<api::PoolInfo> = remote
                .client()?
                .json(Method::GET, "api/v1/pools", None::<&()>)
                .await?;
            for p in pools {
                let rollout = p
                    .rollout
                    .map(|r| {
                        format!(
                            "rollout {} to {} {}",
                            r.id,
                            r.target.version,
                            r.state.as_str()
                        )
                    })
                    .unwrap_or_else(|| "no rollout".into());
                println!(
                    "{}\t{}/{}\t{} nodes\t{rollout}",
                    p.name, p.channel, p.arch, p.nodes
                );
            }
            Ok(())
        }
        Command::Status { pool, json, remote } => {
            let status: api::Status = remote
                .client()?
                .json(
                    Method::GET,
                    &format!("api/v1/pools/{pool}/status"),
                    None::<&()>,
                )
                .await?;
            if json {
                print_json(&status)
            } else {
                print!("{}", api::render_status(&status));
                Ok(())
            }
        }
        Command::Pause {
            pool,
            reason,
            remote,
        } => state(remote, &pool, "pause", reason).await,
        Command::Resume { pool, remote } => state(remote, &pool, "resume", None).await,
        Command::Abort {
            pool,
            reason,
            remote,
        } => state(remote, &pool, "abort", reason).await,
        Command::Pin {
            pool,
            node,
            version,
            remove,
            remote,
        } => {
            let node = node
                .map(|n| basalt_rollout_wire::NodeId::new(&n).map_err(anyhow::Error::msg))
                .transpose()?;
            let body = api::Pin {
                node,
                version,
                remove,
            };
            let _: serde_json::Value = remote
                .client()?
                .json(
                    Method::POST,
                    &format!("api/v1/pools/{pool}/pin"),
                    Some(&body),
                )
                .await?;
            println!("ok");
            Ok(())
        }
        Command::Nodes { pool, json, remote } => {
            let nodes: Vec<api::NodeInfo> = remote
                .client()?
                .json(
                    Method::GET,
                    &format!("api/v1/pools/{pool}/nodes"),
                    None::<&()>,
                )
                .await?;
            if json {
                return print_json(&nodes);
            }
            for n in nodes {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    n.id,
                    n.booted_version
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "-".into()),
                    n.stage.map(|s| s.as_str()).unwrap_or("-"),
                    n.wave.map(|w| format!("wave {w}")).unwrap_or_default(),
                    n.reason.unwrap_or_default()
                );
            }
            Ok(())
        }
        Command::Pool { command } => pool(command).await,
        Command::Release { command } => release(command).await,
        Command::Serve { .. } | Command::Migrate { .. } | Command::Operator { .. } => {
            bail!("internal: not a remote command")
        }
    }
}

async fn state(remote: Remote, pool: &str, action: &str, reason: Option<String>) -> Result<()> {
    let info: api::RolloutInfo = remote
        .client()?
        .json(
            Method::POST,
            &format!("api/v1/pools/{pool}/{action}"),
            Some(&api::Reason { reason }),
        )
        .await?;
    println!(
        "rollout {} of pool {} to {}: {}{}",
        info.id,
        info.pool,
        info.target.version,
        info.state.as_str(),
        info.reason.map(|r| format!(" ({r})")).unwrap_or_default()
    );
    Ok(())
}

async fn pool(command: PoolCommand) -> Result<()> {
    match command {
        PoolCommand::Create {
            pool,
            channel,
            arch,
            interval,
            fleetlock_slots,
            remote,
        } => {
            let body = api::CreatePool {
                name: basalt_rollout_wire::PoolName::new(&pool).map_err(anyhow::Error::msg)?,
                channel,
                arch,
                check_in_interval_secs: duration("interval", &interval)?,
                fleetlock_slots,
            };
            let info: api::PoolInfo = remote
                .client()?
                .json(Method::POST, "api/v1/pools", Some(&body))
                .await?;
            println!(
                "pool {} created ({}/{})",
                info.name, info.channel, info.arch
            );
            Ok(())
        }
        PoolCommand::EnrollToken { pool, remote } => {
            let t: api::TokenIssued = remote
                .client()?
                .json(
                    Method::POST,
                    &format!("api/v1/pools/{pool}/enroll-tokens"),
                    None::<&()>,
                )
                .await?;
            println!("{}", t.token);
            Ok(())
        }
        PoolCommand::AddNode { pool, node, remote } => {
            let body = api::AddNode {
                node_id: basalt_rollout_wire::NodeId::new(&node).map_err(anyhow::Error::msg)?,
            };
            let t: api::TokenIssued = remote
                .client()?
                .json(
                    Method::POST,
                    &format!("api/v1/pools/{pool}/nodes"),
                    Some(&body),
                )
                .await?;
            println!("{}", t.token);
            Ok(())
        }
        PoolCommand::Upgrade {
            pool,
            node_image_only,
            to,
            max_unavailable,
            max_surge,
            soak,
            drain_timeout,
            window,
            halt_at,
            waves,
            node_timeout,
            remote,
        } => {
            let windows = window
                .iter()
                .map(|w| w.parse::<Window>())
                .collect::<Result<Vec<_>, _>>()?;
            let halt_at_percent = halt_at
                .as_deref()
                .map(|h| {
                    h.trim_end_matches('%')
                        .parse::<u32>()
                        .map_err(|_| anyhow::anyhow!("--halt-at {h:?} is not a percentage"))
                })
                .transpose()?;
            let body = Upgrade {
                node_image_only,
                to,
                max_unavailable,
                max_surge,
                soak_secs: duration("soak", &soak)?,
                drain_timeout_secs: duration("drain-timeout", &drain_timeout)?,
                windows,
                halt_at_percent,
                waves: waves.as_deref().map(parse_waves).transpose()?,
                node_timeout_secs: duration("node-timeout", &node_timeout)?,
            };
            let info: api::RolloutInfo = remote
                .client()?
                .json(
                    Method::POST,
                    &format!("api/v1/pools/{pool}/upgrade"),
                    Some(&body),
                )
                .await?;
            println!(
                "rollout {} of pool {} to {} (sequence {}) started",
                info.id, info.pool, info.target.version, info.target.sequence
            );
            Ok(())
        }
    }
}

async fn release(command: ReleaseCommand) -> Result<()> {
    match command {
        ReleaseCommand::Publish {
            channel,
            arch,
            file,
            floor,
            remote,
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let path = format!(
                "api/v1/channels/{channel}/{arch}/releases{}",
                if floor { "?floor=true" } else { "" }
            );
            let answer = remote
                .client()?
                .call(
                    Method::POST,
                    &path,
                    bytes,
                    "application/vnd.basalt.release.v1+json",
                )
                .await?;
            let info: api::ReleaseInfo = serde_json::from_slice(&answer)?;
            println!(
                "published {} (sequence {}) into {}/{}{}",
                info.version,
                info.sequence,
                info.channel,
                info.arch,
                if info.floor { " as a floor" } else { "" }
            );
            Ok(())
        }
        ReleaseCommand::List {
            channel,
            arch,
            remote,
        } => {
            let list: Vec<api::ReleaseInfo> = remote
                .client()?
                .json(
                    Method::GET,
                    &format!("api/v1/channels/{channel}/{arch}/releases"),
                    None::<&()>,
                )
                .await?;
            for r in list {
                println!(
                    "{}\t{}\t{}{}",
                    r.sequence,
                    r.version,
                    r.published_at.to_rfc3339(),
                    if r.floor { "\tfloor" } else { "" }
                );
            }
            Ok(())
        }
        ReleaseCommand::Floor {
            channel,
            arch,
            sequence,
            off,
            remote,
        } => {
            let r: api::ReleaseInfo = remote
                .client()?
                .json(
                    Method::POST,
                    &format!("api/v1/channels/{channel}/{arch}/releases/{sequence}/floor"),
                    Some(&api::SetFloor { floor: !off }),
                )
                .await?;
            println!("{} (sequence {}) floor: {}", r.version, r.sequence, r.floor);
            Ok(())
        }
    }
}
