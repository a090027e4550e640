//! The admin API's storage target calls: list (health probed now, replicas
//! held per the segment records), add, drain, undrain and remove, each a
//! compare-and-swap of the pool record `/floe/storage` that every broker,
//! proxy and controller follows.

use std::collections::HashMap;
use std::time::Duration;

use floe_meta::schema::{
    CheckpointRecord, ChunkPageRecord, ChunkRecord, SegmentRecord, StoragePoolRecord,
    StorageTargetRecord,
};
use floe_meta::{keys, Condition, MetadataStore, Op, Txn};
use prost::Message;
use tonic::Status;

use super::unavailable;
use floe_rpc::admin as pb;

/// The pool record and its revision.
async fn read(meta: &dyn MetadataStore) -> Result<(StoragePoolRecord, i64), Status> {
    let kv = meta
        .get(&keys::storage_pool())
        .await
        .map_err(unavailable)?
        .ok_or_else(|| Status::failed_precondition("the cluster has no storage pool yet"))?;
    let r = StoragePoolRecord::decode(kv.value)
        .map_err(|e| Status::internal(format!("storage pool record: {e}")))?;
    Ok((r, kv.mod_revision))
}

async fn write(
    meta: &dyn MetadataStore,
    record: &StoragePoolRecord,
    rev: i64,
) -> Result<(), Status> {
    let txn = Txn::new()
        .when(Condition::ModRevision(keys::storage_pool(), rev))
        .then(Op::put(keys::storage_pool(), record.encode_to_vec()));
    if meta.txn(txn).await.map_err(unavailable)?.committed() {
        Ok(())
    } else {
        Err(Status::aborted(
            "the storage pool changed concurrently; retry",
        ))
    }
}

/// Chunks of unsealed segments that partitions' checkpoints name in a
/// shared WAL object one of whose targets is `id` (in the checkpoint's
/// own list or in the chunk pages it names).
async fn wal_chunks_on(meta: &dyn MetadataStore, id: &str) -> Result<usize, Status> {
    let (kvs, _) = meta
        .range(&keys::partitions_prefix())
        .await
        .map_err(unavailable)?;
    let on_target = |chunks: &[ChunkRecord]| {
        chunks
            .iter()
            .filter_map(|ch| ch.wal.as_ref())
            .filter(|w| w.replica_set.iter().any(|t| t == id))
            .count()
    };
    let mut n = 0;
    let mut pages = std::collections::HashSet::new();
    for kv in &kvs {
        let Some(p) = keys::parse_checkpoint(&kv.key) else {
            continue;
        };
        if let Ok(c) = CheckpointRecord::decode(kv.value.clone()) {
            for o in &c.open_segments {
                n += on_target(&o.chunks);
                pages.extend(
                    o.pages
                        .iter()
                        .map(|pg| keys::chunk_page(p, o.base_offset, pg.first_offset)),
                );
            }
        }
    }
    for kv in kvs.iter().filter(|kv| pages.contains(&kv.key)) {
        if let Ok(page) = ChunkPageRecord::decode(kv.value.clone()) {
            n += on_target(&page.chunks);
        }
    }
    Ok(n)
}

/// Per target: segment replicas held and bytes of the sealed ones; and the
/// segments with a replica on a target in `leaving`.
async fn usage(
    meta: &dyn MetadataStore,
    leaving: &[String],
) -> Result<(HashMap<String, (u32, u64)>, u32), Status> {
    let (kvs, _) = meta
        .range(&keys::partitions_prefix())
        .await
        .map_err(unavailable)?;
    let mut held: HashMap<String, (u32, u64)> = HashMap::new();
    let mut to_repair = 0;
    let mut count = |set: &[String], bytes: u64| {
        for t in set {
            let e = held.entry(t.clone()).or_default();
            e.0 += 1;
            e.1 += bytes;
        }
        if set.iter().any(|t| leaving.contains(t)) {
            to_repair += 1;
        }
    };
    for kv in &kvs {
        let key = std::str::from_utf8(&kv.key).unwrap_or("");
        if key.contains("/segments/") {
            if let Ok(s) = SegmentRecord::decode(kv.value.clone()) {
                count(&s.replica_set, s.object_bytes);
            }
        } else if key.ends_with("/checkpoint") {
            if let Ok(c) = CheckpointRecord::decode(kv.value.clone()) {
                for o in &c.open_segments {
                    count(&o.replica_set, 0);
                }
            }
        }
    }
    Ok((held, to_repair))
}

/// "up", "lost: why" (its identity marker is gone or another), or why a
/// metadata read of the probe key failed now.
async fn probe(t: &StorageTargetRecord) -> String {
    let target = match floe_storage::StorageTarget::from_record(t) {
        Ok(t) => t,
        Err(e) => return format!("cannot open: {e:#}"),
    };
    if target.expected_marker().is_empty() {
        return match target.probe(Duration::from_secs(2)).await {
            Ok(()) => "up".into(),
            Err(e) => e,
        };
    }
    // A marked target: the marker read is the probe.
    match tokio::time::timeout(Duration::from_secs(2), target.check_marker()).await {
        Ok(floe_storage::MarkerCheck::Ours) => "up".into(),
        Ok(floe_storage::MarkerCheck::Lost(why)) => format!("lost: {why}"),
        Ok(floe_storage::MarkerCheck::Unknown(e)) => format!("unreachable: {e}"),
        Err(_) => "no answer within 2s".into(),
    }
}

/// The cluster's id (markers name it).
async fn cluster_id(meta: &dyn MetadataStore) -> Result<String, Status> {
    let kv = meta
        .get(&keys::cluster())
        .await
        .map_err(unavailable)?
        .ok_or_else(|| Status::failed_precondition("the cluster has no id yet"))?;
    Ok(floe_meta::schema::ClusterRecord::decode(kv.value)
        .map_err(|e| Status::internal(format!("cluster record: {e}")))?
        .cluster_id)
}

/// Write `t`'s identity marker (a new incarnation after the last one) and
/// note it in `t`: before the record names the target (add) or names it
/// as trusted again (undrain of a lost target).
async fn mark(
    meta: &dyn MetadataStore,
    t: &mut StorageTargetRecord,
    replace: bool,
) -> Result<(), Status> {
    let cluster = cluster_id(meta).await?;
    let marker = floe_storage::marker_for(
        &cluster,
        &t.id,
        floe_storage::marker_incarnation(&t.marker) + 1,
    );
    let target = floe_storage::StorageTarget::from_record(t)
        .map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
    target.write_marker(&marker, replace).await.map_err(|e| {
        Status::failed_precondition(format!("marking storage target {}: {e:#}", t.id))
    })?;
    t.marker = marker;
    Ok(())
}

fn status(
    t: &StorageTargetRecord,
    health: String,
    held: Option<&(u32, u64)>,
) -> pb::StorageTargetStatus {
    let (segments, bytes) = held.copied().unwrap_or_default();
    pb::StorageTargetStatus {
        id: t.id.clone(),
        url: t.url.clone(),
        zone: t.zone.clone().unwrap_or_default(),
        weight: t.weight,
        draining: t.draining,
        health,
        segments,
        bytes,
    }
}

pub async fn list(meta: &dyn MetadataStore) -> Result<pb::StorageTargetList, Status> {
    let (pool, _) = read(meta).await?;
    let health = futures::future::join_all(pool.targets.iter().map(probe)).await;
    let leaving: Vec<String> = pool
        .targets
        .iter()
        .zip(&health)
        .filter(|(t, h)| t.draining || h.as_str() != "up")
        .map(|(t, _)| t.id.clone())
        .collect();
    let (held, to_repair) = usage(meta, &leaving).await?;
    Ok(pb::StorageTargetList {
        targets: pool
            .targets
            .iter()
            .zip(health)
            .map(|(t, h)| status(t, h, held.get(&t.id)))
            .collect(),
        replicas: pool.replicas,
        write_quorum: pool.write_quorum,
        segments_to_repair: to_repair,
    })
}

async fn one(meta: &dyn MetadataStore, id: &str) -> Result<pb::StorageTargetStatus, Status> {
    let list = list(meta).await?;
    list.targets
        .into_iter()
        .find(|t| t.id == id)
        .ok_or_else(|| Status::not_found(format!("no storage target {id:?}")))
}

pub async fn add(
    meta: &dyn MetadataStore,
    r: pb::AddStorageTargetRequest,
) -> Result<pb::StorageTargetStatus, Status> {
    let valid_id = !r.id.is_empty()
        && r.id.len() <= 64
        && r.id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid_id {
        return Err(Status::invalid_argument(format!(
            "target id {:?}: 1-64 letters, digits, '-' or '_'",
            r.id
        )));
    }
    let (mut pool, rev) = read(meta).await?;
    if pool.targets.iter().any(|t| t.id == r.id) {
        return Err(Status::already_exists(format!(
            "storage target {:?} exists",
            r.id
        )));
    }
    if let Some(t) = pool.targets.iter().find(|t| t.url == r.url) {
        return Err(Status::already_exists(format!(
            "{} is already target {:?}",
            r.url, t.id
        )));
    }
    let mut record = StorageTargetRecord {
        id: r.id.clone(),
        url: r.url.clone(),
        zone: (!r.zone.is_empty()).then_some(r.zone),
        weight: r.weight.max(1),
        draining: false,
        marker: String::new(),
    };
    let health = probe(&record).await;
    if health != "up" {
        return Err(Status::failed_precondition(format!(
            "storage target {} ({}) does not answer from the controller: {health}",
            record.id, record.url
        )));
    }
    if floe_storage::markable(&record.url) {
        // An earlier incarnation of this target (removed, so it held
        // nothing anyone counts on) is marked anew; anything else's marker
        // is refused.
        mark(meta, &mut record, true).await?;
    }
    pool.targets.push(record);
    write(meta, &pool, rev).await?;
    tracing::info!(target_id = %r.id, url = %r.url, "storage target added");
    one(meta, &r.id).await
}

pub async fn set_draining(
    meta: &dyn MetadataStore,
    id: &str,
    draining: bool,
) -> Result<pb::StorageTargetStatus, Status> {
    let (mut pool, rev) = read(meta).await?;
    if !pool.targets.iter().any(|t| t.id == id) {
        return Err(Status::not_found(format!("no storage target {id:?}")));
    }
    if draining {
        let staying = pool
            .targets
            .iter()
            .filter(|t| !t.draining && t.id != id)
            .count();
        if staying < pool.replicas as usize {
            return Err(Status::failed_precondition(format!(
                "draining {id} would leave {staying} targets for {} replicas; add a target first",
                pool.replicas
            )));
        }
    }
    if !draining {
        // A target that lost its contents is trusted again only once the
        // drain moved every replica it held elsewhere: then it holds
        // nothing anyone counts on, and it gets a new marker.
        let t = pool.targets.iter_mut().find(|t| t.id == id).unwrap();
        let health = probe(t).await;
        if let Some(why) = health.strip_prefix("lost: ") {
            let (held, _) = usage(meta, &[]).await?;
            if let Some((n, _)) = held.get(id).filter(|(n, _)| *n > 0) {
                return Err(Status::failed_precondition(format!(
                    "storage target {id} lost its contents ({why}); it still appears in {n} segment replica sets: drain it (floectl storage drain {id} --wait) and undrain it once the drain is done, to mark it anew"
                )));
            }
            mark(meta, t, true).await?;
            tracing::warn!(target_id = %id, marker = %t.marker, "a storage target that lost its contents was marked anew after its drain");
        }
    }
    for t in pool.targets.iter_mut().filter(|t| t.id == id) {
        t.draining = draining;
    }
    write(meta, &pool, rev).await?;
    tracing::info!(target_id = %id, draining, "storage target drain state changed");
    one(meta, id).await
}

pub async fn remove(meta: &dyn MetadataStore, id: &str) -> Result<pb::StorageTargetStatus, Status> {
    let (mut pool, rev) = read(meta).await?;
    let Some(t) = pool.targets.iter().find(|t| t.id == id).cloned() else {
        return Err(Status::not_found(format!("no storage target {id:?}")));
    };
    if !t.draining {
        return Err(Status::failed_precondition(format!(
            "storage target {id} is not drained; drain it first (floectl storage drain {id} --wait)"
        )));
    }
    let (held, _) = usage(meta, &[]).await?;
    if let Some((n, _)) = held.get(id).filter(|(n, _)| *n > 0) {
        return Err(Status::failed_precondition(format!(
            "storage target {id} still holds {n} segment replicas; wait for the drain to finish"
        )));
    }
    let wal = wal_chunks_on(meta, id).await?;
    if wal > 0 {
        return Err(Status::failed_precondition(format!(
            "storage target {id} still holds shared WAL objects that {wal} chunks of unsealed segments name; wait for their segments to be sealed (at most wal_max_age_ms) and try again"
        )));
    }
    pool.targets.retain(|t| t.id != id);
    write(meta, &pool, rev).await?;
    tracing::info!(target_id = %id, "storage target removed");
    Ok(status(&t, "removed".into(), None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use floe_common::{PartitionId, Uuid};
    use floe_meta::schema::{ChunkRecord, OpenSegmentRecord, WalRefRecord};

    /// A drained target that still holds a WAL object a checkpoint names
    /// is not removed (the partition's recovery would find the object's
    /// target unknown); once the segment is sealed (the checkpoint names
    /// no chunk there), it is.
    #[tokio::test]
    async fn a_target_holding_named_wal_objects_is_not_removed() {
        let (_dir, meta) = crate::operations::tests::store().await;
        let target = |id: &str, draining: bool| StorageTargetRecord {
            id: id.into(),
            url: "memory://".into(),
            draining,
            ..Default::default()
        };
        let pool = StoragePoolRecord {
            targets: vec![target("t0", false), target("t1", true)],
            replicas: 1,
            write_quorum: 1,
            ..Default::default()
        };
        meta.txn(Txn::new().then(Op::put(keys::storage_pool(), pool.encode_to_vec())))
            .await
            .unwrap();
        let p = PartitionId::new(Uuid::from_u128(3), 0);
        let checkpoint = |chunks: Vec<ChunkRecord>| CheckpointRecord {
            open_segments: vec![OpenSegmentRecord {
                replica_set: vec!["t0".into()],
                wal: true,
                chunks,
                ..Default::default()
            }],
            ..Default::default()
        };
        let on_t1 = ChunkRecord {
            wal: Some(WalRefRecord {
                broker_id: 1,
                replica_set: vec!["t0".into(), "t1".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        meta.txn(Txn::new().then(Op::put(
            keys::checkpoint(p),
            checkpoint(vec![on_t1]).encode_to_vec(),
        )))
        .await
        .unwrap();
        let e = remove(&meta, "t1").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(
            e.message().contains("shared WAL objects that 1 chunks"),
            "{}",
            e.message()
        );

        meta.txn(Txn::new().then(Op::put(
            keys::checkpoint(p),
            checkpoint(vec![]).encode_to_vec(),
        )))
        .await
        .unwrap();
        remove(&meta, "t1").await.unwrap();
        let (pool, _) = read(&meta).await.unwrap();
        assert_eq!(pool.targets.len(), 1);
    }
}
