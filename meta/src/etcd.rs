//! The etcd implementation of `MetadataStore` (through the `etcd-client`
//! crate): the metadata store of a Floe cluster.

use std::collections::VecDeque;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions,
    TxnOp, WatchOptions,
};
use futures::StreamExt;

use crate::store::*;

/// A client of an etcd cluster. Cheap to clone; every clone shares the
/// connection.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    endpoints: Vec<String>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

/// Each request's deadline: a write that outlives it is `Indeterminate`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach a secured etcd (`[etcd]` of the config file): TLS with
/// the etcd cluster's CA and optionally a client certificate, and/or an
/// etcd user (role-based access, `etcdctl auth enable`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdSecurity {
    /// CA certificate(s) (PEM) that signed etcd's server certificate; with
    /// it the endpoints are `https://`.
    pub ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for etcd's `--client-cert-auth`.
    pub cert: Option<std::path::PathBuf>,
    /// Its key (PEM).
    pub key: Option<std::path::PathBuf>,
    /// etcd user name (with `password_file`, or FLOE_ETCD_PASSWORD).
    pub user: Option<String>,
    /// File holding that user's password.
    pub password_file: Option<std::path::PathBuf>,
}

impl EtcdSecurity {
    /// The user and password, the password from `password_file` or, without
    /// one, the environment variable `FLOE_ETCD_PASSWORD`.
    fn credentials(&self) -> Result<Option<(String, String)>, MetaError> {
        let Some(user) = &self.user else {
            if self.password_file.is_some() {
                return Err(MetaError::Invalid(
                    "[etcd] password_file without user".into(),
                ));
            }
            return Ok(None);
        };
        let password = match &self.password_file {
            Some(f) => std::fs::read_to_string(f)
                .map_err(|e| {
                    MetaError::Invalid(format!("reading the etcd password {}: {e}", f.display()))
                })?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
            None => std::env::var("FLOE_ETCD_PASSWORD").map_err(|_| {
                MetaError::Invalid(format!(
                    "etcd user {user:?} without a password: set [etcd] password_file or FLOE_ETCD_PASSWORD"
                ))
            })?,
        };
        Ok(Some((user.clone(), password)))
    }

    fn tls(&self) -> Result<Option<etcd_client::TlsOptions>, MetaError> {
        let read = |p: &std::path::Path| {
            std::fs::read(p)
                .map_err(|e| MetaError::Invalid(format!("reading {}: {e}", p.display())))
        };
        let mut tls = match &self.ca {
            Some(ca) => etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read(ca)?)),
            None if self.cert.is_some() => etcd_client::TlsOptions::new(),
            None => return Ok(None),
        };
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => {
                tls = tls.identity(etcd_client::Identity::from_pem(read(c)?, read(k)?));
            }
            (None, None) => {}
            _ => return Err(MetaError::Invalid("[etcd] cert and key go together".into())),
        }
        Ok(Some(tls))
    }
}

impl EtcdStore {
    /// Connect to etcd at `endpoints` (`http://host:port`, or `host:port`).
    pub async fn connect(endpoints: &[String]) -> Result<Self, MetaError> {
        Self::connect_with(endpoints, &EtcdSecurity::default()).await
    }

    /// [`EtcdStore::connect`] to a secured etcd (`https://` endpoints with
    /// TLS).
    pub async fn connect_with(
        endpoints: &[String],
        security: &EtcdSecurity,
    ) -> Result<Self, MetaError> {
        if endpoints.is_empty() {
            return Err(MetaError::Invalid("no etcd endpoints given".into()));
        }
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_keep_alive_while_idle(true);
        if let Some(tls) = security.tls()? {
            opts = opts.with_tls(tls);
        }
        if let Some((user, password)) = security.credentials()? {
            // etcd's tokens lapse (--auth-token-ttl): take a new one when
            // a request finds it expired.
            opts = opts.with_user(user, password).with_auto_token_refresh(true);
        }
        let client = Client::connect(endpoints, Some(opts)).await.map_err(|e| {
            MetaError::Unavailable(format!("connecting to etcd {endpoints:?}: {e}"))
        })?;
        let store = Self {
            client,
            endpoints: endpoints.to_vec(),
        };
        // Fail at start-up, not at the first real request.
        if let Err(e) = store.range(b"/floe/\x00probe").await {
            return Err(MetaError::Unavailable(format!(
                "etcd at {} is not answering: {e}",
                endpoints.join(",")
            )));
        }
        Ok(store)
    }
}

/// Map a client error: `write` says whether the request may have been
/// applied although we saw an error.
/// Keys asked for at most per page of a range.
const RANGE_PAGE: usize = 512;

/// The end of `prefix`'s range: the prefix with its last byte below 0xff
/// raised by one (etcd's `with_prefix`); "\0" (every key) for none.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn map_err(e: etcd_client::Error, write: bool) -> MetaError {
    use etcd_client::Error as E;
    if e.to_string().contains("lease not found") {
        // The caller knows the id; this variant is refined there.
        return MetaError::LeaseNotFound(0);
    }
    match e {
        E::GRpcStatus(s) => {
            let msg = s.message().to_string();
            if msg.contains("compacted") {
                return MetaError::Compacted {
                    requested: 0,
                    oldest: 0,
                };
            }
            match s.code() {
                tonic::Code::InvalidArgument
                | tonic::Code::FailedPrecondition
                | tonic::Code::OutOfRange
                | tonic::Code::PermissionDenied
                | tonic::Code::Unauthenticated
                | tonic::Code::ResourceExhausted => MetaError::Invalid(format!("etcd: {msg}")),
                tonic::Code::DeadlineExceeded | tonic::Code::Cancelled | tonic::Code::Unknown
                    if write =>
                {
                    MetaError::Indeterminate(format!("etcd: {msg}"))
                }
                _ if write && s.code() != tonic::Code::Unavailable => {
                    MetaError::Indeterminate(format!("etcd: {msg}"))
                }
                _ => MetaError::Unavailable(format!("etcd: {msg}")),
            }
        }
        E::InvalidArgs(m) => MetaError::Invalid(m),
        other if write => MetaError::Indeterminate(other.to_string()),
        other => MetaError::Unavailable(other.to_string()),
    }
}

fn kv(k: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: Bytes::copy_from_slice(k.key()),
        value: Bytes::copy_from_slice(k.value()),
        create_revision: k.create_revision(),
        mod_revision: k.mod_revision(),
        version: k.version(),
        lease: (k.lease() != 0).then_some(k.lease()),
    }
}

fn compare(c: Condition) -> Compare {
    match c {
        Condition::Missing(k) => Compare::version(k.to_vec(), CompareOp::Equal, 0),
        Condition::Exists(k) => Compare::version(k.to_vec(), CompareOp::Greater, 0),
        Condition::ModRevision(k, r) => Compare::mod_revision(k.to_vec(), CompareOp::Equal, r),
        Condition::ValueEquals(k, v) => Compare::value(k.to_vec(), CompareOp::Equal, v.to_vec()),
    }
}

fn op(o: Op) -> TxnOp {
    match o {
        Op::Put { key, value, lease } => TxnOp::put(
            key.to_vec(),
            value.to_vec(),
            lease.map(|l| PutOptions::new().with_lease(l)),
        ),
        Op::Delete(k) => TxnOp::delete(k.to_vec(), None),
        Op::DeletePrefix(p) => TxnOp::delete(p.to_vec(), Some(DeleteOptions::new().with_prefix())),
    }
}

#[async_trait]
impl MetadataStore for EtcdStore {
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, MetaError> {
        let resp = self
            .client
            .kv_client()
            .get(key, None)
            .await
            .map_err(|e| map_err(e, false))?;
        Ok(resp.kvs().first().map(kv))
    }

    /// In pages at one revision (the first page's): a prefix of thousands
    /// of partitions' records is larger than a gRPC message may be (4 MiB
    /// by default). A page too large for one message is asked again at
    /// half the size.
    async fn range(&self, prefix: &[u8]) -> Result<(Vec<KeyValue>, Revision), MetaError> {
        let end = prefix_end(prefix);
        let mut from = prefix.to_vec();
        let mut out = Vec::new();
        let mut rev: Revision = 0;
        let mut page = RANGE_PAGE;
        loop {
            let mut opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(page as i64);
            if rev != 0 {
                opts = opts.with_revision(rev);
            }
            let resp = match self.client.kv_client().get(from.clone(), Some(opts)).await {
                Ok(r) => r,
                Err(e) if page > 1 && e.to_string().contains("message length too large") => {
                    page /= 2;
                    continue;
                }
                Err(e) => return Err(map_err(e, false)),
            };
            if rev == 0 {
                rev = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            out.extend(resp.kvs().iter().map(kv));
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok((out, rev)),
            }
        }
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, MetaError> {
        let leases: Vec<LeaseId> = txn
            .ops
            .iter()
            .filter_map(|o| match o {
                Op::Put { lease, .. } => *lease,
                _ => None,
            })
            .collect();
        let t = etcd_client::Txn::new()
            .when(txn.conditions.into_iter().map(compare).collect::<Vec<_>>())
            .and_then(txn.ops.into_iter().map(op).collect::<Vec<_>>());
        let resp = self
            .client
            .kv_client()
            .txn(t)
            .await
            .map_err(|e| match map_err(e, true) {
                MetaError::LeaseNotFound(_) => {
                    MetaError::LeaseNotFound(leases.first().copied().unwrap_or(0))
                }
                other => other,
            })?;
        if resp.succeeded() {
            Ok(TxnOutcome::Committed {
                revision: resp.header().map(|h| h.revision()).unwrap_or(0),
            })
        } else {
            Ok(TxnOutcome::Mismatch)
        }
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, MetaError> {
        // etcd counts in whole seconds and raises TTLs below its minimum.
        let secs = ttl.as_millis().div_ceil(1000).max(1) as i64;
        let resp = self
            .client
            .lease_client()
            .grant(secs, None)
            .await
            .map_err(|e| map_err(e, true))?;
        Ok(resp.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, MetaError> {
        let (mut keeper, mut stream) = self
            .client
            .lease_client()
            .keep_alive(lease)
            .await
            .map_err(|e| map_err(e, false))
            .map_err(|e| match e {
                MetaError::LeaseNotFound(_) => MetaError::LeaseNotFound(lease),
                other => other,
            })?;
        let not_found = |e: MetaError| match e {
            MetaError::LeaseNotFound(_) => MetaError::LeaseNotFound(lease),
            other => other,
        };
        keeper
            .keep_alive()
            .await
            .map_err(|e| not_found(map_err(e, false)))?;
        match tokio::time::timeout(REQUEST_TIMEOUT, stream.message()).await {
            Ok(Ok(Some(r))) if r.ttl() > 0 => Ok(Duration::from_secs(r.ttl() as u64)),
            Ok(Ok(Some(_))) => Err(MetaError::LeaseNotFound(lease)),
            Ok(Ok(None)) => Err(MetaError::Unavailable("keep-alive stream closed".into())),
            Ok(Err(e)) => Err(not_found(map_err(e, false))),
            Err(_) => Err(MetaError::Unavailable("keep-alive timed out".into())),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), MetaError> {
        match self.client.lease_client().revoke(lease).await {
            Ok(_) => Ok(()),
            Err(e) => match map_err(e, true) {
                MetaError::LeaseNotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn watch_prefix(
        &self,
        prefix: &[u8],
        start_revision: Option<Revision>,
    ) -> Result<WatchStream, MetaError> {
        let mut opts = WatchOptions::new().with_prefix();
        if let Some(r) = start_revision {
            opts = opts.with_start_revision(r);
        }
        let mut stream = self
            .client
            .watch_client()
            .watch(prefix, Some(opts))
            .await
            .map_err(|e| map_err(e, false))?;
        // The first response confirms creation (or refuses a compacted start).
        match stream.message().await {
            Ok(Some(r)) if r.canceled() => {
                return Err(if r.compact_revision() > 0 {
                    MetaError::Compacted {
                        requested: start_revision.unwrap_or(0),
                        oldest: r.compact_revision(),
                    }
                } else {
                    MetaError::Unavailable(format!("watch refused: {}", r.cancel_reason()))
                });
            }
            Ok(Some(r)) if r.created() => {}
            Ok(Some(_)) => {
                return Err(MetaError::Unavailable(
                    "watch did not confirm creation".into(),
                ))
            }
            Ok(None) => return Err(MetaError::Unavailable("watch stream closed".into())),
            Err(e) => return Err(map_err(e, false)),
        }
        let state = (stream, VecDeque::<WatchEvent>::new(), false, start_revision);
        Ok(futures::stream::unfold(
            state,
            |(mut stream, mut queue, mut done, start)| async move {
                loop {
                    if let Some(ev) = queue.pop_front() {
                        return Some((Ok(ev), (stream, queue, done, start)));
                    }
                    if done {
                        return None;
                    }
                    match stream.message().await {
                        Ok(Some(r)) => {
                            if r.canceled() {
                                done = true;
                                let err = if r.compact_revision() > 0 {
                                    MetaError::Compacted {
                                        requested: start.unwrap_or(0),
                                        oldest: r.compact_revision(),
                                    }
                                } else {
                                    MetaError::Unavailable(format!(
                                        "watch cancelled: {}",
                                        r.cancel_reason()
                                    ))
                                };
                                return Some((Err(err), (stream, queue, done, start)));
                            }
                            for e in r.events() {
                                let Some(k) = e.kv() else { continue };
                                let revision = k.mod_revision();
                                let kind = match e.event_type() {
                                    EventType::Put => WatchEventKind::Put(kv(k)),
                                    EventType::Delete => {
                                        WatchEventKind::Delete(Bytes::copy_from_slice(k.key()))
                                    }
                                };
                                queue.push_back(WatchEvent { revision, kind });
                            }
                        }
                        Ok(None) => {
                            done = true;
                            return Some((
                                Err(MetaError::Unavailable("watch stream closed".into())),
                                (stream, queue, done, start),
                            ));
                        }
                        Err(e) => {
                            done = true;
                            return Some((Err(map_err(e, false)), (stream, queue, done, start)));
                        }
                    }
                }
            },
        )
        .boxed())
    }
}
