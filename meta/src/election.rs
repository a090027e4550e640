//! Leader election on any `MetadataStore`: the leader is whoever created the
//! election key, bound to its lease; the others wait for that key to go.

use bytes::Bytes;
use futures::StreamExt;

use crate::store::*;

/// Wait until this candidate leads, i.e. its key `key` holding `value` is
/// bound to `lease`. Returns the revision at which it took the lead. Losing
/// the lease loses the lead; the leader should make its writes conditional
/// on [`Condition::ValueEquals`]`(key, value)` so a deposed leader's writes
/// fail.
pub async fn campaign(
    store: &dyn MetadataStore,
    key: Bytes,
    value: Bytes,
    lease: LeaseId,
) -> Result<Revision, MetaError> {
    loop {
        let txn = Txn::new()
            .when(Condition::Missing(key.clone()))
            .then(Op::put_with_lease(key.clone(), value.clone(), lease));
        if let TxnOutcome::Committed { revision } = store.txn(txn).await? {
            return Ok(revision);
        }
        let Some(current) = store.get(&key).await? else {
            continue;
        };
        if current.lease == Some(lease) && current.value == value {
            return Ok(current.create_revision);
        }
        // Someone else leads: wait for its key to be deleted (revoked,
        // expired or resigned), then try again.
        let mut watch = store
            .watch_prefix(&key, Some(current.mod_revision + 1))
            .await?;
        while let Some(ev) = watch.next().await {
            if let WatchEventKind::Delete(k) = ev?.kind {
                if k == key {
                    break;
                }
            }
        }
    }
}

/// The current leader's key, if anyone leads.
pub async fn leader(store: &dyn MetadataStore, key: &[u8]) -> Result<Option<KeyValue>, MetaError> {
    store.get(key).await
}

/// Step down: delete the key if it is still ours.
pub async fn resign(store: &dyn MetadataStore, key: Bytes, value: Bytes) -> Result<(), MetaError> {
    store
        .txn(
            Txn::new()
                .when(Condition::ValueEquals(key.clone(), value))
                .then(Op::delete(key)),
        )
        .await
        .map(|_| ())
}

/// Keep `lease` alive every `ttl / 4` until `stop` resolves. `renewed(sent,
/// ttl)` is told of each success (with the instant the request was sent);
/// returns `true` if the lease was found expired (its keys are gone), `false`
/// when stopped.
pub async fn keep_lease_alive(
    store: &dyn MetadataStore,
    lease: LeaseId,
    ttl: std::time::Duration,
    stop: impl std::future::Future<Output = ()>,
    mut renewed: impl FnMut(tokio::time::Instant, std::time::Duration),
) -> bool {
    let mut tick = tokio::time::interval(ttl / 4);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return false,
            _ = tick.tick() => {}
        }
        let sent = tokio::time::Instant::now();
        match store.keep_alive(lease).await {
            Ok(granted) => renewed(sent, granted),
            Err(MetaError::LeaseNotFound(_)) => return true,
            Err(e) => tracing::warn!(lease, error = %e, "lease keep-alive failed; retrying"),
        }
    }
}
