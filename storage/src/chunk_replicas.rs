//! One chunk key across the replicas of a segment: what each replica holds
//! there (data, a fence, nothing), reads that never take a fence, a missing
//! copy or a corrupt copy for the data another replica holds (and repair the
//! replicas that answered wrong), and the decision a recovering owner makes
//! at a key past the acknowledged offsets: in the log, end of the log, or
//! wait until enough replicas answer.
//!
//! The rules, for R replicas and write quorum W (see docs/storage.md):
//! - a chunk on any replica may have been acknowledged (a writer acks at W,
//!   and some of those W may be unreachable now), so recovery never fences a
//!   key where it sees data; it copies the data forward instead;
//! - a key is the end of the chain only once R−W+1 replicas hold a fence:
//!   then no writer can ever reach W there;
//! - data on W replicas is in the log; fences or corrupt copies beside it
//!   are overwritten with the data.

use bytes::Bytes;
use floe_common::Offset;
use futures::FutureExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::chunk::{self, ChunkHeader, ChunkKind};
use crate::error::StorageError;
use crate::replica::{worst, ReplicaSet};
use crate::target::StorageTarget;

/// What one replica holds at a chunk key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    Data(ChunkHeader),
    Fence,
    Absent,
    /// No answer, or a copy that does not decode.
    Unavailable,
}

/// What a replica holds at `key`, from its header alone (a ranged read).
pub async fn probe(target: &StorageTarget, key: &Path) -> Held {
    match target
        .store
        .get_range(key, 0..chunk::HEADER_LEN as u64)
        .await
    {
        Ok(raw) => match chunk::decode_header(key.as_ref(), &raw) {
            Ok((h, _)) if h.kind == ChunkKind::Data => Held::Data(h),
            Ok(_) => Held::Fence,
            Err(e) => {
                tracing::warn!(%key, target_id = %target.id, error = %e, "unreadable chunk header");
                Held::Unavailable
            }
        },
        // A lost target (emptied, replaced) says "not found" for what it
        // held: its absence counts only while its identity marker is there.
        Err(object_store::Error::NotFound { .. }) if target.absence_trusted().await => Held::Absent,
        Err(object_store::Error::NotFound { .. }) => {
            tracing::debug!(%key, target_id = %target.id, "not found on a target without its identity marker: no answer");
            Held::Unavailable
        }
        Err(e) => {
            // Counted as unreachable in the decision, whose outcome says so;
            // one line per key and target would flood the log during an
            // outage (the writer's failed puts already report the target).
            tracing::debug!(%key, target_id = %target.id, error = %e, "chunk probe failed");
            Held::Unavailable
        }
    }
}

/// Why one replica's copy was not taken.
#[derive(Debug)]
enum Miss {
    /// A fence or a corrupt copy: overwritten with the data once found.
    Wrong(StorageError),
    /// Not there, or no answer.
    Other(StorageError),
}

impl Miss {
    fn into_error(self) -> StorageError {
        match self {
            Miss::Wrong(e) | Miss::Other(e) => e,
        }
    }
}

fn check(key: &Path, base: Offset, h: &ChunkHeader) -> Result<(), Miss> {
    if h.kind != ChunkKind::Data {
        // A fence where the chain has data: another replica holds the data.
        return Err(Miss::Wrong(StorageError::NotFound(format!(
            "{key} (a fence on this replica)"
        ))));
    }
    if h.base_offset != base {
        return Err(Miss::Wrong(StorageError::corrupt(
            key.as_ref(),
            format!("chunk says it starts at {}, {base} expected", h.base_offset),
        )));
    }
    Ok(())
}

/// The data chunk at `key` (which the chain says starts at `base`): the
/// whole object, checked, from the first replica that holds it. A fence, a
/// missing object or a corrupt copy on one replica sends the read on to the
/// next; replicas that held a fence or a corrupt copy are then overwritten
/// with the data, in the background. NotFound only if no replica has data.
pub async fn read(
    replicas: &ReplicaSet,
    key: &Path,
    base: Offset,
) -> Result<(ChunkHeader, Bytes, Bytes), StorageError> {
    let (got, failed) = replicas
        .hedged(|t| {
            let key = key.clone();
            async move {
                let raw = async { t.store.get(&key).await?.bytes().await }
                    .await
                    .map_err(|e| Miss::Other(StorageError::from_object_store(e)))?;
                let (h, payload) = chunk::decode(key.as_ref(), &raw).map_err(Miss::Wrong)?;
                check(&key, base, &h)?;
                Ok::<_, Miss>((h, payload, raw))
            }
            .boxed()
        })
        .await;
    let Some(found) = got else {
        return Err(worst(key, failed.into_iter().map(|(_, m)| m.into_error())));
    };
    let wrong: Vec<StorageTarget> = failed
        .into_iter()
        .filter(|(_, m)| matches!(m, Miss::Wrong(_)))
        .map(|(t, _)| t)
        .collect();
    if !wrong.is_empty() {
        let (key, raw) = (key.clone(), found.2.clone());
        tokio::spawn(async move {
            for t in wrong {
                match overwrite(&t, &key, raw.clone()).await {
                    Ok(()) => {
                        tracing::info!(%key, target_id = %t.id, "read repair: replaced a fence or corrupt copy with the chunk's data")
                    }
                    Err(e) => {
                        tracing::warn!(%key, target_id = %t.id, error = %e, "read repair failed")
                    }
                }
            }
        });
    }
    Ok(found)
}

/// The header of the data chunk at `key` from a replica that holds data
/// (fences, missing and corrupt copies are skipped, as in [`read`]).
pub async fn read_header(
    replicas: &ReplicaSet,
    key: &Path,
    base: Offset,
) -> Result<ChunkHeader, StorageError> {
    let (got, failed) = replicas
        .hedged(|t| {
            let key = key.clone();
            async move {
                let raw = t
                    .store
                    .get_range(&key, 0..chunk::HEADER_LEN as u64)
                    .await
                    .map_err(|e| Miss::Other(StorageError::from_object_store(e)))?;
                let (h, _) = chunk::decode_header(key.as_ref(), &raw).map_err(Miss::Wrong)?;
                check(&key, base, &h)?;
                Ok::<_, Miss>(h)
            }
            .boxed()
        })
        .await;
    got.ok_or_else(|| worst(key, failed.into_iter().map(|(_, m)| m.into_error())))
}

/// Put `data` at `key` on one replica, replacing what is there (a fence, a
/// corrupt copy): only for keys already decided to hold this data.
pub async fn overwrite(t: &StorageTarget, key: &Path, data: Bytes) -> Result<(), StorageError> {
    let opts = PutOptions {
        mode: PutMode::Overwrite,
        ..Default::default()
    };
    t.store
        .put_opts(key, PutPayload::from_bytes(data), opts)
        .await
        .map(|_| ())
        .map_err(StorageError::from_object_store)
}

async fn create(t: &StorageTarget, key: &Path, data: Bytes) -> Result<(), object_store::Error> {
    let opts = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    t.store
        .put_opts(key, PutPayload::from_bytes(data), opts)
        .await
        .map(|_| ())
}

/// What recovery decided at one chunk key past the acknowledged offsets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settled {
    /// Data on W replicas (copied there if needed): part of the log.
    InLog(ChunkHeader),
    /// Fences on R−W+1 replicas: no writer can complete this key; the
    /// chain ends before it.
    End,
    /// Too few replicas answer to decide either way; try again later.
    Undecided(String),
}

/// Counts of what the replicas hold at one key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub data: usize,
    pub fence: usize,
    pub absent: usize,
    pub unavailable: usize,
}

impl Tally {
    pub fn of(states: &[Held]) -> Self {
        let mut t = Tally::default();
        for s in states {
            match s {
                Held::Data(_) => t.data += 1,
                Held::Fence => t.fence += 1,
                Held::Absent => t.absent += 1,
                Held::Unavailable => t.unavailable += 1,
            }
        }
        t
    }
}

/// The next step at a key, from what its replicas hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// W data copies: in the log (replace fences beside them).
    InLog,
    /// R−W+1 fences: the end.
    End,
    /// Some data, and enough empty replicas to reach W: copy it there.
    RollForward,
    /// No data seen, and enough empty replicas to end the chain: fence them.
    Fence,
    /// Neither can be decided nor made so with the replicas that answer.
    Wait,
}

/// The decision table (pure, so it is tested on every combination).
pub fn step(t: Tally, write_quorum: usize) -> Step {
    let r = t.data + t.fence + t.absent + t.unavailable;
    let fences_to_end = r + 1 - write_quorum;
    if t.data >= write_quorum {
        Step::InLog
    } else if t.fence >= fences_to_end {
        Step::End
    } else if t.data >= 1 && t.data + t.absent >= write_quorum {
        Step::RollForward
    } else if t.data == 0 && t.absent >= 1 && t.fence + t.absent >= fences_to_end {
        Step::Fence
    } else {
        Step::Wait
    }
}

/// Rounds of probing and acting at one key before giving up for now (a
/// concurrent old writer can change a replica between probe and action).
const SETTLE_ROUNDS: usize = 4;

/// Decide the key `key` (which would start at `base`) for a recovering
/// owner whose fence is `fence`: see [`step`]. Writes only what the decision
/// needs: data copied to empty replicas, fences on empty replicas when no
/// replica holds data, fences beside W data copies replaced by the data.
pub async fn settle(
    replicas: &ReplicaSet,
    key: &Path,
    base: Offset,
    fence: Bytes,
) -> Result<Settled, StorageError> {
    settle_with(replicas, key, base, fence, true)
        .await
        .map(|(s, _)| s)
}

/// [`settle`], except that data is never copied: a key decided to be in
/// the log comes back with the replicas that lack its data (empty or a
/// fence), for the caller to repair later. Deciding does not need the
/// copies: the decision a later recoverer would take at the key is the
/// same (data seen and enough replicas empty or holding it put it in the
/// log; a fence needs no data anywhere), and once the caller's checkpoint
/// covers the key it is acked for every later reader. A chunk acked by
/// its writer is on W replicas already, unreachable ones included; the
/// copies restore W reachable ones, which recovery need not wait for.
pub async fn settle_deferring_copies(
    replicas: &ReplicaSet,
    key: &Path,
    base: Offset,
    fence: Bytes,
) -> Result<(Settled, Vec<usize>), StorageError> {
    settle_with(replicas, key, base, fence, false).await
}

async fn settle_with(
    replicas: &ReplicaSet,
    key: &Path,
    base: Offset,
    fence: Bytes,
    copy: bool,
) -> Result<(Settled, Vec<usize>), StorageError> {
    let w = replicas.write_quorum();
    let mut last = Tally::default();
    for _ in 0..SETTLE_ROUNDS {
        let states: Vec<Held> =
            futures::future::join_all(replicas.targets().iter().map(|t| probe(t, key))).await;
        let tally = Tally::of(&states);
        last = tally;
        let first_data = states.iter().find_map(|s| match s {
            Held::Data(h) => Some(*h),
            _ => None,
        });
        if let Some(h) = first_data {
            if h.base_offset != base || h.next_offset <= base {
                return Err(StorageError::corrupt(
                    key.as_ref(),
                    format!(
                        "chunk says {}..{} where {base} starts",
                        h.base_offset, h.next_offset
                    ),
                ));
            }
        }
        let step = step(tally, w);
        if !copy && matches!(step, Step::InLog | Step::RollForward) {
            let h = first_data.expect("data seen");
            let lacking: Vec<usize> = states
                .iter()
                .enumerate()
                .filter(|(_, s)| matches!(s, Held::Fence | Held::Absent))
                .map(|(i, _)| i)
                .collect();
            if step == Step::RollForward {
                tracing::info!(%key, ?tally, "a chunk short of its write quorum is kept in the log (it may have been acknowledged); copies follow");
            }
            return Ok((Settled::InLog(h), lacking));
        }
        match step {
            Step::InLog => {
                let h = first_data.expect("data seen");
                if tally.fence > 0 || tally.absent > 0 {
                    // Divergent replicas: give them the data (best effort,
                    // the key is decided either way).
                    match read(replicas, key, base).await {
                        Ok((_, _, raw)) => {
                            for (t, s) in replicas.targets().iter().zip(&states) {
                                let r = match s {
                                    Held::Fence => overwrite(t, key, raw.clone()).await,
                                    Held::Absent => create(t, key, raw.clone())
                                        .await
                                        .map_err(StorageError::from_object_store),
                                    _ => continue,
                                };
                                if let Err(e) = r {
                                    tracing::warn!(%key, target_id = %t.id, error = %e, "repairing a chunk replica failed");
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(%key, error = %e, "reading a chunk to repair its replicas failed")
                        }
                    }
                }
                return Ok((Settled::InLog(h), Vec::new()));
            }
            Step::End => return Ok((Settled::End, Vec::new())),
            Step::RollForward => {
                let (_, _, raw) = read(replicas, key, base).await?;
                for (t, s) in replicas.targets().iter().zip(&states) {
                    if *s != Held::Absent {
                        continue;
                    }
                    if let Err(e) = create(t, key, raw.clone()).await {
                        if !matches!(e, object_store::Error::AlreadyExists { .. }) {
                            tracing::warn!(%key, target_id = %t.id, error = %e, "copying a chunk forward failed");
                        }
                    }
                }
                tracing::info!(%key, ?tally, "a chunk short of its write quorum was copied forward: it may have been acknowledged");
            }
            Step::Fence => {
                for (t, s) in replicas.targets().iter().zip(&states) {
                    if *s != Held::Absent {
                        continue;
                    }
                    if let Err(e) = create(t, key, fence.clone()).await {
                        if !matches!(e, object_store::Error::AlreadyExists { .. }) {
                            tracing::warn!(%key, target_id = %t.id, error = %e, "writing the fence failed");
                        }
                    }
                }
            }
            Step::Wait => break,
        }
    }
    Ok((
        Settled::Undecided(format!(
            "{key}: data on {}, fences on {}, empty on {}, {} unreachable; write quorum {w}",
            last.data, last.fence, last.absent, last.unavailable
        )),
        Vec::new(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faulty::FaultyStore;
    use std::sync::Arc;

    fn tally(data: usize, fence: usize, absent: usize, unavailable: usize) -> Tally {
        Tally {
            data,
            fence,
            absent,
            unavailable,
        }
    }

    /// Every combination for R=3, W=2 and R=5, W=3: data is never fenced,
    /// an end needs R−W+1 fences, and a decision is never taken that the
    /// replicas not answering could contradict.
    #[test]
    fn the_decision_table_never_shadows_data() {
        for (r, w) in [(3usize, 2usize), (5, 3), (3, 3), (2, 1)] {
            for data in 0..=r {
                for fence in 0..=r - data {
                    for absent in 0..=r - data - fence {
                        let unavailable = r - data - fence - absent;
                        let t = tally(data, fence, absent, unavailable);
                        let s = step(t, w);
                        match s {
                            Step::InLog => assert!(data >= w),
                            Step::End => {
                                assert!(fence > r - w, "{t:?}");
                                // No writer can reach W: even every
                                // non-fence replica holding data is < W.
                                assert!(r - fence < w);
                            }
                            Step::RollForward => assert!(data >= 1 && data + absent >= w),
                            Step::Fence => assert_eq!(data, 0, "{t:?}: fencing beside data"),
                            Step::Wait => {
                                // Nothing can be decided: unreachable
                                // replicas could hold data or fences.
                                assert!(data < w && fence <= r - w, "{t:?}");
                            }
                        }
                    }
                }
            }
        }
        // The sequence of issue 14: data on two of three, one of them
        // unreachable, the third empty: copy forward, never fence.
        assert_eq!(step(tally(1, 0, 1, 1), 2), Step::RollForward);
        // A stray fence beside one data copy, the other data copy unreachable.
        assert_eq!(step(tally(1, 1, 0, 1), 2), Step::Wait);
        assert_eq!(step(tally(2, 1, 0, 0), 2), Step::InLog);
        assert_eq!(step(tally(0, 0, 2, 1), 2), Step::Fence);
        assert_eq!(step(tally(0, 0, 1, 2), 2), Step::Wait);
        assert_eq!(step(tally(1, 2, 0, 0), 2), Step::End);
    }

    fn three() -> (Vec<Arc<FaultyStore>>, ReplicaSet) {
        let (stores, targets) = crate::faulty::test_targets(3);
        (stores, ReplicaSet::new(targets, 2))
    }

    fn data_chunk(base: Offset, n: i32) -> Bytes {
        let mut payload = floe_protocol::batch::synthetic_batch(n, 8, 1_000);
        floe_protocol::batch::assign(&mut payload, base, 1, None);
        chunk::encode_data(1, base, base + n as i64, 1_000, 1, &payload)
    }

    /// A fence on one replica and the data on the other two: every reader,
    /// whichever replica answers first, gets the data, and the fence is
    /// replaced by the data afterwards.
    #[tokio::test]
    async fn a_fence_beside_data_never_hides_it() {
        let (stores, set) = three();
        let key = Path::from("p/0/seg/00000000000000000010.chunk");
        let data = data_chunk(10, 3);
        for (i, t) in set.targets().iter().enumerate() {
            let body = if i == 1 {
                chunk::encode_fence(2, 10)
            } else {
                data.clone()
            };
            t.store
                .put(&key, PutPayload::from_bytes(body))
                .await
                .unwrap();
        }
        // Each replica in turn is the only fast one... and the fenced one
        // first of all: the read still returns the data.
        for down in [None, Some(0), Some(2)] {
            for (i, s) in stores.iter().enumerate() {
                s.set_down(Some(i) == down);
            }
            let (h, payload, _) = read(&set, &key, 10).await.unwrap();
            assert_eq!((h.base_offset, h.next_offset), (10, 13));
            assert_eq!(payload, data.slice(chunk::HEADER_LEN..));
            assert_eq!(read_header(&set, &key, 10).await.unwrap(), h);
        }
        for s in &stores {
            s.set_down(false);
        }
        // Read repair replaced the fence.
        let mut repaired = false;
        for _ in 0..100 {
            if probe(&set.targets()[1], &key).await
                == Held::Data(read_header(&set, &key, 10).await.unwrap())
            {
                repaired = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(repaired, "the fence beside the data was repaired");
        // Only fences and missing copies: not found, not an empty chunk.
        let other = Path::from("p/0/seg/00000000000000000013.chunk");
        set.targets()[0]
            .store
            .put(&other, PutPayload::from_bytes(chunk::encode_fence(2, 13)))
            .await
            .unwrap();
        assert!(matches!(
            read(&set, &other, 13).await,
            Err(StorageError::NotFound(_))
        ));
    }

    /// Issue 14's sequence at one key: data acked on t0 and t1, t2 empty;
    /// recovery while t1 is unreachable copies the data to t2 instead of
    /// fencing; with t1 back, every reader sees the data.
    #[tokio::test]
    async fn settling_copies_data_forward_rather_than_fence_it() {
        let (stores, set) = three();
        let key = Path::from("p/0/seg/00000000000000003758.chunk");
        let data = data_chunk(3758, 1);
        for t in &set.targets()[..2] {
            t.store
                .put(&key, PutPayload::from_bytes(data.clone()))
                .await
                .unwrap();
        }
        stores[1].set_down(true);
        let fence = chunk::encode_fence(3, 3758);
        let s = settle(&set, &key, 3758, fence.clone()).await.unwrap();
        assert!(
            matches!(s, Settled::InLog(h) if h.next_offset == 3759),
            "{s:?}"
        );
        assert_eq!(
            probe(&set.targets()[2], &key).await,
            Held::Data(read_header(&set, &key, 3758).await.unwrap())
        );
        stores[1].set_down(false);
        // Two down at once: nothing can be decided, nothing is written.
        let next = Path::from("p/0/seg/00000000000000003759.chunk");
        stores[0].set_down(true);
        stores[1].set_down(true);
        assert!(matches!(
            settle(&set, &next, 3759, chunk::encode_fence(3, 3759))
                .await
                .unwrap(),
            Settled::Undecided(_)
        ));
        stores[0].set_down(false);
        stores[1].set_down(false);
        for t in set.targets() {
            assert_eq!(probe(t, &next).await, Held::Absent);
        }
        // All up and empty: fenced, the end.
        assert_eq!(
            settle(&set, &next, 3759, chunk::encode_fence(3, 3759))
                .await
                .unwrap(),
            Settled::End
        );
        for t in set.targets() {
            assert_eq!(probe(t, &next).await, Held::Fence);
        }
    }

    /// Seed 4534's sequence at one key: data acked on t0 and t1, then t1
    /// is replaced by an empty target under the same name, and recovery
    /// runs while t0 does not answer. t1's "not found" must not count:
    /// with t2 alone empty, the key is undecided, never fenced; once t0
    /// answers, the data is in the log. Marked anew, t1 is trusted again.
    #[tokio::test]
    async fn a_target_that_lost_its_contents_cannot_end_the_chain() {
        let (stores, set) = three();
        for t in set.targets() {
            let marker = crate::marker_for("c1", &t.id, 1);
            t.write_marker(&marker, false).await.unwrap();
            *t.marker.write().unwrap() = marker;
        }
        let key = Path::from("p/0/seg/00000000000000000018.chunk");
        let data = data_chunk(18, 3);
        for t in &set.targets()[..2] {
            t.store
                .put(&key, PutPayload::from_bytes(data.clone()))
                .await
                .unwrap();
        }
        // t1 wiped: its chunk and its marker gone.
        let t1 = &set.targets()[1];
        t1.store.delete(&key).await.unwrap();
        t1.store
            .delete(&Path::from(crate::MARKER_KEY))
            .await
            .unwrap();
        stores[0].set_down(true);
        assert_eq!(probe(t1, &key).await, Held::Unavailable);
        assert!(t1.is_lost());
        assert!(!t1.takes_new_replicas());
        let fence = chunk::encode_fence(2, 18);
        let s = settle(&set, &key, 18, fence.clone()).await.unwrap();
        assert!(matches!(s, Settled::Undecided(_)), "{s:?}");
        for t in &set.targets()[1..] {
            assert_ne!(probe(t, &key).await, Held::Fence, "{} fenced", t.id);
        }
        stores[0].set_down(false);
        let s = settle(&set, &key, 18, fence).await.unwrap();
        assert!(
            matches!(s, Settled::InLog(h) if h.next_offset == 21),
            "{s:?}"
        );
        assert_eq!(read(&set, &key, 18).await.unwrap().2, data);

        // Another cluster's target is refused; the operator marks t1 anew.
        let foreign = crate::marker_for("c2", &t1.id, 1);
        let e = set.targets()[2]
            .write_marker(&foreign, true)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("another identity marker"), "{e}");
        // So is this cluster's marker of another target.
        let other_target = crate::marker_for("c1", &t1.id, 3);
        let e = set.targets()[2]
            .write_marker(&other_target, true)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("another identity marker"), "{e}");
        let again = crate::marker_for("c1", &t1.id, 2);
        t1.write_marker(&again, true).await.unwrap();
        *t1.marker.write().unwrap() = again;
        assert_eq!(t1.check_marker().await, crate::MarkerCheck::Ours);
        assert!(!t1.is_lost());
        assert_eq!(crate::marker_incarnation(&t1.expected_marker()), 2);
    }
}
