//! The partitions this proxy follows: for each, a readable copy of the
//! log's state (sealed segments, committed chunks, high watermark) kept by
//! the owning broker's tail push, and followed again on the next owner after
//! a move. Fetches read through it from the cache and from storage, never
//! from a broker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use floe_common::PartitionId;
use floe_kafka::tls::InternalTls;
use floe_rpc::tail::{
    append_chunks, append_txns, pb, snapshot_state, TailClient, MAX_MESSAGE_BYTES,
};
use floe_storage::log::{LogState, PartitionLog};
use floe_storage::{BlockCache, StoragePool};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::metrics::ProxyMetrics;
use crate::view::View;

/// A partition stops being followed after this long without a fetch.
const IDLE: Duration = Duration::from_secs(600);

pub struct Follower {
    pub id: PartitionId,
    pub log: Arc<PartitionLog>,
    /// True once a snapshot arrived (the log's state is meaningful).
    ready: watch::Sender<bool>,
    /// True while a push stream from the current owner is open.
    live: AtomicBool,
    last_used: AtomicI64,
}

impl Follower {
    /// A follower of `log`'s partition; `ready` and `live` as a push
    /// stream would have set them (tests of what reads it).
    pub fn new(log: Arc<PartitionLog>, ready: bool, live: bool) -> Self {
        Self {
            id: log.id,
            log,
            ready: watch::channel(ready).0,
            live: AtomicBool::new(live),
            last_used: AtomicI64::new(0),
        }
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Wait until the first snapshot arrived or `deadline`.
    pub async fn wait_ready(&self, deadline: tokio::time::Instant) -> bool {
        let mut rx = self.ready.subscribe();
        tokio::time::timeout_at(deadline, rx.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

pub struct Tails {
    view: Arc<View>,
    pool: Arc<StoragePool>,
    /// The cluster's identity: push streams then run over mutual TLS.
    tls: Option<Arc<InternalTls>>,
    dialer: Option<crate::upstream::Dialer>,
    pub cache: BlockCache,
    metrics: Arc<ProxyMetrics>,
    followers: Mutex<HashMap<PartitionId, Arc<Follower>>>,
    channels: Mutex<HashMap<String, Channel>>,
    started: Instant,
    shutdown: CancellationToken,
}

impl Tails {
    pub fn new(
        view: Arc<View>,
        pool: Arc<StoragePool>,
        tls: Option<Arc<InternalTls>>,
        dialer: Option<crate::upstream::Dialer>,
        cache: BlockCache,
        metrics: Arc<ProxyMetrics>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            view,
            pool,
            tls,
            dialer,
            cache,
            metrics,
            followers: Default::default(),
            channels: Default::default(),
            started: Instant::now(),
            shutdown,
        })
    }

    fn now_ms(&self) -> i64 {
        self.started.elapsed().as_millis() as i64
    }

    /// The follower of `p`, started on first use.
    pub fn get(self: &Arc<Self>, p: PartitionId) -> Arc<Follower> {
        let mut f = self.followers.lock().unwrap();
        if let Some(x) = f.get(&p) {
            x.last_used.store(self.now_ms(), Ordering::Relaxed);
            return x.clone();
        }
        let follower = Arc::new(Follower {
            id: p,
            log: PartitionLog::new(p, LogState::default(), self.cache.clone()),
            ready: watch::channel(false).0,
            live: AtomicBool::new(false),
            last_used: AtomicI64::new(self.now_ms()),
        });
        f.insert(p, follower.clone());
        self.metrics.followed.set(f.len() as i64);
        tokio::spawn(self.clone().follow(follower.clone()));
        follower
    }

    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut c = self.channels.lock().unwrap();
        if let Some(ch) = c.get(addr) {
            return Ok(ch.clone());
        }
        let endpoint = match &self.tls {
            None => Endpoint::from_shared(format!("http://{addr}")).map_err(|e| e.to_string())?,
            Some(tls) => {
                let pem = tls.pem().map_err(|e| e.to_string())?;
                let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                Endpoint::from_shared(format!("https://{addr}"))
                    .map_err(|e| e.to_string())?
                    .tls_config(
                        ClientTlsConfig::new()
                            .ca_certificate(Certificate::from_pem(pem.ca))
                            .identity(Identity::from_pem(pem.cert, pem.key))
                            .domain_name(host),
                    )
                    .map_err(|e| e.to_string())?
            }
        };
        let endpoint = endpoint
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10));
        let ch = match &self.dialer {
            None => endpoint.connect_lazy(),
            Some(d) => {
                let (d, addr) = (d.clone(), addr.to_string());
                endpoint.connect_with_connector_lazy(tower::service_fn(
                    move |_: tonic::transport::Uri| {
                        let (d, addr) = (d.clone(), addr.clone());
                        async move { d.dial(addr).await.map(hyper_util::rt::TokioIo::new) }
                    },
                ))
            }
        };
        c.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    fn idle(&self, f: &Follower) -> bool {
        self.now_ms() - f.last_used.load(Ordering::Relaxed) > IDLE.as_millis() as i64
    }

    /// Follow `f` on whichever broker owns it, until it idles or shutdown.
    async fn follow(self: Arc<Self>, f: Arc<Follower>) {
        let mut changes = self.view.changes();
        let mut delay = Duration::from_millis(20);
        loop {
            if self.shutdown.is_cancelled() || self.idle(&f) {
                break;
            }
            changes.borrow_and_update();
            match self.view.owner(f.id) {
                Some((broker, epoch)) if !broker.tail.is_empty() => {
                    match self
                        .stream(&f, &broker.tail, (broker.broker_id, epoch))
                        .await
                    {
                        Ok(()) => delay = Duration::from_millis(20),
                        Err(e) => {
                            tracing::debug!(partition = %f.id, broker = broker.broker_id, error = %e, "tail push stream ended");
                        }
                    }
                    f.live.store(false, Ordering::Release);
                }
                _ => {}
            }
            // Wait for the next owner (or retry the same one shortly).
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = changes.changed() => {}
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_millis(100));
        }
        let mut all = self.followers.lock().unwrap();
        if all.get(&f.id).is_some_and(|x| Arc::ptr_eq(x, &f)) {
            all.remove(&f.id);
        }
        self.metrics.followed.set(all.len() as i64);
    }

    /// One push stream: a snapshot, then appends, until it ends, the
    /// partition gets another owner (or epoch), or nobody reads it.
    async fn stream(&self, f: &Follower, addr: &str, owner: (i32, i32)) -> Result<(), String> {
        let mut client =
            TailClient::new(self.channel(addr)?).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let mut stream = client
            .follow(pb::FollowRequest {
                topic_id: bytes::Bytes::copy_from_slice(f.id.topic_id.as_bytes()),
                partition: f.id.partition,
            })
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner();
        let mut changes = self.view.changes();
        let mut idle_check = tokio::time::interval(Duration::from_secs(30));
        loop {
            let msg = tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(()),
                m = stream.message() => m,
                _ = changes.changed() => {
                    // A failover: the old owner may be frozen, its stream
                    // silent rather than ended.
                    let now = self.view.owner(f.id).map(|(b, e)| (b.broker_id, e));
                    if now != Some(owner) {
                        return Ok(());
                    }
                    continue;
                }
                _ = idle_check.tick() => {
                    if self.idle(f) {
                        return Ok(());
                    }
                    continue;
                }
            };
            let update = match msg {
                Ok(Some(u)) => u,
                Ok(None) => return Ok(()),
                Err(s) => return Err(s.message().to_string()),
            };
            match update.kind {
                Some(pb::log_update::Kind::Snapshot(s)) => {
                    let state = snapshot_state(&s, &self.pool).map_err(|e| e.to_string())?;
                    f.log.replace(state);
                    f.live.store(true, Ordering::Release);
                    f.ready.send_replace(true);
                    self.metrics.snapshots.inc();
                }
                Some(pb::log_update::Kind::Append(a)) => {
                    let (log_start, hw) = (a.log_start_offset, a.high_watermark);
                    let (first_unstable, aborted) = append_txns(&a);
                    let chunks = append_chunks(a, &self.pool).map_err(|e| e.to_string())?;
                    self.metrics.pushed_chunks.inc_by(chunks.len() as u64);
                    f.log
                        .apply_append(chunks, log_start, hw, first_unstable, aborted);
                }
                None => {}
            }
            if self.idle(f) {
                return Ok(());
            }
        }
    }
}
