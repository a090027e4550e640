//! The conformance suite of the `MetadataStore` contract. Every
//! implementation runs it (the embedded store in its unit tests; etcd in the
//! e2e suite), so the twins cannot drift apart.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use crate::store::*;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Run every check against `store`, which must start empty under `/conf/`.
/// Panics (test failure) on the first violation.
pub async fn run(store: Arc<dyn MetadataStore>) {
    get_put_delete(&*store).await;
    range_by_prefix(&*store).await;
    large_range(&*store).await;
    compare_and_swap(&*store).await;
    leases(&*store).await;
    watches(&*store).await;
    election(&*store).await;
}

/// A prefix holding more than one gRPC message (4 MiB) of values reads
/// back whole, in key order, at one revision; keys just past the prefix
/// are not in it.
async fn large_range(s: &dyn MetadataStore) {
    let value = Bytes::from(vec![b'v'; 8 << 10]);
    let n = 1_100;
    for first in (0..n).step_by(100) {
        let mut txn = Txn::new();
        for i in first..(first + 100).min(n) {
            txn = txn.then(Op::put(format!("/conf/large/{i:05}"), value.clone()));
        }
        s.txn(txn).await.unwrap();
    }
    let last = s.put(b"/conf/largf", b("after")).await.unwrap();
    let (kvs, rev) = s.range(b"/conf/large/").await.unwrap();
    assert_eq!(kvs.len(), n, "every key of a range larger than a message");
    assert!(rev >= last, "the range is at a revision past the last put");
    for (i, kv) in kvs.iter().enumerate() {
        assert_eq!(kv.key, Bytes::from(format!("/conf/large/{i:05}")));
        assert_eq!(kv.value.len(), value.len());
    }
    s.txn(
        Txn::new()
            .then(Op::DeletePrefix(Bytes::from_static(b"/conf/large/")))
            .then(Op::delete(Bytes::from_static(b"/conf/largf"))),
    )
    .await
    .unwrap();
}

async fn get_put_delete(s: &dyn MetadataStore) {
    assert!(s.get(b"/conf/kv/a").await.unwrap().is_none());
    let r1 = s.put(b"/conf/kv/a", b("1")).await.unwrap();
    let kv = s
        .get(b"/conf/kv/a")
        .await
        .unwrap()
        .expect("put key is readable");
    assert_eq!(kv.value, b("1"));
    assert_eq!(kv.create_revision, r1);
    assert_eq!(kv.mod_revision, r1);
    assert_eq!(kv.version, 1);
    assert_eq!(kv.lease, None);
    let r2 = s.put(b"/conf/kv/a", b("2")).await.unwrap();
    assert!(r2 > r1, "revisions increase");
    let kv = s.get(b"/conf/kv/a").await.unwrap().unwrap();
    assert_eq!(
        (kv.value, kv.create_revision, kv.mod_revision, kv.version),
        (b("2"), r1, r2, 2)
    );
    s.delete(b"/conf/kv/a").await.unwrap();
    assert!(s.get(b"/conf/kv/a").await.unwrap().is_none());
}

async fn range_by_prefix(s: &dyn MetadataStore) {
    for k in ["/conf/r/b", "/conf/r/a", "/conf/r/c", "/conf/rx", "/conf/q"] {
        s.put(k.as_bytes(), b(k)).await.unwrap();
    }
    let (kvs, rev) = s.range(b"/conf/r/").await.unwrap();
    let keys: Vec<_> = kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(
        keys,
        vec![b("/conf/r/a"), b("/conf/r/b"), b("/conf/r/c")],
        "sorted, prefix only"
    );
    assert!(kvs.iter().all(|kv| kv.mod_revision <= rev));
    let outcome = s
        .txn(Txn::new().then(Op::DeletePrefix(b("/conf/r/"))))
        .await
        .unwrap();
    assert!(outcome.committed());
    assert!(s.range(b"/conf/r/").await.unwrap().0.is_empty());
    assert!(
        s.get(b"/conf/rx").await.unwrap().is_some(),
        "prefix delete is exact"
    );
}

async fn compare_and_swap(s: &dyn MetadataStore) {
    let k = b("/conf/cas/owner");
    let create = Txn::new()
        .when(Condition::Missing(k.clone()))
        .then(Op::put(k.clone(), b("broker-1")));
    let first = s.txn(create.clone()).await.unwrap();
    let TxnOutcome::Committed { revision } = first else {
        panic!("first create must commit")
    };
    assert_eq!(
        s.txn(create).await.unwrap(),
        TxnOutcome::Mismatch,
        "second create loses"
    );
    assert_eq!(s.get(&k).await.unwrap().unwrap().value, b("broker-1"));

    // A stale revision cannot overwrite; the current one can.
    let stale = Txn::new()
        .when(Condition::ModRevision(k.clone(), revision - 1))
        .then(Op::put(k.clone(), b("stale")));
    assert_eq!(s.txn(stale).await.unwrap(), TxnOutcome::Mismatch);
    let fresh = Txn::new()
        .when(Condition::ModRevision(k.clone(), revision))
        .when(Condition::ValueEquals(k.clone(), b("broker-1")))
        .then(Op::put(k.clone(), b("broker-2")))
        .then(Op::put(b("/conf/cas/other"), b("side")));
    assert!(s.txn(fresh).await.unwrap().committed());
    // Both operations landed at one revision.
    let a = s.get(&k).await.unwrap().unwrap();
    let o = s.get(b"/conf/cas/other").await.unwrap().unwrap();
    assert_eq!(a.mod_revision, o.mod_revision);
    // A failed transaction applies nothing.
    let failing = Txn::new()
        .when(Condition::Exists(b("/conf/cas/nope")))
        .then(Op::put(b("/conf/cas/other"), b("changed")));
    assert_eq!(s.txn(failing).await.unwrap(), TxnOutcome::Mismatch);
    assert_eq!(
        s.get(b"/conf/cas/other").await.unwrap().unwrap().value,
        b("side")
    );
}

async fn leases(s: &dyn MetadataStore) {
    // Whole seconds: etcd's granularity (and its minimum TTL is about 2 s).
    let lease = s.grant_lease(Duration::from_secs(2)).await.unwrap();
    let put = Txn::new().then(Op::put_with_lease(b("/conf/lease/a"), b("x"), lease));
    assert!(s.txn(put).await.unwrap().committed());
    assert_eq!(
        s.get(b"/conf/lease/a").await.unwrap().unwrap().lease,
        Some(lease)
    );
    // Keep-alives hold the key past the TTL.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let ttl = s.keep_alive(lease).await.unwrap();
        assert!(ttl >= Duration::from_secs(1), "granted TTL {ttl:?}");
    }
    assert!(
        s.get(b"/conf/lease/a").await.unwrap().is_some(),
        "kept alive"
    );
    // Without them the lease lapses and its keys go.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while s.get(b"/conf/lease/a").await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expired lease deletes its keys"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = s.keep_alive(lease).await;
    assert!(matches!(r, Err(MetaError::LeaseNotFound(_))), "{r:?}");
    let put = Txn::new().then(Op::put_with_lease(b("/conf/lease/b"), b("x"), lease));
    assert!(
        matches!(s.txn(put).await, Err(MetaError::LeaseNotFound(_))),
        "no put on a dead lease"
    );

    // Revocation deletes at once.
    let lease = s.grant_lease(Duration::from_secs(30)).await.unwrap();
    let put = Txn::new().then(Op::put_with_lease(b("/conf/lease/c"), b("x"), lease));
    assert!(s.txn(put).await.unwrap().committed());
    s.revoke_lease(lease).await.unwrap();
    assert!(s.get(b"/conf/lease/c").await.unwrap().is_none());
}

async fn watches(s: &dyn MetadataStore) {
    let (_, start) = s.range(b"/conf/w/").await.unwrap();
    let mut live = s.watch_prefix(b"/conf/w/", Some(start + 1)).await.unwrap();
    let r1 = s.put(b"/conf/w/1", b("a")).await.unwrap();
    s.put(b"/conf/other", b("ignored")).await.unwrap();
    let r2 = s.put(b"/conf/w/2", b("b")).await.unwrap();
    let r3 = s.delete(b"/conf/w/1").await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let ev = tokio::time::timeout(Duration::from_secs(5), live.next())
            .await
            .expect("watch event arrives")
            .expect("stream open")
            .expect("no error");
        seen.push(ev);
    }
    assert_eq!(
        seen.iter().map(|e| e.revision).collect::<Vec<_>>(),
        vec![r1, r2, r3]
    );
    assert!(matches!(&seen[0].kind, WatchEventKind::Put(kv) if kv.value == b("a")));
    assert!(matches!(&seen[2].kind, WatchEventKind::Delete(k) if k == &b("/conf/w/1")));

    // Resuming from a past revision replays exactly what followed it.
    let mut resumed = s.watch_prefix(b"/conf/w/", Some(r2)).await.unwrap();
    let ev = resumed.next().await.unwrap().unwrap();
    assert_eq!(ev.revision, r2);
    let ev = resumed.next().await.unwrap().unwrap();
    assert_eq!(ev.revision, r3);
    let r4 = s.put(b"/conf/w/3", b("c")).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), resumed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        ev.revision, r4,
        "replay continues into live events without a gap"
    );

    // Lease expiry shows up as a delete.
    let lease = s.grant_lease(Duration::from_secs(1)).await.unwrap();
    let mut w = s.watch_prefix(b"/conf/wl/", None).await.unwrap();
    let put = Txn::new().then(Op::put_with_lease(b("/conf/wl/k"), b("x"), lease));
    s.txn(put).await.unwrap();
    let ev = w.next().await.unwrap().unwrap();
    assert!(matches!(ev.kind, WatchEventKind::Put(_)));
    let ev = tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("lease expiry is seen")
        .unwrap()
        .unwrap();
    assert!(matches!(ev.kind, WatchEventKind::Delete(ref k) if k == &b("/conf/wl/k")));
}

async fn election(s: &dyn MetadataStore) {
    use crate::election::{campaign, leader};
    let key = b("/conf/election/leader");
    let a = s.grant_lease(Duration::from_secs(30)).await.unwrap();
    let b_lease = s.grant_lease(Duration::from_secs(30)).await.unwrap();
    assert!(leader(s, &key).await.unwrap().is_none());
    campaign(s, key.clone(), b("a"), a).await.unwrap();
    assert_eq!(leader(s, &key).await.unwrap().unwrap().value, b("a"));
    // Campaigning again with the same lease is a no-op, not a deadlock.
    campaign(s, key.clone(), b("a"), a).await.unwrap();
    // The second candidate waits while the first leads...
    let waiting = tokio::time::timeout(
        Duration::from_millis(500),
        campaign(s, key.clone(), b("b"), b_lease),
    )
    .await;
    assert!(waiting.is_err(), "a second leader while the first lives");
    // ...and leads once the first's lease is gone.
    s.revoke_lease(a).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        campaign(s, key.clone(), b("b"), b_lease),
    )
    .await
    .expect("the standby takes over")
    .unwrap();
    assert_eq!(leader(s, &key).await.unwrap().unwrap().value, b("b"));
    s.revoke_lease(b_lease).await.unwrap();
}
