//! `floectl`: the operator's CLI for the controller's admin API. Human
//! tables by default, `-o json` for scripts; clear errors and distinct exit
//! codes (2 unreachable controller or failed TLS, 3 refused token, 4 not
//! found, 1 other); TLS and mutual TLS for https:// controllers.
// A command-line program, timing its calls in real time: outside the time
// seam.
#![allow(clippy::disallowed_methods)]

use floe_rpc::admin as admin_pb;

use std::path::PathBuf;
use std::process::ExitCode;

use admin_pb::admin_client::AdminClient;
use clap::{Parser, Subcommand, ValueEnum};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};

#[derive(Parser)]
#[command(
    name = "floectl",
    version,
    about = "Operate a Floe cluster through its controller"
)]
struct Cli {
    /// The controller's admin API (any controller; writes reach the leader).
    #[arg(
        long,
        env = "FLOECTL_CONTROLLER",
        default_value = "http://127.0.0.1:9647",
        global = true
    )]
    controller: String,
    /// Bearer token of the admin API.
    #[arg(long, env = "FLOE_ADMIN_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// File holding the bearer token.
    #[arg(long, env = "FLOE_ADMIN_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// PEM CA certificate(s) to trust for an https:// controller, besides
    /// the system's roots.
    #[arg(long, env = "FLOECTL_CA_CERT", global = true)]
    ca_cert: Option<PathBuf>,
    /// PEM client certificate, for a controller that requires mutual TLS.
    #[arg(
        long,
        env = "FLOECTL_CLIENT_CERT",
        global = true,
        requires = "client_key"
    )]
    client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(
        long,
        env = "FLOECTL_CLIENT_KEY",
        global = true,
        requires = "client_cert"
    )]
    client_key: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum UserCmd {
    /// Every user and its SCRAM mechanisms (never a secret).
    List,
    /// Set a user's password (creating the user): salted and hashed for
    /// each mechanism, as Kafka's kafka-configs --add-config
    /// 'SCRAM-SHA-512=[password=...]'.
    Set {
        name: String,
        /// The password; read from standard input when not given.
        #[arg(long)]
        password: Option<String>,
        /// SCRAM-SHA-256, SCRAM-SHA-512 (default: both).
        #[arg(long = "mechanism")]
        mechanisms: Vec<String>,
        /// PBKDF2 iterations (4096-16384).
        #[arg(long, default_value_t = 4096)]
        iterations: u32,
    },
    /// Delete a user (or only some of its mechanisms).
    Delete {
        name: String,
        #[arg(long = "mechanism")]
        mechanisms: Vec<String>,
    },
}

/// Which ACLs (empty: any).
#[derive(clap::Args)]
struct AclSelect {
    /// TOPIC, GROUP, CLUSTER, TRANSACTIONAL_ID.
    #[arg(long = "resource-type", default_value = "")]
    resource_type: String,
    /// The resource's name (the cluster's is kafka-cluster).
    #[arg(long = "resource", default_value = "")]
    resource_name: String,
    /// LITERAL, PREFIXED (and ANY, MATCH to list or remove).
    #[arg(long = "pattern", default_value = "")]
    pattern_type: String,
    /// User:NAME (User:* for everyone).
    #[arg(long, default_value = "")]
    principal: String,
    #[arg(long, default_value = "")]
    host: String,
    /// READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE, DESCRIBE_CONFIGS,
    /// ALTER_CONFIGS, IDEMPOTENT_WRITE, CLUSTER_ACTION, ALL.
    #[arg(long, default_value = "")]
    operation: String,
    /// ALLOW or DENY.
    #[arg(long, default_value = "")]
    permission: String,
}

#[derive(Subcommand)]
enum AclCmd {
    /// ACLs that match (all when nothing is given).
    List(AclSelect),
    /// Add an ACL (ALLOW, host * and LITERAL unless given).
    Add(AclSelect),
    /// Remove every ACL that matches.
    Remove(AclSelect),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Brokers, proxies, controllers, storage targets and partition states.
    Status,
    /// Topics and their configs.
    Topics,
    /// Consumer groups on every broker: classic and consumer-protocol
    /// (KIP-848), with state and coordinator.
    Groups,
    /// Consumer groups: `list` (as `groups`), `describe NAME` (state,
    /// members and their assignments, and per partition the committed
    /// offset, the high watermark and the lag, like
    /// kafka-consumer-groups.sh --describe), or just `group NAME`.
    Group {
        /// `list`, `describe`, or a group's name.
        what: String,
        /// The group, after `describe`.
        name: Option<String>,
    },
    /// Topic admin: describe, create, delete, alter configs.
    Topic {
        #[command(subcommand)]
        op: TopicCmd,
    },
    /// One partition: owner, epoch, state and every segment with its
    /// replica set.
    Partition { topic: String, partition: i32 },
    /// Broker operations.
    Broker {
        #[command(subcommand)]
        op: BrokerOp,
    },
    /// Even out partitions and measured load over the brokers: shows the
    /// plan with --dry-run, else starts it as an operation (--wait follows
    /// it to the end).
    Rebalance {
        /// Show the plan; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Follow the operation until it finishes.
        #[arg(long)]
        wait: bool,
        /// Moves carried out at once.
        #[arg(long, default_value_t = 4)]
        max_in_flight: u32,
        /// Every broker should end within this fraction of the mean load.
        #[arg(long, default_value_t = 0.10)]
        tolerance: f64,
        /// Below this mean load per broker (bytes/s) only counts are balanced.
        #[arg(long, default_value_t = 65_536)]
        min_load: u64,
        /// Give up waiting after this long (ms); the operation goes on.
        #[arg(long, default_value_t = 600_000)]
        timeout_ms: u64,
    },
    /// Long-running operations (rebalances).
    Op {
        #[command(subcommand)]
        op: OpCmd,
    },
    /// Storage targets: list, add, drain, undrain, remove.
    Storage {
        #[command(subcommand)]
        op: StorageCmd,
    },
    /// SASL users (SCRAM credentials; PLAIN logins are checked against
    /// them): list, set a password, delete.
    User {
        #[command(subcommand)]
        op: UserCmd,
    },
    /// Kafka ACLs: list, add, remove (as kafka-acls.sh).
    Acl {
        #[command(subcommand)]
        op: AclCmd,
    },
    /// Move a partition to a broker (no data is copied); waits until the
    /// new owner writes it.
    Move {
        topic: String,
        partition: i32,
        /// The broker to move it to.
        #[arg(long)]
        to: i32,
        /// How long to wait for the new owner (ms).
        #[arg(long, default_value_t = 30_000)]
        timeout_ms: u32,
    },
}

#[derive(Subcommand)]
enum BrokerOp {
    /// Move every partition off a broker and give it none (each move a
    /// release and an acquire, nothing copied); it can then be stopped.
    Drain {
        broker: i32,
        /// Wait until the broker writes no partition.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long (ms).
        #[arg(long, default_value_t = 300_000)]
        timeout_ms: u64,
    },
    /// Make a drained broker take partitions again.
    Undrain { broker: i32 },
    /// Retire a broker: drain it; once it writes nothing its process exits
    /// by itself and the id is free.
    Decommission {
        broker: i32,
        /// Wait until the broker has exited.
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value_t = 300_000)]
        timeout_ms: u64,
    },
}

#[derive(Subcommand)]
enum TopicCmd {
    /// Partitions: owner, epoch, state, assigned broker, offsets, segments.
    Describe { name: String },
    /// Create a topic (the controller assigns its partitions).
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        /// A topic config, NAME=VALUE (repeatable): retention.ms=..., ...
        #[arg(long = "config", value_parser = key_value)]
        configs: Vec<(String, String)>,
    },
    /// Delete a topic: its metadata at once, its objects shortly after.
    Delete { name: String },
    /// Set (--set NAME=VALUE) or remove (--delete NAME) topic configs.
    Alter {
        name: String,
        #[arg(long, value_parser = key_value)]
        set: Vec<(String, String)>,
        #[arg(long)]
        delete: Vec<String>,
    },
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE"))
}

#[derive(Subcommand)]
enum OpCmd {
    /// Operations, newest last.
    List,
    /// One operation with every move.
    Show { id: String },
    /// Follow an operation until it finishes.
    Watch { id: String },
    /// Stop an operation after the moves in flight.
    Cancel { id: String },
}

#[derive(Subcommand)]
enum StorageCmd {
    /// Targets with health, replicas held and repair progress.
    List,
    /// Add a target (it must answer from the controller).
    Add {
        id: String,
        /// file:///dir, s3://bucket/prefix?endpoint=..., memory:// (tests).
        url: String,
        #[arg(long)]
        zone: Option<String>,
        #[arg(long, default_value_t = 1)]
        weight: u32,
    },
    /// New segments avoid the target and brokers move its replicas away.
    Drain {
        id: String,
        /// Wait until it holds no segment replica.
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value_t = 600_000)]
        timeout_ms: u64,
    },
    /// Let a drained target take new segments again.
    Undrain { id: String },
    /// Remove a drained target that holds nothing.
    Remove { id: String },
}

/// Progress of a long operation on stderr: a bar on a terminal, one line
/// per change otherwise (logs, scripts); nothing with `-o json`.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    label: String,
    quiet: bool,
    last: Option<(u64, u64, String)>,
}

impl Progress {
    fn new(label: &str, quiet: bool) -> Self {
        use std::io::IsTerminal;
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_prefix(label.to_string());
            b
        });
        Self {
            bar,
            label: label.to_string(),
            quiet,
            last: None,
        }
    }

    fn set(&mut self, done: u64, total: u64, msg: String) {
        if let Some(b) = &self.bar {
            b.set_length(total);
            b.set_position(done);
            b.set_message(msg);
            return;
        }
        let now = (done, total, msg);
        if !self.quiet && self.last.as_ref() != Some(&now) {
            eprintln!("{}: {}/{} {}", self.label, now.0, now.1, now.2);
            self.last = Some(now);
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}

fn bytes_rate(b: u64) -> String {
    match b {
        b if b >= 1 << 20 => format!("{:.1} MiB/s", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB/s", b as f64 / 1024.0),
        b => format!("{b} B/s"),
    }
}

fn plan_text(p: &admin_pb::RebalancePlan) -> String {
    let mut out = format!(
        "{} moves; mean load {} per broker, band {}..{} (±{:.0}%){}\n",
        p.moves.len(),
        bytes_rate(p.mean_load_bytes_per_sec),
        bytes_rate(p.load_band_low),
        bytes_rate(p.load_band_high),
        p.load_tolerance * 100.0,
        if p.load_balanced {
            ""
        } else {
            "; below the load threshold: counts only"
        }
    );
    if !p.unreported_brokers.is_empty() {
        out += &format!(
            "no load report yet from brokers {:?} (their partitions count as idle)\n",
            p.unreported_brokers
        );
    }
    out += "\n";
    out += &table(
        &["BROKER", "PARTITIONS", "LOAD", "AFTER", "LOAD AFTER"],
        p.before
            .iter()
            .zip(&p.after)
            .map(|(b, a)| {
                vec![
                    b.broker.to_string(),
                    b.partitions.to_string(),
                    bytes_rate(b.load_bytes_per_sec),
                    a.partitions.to_string(),
                    bytes_rate(a.load_bytes_per_sec),
                ]
            })
            .collect(),
    );
    if !p.moves.is_empty() {
        out += "\n";
        out += &moves_table(&p.moves);
    }
    out
}

fn moves_table(moves: &[admin_pb::Move]) -> String {
    table(
        &[
            "TOPIC",
            "PARTITION",
            "FROM",
            "TO",
            "LOAD",
            "STATUS",
            "TOOK",
            "DETAIL",
        ],
        moves
            .iter()
            .map(|m| {
                vec![
                    m.topic.clone(),
                    m.partition.to_string(),
                    m.from.to_string(),
                    m.to.to_string(),
                    bytes_rate(m.load_bytes_per_sec),
                    m.status.clone(),
                    if m.took_ms > 0 {
                        format!("{} ms", m.took_ms)
                    } else {
                        String::new()
                    },
                    m.detail.clone(),
                ]
            })
            .collect(),
    )
}

fn op_summary(o: &admin_pb::Operation) -> String {
    format!(
        "operation {} ({}): {}; {}/{} moved, {} moving, {} failed, {} skipped{}\n",
        o.id,
        o.kind,
        o.state,
        o.done,
        o.total,
        o.moving,
        o.failed,
        o.skipped,
        if o.detail.is_empty() {
            String::new()
        } else {
            format!(" ({})", o.detail)
        }
    )
}

fn storage_text(l: &admin_pb::StorageTargetList) -> String {
    let mut out = format!(
        "R={} W={}; {} segments still to repair (replicas on draining or unhealthy targets)\n\n",
        l.replicas, l.write_quorum, l.segments_to_repair
    );
    out += &table(
        &[
            "TARGET", "URL", "ZONE", "WEIGHT", "DRAINING", "HEALTH", "SEGMENTS", "BYTES",
        ],
        l.targets
            .iter()
            .map(|t| {
                vec![
                    t.id.clone(),
                    t.url.clone(),
                    t.zone.clone(),
                    t.weight.to_string(),
                    t.draining.to_string(),
                    t.health.clone(),
                    t.segments.to_string(),
                    t.bytes.to_string(),
                ]
            })
            .collect(),
    );
    out
}

/// Adds the bearer token to every call.
type Auth = Box<dyn FnMut(Request<()>) -> Result<Request<()>, Status> + Send>;

type Client = AdminClient<tonic::service::interceptor::InterceptedService<Channel, Auth>>;

/// What a `--wait` waits for: a broker writing nothing, a broker gone
/// (decommissioned), a storage target holding nothing.
enum Emptying {
    BrokerPartitions(i32),
    BrokerGone(i32),
    TargetSegments(String),
}

impl Emptying {
    /// How much is left; None once done.
    async fn left(&self, client: &mut Client) -> Result<Option<u32>, Failure> {
        match self {
            Self::BrokerPartitions(b) | Self::BrokerGone(b) => {
                let s = client
                    .get_cluster_status(admin_pb::ClusterStatusRequest {})
                    .await?
                    .into_inner();
                let found = s.brokers.iter().find(|x| x.id == *b).map(|x| x.partitions);
                Ok(match (self, found) {
                    (Self::BrokerPartitions(_), Some(0)) | (_, None) => None,
                    (_, Some(n)) => Some(n),
                })
            }
            Self::TargetSegments(id) => {
                let l = client
                    .list_storage_targets(admin_pb::ListStorageTargetsRequest {})
                    .await?
                    .into_inner();
                let t = l
                    .targets
                    .iter()
                    .find(|x| &x.id == id)
                    .ok_or_else(|| fail(4, format!("storage target {id} vanished")))?;
                Ok((t.segments > 0).then_some(t.segments))
            }
        }
    }
}

/// Poll `what` every `every` until it is done, showing how much of `total`
/// went (`moved`: what the count is of); an error after `timeout_ms`.
async fn wait_emptied(
    client: &mut Client,
    what: Emptying,
    mut progress: Progress,
    total: u32,
    moved: &str,
    timeout_ms: u64,
    every: std::time::Duration,
) -> Result<(), Failure> {
    let started = std::time::Instant::now();
    let mut total = total;
    while let Some(left) = what.left(client).await? {
        if started.elapsed().as_millis() as u64 > timeout_ms {
            progress.finish();
            return Err(fail(
                1,
                format!(
                    "{}: {left} still to go after {timeout_ms} ms ({moved})",
                    progress.label
                ),
            ));
        }
        total = total.max(left);
        progress.set((total - left) as u64, total as u64, moved.to_string());
        tokio::time::sleep(every).await;
    }
    progress.set(total as u64, total as u64, moved.to_string());
    progress.finish();
    Ok(())
}

/// Follow operation `id` to its end with progress on stderr.
async fn follow(
    client: &mut Client,
    id: &str,
    quiet: bool,
    timeout_ms: u64,
) -> Result<admin_pb::Operation, Failure> {
    let mut progress = Progress::new(&format!("operation {id}"), quiet);
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms);
    let last = 'outer: loop {
        let mut stream = client
            .watch_operation(admin_pb::OperationRequest { id: id.to_string() })
            .await?
            .into_inner();
        loop {
            let next = tokio::time::timeout_at(deadline.into(), stream.message()).await;
            match next {
                Err(_) => {
                    progress.finish();
                    return Err(fail(
                        1,
                        format!("operation {id} not finished after {timeout_ms} ms; it goes on (floectl op watch {id})"),
                    ));
                }
                Ok(Ok(Some(o))) => {
                    progress.set(
                        (o.done + o.failed + o.skipped) as u64,
                        o.total as u64,
                        format!(
                            "moves done ({} moving, {} failed) {}",
                            o.moving, o.failed, o.state
                        ),
                    );
                    if matches!(o.state.as_str(), "done" | "failed" | "cancelled") {
                        break 'outer o;
                    }
                }
                // The controller went away or the watch ended: watch again
                // (any controller answers).
                Ok(Ok(None)) | Ok(Err(_)) => {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    continue 'outer;
                }
            }
        }
    };
    progress.finish();
    Ok(last)
}

/// What a drain or decommission request started.
fn drain_started(r: &admin_pb::DrainResponse) -> String {
    match &r.operation {
        Some(o) => format!(
            "broker {} drained: operation {} ({} partitions to move; floectl op watch {})\n",
            r.broker, o.id, o.total, o.id
        ),
        None => String::new(),
    }
}

/// Follow the operation of a drain to its end; an error unless done (a
/// cancelled drain leaves partitions on the broker).
async fn follow_drain(
    client: &mut Client,
    r: &admin_pb::DrainResponse,
    quiet: bool,
    timeout_ms: u64,
) -> Result<admin_pb::Operation, Failure> {
    let Some(op) = &r.operation else {
        return Err(fail(
            1,
            "the controller answered without a drain operation (an older controller?)",
        ));
    };
    let end = follow(client, &op.id, quiet, timeout_ms).await?;
    if end.state != "done" {
        return Err(fail(
            1,
            format!("operation {} ended {}: {}", end.id, end.state, end.detail),
        ));
    }
    Ok(end)
}

/// `broker drain` and `broker decommission`: start it; with `wait`, follow
/// its operation, then until the broker writes nothing (drain) or has
/// exited (decommission).
async fn drain_broker(
    client: &mut Client,
    broker: i32,
    decommission: bool,
    wait: bool,
    timeout_ms: u64,
    json_out: bool,
) -> Result<String, Failure> {
    let started = std::time::Instant::now();
    let request = admin_pb::BrokerRequest { broker };
    let mut r = if decommission {
        client.decommission_broker(request).await?
    } else {
        client.drain_broker(request).await?
    }
    .into_inner();
    if !json_out {
        eprint!("{}", drain_started(&r));
    }
    if wait {
        r.operation = Some(follow_drain(client, &r, json_out, timeout_ms).await?);
        // Anything assigned to it as the drain began moves off too; a
        // decommissioned broker then exits.
        let (what, progress) = if decommission {
            (
                Emptying::BrokerGone(broker),
                Progress::new(&format!("broker {broker} exiting"), json_out),
            )
        } else {
            (
                Emptying::BrokerPartitions(broker),
                Progress::new(&format!("draining broker {broker}"), true),
            )
        };
        let every = std::time::Duration::from_millis(100);
        wait_emptied(
            client,
            what,
            progress,
            r.partitions,
            "partitions moved",
            timeout_ms,
            every,
        )
        .await?;
        r.partitions = 0;
    }
    if json_out {
        return json(&r);
    }
    let op = r.operation.as_ref().map_or("", |o| o.id.as_str());
    let took = started.elapsed().as_secs_f64();
    Ok(match (decommission, wait) {
        (true, true) => format!(
            "broker {broker} decommissioned in {took:.1} s: it moved its partitions off and exited\n"
        ),
        (true, false) => format!(
            "broker {broker} decommissioning: {} partitions to move; it exits once they are gone (floectl op watch {op})\n",
            r.partitions
        ),
        (false, true) => format!(
            "broker {broker} drained in {took:.1} s: it writes no partition and can be stopped\n"
        ),
        (false, false) => format!(
            "broker {broker} draining: {} partitions to move (floectl op watch {op})\n",
            r.partitions
        ),
    })
}

/// A partition's high watermark as its owner last reported it, with the
/// report's age ("-" before the first report).
fn high_watermark(p: &admin_pb::PartitionDetail) -> String {
    if p.high_watermark < 0 {
        return "-".into();
    }
    format!(
        "{} ({:.0}s ago)",
        p.high_watermark,
        p.high_watermark_age_ms as f64 / 1000.0
    )
}

/// The controller's endpoint: plaintext for http://, TLS for https://
/// (system roots plus --ca-cert; --client-cert for mutual TLS).
fn endpoint(cli: &Cli) -> Result<Endpoint, Failure> {
    let endpoint = Channel::from_shared(cli.controller.clone())
        .map_err(|e| fail(1, format!("bad --controller {:?}: {e}", cli.controller)))?;
    let https = cli.controller.starts_with("https://");
    if !https {
        if cli.ca_cert.is_some() || cli.client_cert.is_some() {
            return Err(fail(
                1,
                format!(
                    "--ca-cert and --client-cert need an https:// controller, not {}",
                    cli.controller
                ),
            ));
        }
        return Ok(endpoint);
    }
    let read = |what: &str, p: &PathBuf| {
        std::fs::read(p).map_err(|e| fail(1, format!("reading the {what} {}: {e}", p.display())))
    };
    let mut tls = ClientTlsConfig::new().with_native_roots();
    if let Some(ca) = &cli.ca_cert {
        tls = tls.ca_certificate(Certificate::from_pem(read("CA certificate", ca)?));
    }
    if let (Some(cert), Some(key)) = (&cli.client_cert, &cli.client_key) {
        tls = tls.identity(Identity::from_pem(
            read("client certificate", cert)?,
            read("client key", key)?,
        ));
    }
    endpoint
        .tls_config(tls)
        .map_err(|e| fail(1, format!("TLS settings: {}", floe_common::error_chain(&e))))
}

struct Failure {
    code: u8,
    message: String,
}

impl From<Status> for Failure {
    fn from(s: Status) -> Self {
        let code = match s.code() {
            Code::Unauthenticated | Code::PermissionDenied => 3,
            Code::NotFound => 4,
            Code::Unavailable if s.message().contains("connect") => 2,
            _ => 1,
        };
        let mut message = format!("{:?}: {}", s.code(), s.message());
        if let Some(cause) = std::error::Error::source(&s) {
            message = format!("{message}: {}", floe_common::error_chain(cause));
        }
        Failure { code, message }
    }
}

fn fail(code: u8, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect()) + "\n";
    for r in rows {
        out += &(line(r) + "\n");
    }
    out
}

fn json(v: &impl serde::Serialize) -> Result<String, Failure> {
    serde_json::to_string_pretty(v)
        .map(|s| s + "\n")
        .map_err(|e| fail(1, e.to_string()))
}

async fn run(cli: Cli) -> Result<String, Failure> {
    let token = match (&cli.token, &cli.token_file) {
        (Some(t), _) => t.trim().to_string(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .map_err(|e| fail(1, format!("reading the token file {}: {e}", f.display())))?
            .trim()
            .to_string(),
        (None, None) => String::new(),
    };
    let channel = endpoint(&cli)?
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| {
            fail(
                2,
                format!(
                    "cannot reach the controller at {}: {}",
                    cli.controller,
                    floe_common::error_chain(&e)
                ),
            )
        })?;
    let bearer: MetadataValue<_> = format!("Bearer {token}")
        .parse()
        .map_err(|_| fail(1, "the token has characters a header cannot carry"))?;
    let auth: Auth = Box::new(move |mut r: Request<()>| {
        r.metadata_mut().insert("authorization", bearer.clone());
        Ok(r)
    });
    let mut client: Client = AdminClient::with_interceptor(channel, auth);
    let json_out = cli.output == Output::Json;
    let command = match cli.command {
        Command::Group { what, name: None } if what == "list" => Command::Groups,
        c => c,
    };
    match command {
        Command::Status => {
            let s = client
                .get_cluster_status(admin_pb::ClusterStatusRequest {})
                .await?
                .into_inner();
            if json_out {
                return json(&s);
            }
            let mut out = format!(
                "cluster {}: {} topics, {} partitions; storage R={} W={}\n\n",
                s.cluster_id, s.topics, s.partitions, s.replicas, s.write_quorum
            );
            out += &table(
                &[
                    "BROKER",
                    "ADDRESS",
                    "PARTITIONS",
                    "DRAINED",
                    "IN",
                    "OUT",
                    "TAIL",
                ],
                s.brokers
                    .iter()
                    .map(|b| {
                        vec![
                            b.id.to_string(),
                            b.address.clone(),
                            b.partitions.to_string(),
                            b.drained.to_string(),
                            bytes_rate(b.bytes_in_per_sec),
                            bytes_rate(b.bytes_out_per_sec),
                            b.tail.clone(),
                        ]
                    })
                    .collect(),
            );
            out += "\n";
            out += &table(
                &["PROXY", "ADDRESS"],
                s.proxies
                    .iter()
                    .map(|p| vec![p.id.to_string(), p.address.clone()])
                    .collect(),
            );
            out += "\n";
            out += &table(
                &["CONTROLLER", "HTTP", "LEADER"],
                s.controllers
                    .iter()
                    .map(|c| vec![c.id.clone(), c.http.clone(), c.leader.to_string()])
                    .collect(),
            );
            out += "\n";
            out += &table(
                &["TARGET", "URL", "ZONE", "WEIGHT", "DRAINING"],
                s.storage_targets
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.url.clone(),
                            t.zone.clone(),
                            t.weight.to_string(),
                            t.draining.to_string(),
                        ]
                    })
                    .collect(),
            );
            out += "\n";
            out += &table(
                &["STATE", "PARTITIONS"],
                s.partition_states
                    .iter()
                    .map(|c| vec![c.state.clone(), c.partitions.to_string()])
                    .collect(),
            );
            Ok(out)
        }
        Command::User { op: UserCmd::List } => {
            let l = client
                .list_users(admin_pb::ListUsersRequest {})
                .await?
                .into_inner();
            if json_out {
                return json(&l);
            }
            Ok(table(
                &["USER", "MECHANISMS"],
                l.users
                    .iter()
                    .map(|u| {
                        vec![
                            u.name.clone(),
                            u.credentials
                                .iter()
                                .map(|c| format!("{} ({} iterations)", c.mechanism, c.iterations))
                                .collect::<Vec<_>>()
                                .join(", "),
                        ]
                    })
                    .collect(),
            ))
        }
        Command::User {
            op:
                UserCmd::Set {
                    name,
                    password,
                    mechanisms,
                    iterations,
                },
        } => {
            let password = match password {
                Some(p) => p,
                None => {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .map_err(|e| fail(1, format!("reading the password: {e}")))?;
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
            };
            let u = client
                .set_user_password(admin_pb::SetUserPasswordRequest {
                    name,
                    password,
                    mechanisms,
                    iterations,
                })
                .await?
                .into_inner();
            if json_out {
                return json(&u);
            }
            Ok(format!(
                "user {}: {}\n",
                u.name,
                u.credentials
                    .iter()
                    .map(|c| c.mechanism.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
        Command::User {
            op: UserCmd::Delete { name, mechanisms },
        } => {
            let u = client
                .delete_user(admin_pb::DeleteUserRequest { name, mechanisms })
                .await?
                .into_inner();
            if json_out {
                return json(&u);
            }
            Ok(if u.credentials.is_empty() {
                format!("deleted user {}\n", u.name)
            } else {
                format!(
                    "user {} keeps {}\n",
                    u.name,
                    u.credentials
                        .iter()
                        .map(|c| c.mechanism.clone())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
        }
        Command::Acl { op } => {
            let (verb, sel) = match op {
                AclCmd::List(s) => ("list", s),
                AclCmd::Add(s) => ("add", s),
                AclCmd::Remove(s) => ("remove", s),
            };
            let filter = admin_pb::AclFilter {
                resource_type: sel.resource_type.clone(),
                resource_name: sel.resource_name.clone(),
                pattern_type: sel.pattern_type.clone(),
                principal: sel.principal.clone(),
                host: sel.host.clone(),
                operation: sel.operation.clone(),
                permission: sel.permission.clone(),
            };
            let acls = match verb {
                "list" => client.list_acls(filter).await?.into_inner().acls,
                "remove" => client.delete_acls(filter).await?.into_inner().acls,
                _ => vec![client
                    .create_acl(admin_pb::Acl {
                        resource_type: sel.resource_type,
                        resource_name: sel.resource_name,
                        pattern_type: sel.pattern_type,
                        principal: sel.principal,
                        host: sel.host,
                        operation: sel.operation,
                        permission: sel.permission,
                    })
                    .await?
                    .into_inner()],
            };
            if json_out {
                return json(&admin_pb::AclList { acls });
            }
            let mut out = String::new();
            if verb == "remove" {
                out += &format!("removed {} ACLs\n", acls.len());
            }
            out += &table(
                &[
                    "PRINCIPAL",
                    "PERMISSION",
                    "OPERATION",
                    "RESOURCE TYPE",
                    "PATTERN",
                    "RESOURCE",
                    "HOST",
                ],
                acls.iter()
                    .map(|a| {
                        vec![
                            a.principal.clone(),
                            a.permission.clone(),
                            a.operation.clone(),
                            a.resource_type.clone(),
                            a.pattern_type.clone(),
                            a.resource_name.clone(),
                            a.host.clone(),
                        ]
                    })
                    .collect(),
            );
            Ok(out)
        }
        Command::Group { what, name } => {
            let name = match (what.as_str(), name) {
                ("describe", Some(name)) => name,
                ("describe", None) => return Err(fail(1, "usage: floectl group describe NAME")),
                (group, None) => group.to_string(),
                (_, Some(_)) => {
                    return Err(fail(
                        1,
                        "usage: floectl group list | group describe NAME | group NAME",
                    ))
                }
            };
            let d = client
                .describe_group(admin_pb::DescribeGroupRequest { name })
                .await?
                .into_inner();
            if json_out {
                return json(&d);
            }
            let mut out = format!(
                "group {}: {} ({} {}), coordinator {}, {} members, total lag {}\n\n",
                d.name,
                d.state,
                d.protocol_type,
                d.protocol,
                d.coordinator,
                d.members.len(),
                d.total_lag
            );
            let known = |v: i64| {
                if v < 0 {
                    "-".to_string()
                } else {
                    v.to_string()
                }
            };
            out += &table(
                &[
                    "TOPIC",
                    "PARTITION",
                    "CURRENT-OFFSET",
                    "LOG-END-OFFSET",
                    "LAG",
                    "MEMBER",
                    "CLIENT",
                ],
                d.partitions
                    .iter()
                    .map(|p| {
                        vec![
                            p.topic.clone(),
                            p.partition.to_string(),
                            known(p.committed_offset),
                            known(p.high_watermark),
                            known(p.lag),
                            p.member_id.clone(),
                            p.client_id.clone(),
                        ]
                    })
                    .collect(),
            );
            if !d.members.is_empty() {
                out += "\n";
                out += &table(
                    &["MEMBER", "INSTANCE", "CLIENT", "HOST", "ASSIGNMENT"],
                    d.members
                        .iter()
                        .map(|m| {
                            vec![
                                m.member_id.clone(),
                                m.instance_id.clone(),
                                m.client_id.clone(),
                                m.client_host.clone(),
                                m.assignment.join(","),
                            ]
                        })
                        .collect(),
                );
            }
            Ok(out)
        }
        Command::Groups => {
            let l = client
                .list_groups(admin_pb::ListGroupsRequest {})
                .await?
                .into_inner();
            if json_out {
                return json(&l);
            }
            let mut out = table(
                &["GROUP", "TYPE", "PROTOCOL TYPE", "STATE", "COORDINATOR"],
                l.groups
                    .iter()
                    .map(|g| {
                        vec![
                            g.name.clone(),
                            g.group_type.clone(),
                            g.protocol_type.clone(),
                            g.state.clone(),
                            g.coordinator.to_string(),
                        ]
                    })
                    .collect(),
            );
            if !l.unreachable.is_empty() {
                out += &format!(
                    "\nbrokers that did not answer (their groups are missing): {:?}\n",
                    l.unreachable
                );
            }
            Ok(out)
        }
        Command::Topics => {
            let l = client
                .list_topics(admin_pb::ListTopicsRequest {})
                .await?
                .into_inner();
            if json_out {
                return json(&l);
            }
            Ok(table(
                &["TOPIC", "PARTITIONS", "ID", "CONFIGS"],
                l.topics
                    .iter()
                    .map(|t| {
                        let mut configs: Vec<_> = t.configs.iter().collect();
                        configs.sort();
                        vec![
                            t.name.clone(),
                            t.partitions.to_string(),
                            t.id.clone(),
                            configs
                                .iter()
                                .map(|(k, v)| format!("{k}={v}"))
                                .collect::<Vec<_>>()
                                .join(","),
                        ]
                    })
                    .collect(),
            ))
        }
        Command::Topic {
            op:
                TopicCmd::Create {
                    name,
                    partitions,
                    configs,
                },
        } => {
            let t = client
                .create_topic(admin_pb::CreateTopicRequest {
                    name,
                    partitions,
                    configs: configs.into_iter().collect(),
                })
                .await?
                .into_inner();
            if json_out {
                return json(&t);
            }
            Ok(format!(
                "created topic {} ({} partitions, id {})\n",
                t.name, t.partitions, t.id
            ))
        }
        Command::Topic {
            op: TopicCmd::Delete { name },
        } => {
            let t = client
                .delete_topic(admin_pb::DeleteTopicRequest { name })
                .await?
                .into_inner();
            if json_out {
                return json(&t);
            }
            Ok(format!(
                "deleted topic {} (id {}); its objects are removed shortly\n",
                t.name, t.id
            ))
        }
        Command::Topic {
            op: TopicCmd::Alter { name, set, delete },
        } => {
            let t = client
                .alter_topic_configs(admin_pb::AlterTopicConfigsRequest {
                    name,
                    set: set.into_iter().collect(),
                    delete,
                })
                .await?
                .into_inner();
            if json_out {
                return json(&t);
            }
            let mut configs: Vec<_> = t.configs.iter().collect();
            configs.sort();
            Ok(format!(
                "topic {} configs: {}\n",
                t.name,
                configs
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ))
        }
        Command::Partition { topic, partition } => {
            let d = client
                .describe_partition(admin_pb::DescribePartitionRequest { topic, partition })
                .await?
                .into_inner();
            if json_out {
                return json(&d);
            }
            let p = d.partition.clone().unwrap_or_default();
            let mut out = format!(
                "{}/{}: owner {} epoch {} {}; assigned to {}; log start {}, high watermark {}, checkpoint end {}\n\n",
                d.topic,
                p.partition,
                p.owner,
                p.epoch,
                p.state,
                p.assigned,
                p.log_start_offset,
                high_watermark(&p),
                p.checkpoint_next_offset
            );
            if let Some(c) = &d.compaction {
                out += &format!(
                    "compaction ({}): {} of {} sealed segments compacted; dirty {} of {} bytes, ratio {:.3} (cleans at {}); lag {} (max {}); newest kept tombstone {}\n\n",
                    c.cleanup_policy,
                    c.compacted_segments,
                    c.sealed_segments,
                    c.dirty_bytes,
                    c.sealed_bytes,
                    c.dirty_ratio,
                    c.min_cleanable_dirty_ratio,
                    duration_ms(c.lag_ms),
                    duration_ms(c.max_compaction_lag_ms),
                    if c.tombstones_until_ms > 0 {
                        format!(
                            "{} ago (kept {})",
                            duration_ms(now_ms() - c.tombstones_until_ms),
                            duration_ms(c.delete_retention_ms)
                        )
                    } else {
                        "none".to_string()
                    },
                );
            }
            out += &table(
                &[
                    "BASE",
                    "END",
                    "SEALED",
                    "EPOCH",
                    "COMPACTED",
                    "BYTES",
                    "REPLICAS",
                ],
                d.segments
                    .iter()
                    .map(|s| {
                        vec![
                            s.base_offset.to_string(),
                            s.end_offset.to_string(),
                            s.sealed.to_string(),
                            s.epoch.to_string(),
                            s.compactions.to_string(),
                            s.bytes.to_string(),
                            s.replica_set.join(","),
                        ]
                    })
                    .collect(),
            );
            Ok(out)
        }
        Command::Topic {
            op: TopicCmd::Describe { name },
        } => {
            let d = client
                .describe_topic(admin_pb::DescribeTopicRequest {
                    name,
                    segments: false,
                })
                .await?
                .into_inner();
            if json_out {
                return json(&d);
            }
            Ok(table(
                &[
                    "PARTITION",
                    "OWNER",
                    "EPOCH",
                    "STATE",
                    "ASSIGNED",
                    "LOG START",
                    "HIGH WATERMARK",
                    "CHECKPOINT END",
                    "SEALED",
                    "OPEN",
                ],
                d.partitions
                    .iter()
                    .map(|p| {
                        vec![
                            p.partition.to_string(),
                            p.owner.to_string(),
                            p.epoch.to_string(),
                            p.state.clone(),
                            p.assigned.to_string(),
                            p.log_start_offset.to_string(),
                            high_watermark(p),
                            p.checkpoint_next_offset.to_string(),
                            p.sealed_segments.to_string(),
                            p.open_segments.to_string(),
                        ]
                    })
                    .collect(),
            ))
        }
        Command::Broker {
            op:
                BrokerOp::Decommission {
                    broker,
                    wait,
                    timeout_ms,
                },
        } => drain_broker(&mut client, broker, true, wait, timeout_ms, json_out).await,
        Command::Broker {
            op: BrokerOp::Undrain { broker },
        } => {
            let r = client
                .undrain_broker(admin_pb::BrokerRequest { broker })
                .await?
                .into_inner();
            if json_out {
                return json(&r);
            }
            Ok(format!(
                "broker {broker} undrained: it takes its share of partitions again\n"
            ))
        }
        Command::Broker {
            op:
                BrokerOp::Drain {
                    broker,
                    wait,
                    timeout_ms,
                },
        } => drain_broker(&mut client, broker, false, wait, timeout_ms, json_out).await,
        Command::Rebalance {
            dry_run,
            wait,
            max_in_flight,
            tolerance,
            min_load,
            timeout_ms,
        } => {
            let req = admin_pb::RebalanceRequest {
                load_tolerance: tolerance,
                min_load_bytes_per_sec: min_load,
                max_in_flight,
            };
            if dry_run {
                let p = client.plan_rebalance(req).await?.into_inner();
                return if json_out {
                    json(&p)
                } else {
                    Ok(plan_text(&p))
                };
            }
            let started = std::time::Instant::now();
            let r = client.start_rebalance(req).await?.into_inner();
            let op = r.operation.clone().unwrap_or_default();
            if !json_out {
                if let Some(p) = &r.plan {
                    eprint!("{}", plan_text(p));
                }
                eprintln!("\nstarted operation {} ({} moves)", op.id, op.total);
            }
            if !wait {
                return if json_out {
                    json(&r)
                } else {
                    Ok(op_summary(&op))
                };
            }
            let end = follow(&mut client, &op.id, json_out, timeout_ms).await?;
            let ok = end.state == "done";
            let text = if json_out {
                json(&end)?
            } else {
                format!(
                    "{}rebalance took {:.2} s wall time\n",
                    op_summary(&end),
                    started.elapsed().as_secs_f64()
                )
            };
            if ok {
                Ok(text)
            } else {
                print!("{text}");
                Err(fail(1, format!("operation {} ended {}", end.id, end.state)))
            }
        }
        Command::Op { op: OpCmd::List } => {
            let l = client
                .list_operations(admin_pb::ListOperationsRequest {})
                .await?
                .into_inner();
            if json_out {
                return json(&l);
            }
            Ok(table(
                &[
                    "ID", "KIND", "STATE", "MOVES", "DONE", "FAILED", "SKIPPED", "DETAIL",
                ],
                l.operations
                    .iter()
                    .map(|o| {
                        vec![
                            o.id.clone(),
                            o.kind.clone(),
                            o.state.clone(),
                            o.total.to_string(),
                            o.done.to_string(),
                            o.failed.to_string(),
                            o.skipped.to_string(),
                            o.detail.clone(),
                        ]
                    })
                    .collect(),
            ))
        }
        Command::Op {
            op: OpCmd::Show { id },
        } => {
            let o = client
                .get_operation(admin_pb::OperationRequest { id })
                .await?
                .into_inner();
            if json_out {
                return json(&o);
            }
            Ok(op_summary(&o) + "\n" + &moves_table(&o.moves))
        }
        Command::Op {
            op: OpCmd::Watch { id },
        } => {
            let o = follow(&mut client, &id, json_out, u64::MAX / 4).await?;
            if json_out {
                json(&o)
            } else {
                Ok(op_summary(&o))
            }
        }
        Command::Op {
            op: OpCmd::Cancel { id },
        } => {
            let o = client
                .cancel_operation(admin_pb::OperationRequest { id })
                .await?
                .into_inner();
            if json_out {
                return json(&o);
            }
            Ok(if o.broker != 0 {
                format!(
                    "cancelling operation {}: broker {} is undrained; partitions already moved stay\n",
                    o.id, o.broker
                )
            } else {
                format!(
                    "cancelling operation {}: the moves in flight finish, the rest are skipped\n",
                    o.id
                )
            })
        }
        Command::Storage {
            op: StorageCmd::List,
        } => {
            let l = client
                .list_storage_targets(admin_pb::ListStorageTargetsRequest {})
                .await?
                .into_inner();
            if json_out {
                return json(&l);
            }
            Ok(storage_text(&l))
        }
        Command::Storage {
            op:
                StorageCmd::Add {
                    id,
                    url,
                    zone,
                    weight,
                },
        } => {
            let t = client
                .add_storage_target(admin_pb::AddStorageTargetRequest {
                    id,
                    url,
                    zone: zone.unwrap_or_default(),
                    weight,
                })
                .await?
                .into_inner();
            if json_out {
                return json(&t);
            }
            Ok(format!(
                "storage target {} ({}) added: {}; new segments may use it now\n",
                t.id, t.url, t.health
            ))
        }
        Command::Storage {
            op: StorageCmd::Undrain { id },
        } => {
            let t = client
                .undrain_storage_target(admin_pb::StorageTargetRequest { id })
                .await?
                .into_inner();
            if json_out {
                return json(&t);
            }
            Ok(format!(
                "storage target {} takes new segments again\n",
                t.id
            ))
        }
        Command::Storage {
            op: StorageCmd::Remove { id },
        } => {
            let t = client
                .remove_storage_target(admin_pb::StorageTargetRequest { id })
                .await?
                .into_inner();
            if json_out {
                return json(&t);
            }
            Ok(format!(
                "storage target {} removed from the pool (its bucket or directory is left as it is)\n",
                t.id
            ))
        }
        Command::Storage {
            op:
                StorageCmd::Drain {
                    id,
                    wait,
                    timeout_ms,
                },
        } => {
            let started = std::time::Instant::now();
            let mut t = client
                .drain_storage_target(admin_pb::StorageTargetRequest { id: id.clone() })
                .await?
                .into_inner();
            if wait {
                wait_emptied(
                    &mut client,
                    Emptying::TargetSegments(id.clone()),
                    Progress::new(&format!("draining storage target {id}"), json_out),
                    t.segments,
                    "segment replicas moved off (repair)",
                    timeout_ms,
                    std::time::Duration::from_millis(250),
                )
                .await?;
                t.segments = 0;
                t.bytes = 0;
            }
            if json_out {
                return json(&t);
            }
            Ok(if wait {
                format!(
                    "storage target {id} drained in {:.1} s: it holds no segment; floectl storage remove {id}\n",
                    started.elapsed().as_secs_f64()
                )
            } else {
                format!(
                    "storage target {id} draining: {} segment replicas to move (floectl storage list shows progress)\n",
                    t.segments
                )
            })
        }
        Command::Move {
            topic,
            partition,
            to,
            timeout_ms,
        } => {
            let r = client
                .move_partition(admin_pb::MovePartitionRequest {
                    topic: topic.clone(),
                    partition,
                    broker: to,
                    timeout_ms,
                })
                .await?
                .into_inner();
            if json_out {
                return json(&r);
            }
            Ok(format!(
                "moved {topic}/{partition} to broker {to}: epoch {}, written there after {} ms\n",
                r.epoch, r.took_ms
            ))
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("floectl: {e}");
            return ExitCode::from(1);
        }
    };
    let https = cli.controller.starts_with("https://");
    let client_cert = cli.client_cert.is_some();
    match rt.block_on(run(cli)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(mut f) => {
            // A connection the controller dropped mid-call is a transport
            // failure, not an answer: say what usually causes it.
            if f.code == 1 && f.message.contains("transport error") {
                f.code = 2;
                f.message += match (https, client_cert) {
                    (false, _) => "\n(does the admin API use TLS? then use an https:// --controller)",
                    (true, false) => "\n(does the controller require mutual TLS? then pass --client-cert and --client-key)",
                    (true, true) => "\n(is the client certificate signed by the controller's --admin-tls-client-ca and made for client authentication?)",
                };
            }
            eprintln!("floectl: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// A duration for a person: `850ms`, `12.5s`, `7m`, `3.2h`, `7d`.
fn duration_ms(ms: i64) -> String {
    let s = ms as f64 / 1000.0;
    match ms {
        i64::MIN..=999 => format!("{ms}ms"),
        1_000..=59_999 => format!("{s:.1}s"),
        60_000..=3_599_999 => format!("{:.0}m", s / 60.0),
        3_600_000..=86_399_999 => format!("{:.1}h", s / 3600.0),
        _ => format!("{:.0}d", s / 86400.0),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
