//! The `floe` binary: `floe standalone` runs the whole system in one process
//! (embedded metadata store, controller, broker, and the proxy clients talk
//! to) on local storage; `floe controller`, `floe broker` and `floe proxy`
//! are the roles of a cluster on etcd.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use floe_broker::{BrokerConfig, Metrics, Node};
use floe_common::{SharedClock, SystemClock};
use floe_controller::Controller;
use floe_meta::{EmbeddedStore, MetadataStore};
use floe_storage::{StoragePool, StorageTarget};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "floe",
    version,
    about = "Floe: a Kafka-compatible broker on shared storage"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run controller, broker and an embedded metadata store in one process.
    Standalone(StandaloneArgs),
    /// Run a broker of a cluster whose metadata is in etcd.
    Broker(BrokerArgs),
    /// Run a controller of a cluster whose metadata is in etcd (several may
    /// run: one leads, the others stand by).
    Controller(ControllerArgs),
    /// Run a proxy of a cluster: the endpoint clients connect to (any
    /// number may run; each serves every partition).
    Proxy(ProxyArgs),
}

#[derive(clap::Args)]
struct ProxyArgs {
    /// etcd endpoints, comma-separated (http://host:port,...).
    #[arg(long, env = "FLOE_ETCD", value_delimiter = ',', required = true)]
    etcd: Vec<String>,
    /// Kafka listener address.
    #[arg(long, env = "FLOE_LISTEN", default_value = "127.0.0.1:9092")]
    listen: SocketAddr,
    /// Address advertised to clients (default: the listen address).
    #[arg(long, env = "FLOE_ADVERTISE")]
    advertise: Option<String>,
    /// HTTP address of /metrics, /healthz and /readyz.
    #[arg(long, env = "FLOE_HTTP_LISTEN", default_value = "127.0.0.1:9646")]
    http_listen: SocketAddr,
    /// TOML config file ([proxy] section: see docs/operations.md).
    #[arg(long, env = "FLOE_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(clap::Args)]
struct BrokerArgs {
    /// etcd endpoints, comma-separated (http://host:port,...).
    #[arg(long, env = "FLOE_ETCD", value_delimiter = ',', required = true)]
    etcd: Vec<String>,
    /// This broker's id (Kafka's node.id), unique in the cluster.
    #[arg(long, env = "FLOE_BROKER_ID")]
    id: i32,
    /// Kafka listener address.
    #[arg(long, env = "FLOE_LISTEN", default_value = "127.0.0.1:9092")]
    listen: SocketAddr,
    /// Address advertised to clients (default: the listen address).
    #[arg(long, env = "FLOE_ADVERTISE")]
    advertise: Option<String>,
    /// HTTP address of /metrics, /healthz and /readyz.
    #[arg(long, env = "FLOE_HTTP_LISTEN", default_value = "127.0.0.1:9644")]
    http_listen: SocketAddr,
    /// Address of the tail push (gRPC) listener proxies follow partitions
    /// on; port 0 picks a free one. Advertised with the --advertise host.
    #[arg(long, env = "FLOE_TAIL_LISTEN", default_value = "127.0.0.1:0")]
    tail_listen: SocketAddr,
    /// TOML config file ([broker] section: see docs/operations.md).
    #[arg(long, env = "FLOE_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ControllerArgs {
    /// etcd endpoints, comma-separated (http://host:port,...).
    #[arg(long, env = "FLOE_ETCD", value_delimiter = ',', required = true)]
    etcd: Vec<String>,
    /// Config file (TOML); a controller reads its `[internal_tls]` (the
    /// cluster identity it presents to brokers) and `[etcd]`.
    #[arg(long, env = "FLOE_CONFIG")]
    config: Option<PathBuf>,
    /// This controller's id (default: a random one).
    #[arg(long, env = "FLOE_CONTROLLER_ID")]
    id: Option<String>,
    /// Storage targets that seed the cluster's pool if it has none yet
    /// (repeat the flag; ids t0, t1, ...). `zone=` and `weight=` in a URL's
    /// query place the target (`s3://bucket/floe?region=eu-west-1&zone=eu-west-1a`).
    /// Later changes go through the admin API; every process reads the pool
    /// from etcd.
    #[arg(long = "storage", env = "FLOE_STORAGE", value_delimiter = ',')]
    storage: Vec<String>,
    /// Replicas of every object (R), when seeding the pool.
    #[arg(long, default_value_t = 1)]
    replicas: u32,
    /// Acknowledgements that make a write durable (W), when seeding.
    #[arg(long, default_value_t = 1)]
    write_quorum: u32,
    /// HTTP address of /healthz, /readyz and the internal API.
    #[arg(long, env = "FLOE_HTTP_LISTEN", default_value = "127.0.0.1:9645")]
    http_listen: SocketAddr,
    /// TTL of the controller's lease: a standby takes over this long after
    /// the leader stops.
    #[arg(long, default_value_t = 10_000)]
    lease_ttl_ms: u64,
    /// Address of the admin API (gRPC, what floectl talks to).
    #[arg(long, env = "FLOE_ADMIN_LISTEN", default_value = "127.0.0.1:9647")]
    admin_listen: SocketAddr,
    /// File holding the admin API's bearer token (or set FLOE_ADMIN_TOKEN);
    /// without a token the admin API is off.
    #[arg(long, env = "FLOE_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// PEM certificate chain of the admin API: with --admin-tls-key, the
    /// admin API speaks TLS only (floectl: https://...).
    #[arg(long, env = "FLOE_ADMIN_TLS_CERT", requires = "admin_tls_key")]
    admin_tls_cert: Option<PathBuf>,
    /// PEM private key of --admin-tls-cert.
    #[arg(long, env = "FLOE_ADMIN_TLS_KEY", requires = "admin_tls_cert")]
    admin_tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): with it the admin API also requires a client
    /// certificate signed by one of them (mutual TLS), besides the token.
    #[arg(long, env = "FLOE_ADMIN_TLS_CLIENT_CA", requires = "admin_tls_cert")]
    admin_tls_client_ca: Option<PathBuf>,
    /// Serve the web console on the admin listener (/console/, behind the
    /// admin token: a login sets a session cookie; over the admin API's
    /// TLS when it has one). Needs the admin API.
    #[arg(long, env = "FLOE_CONSOLE", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    console: bool,
    /// How often an open console page is rendered anew and sent when it
    /// changed.
    #[arg(long, env = "FLOE_CONSOLE_REFRESH_MS", default_value_t = 1_000)]
    console_refresh_ms: u64,
    /// Even out partition counts as soon as a broker joins (false: brokers
    /// that join take only new and orphaned partitions until an operator
    /// runs `floectl rebalance`).
    #[arg(long, env = "FLOE_BALANCE_ON_JOIN", default_value_t = true, action = clap::ArgAction::Set)]
    balance_on_join: bool,
    /// How long a broker that joined (started, restarted in place, or
    /// rejoined after its lease lapsed) must have been live before
    /// balancing moves partitions to it; orphaned partitions go to it at
    /// once.
    #[arg(long, env = "FLOE_BALANCE_SETTLE_MS", default_value_t = 3_000)]
    balance_settle_ms: u64,
    #[command(flatten)]
    wal_gc: WalGcArgs,
}

/// The garbage collection of shared WAL objects (chunk_layout = "wal").
#[derive(clap::Args, Clone, Copy)]
struct WalGcArgs {
    /// How often the leading controller deletes WAL objects no partition
    /// needs any more.
    #[arg(long, env = "FLOE_WAL_GC_INTERVAL_MS", default_value_t = 60_000)]
    wal_gc_interval_ms: u64,
    /// WAL objects younger than this are never deleted (a reader holding
    /// an older list of a partition's chunks has this long to read them).
    #[arg(long, env = "FLOE_WAL_DELETE_GRACE_MS", default_value_t = 300_000)]
    wal_delete_grace_ms: u64,
}

impl WalGcArgs {
    fn spawn(self, c: std::sync::Arc<Controller>, stop: tokio_util::sync::CancellationToken) {
        tokio::spawn(c.run_wal_gc(
            std::time::Duration::from_millis(self.wal_gc_interval_ms.max(1)),
            std::time::Duration::from_millis(self.wal_delete_grace_ms),
            stop,
        ));
    }
}

#[derive(clap::Args)]
struct StandaloneArgs {
    /// Kafka listener address.
    #[arg(long, env = "FLOE_LISTEN", default_value = "127.0.0.1:9092")]
    listen: SocketAddr,
    /// Address advertised to clients (default: the listen address).
    #[arg(long, env = "FLOE_ADVERTISE")]
    advertise: Option<String>,
    /// Directory for metadata and, by default, segment objects.
    #[arg(long, env = "FLOE_DATA_DIR", default_value = "./floe-data")]
    data_dir: PathBuf,
    /// Storage target URL (file:///abs/dir[?fsync=true] or memory://);
    /// default: file://<data-dir>/objects.
    #[arg(long, env = "FLOE_STORAGE")]
    storage: Option<String>,
    /// HTTP address of /metrics, /healthz and /readyz.
    #[arg(long, env = "FLOE_HTTP_LISTEN", default_value = "127.0.0.1:9644")]
    http_listen: SocketAddr,
    /// TOML config file ([broker] section: see docs/configuration.md).
    #[arg(long, env = "FLOE_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    wal_gc: WalGcArgs,
    /// Try security out: the Kafka listener becomes SASL_SSL with a
    /// certificate made in <data-dir>/try-security/ and a SASL user
    /// `admin` (its password printed at start). Not for production.
    #[arg(long, env = "FLOE_TRY_SECURITY")]
    try_security: bool,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    broker: BrokerConfig,
    #[serde(default)]
    proxy: floe_proxy::ProxyConfig,
    /// Test-only fault injection (see `floe_broker::Faults`).
    faults: Option<floe_broker::Faults>,
    /// ACL checks of every Kafka request (docs/security.md).
    #[serde(default)]
    authorizer: floe_kafka::acl::AuthorizerConfig,
    /// The cluster's identity for internal traffic (docs/security.md).
    internal_tls: Option<floe_kafka::tls::InternalTls>,
    /// How to reach a secured etcd (docs/security.md).
    #[serde(default)]
    etcd: floe_meta::EtcdSecurity,
    /// OAUTHBEARER: where the identity provider's keys are and what a
    /// token must say (docs/security.md).
    oauthbearer: Option<floe_kafka::oauth::OAuthSettings>,
}

/// The environment variable that allows a `[faults]` section.
const FAULTS_ALLOWED: &str = "FLOE_FAULT_INJECTION";

fn load_file(path: Option<&Path>) -> Result<FileConfig> {
    let Some(path) = path else {
        return Ok(FileConfig::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_file(&text, std::env::var(FAULTS_ALLOWED).as_deref() == Ok("1"))
        .with_context(|| format!("parsing {}", path.display()))
}

fn parse_file(text: &str, faults_allowed: bool) -> Result<FileConfig> {
    let mut file: FileConfig = toml::from_str(text)?;
    let none = Default::default();
    floe_broker::TopicConfig::resolve(&file.broker.topic_defaults, &none)
        .context("broker.topic_defaults")?;
    if let Some(faults) = file.faults.take() {
        if !faults_allowed {
            anyhow::bail!(
                "the [faults] section injects failures for tests; set {FAULTS_ALLOWED}=1 to allow it"
            );
        }
        if faults.any() {
            tracing::warn!(
                ?faults,
                "fault injection is on: this process fails on purpose"
            );
        }
        file.broker.faults = faults;
    }
    Ok(file)
}

pub(crate) fn load_config(path: Option<&Path>) -> Result<BrokerConfig> {
    Ok(load_file(path)?.broker)
}

pub(crate) fn load_proxy_config(path: Option<&Path>) -> Result<floe_proxy::ProxyConfig> {
    let file = load_file(path)?;
    Ok(floe_proxy::ProxyConfig {
        internal_tls: file.internal_tls.map(std::sync::Arc::new),
        ..file.proxy
    })
}

pub(crate) fn load_etcd_security(path: Option<&Path>) -> Result<floe_meta::EtcdSecurity> {
    Ok(load_file(path)?.etcd)
}

pub(crate) fn load_internal_tls(
    path: Option<&Path>,
) -> Result<Option<floe_kafka::tls::InternalTls>> {
    Ok(load_file(path)?.internal_tls)
}

pub(crate) fn load_authorizer_config(
    path: Option<&Path>,
) -> Result<floe_kafka::acl::AuthorizerConfig> {
    Ok(load_file(path)?.authorizer)
}

/// The ACLs (`/floe/acls/`), followed until `shutdown`, when the
/// authorizer is on.
pub(crate) async fn follow_acls(
    meta: Arc<dyn MetadataStore>,
    config: &floe_kafka::acl::AuthorizerConfig,
    shutdown: CancellationToken,
) -> Result<Option<Arc<floe_kafka::acl::Authorizer>>> {
    if !config.enabled {
        return Ok(None);
    }
    let az = floe_kafka::acl::Authorizer::new(config);
    floe_meta::Follower::start(
        meta,
        vec![floe_meta::keys::acls_prefix()],
        az.clone(),
        shutdown,
    )
    .await
    .context("following ACLs")?;
    tracing::info!(super_users = ?config.super_users, "ACL authorizer on");
    Ok(Some(az))
}

/// `text` (Prometheus, ending in `# EOF`) with the authorizer's counters.
pub(crate) fn with_authorizer_metrics(
    text: String,
    az: &Option<Arc<floe_kafka::acl::Authorizer>>,
    prefix: &str,
) -> String {
    let Some(az) = az else { return text };
    let body = text.strip_suffix("# EOF\n").unwrap_or(&text);
    format!("{body}{}# EOF\n", az.encode_metrics(prefix))
}

fn main() -> Result<()> {
    // Checked first: a bad value is an error even for --help.
    let format = telemetry::log_format()?;
    let cli = Cli::parse();
    let role = match &cli.command {
        Command::Standalone(_) => "standalone",
        Command::Broker(_) => "broker",
        Command::Controller(_) => "controller",
        Command::Proxy(_) => "proxy",
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        // Dropped last: spans of the shutdown are flushed too.
        let _telemetry = telemetry::init(format, role)?;
        match cli.command {
            Command::Standalone(args) => standalone(args).await,
            Command::Broker(args) => cluster::broker(args).await,
            Command::Controller(args) => cluster::controller(args).await,
            Command::Proxy(args) => cluster::proxy(args).await,
        }
    })
}

mod cluster;
mod telemetry;
mod tryout;

async fn standalone(args: StandaloneArgs) -> Result<()> {
    let config = load_config(args.config.as_deref())?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    let meta: Arc<dyn MetadataStore> = Arc::new(
        EmbeddedStore::open(data_dir.join("meta.redb"))
            .await
            .context("opening the metadata store (is another floe running on this data dir?)")?,
    );
    let storage_url = match args.storage {
        Some(u) => u,
        None => format!("file://{}", data_dir.join("objects").display()),
    };
    let target = StorageTarget::open("local", &storage_url)?;
    let pool = Arc::new(StoragePool::new(vec![target], 1, 1)?);
    let clock: SharedClock = Arc::new(SystemClock);
    let cluster_id = floe_controller::ensure_cluster_id(&*meta, clock.now_ms()).await?;

    let file_proxy = load_proxy_config(args.config.as_deref())?;
    if config.protocol != Default::default()
        || config.tls.is_some()
        || config.sasl_mechanisms.is_some()
        || !config.listeners.is_empty()
    {
        bail!("in standalone, clients talk to its proxy: set protocol, tls and listeners under [proxy], not [broker]");
    }
    let try_out = if args.try_security {
        if file_proxy.protocol != Default::default() || file_proxy.tls.is_some() {
            bail!("--try-security sets the listener's protocol and certificate itself: remove protocol and tls from [proxy]");
        }
        let host = match &args.advertise {
            Some(a) => a
                .rsplit_once(':')
                .map_or(a.as_str(), |(h, _)| h)
                .to_string(),
            None => args.listen.ip().to_string(),
        };
        let t = tryout::prepare(&data_dir, &host)?;
        tryout::ensure_user(meta.clone(), &t).await?;
        Some(t)
    } else {
        None
    };
    let (protocol, tls) = match &try_out {
        Some(t) => (
            floe_kafka::listener::SecurityProtocol::SaslSsl,
            Some(floe_kafka::tls::TlsSettings {
                cert: Some(t.cert.clone()),
                key: Some(t.key.clone()),
                ..Default::default()
            }),
        ),
        None => (file_proxy.protocol, file_proxy.tls.clone()),
    };
    let listeners = plan_listeners(
        args.listen,
        args.advertise.as_deref(),
        protocol,
        tls.as_ref(),
        file_proxy.sasl_mechanisms.clone(),
        file_proxy.reauth_ms,
        &file_proxy.listeners,
        None,
    )?;
    let endpoints = floe_kafka::listener::endpoints(&listeners)?;
    let bootstrap = endpoints.first().map_or(args.listen.to_string(), |e| {
        format!("{}:{}", e.host, e.port)
    });

    let shutdown = CancellationToken::new();
    start_storage(&pool, &config, &shutdown);
    let metrics = Arc::new(Metrics::new());
    let users = follow_users(meta.clone(), shutdown.child_token()).await?;
    let az = follow_acls(
        meta.clone(),
        &load_authorizer_config(args.config.as_deref())?,
        shutdown.child_token(),
    )
    .await?;
    let oauth = oauth_validator(args.config.as_deref(), shutdown.child_token()).await?;
    let bound = floe_kafka::listener::bind(&listeners, users, oauth, az.clone(), &shutdown).await?;
    let http = tokio::net::TcpListener::bind(args.http_listen)
        .await
        .with_context(|| format!("binding the HTTP listener {}", args.http_listen))?;
    // The broker behind the proxy listens on loopback only.
    let internal = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the internal broker listener")?;
    let internal_port = internal.local_addr()?.port() as i32;
    let tail = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the tail push listener")?;
    let tail_addr = format!("127.0.0.1:{}", tail.local_addr()?.port());

    let controller = Controller::new(meta.clone(), pool.clone());
    args.wal_gc
        .spawn(controller.clone(), shutdown.child_token());
    let controller_task = tokio::spawn(controller.run(shutdown.child_token()));
    // The client-facing limits are the proxy's: one config for both.
    let proxy_config = floe_proxy::ProxyConfig {
        // Clients see the one node of a standalone as node 0, as before.
        proxy_id: Some(config.node_id),
        max_request_bytes: config.max_request_bytes,
        max_connections: config.max_connections,
        max_inflight_per_connection: config.max_inflight_per_connection,
        // One broker behind the proxy: owner nodes would only add a node.
        owner_nodes: false,
        // The broker's /metrics has the process's storage requests.
        storage_request_metrics: false,
        ..file_proxy
    };
    // Only the proxy connects to the broker (a handful of connections per
    // client connection at most): the client limit is the proxy's.
    let mut config = config;
    config.max_connections = config.max_connections.saturating_mul(4).max(1024);
    let node = Node::start(
        config,
        cluster_id.clone(),
        vec![floe_meta::schema::Endpoint {
            name: "PLAINTEXT".into(),
            host: "127.0.0.1".into(),
            port: internal_port,
        }],
        meta.clone(),
        pool.clone(),
        clock.clone(),
        metrics.clone(),
        tail_addr,
        shutdown.child_token(),
    )
    .await?;
    // One read cache for both (its keys are storage paths): the proxy
    // serves reads of the bytes the broker just wrote and cached, and the
    // cache is sized by one setting, `[broker] cache_bytes`.
    let proxy = floe_proxy::Proxy::start_with_cache(
        proxy_config,
        cluster_id.clone(),
        endpoints,
        meta.clone(),
        pool,
        clock.now_ms(),
        node.cache.clone(),
        shutdown.child_token(),
    )
    .await?;
    tracing::info!(listen = %args.listen, http = %args.http_listen, data_dir = %data_dir.display(), storage = %storage_url, cluster_id, "floe standalone started");
    if let Some(t) = &try_out {
        println!("{}", tryout::banner(t, &bootstrap));
        tracing::warn!(dir = %t.dir.display(), "security try-out: SASL_SSL with a certificate and user made for trying; not for production");
    }

    let serve_token = shutdown.child_token();
    let broker_server = tokio::spawn(floe_broker::server::serve(
        internal,
        node.clone(),
        serve_token.clone(),
    ));
    let tail_task = tokio::spawn(floe_broker::tail::serve(
        tail,
        node.clone(),
        None,
        serve_token.clone(),
    ));
    let servers = floe_kafka::listener::spawn_all(bound, proxy.clone(), serve_token.clone());
    let (mn, rn, mp) = (node.clone(), node.clone(), proxy.clone());
    let http_task = tokio::spawn(http_server(
        http,
        // Both registries, one exposition (their names do not overlap).
        Arc::new(move || {
            let broker = broker_metrics(&mn);
            let broker = broker.strip_suffix("# EOF\n").unwrap_or(&broker);
            with_authorizer_metrics(
                format!("{broker}{}", mp.encode_metrics()),
                &az,
                "floe_proxy",
            )
        }),
        Arc::new(move || broker_ready(&rn, true)),
        shutdown.child_token(),
    ));

    wait_for_signal().await;
    tracing::info!("shutting down: releasing partitions");
    serve_token.cancel();
    futures::future::join_all(servers).await;
    let _ = broker_server.await;
    node.release_all().await;
    proxy.stop().await;
    shutdown.cancel();
    let _ = tail_task.await;
    let _ = controller_task.await;
    let _ = http_task.await;
    tracing::info!("stopped");
    Ok(())
}

/// HOST:PORT advertised to clients: `--advertise`, else the listen address.
/// A process's Kafka listeners from its flags and its config section;
/// with `internal` (a broker with `[internal_tls]`) the `--listen` one is
/// the cluster-internal listener: mutual TLS with the cluster CA.
#[allow(clippy::too_many_arguments)]
pub(crate) fn plan_listeners(
    listen: SocketAddr,
    advertise: Option<&str>,
    protocol: floe_kafka::listener::SecurityProtocol,
    tls: Option<&floe_kafka::tls::TlsSettings>,
    sasl_mechanisms: Option<Vec<String>>,
    reauth_ms: Option<u64>,
    extra: &[floe_kafka::listener::ListenerConfig],
    internal: Option<&floe_kafka::tls::InternalTls>,
) -> Result<Vec<floe_kafka::listener::ListenerConfig>> {
    let first = match internal {
        Some(i) => floe_kafka::listener::ListenerConfig {
            name: "INTERNAL".into(),
            listen,
            advertise: advertise.map(str::to_string),
            protocol: floe_kafka::listener::SecurityProtocol::Ssl,
            tls: Some(i.server_settings()),
            sasl_mechanisms: None,
            reauth_ms: None,
            internal: true,
        },
        None => floe_kafka::listener::ListenerConfig {
            name: String::new(),
            listen,
            advertise: advertise.map(str::to_string),
            protocol,
            tls: None,
            sasl_mechanisms,
            reauth_ms,
            internal: false,
        },
    };
    Ok(floe_kafka::listener::plan(first, tls, extra)?)
}

/// The OAUTHBEARER validator of `[oauthbearer]`, if the file has one
/// (a JWKS URL is fetched before this returns, or retried in the
/// background).
pub(crate) async fn oauth_validator(
    path: Option<&Path>,
    shutdown: CancellationToken,
) -> Result<Option<Arc<floe_kafka::oauth::OAuthValidator>>> {
    let Some(settings) = load_file(path)?.oauthbearer else {
        return Ok(None);
    };
    let v = floe_kafka::oauth::OAuthValidator::new(settings).context("[oauthbearer]")?;
    v.start(shutdown).await;
    Ok(Some(v))
}

/// SASL users (`/floe/users/`), followed until `shutdown`.
pub(crate) async fn follow_users(
    meta: Arc<dyn MetadataStore>,
    shutdown: CancellationToken,
) -> Result<Arc<floe_kafka::sasl::UserStore>> {
    let users = floe_kafka::sasl::UserStore::new();
    floe_meta::Follower::start(
        meta,
        vec![floe_meta::keys::users_prefix()],
        users.clone(),
        shutdown,
    )
    .await
    .context("following SASL users")?;
    Ok(users)
}

pub(crate) async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The broker's metrics text, with the cache figures of now.
fn broker_metrics(node: &Node) -> String {
    let (hits, misses) = node.cache.stats();
    node.metrics
        .set_cache(hits, misses, node.cache.weighted_bytes());
    node.metrics.encode()
}

/// The broker's readiness: every partition it should write is writing.
fn broker_ready(node: &Node, all_partitions: bool) -> Result<String, String> {
    let (writing, total) = node.readiness(all_partitions);
    if writing >= total {
        Ok(format!("ready: {writing} partitions writing\n"))
    } else {
        Err(format!(
            "not ready: {writing} of {total} partitions writing\n"
        ))
    }
}

type MetricsText = Arc<dyn Fn() -> String + Send + Sync>;
type Readiness = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// /metrics, /healthz and /readyz of a process.
async fn http_server(
    listener: tokio::net::TcpListener,
    metrics: MetricsText,
    ready: Readiness,
    shutdown: CancellationToken,
) {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let text = metrics();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let r = ready();
                async move {
                    match r {
                        Ok(m) => (axum::http::StatusCode::OK, m),
                        Err(m) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, m),
                    }
                }
            }),
        );
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
}

/// The broker's storage settings applied to its pool: hedged reads and
/// target probes (until `shutdown`).
pub(crate) fn start_storage(
    pool: &Arc<StoragePool>,
    config: &floe_broker::config::BrokerConfig,
    shutdown: &CancellationToken,
) {
    floe_storage::replica::HEDGE_AFTER_MS.store(
        config.read_hedge_ms.max(1),
        std::sync::atomic::Ordering::Relaxed,
    );
    pool.spawn_probes(
        std::time::Duration::from_millis(config.storage_probe_interval_ms.max(100)),
        shutdown.child_token(),
    );
}

#[cfg(test)]
mod tests {
    use super::parse_file;

    #[test]
    fn faults_are_refused_unless_allowed_and_never_part_of_broker() {
        let text = "[broker]\nnode_id = 3\n[faults]\nrecovery_delay_ms = 3000\n";
        let e = parse_file(text, false).err().unwrap().to_string();
        assert!(e.contains("FLOE_FAULT_INJECTION=1"), "{e}");
        let f = parse_file(text, true).unwrap();
        assert_eq!(f.broker.node_id, 3);
        assert_eq!(f.broker.faults.recovery_delay_ms, 3000);
        // The knobs are not broker settings.
        let e = parse_file("[broker]\nfault_recovery_delay_ms = 1\n", true)
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("unknown field"), "{e:#}");
        assert!(!parse_file("[broker]\n", false).unwrap().broker.faults.any());
    }
}
