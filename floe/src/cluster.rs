//! The cluster roles: `floe broker` and `floe controller`, with their
//! metadata in etcd and the storage pool read from there.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use floe_broker::{Metrics, Node};
use floe_common::{SharedClock, SystemClock};
use floe_controller::admin::ControllerState;
use floe_controller::Controller;
use floe_meta::schema::{ControllerRecord, StoragePoolRecord, StorageTargetRecord, FORMAT};
use floe_meta::{keys, Condition, EtcdStore, MetadataStore, Op, Txn};
use floe_storage::{StoragePool, StorageTarget};
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::{http_server, load_config, wait_for_signal, BrokerArgs, ControllerArgs, ProxyArgs};

/// Connect to etcd with the `[etcd]` settings of the config file at
/// `config`.
async fn connect(
    endpoints: &[String],
    config: Option<&std::path::Path>,
) -> Result<Arc<dyn MetadataStore>> {
    let security = crate::load_etcd_security(config)?;
    let store = EtcdStore::connect_with(endpoints, &security)
        .await
        .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))?;
    Ok(Arc::new(store))
}

/// The pool as recorded in etcd, opened with this process's credentials.
pub(crate) fn open_pool(record: &StoragePoolRecord) -> Result<StoragePool> {
    Ok(StoragePool::from_record(record)?)
}

/// Follow `/floe/storage`: targets an operator adds, drains or removes
/// take effect in this process's pool without a restart.
pub(crate) fn spawn_pool_watch(
    meta: Arc<dyn MetadataStore>,
    pool: Arc<StoragePool>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let follows = Arc::new(PoolFollows(pool));
        // The first read is retried here; the follower retries after that.
        let mut backoff = Duration::from_millis(100);
        loop {
            match floe_meta::Follower::start(
                meta.clone(),
                vec![keys::storage_pool()],
                follows.clone(),
                stop.clone(),
            )
            .await
            {
                Ok(_) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "reading the storage pool failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    });
}

/// The storage pool as a `floe_meta::Follow` target: its one record.
struct PoolFollows(Arc<StoragePool>);

impl floe_meta::Follow for PoolFollows {
    fn reset(&self, kvs: Vec<floe_meta::KeyValue>, _revision: i64) {
        if let Some(kv) = kvs.into_iter().find(|kv| kv.key == keys::storage_pool()) {
            apply_pool(&self.0, kv.value);
        }
    }

    fn apply(&self, event: floe_meta::WatchEvent) {
        if let floe_meta::WatchEventKind::Put(kv) = event.kind {
            if kv.key == keys::storage_pool() {
                apply_pool(&self.0, kv.value);
            }
        }
    }
}

fn apply_pool(pool: &Arc<StoragePool>, value: Bytes) {
    let record = match StoragePoolRecord::decode(value) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "undecodable storage pool record; ignored");
            return;
        }
    };
    let have = pool.targets();
    let mut wanted = Vec::new();
    for t in &record.targets {
        match have.iter().find(|h| h.id == t.id) {
            Some(h) => {
                let mut kept = h.clone();
                kept.draining = Arc::new(std::sync::atomic::AtomicBool::new(t.draining));
                kept.marker = Arc::new(std::sync::RwLock::new(t.marker.clone()));
                wanted.push(kept);
            }
            None => match StorageTarget::from_record(t) {
                Ok(n) => wanted.push(n),
                Err(e) => {
                    tracing::error!(target_id = %t.id, error = %format!("{e:#}"), "cannot open a new storage target; it is left out of this process's pool");
                }
            },
        }
    }
    pool.update(wanted);
}

/// Target `t{i}` of a seeded pool from `--storage URL`: `zone` and
/// `weight` in the URL's query are the target's placement, not options of
/// the store (`s3://bucket/prefix?region=eu-west-1&zone=eu-west-1a`).
fn seed_target(i: usize, spec: &str) -> Result<StorageTargetRecord> {
    let (base, query) = match spec.split_once('?') {
        Some((b, q)) => (b, q),
        None => (spec, ""),
    };
    let (mut zone, mut weight, mut rest) = (None, 1u32, Vec::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("zone", z)) if !z.is_empty() => zone = Some(z.to_string()),
            Some(("weight", w)) => {
                weight = w.parse().ok().filter(|w| *w > 0).with_context(|| {
                    format!("--storage {spec:?}: weight must be a positive integer, got {w:?}")
                })?;
            }
            Some(("zone", _)) => bail!("--storage {spec:?}: empty zone"),
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok(StorageTargetRecord {
        id: format!("t{i}"),
        url,
        zone,
        weight,
        draining: false,
        marker: String::new(),
    })
}

async fn read_pool(meta: &dyn MetadataStore) -> Result<Option<StoragePoolRecord>> {
    match meta.get(&keys::storage_pool()).await? {
        Some(kv) => Ok(Some(
            StoragePoolRecord::decode(kv.value).context("decoding the storage pool record")?,
        )),
        None => Ok(None),
    }
}

pub async fn broker(args: BrokerArgs) -> Result<()> {
    let mut config = load_config(args.config.as_deref())?;
    config.node_id = args.id;
    let internal_tls = crate::load_internal_tls(args.config.as_deref())?;
    config.internal_tls = internal_tls.clone();
    let meta = connect(&args.etcd, args.config.as_deref()).await?;
    // The first controller initialises the cluster; wait for it.
    let (cluster_id, pool) = cluster_identity(&*meta).await?;
    let pool = Arc::new(open_pool(&pool)?);
    let listeners = crate::plan_listeners(
        args.listen,
        args.advertise.as_deref(),
        config.protocol,
        config.tls.as_ref(),
        config.sasl_mechanisms.clone(),
        config.reauth_ms,
        &config.listeners,
        internal_tls.as_ref(),
    )?;
    let endpoints = floe_kafka::listener::endpoints(&listeners)?;
    let host = endpoints[0].host.clone();
    let tail = tokio::net::TcpListener::bind(args.tail_listen)
        .await
        .with_context(|| format!("binding the tail push listener {}", args.tail_listen))?;
    let tail_addr = format!("{host}:{}", tail.local_addr()?.port());
    let shutdown = CancellationToken::new();
    crate::start_storage(&pool, &config, &shutdown);
    spawn_pool_watch(meta.clone(), pool.clone(), shutdown.child_token());
    let metrics = Arc::new(Metrics::new());
    let meta: Arc<dyn MetadataStore> =
        Arc::new(floe_meta::metered::Metered::new(meta, metrics.meta.clone()));
    let clock: SharedClock = Arc::new(SystemClock);
    let node = Node::start(
        config,
        cluster_id.clone(),
        endpoints,
        meta.clone(),
        pool,
        clock,
        metrics,
        tail_addr.clone(),
        shutdown.child_token(),
    )
    .await
    .context("registering the broker")?;
    // Bound only now: a broker restarted in place waits for its old lease
    // first, and a port that accepted connections without serving them
    // would hang proxies and probes instead of refusing them.
    let users = crate::follow_users(meta.clone(), shutdown.child_token()).await?;
    let az = crate::follow_acls(
        meta.clone(),
        &crate::load_authorizer_config(args.config.as_deref())?,
        shutdown.child_token(),
    )
    .await?;
    let oauth = crate::oauth_validator(args.config.as_deref(), shutdown.child_token()).await?;
    let bound = floe_kafka::listener::bind(&listeners, users, oauth, az.clone(), &shutdown).await?;
    let http = tokio::net::TcpListener::bind(args.http_listen)
        .await
        .with_context(|| format!("binding the HTTP listener {}", args.http_listen))?;
    tracing::info!(id = args.id, listen = %args.listen, http = %args.http_listen, tail = %tail_addr, cluster_id, "floe broker started");
    let serve_token = shutdown.child_token();
    let servers = floe_kafka::listener::spawn_all(bound, node.clone(), serve_token.clone());
    let tail_task = tokio::spawn(floe_broker::tail::serve(
        tail,
        node.clone(),
        internal_tls.clone(),
        serve_token.clone(),
    ));
    let (mn, rn) = (node.clone(), node.clone());
    let http_task = tokio::spawn(http_server(
        http,
        Arc::new(move || crate::with_authorizer_metrics(crate::broker_metrics(&mn), &az, "floe")),
        Arc::new(move || crate::broker_ready(&rn, false)),
        shutdown.child_token(),
    ));
    let (lapsed, decommissioned) = tokio::select! {
        _ = wait_for_signal() => (false, false),
        _ = node.lease_lapsed.cancelled() => (true, false),
        _ = node.decommissioned() => (false, true),
    };
    if decommissioned {
        tracing::info!("decommissioned: no partition left here; exiting");
    }
    tracing::info!("shutting down: releasing partitions");
    serve_token.cancel();
    futures::future::join_all(servers).await;
    node.release_all().await;
    if decommissioned {
        // Deregistered (lease revoked): the id is free for a new broker.
        let _ = node
            .meta
            .txn(Txn::new().then(Op::delete(keys::drained(args.id))))
            .await;
    }
    shutdown.cancel();
    let _ = tail_task.await;
    let _ = http_task.await;
    if lapsed {
        bail!("the broker's lease expired and it could not rejoin the cluster");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Wait for the first controller to initialise the cluster: its id and
/// storage pool.
async fn cluster_identity(meta: &dyn MetadataStore) -> Result<(String, StoragePoolRecord)> {
    let mut waited = false;
    loop {
        let cluster = meta.get(&keys::cluster()).await?;
        let pool = read_pool(meta).await?;
        if let (Some(c), Some(p)) = (cluster, pool) {
            let c = floe_meta::schema::ClusterRecord::decode(c.value)?;
            return Ok((c.cluster_id, p));
        }
        if !waited {
            tracing::info!(
                "waiting for a controller to initialise the cluster (id and storage pool)"
            );
            waited = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn proxy(args: ProxyArgs) -> Result<()> {
    let config = crate::load_proxy_config(args.config.as_deref())?;
    let meta = connect(&args.etcd, args.config.as_deref()).await?;
    let (cluster_id, pool) = cluster_identity(&*meta).await?;
    let pool = Arc::new(open_pool(&pool)?);
    let listeners = crate::plan_listeners(
        args.listen,
        args.advertise.as_deref(),
        config.protocol,
        config.tls.as_ref(),
        config.sasl_mechanisms.clone(),
        config.reauth_ms,
        &config.listeners,
        None,
    )?;
    let endpoints = floe_kafka::listener::endpoints(&listeners)?;
    let shutdown = CancellationToken::new();
    let users = crate::follow_users(meta.clone(), shutdown.child_token()).await?;
    let az = crate::follow_acls(
        meta.clone(),
        &crate::load_authorizer_config(args.config.as_deref())?,
        shutdown.child_token(),
    )
    .await?;
    let oauth = crate::oauth_validator(args.config.as_deref(), shutdown.child_token()).await?;
    let bound = floe_kafka::listener::bind(&listeners, users, oauth, az.clone(), &shutdown).await?;
    let http = tokio::net::TcpListener::bind(args.http_listen)
        .await
        .with_context(|| format!("binding the HTTP listener {}", args.http_listen))?;
    pool.spawn_probes(Duration::from_secs(2), shutdown.child_token());
    spawn_pool_watch(meta.clone(), pool.clone(), shutdown.child_token());
    let clock: SharedClock = Arc::new(SystemClock);
    let proxy = floe_proxy::Proxy::start(
        config,
        cluster_id.clone(),
        endpoints,
        meta,
        pool,
        clock.now_ms(),
        shutdown.child_token(),
    )
    .await
    .context("registering the proxy")?;
    tracing::info!(id = proxy.record.proxy_id, listen = %args.listen, http = %args.http_listen, cluster_id, "floe proxy started");
    let serve_token = shutdown.child_token();
    let servers = floe_kafka::listener::spawn_all(bound, proxy.clone(), serve_token.clone());
    let (mp, rp) = (proxy.clone(), proxy.clone());
    let http_task = tokio::spawn(http_server(
        http,
        Arc::new(move || crate::with_authorizer_metrics(mp.encode_metrics(), &az, "floe_proxy")),
        Arc::new(move || {
            let brokers = rp.view.brokers().len();
            if brokers > 0 {
                Ok(format!("ready: {brokers} brokers known\n"))
            } else {
                Err("not ready: no live broker known\n".to_string())
            }
        }),
        shutdown.child_token(),
    ));
    let lapsed = tokio::select! {
        _ = wait_for_signal() => false,
        _ = proxy.shutdown.cancelled() => true,
    };
    tracing::info!("shutting down");
    serve_token.cancel();
    futures::future::join_all(servers).await;
    proxy.stop().await;
    shutdown.cancel();
    let _ = http_task.await;
    if lapsed {
        bail!("the proxy's registration lease expired");
    }
    tracing::info!("stopped");
    Ok(())
}

pub async fn controller(args: ControllerArgs) -> Result<()> {
    let meta: Arc<dyn MetadataStore> = Arc::new(floe_meta::metered::Metered::new(
        connect(&args.etcd, args.config.as_deref()).await?,
        floe_controller::metrics::metrics().meta.clone(),
    ));
    let clock: SharedClock = Arc::new(SystemClock);
    let cluster_id = floe_controller::ensure_cluster_id(&*meta, clock.now_ms()).await?;
    if read_pool(&*meta).await?.is_none() {
        if args.storage.is_empty() {
            tracing::info!("the cluster has no storage pool yet and no --storage was given; waiting for another controller to seed it");
        } else {
            let mut record = StoragePoolRecord {
                format: FORMAT,
                targets: args
                    .storage
                    .iter()
                    .enumerate()
                    .map(|(i, url)| seed_target(i, url))
                    .collect::<Result<_>>()?,
                replicas: args.replicas,
                write_quorum: args.write_quorum,
            };
            // Validate before anyone else reads it: a valid pool whose
            // targets all answer.
            let opened = open_pool(&record).context("the --storage pool")?;
            opened
                .check_reachable(Duration::from_secs(10))
                .await
                .context("the --storage pool")?;
            // Each target gets its identity marker before the record names
            // it (a controller seeding at the same time writes the same).
            for (t, r) in opened.targets().iter().zip(record.targets.iter_mut()) {
                if !floe_storage::markable(&r.url) {
                    continue;
                }
                let marker = floe_storage::marker_for(&cluster_id, &t.id, 1);
                t.write_marker(&marker, false)
                    .await
                    .context("the --storage pool")?;
                r.marker = marker;
            }
            let seeded = meta
                .txn(
                    Txn::new()
                        .when(Condition::Missing(keys::storage_pool()))
                        .then(Op::put(keys::storage_pool(), record.encode_to_vec())),
                )
                .await?;
            if seeded.committed() {
                tracing::info!(
                    targets = args.storage.len(),
                    replicas = args.replicas,
                    write_quorum = args.write_quorum,
                    "seeded the storage pool"
                );
            }
        }
    }
    let pool = loop {
        if let Some(p) = read_pool(&*meta).await? {
            break Arc::new(open_pool(&p)?);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    let id = args
        .id
        .clone()
        .unwrap_or_else(|| floe_common::new_uuid().simple().to_string()[..12].to_string());
    let ttl = Duration::from_millis(args.lease_ttl_ms.max(1_000));
    let lease = meta.grant_lease(ttl).await?;
    let record = ControllerRecord {
        format: FORMAT,
        id: id.clone(),
        http: args.http_listen.to_string(),
        started_ms: clock.now_ms(),
    };
    let value = Bytes::from(record.encode_to_vec());
    let registered = meta
        .txn(
            Txn::new()
                .when(Condition::Missing(keys::controller(&id)))
                .then(Op::put_with_lease(
                    keys::controller(&id),
                    value.clone(),
                    lease,
                )),
        )
        .await?;
    if !registered.committed() {
        bail!("controller id {id:?} is already registered by a live controller");
    }
    let http = tokio::net::TcpListener::bind(args.http_listen)
        .await
        .with_context(|| format!("binding the HTTP listener {}", args.http_listen))?;
    let admin_token = match (&args.admin_token_file, std::env::var("FLOE_ADMIN_TOKEN")) {
        (Some(f), _) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading the admin token {}", f.display()))?
                .trim()
                .to_string(),
        ),
        (None, Ok(t)) => Some(t.trim().to_string()),
        (None, Err(_)) => None,
    };
    let admin_token = admin_token.filter(|t| !t.is_empty());
    let internal_tls = crate::load_internal_tls(args.config.as_deref())?.map(Arc::new);
    let state = Arc::new(ControllerState::new(
        meta.clone(),
        id.clone(),
        admin_token.clone(),
        internal_tls,
    ));
    let shutdown = CancellationToken::new();
    spawn_pool_watch(meta.clone(), pool.clone(), shutdown.child_token());
    let lapsed = CancellationToken::new();
    tokio::spawn(controller_keep_alive(
        meta.clone(),
        lease,
        ttl,
        shutdown.clone(),
        lapsed.clone(),
    ));
    let http_task = tokio::spawn(floe_controller::admin::http(
        http,
        state.clone(),
        shutdown.clone(),
    ));
    let admin_task = match admin_token {
        Some(token) => {
            let tls = floe_controller::admin::server_tls(
                args.admin_tls_cert.as_deref(),
                args.admin_tls_key.as_deref(),
                args.admin_tls_client_ca.as_deref(),
            )?;
            let server = floe_controller::admin::server(tls.clone())?;
            let listener = tokio::net::TcpListener::bind(args.admin_listen)
                .await
                .with_context(|| format!("binding the admin listener {}", args.admin_listen))?;
            let security = match (&tls, &args.admin_tls_client_ca) {
                (None, _) => "token over plaintext",
                (Some(_), None) => "token over TLS",
                (Some(_), Some(_)) => "token over mutual TLS",
            };
            tracing::info!(admin = %args.admin_listen, security, "admin API listening");
            let console = args.console.then(|| {
                let scheme = if tls.is_some() { "https" } else { "http" };
                tracing::info!(console = %format!("{scheme}://{}/console/", args.admin_listen), "web console on");
                floe_controller::console::Console::new(
                    state.clone(),
                    token.clone(),
                    floe_controller::console::Options {
                        refresh: Duration::from_millis(args.console_refresh_ms.max(100)),
                        secure_cookie: tls.is_some(),
                    },
                )
            });
            Some(tokio::spawn(floe_controller::admin::serve(
                server,
                listener,
                state.clone(),
                token,
                console,
                shutdown.clone(),
            )))
        }
        None => {
            if args.console {
                anyhow::bail!("--console needs the admin API: give it a token (--admin-token-file or FLOE_ADMIN_TOKEN)");
            }
            tracing::warn!(
                "admin API disabled: no token (set --admin-token-file or FLOE_ADMIN_TOKEN)"
            );
            None
        }
    };
    tracing::info!(id, http = %args.http_listen, cluster_id, "floe controller started; campaigning");

    let balance_on_join = args.balance_on_join;
    let balance_settle = Duration::from_millis(args.balance_settle_ms);
    let wal_gc = args.wal_gc;
    let campaign = {
        let meta = meta.clone();
        let state = state.clone();
        let token = shutdown.child_token();
        let value = value.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let revision = floe_meta::election::campaign(
                &*meta,
                keys::controller_leader(),
                value.clone(),
                lease,
            )
            .await?;
            tracing::info!(id, revision, "this controller leads");
            let c = Controller::leading(meta.clone(), pool, keys::controller_leader(), value);
            c.set_balance_on_join(balance_on_join);
            c.set_balance_settle(balance_settle);
            state.lead(c.clone());
            tokio::spawn(c.clone().run_operations(id.clone(), token.clone()));
            tokio::spawn(c.clone().run_drain_tracking(id.clone(), token.clone()));
            wal_gc.spawn(c.clone(), token.clone());
            c.run(token).await
        })
    };
    let outcome = tokio::select! {
        _ = wait_for_signal() => Ok(()),
        _ = lapsed.cancelled() => Err(anyhow::anyhow!("the controller's lease expired; restart it to rejoin")),
        r = campaign => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow::anyhow!("controller failed: {e}")),
            Err(e) => Err(anyhow::anyhow!("controller task failed: {e}")),
        },
    };
    shutdown.cancel();
    // Step down at once so a standby need not wait for the lease to lapse.
    let _ = floe_meta::election::resign(&*meta, keys::controller_leader(), value).await;
    let _ = meta.revoke_lease(lease).await;
    let _ = http_task.await;
    if let Some(t) = admin_task {
        let _ = t.await;
    }
    tracing::info!("stopped");
    outcome
}

async fn controller_keep_alive(
    meta: Arc<dyn MetadataStore>,
    lease: floe_meta::LeaseId,
    ttl: Duration,
    shutdown: CancellationToken,
    lapsed: CancellationToken,
) {
    let expired =
        floe_meta::election::keep_lease_alive(&*meta, lease, ttl, shutdown.cancelled(), |_, _| {})
            .await;
    if expired {
        tracing::error!("this controller's lease expired");
        lapsed.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::seed_target;

    #[test]
    fn a_seeded_target_takes_zone_and_weight_from_the_query_and_keeps_the_rest() {
        let t = seed_target(2, "s3://b/floe?region=eu-west-1&zone=eu-west-1a&weight=3").unwrap();
        assert_eq!(t.id, "t2");
        assert_eq!(t.url, "s3://b/floe?region=eu-west-1");
        assert_eq!(t.zone.as_deref(), Some("eu-west-1a"));
        assert_eq!(t.weight, 3);
        let t = seed_target(0, "file:///data/t0?zone=a").unwrap();
        assert_eq!(
            (t.url.as_str(), t.zone.as_deref(), t.weight),
            ("file:///data/t0", Some("a"), 1)
        );
        let t = seed_target(1, "memory://").unwrap();
        assert_eq!((t.url.as_str(), t.zone, t.weight), ("memory://", None, 1));
        let e = seed_target(0, "s3://b?weight=0").unwrap_err().to_string();
        assert!(e.contains("weight must be a positive integer"), "{e}");
        assert!(seed_target(0, "s3://b?zone=").is_err());
    }
}
