//! The cluster as a proxy sees it, followed in the metadata store: topics,
//! live brokers, live proxies and each partition's owner. Every change bumps
//! a version that requests held across a move wait on.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use floe_common::{PartitionId, Uuid};
use floe_meta::schema::{
    BrokerRecord, OwnerRecord, PartitionStateRecord, ProxyRecord, TopicRecord,
};
use floe_meta::{
    keys, Follow, Follower, KeyValue, MetaError, MetadataStore, WatchEvent, WatchEventKind,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A topic as clients see it.
#[derive(Clone, Debug)]
pub struct Topic {
    pub id: Uuid,
    pub name: String,
    pub partitions: i32,
}

#[derive(Default)]
struct State {
    topics: HashMap<String, Topic>,
    names: HashMap<Uuid, String>,
    brokers: BTreeMap<i32, BrokerRecord>,
    proxies: BTreeMap<i32, ProxyRecord>,
    owners: HashMap<PartitionId, OwnerRecord>,
    /// Partitions whose owner published `writing`: (broker, epoch).
    writing: HashMap<PartitionId, (i32, i32)>,
}

pub struct View {
    state: RwLock<State>,
    version: watch::Sender<u64>,
}

impl View {
    /// Load the picture and follow it until `shutdown`.
    pub async fn follow(
        meta: Arc<dyn MetadataStore>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, MetaError> {
        let view = Arc::new(Self {
            state: RwLock::new(State::default()),
            version: watch::channel(0).0,
        });
        Follower::start(
            meta,
            vec![
                keys::topics_prefix(),
                keys::brokers_prefix(),
                keys::proxies_prefix(),
                keys::partitions_prefix(),
            ],
            view.clone(),
            shutdown,
        )
        .await?;
        Ok(view)
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// Wakes on every change of the view.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Wait until `done` holds of the view (checked at once and after each
    /// change, never on a timer) or `deadline` passes; whether it holds.
    pub async fn wait_until(
        &self,
        deadline: tokio::time::Instant,
        done: impl Fn(&Self) -> bool,
    ) -> bool {
        let mut changes = self.changes();
        loop {
            changes.borrow_and_update();
            if done(self) {
                return true;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                // Past the deadline, or the view is gone.
                _ => return done(self),
            }
        }
    }

    /// A live broker's topic-creation policy (the brokers' settings rule
    /// topic creation, as in Kafka): the lowest id's that publishes one.
    pub fn topic_policy(&self) -> Option<floe_meta::schema::TopicPolicy> {
        self.state
            .read()
            .unwrap()
            .brokers
            .values()
            .find_map(|b| b.topic_policy.clone())
    }

    pub fn topic(&self, name: &str) -> Option<Topic> {
        self.state.read().unwrap().topics.get(name).cloned()
    }

    pub fn topic_by_id(&self, id: Uuid) -> Option<Topic> {
        let s = self.state.read().unwrap();
        s.names
            .get(&id)
            .and_then(|n| s.topics.get(n))
            .filter(|t| t.id == id)
            .cloned()
    }

    pub fn topics(&self) -> Vec<Topic> {
        let mut v: Vec<Topic> = self
            .state
            .read()
            .unwrap()
            .topics
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn brokers(&self) -> Vec<BrokerRecord> {
        self.state
            .read()
            .unwrap()
            .brokers
            .values()
            .cloned()
            .collect()
    }

    pub fn broker(&self, id: i32) -> Option<BrokerRecord> {
        self.state.read().unwrap().brokers.get(&id).cloned()
    }

    pub fn proxies(&self) -> Vec<ProxyRecord> {
        self.state
            .read()
            .unwrap()
            .proxies
            .values()
            .cloned()
            .collect()
    }

    /// The live broker writing `p` now, with its epoch.
    pub fn owner(&self, p: PartitionId) -> Option<(BrokerRecord, i32)> {
        let s = self.state.read().unwrap();
        let o = s.owners.get(&p)?;
        s.brokers.get(&o.broker_id).map(|b| (b.clone(), o.epoch))
    }

    /// The partition's owner, once it has published that it writes the
    /// partition (recovery done) under its current ownership.
    pub fn writing_owner(&self, p: PartitionId) -> Option<BrokerRecord> {
        let s = self.state.read().unwrap();
        let o = s.owners.get(&p)?;
        if s.writing.get(&p) != Some(&(o.broker_id, o.epoch)) {
            return None;
        }
        s.brokers.get(&o.broker_id).cloned()
    }
}

fn apply(state: &mut State, key: &Bytes, value: Option<Bytes>) {
    use prost::Message;
    if let Some(name) = std::str::from_utf8(key)
        .ok()
        .and_then(|k| k.strip_prefix("/floe/topics/"))
    {
        match value.and_then(|v| TopicRecord::decode(v).ok()) {
            Some(t) => {
                let Ok(id) = Uuid::from_slice(&t.id) else {
                    return;
                };
                // A recreated topic: its old id names nothing any more.
                if let Some(old) = state.topics.get(&t.name) {
                    if old.id != id {
                        let old = old.id;
                        state.names.remove(&old);
                    }
                }
                state.names.insert(id, t.name.clone());
                state.topics.insert(
                    t.name.clone(),
                    Topic {
                        id,
                        name: t.name,
                        partitions: t.partitions,
                    },
                );
            }
            None => {
                if let Some(t) = state.topics.remove(name) {
                    state.names.remove(&t.id);
                }
            }
        }
    } else if let Some(id) = keys::parse_broker(key) {
        match value.and_then(|v| BrokerRecord::decode(v).ok()) {
            Some(b) => state.brokers.insert(id, b),
            None => state.brokers.remove(&id),
        };
    } else if let Some(id) = keys::parse_proxy(key) {
        match value.and_then(|v| ProxyRecord::decode(v).ok()) {
            Some(p) => state.proxies.insert(id, p),
            None => state.proxies.remove(&id),
        };
    } else if let Some(p) = keys::parse_owner(key) {
        match value.and_then(|v| OwnerRecord::decode(v).ok()) {
            Some(o) => state.owners.insert(p, o),
            None => state.owners.remove(&p),
        };
    } else if let Some(p) = keys::parse_partition_state(key) {
        match value.and_then(|v| PartitionStateRecord::decode(v).ok()) {
            Some(r) if r.state == "writing" => {
                state.writing.insert(p, (r.broker_id, r.epoch));
            }
            _ => {
                state.writing.remove(&p);
            }
        }
    }
}

/// Rendezvous (highest random weight) choice among `candidates` for `key`:
/// each key keeps its choice while other candidates come and go.
pub fn rendezvous<'a>(candidates: &'a [ProxyRecord], key: &[u8]) -> Option<&'a ProxyRecord> {
    candidates.iter().max_by_key(|c| {
        let mut h = Fnv::default();
        h.write(&c.proxy_id.to_be_bytes());
        h.write(key);
        (mix(h.0), c.proxy_id)
    })
}

/// Of a partition's keys the proxy follows only its owner and its state.
fn followed(key: &[u8]) -> bool {
    !key.starts_with(&keys::partitions_prefix())
        || key.ends_with(b"/owner")
        || key.ends_with(b"/state")
}

impl Follow for View {
    fn reset(&self, kvs: Vec<KeyValue>, _revision: i64) {
        let mut state = State::default();
        for kv in kvs {
            if followed(&kv.key) {
                apply(&mut state, &kv.key, Some(kv.value));
            }
        }
        *self.state.write().unwrap() = state;
        self.bump();
    }

    fn apply(&self, event: WatchEvent) {
        let (key, value) = match event.kind {
            WatchEventKind::Put(KeyValue { key, value, .. }) => (key, Some(value)),
            WatchEventKind::Delete(key) => (key, None),
        };
        if followed(&key) {
            apply(&mut self.state.write().unwrap(), &key, value);
            self.bump();
        }
    }
}

/// The node id clients see for `proxy` serving the partitions `broker`
/// writes (an "owner node": the proxy's address under another id). Stable
/// for a proxy id and a broker id, and apart from proxy ids (which
/// `derived_id` keeps below 1,001,000,000).
pub fn owner_node_id(proxy: i32, broker: i32) -> i32 {
    let mut h = Fnv::default();
    h.write(b"owner-node");
    h.write(&proxy.to_be_bytes());
    h.write(&broker.to_be_bytes());
    1_001_000_000 + (mix(h.0) % 1_100_000_000) as i32
}

/// 64-bit FNV-1a.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, b: &[u8]) {
        for x in b {
            self.0 ^= *x as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// A finalizer so that near-identical inputs spread (splitmix64).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The key partitions are spread over proxies by.
/// The rendezvous key of a broker's owner node: all the partitions a
/// broker writes are led by one node, at the proxy this key hashes to.
pub fn broker_key(broker: i32) -> Vec<u8> {
    let mut k = b"broker/".to_vec();
    k.extend_from_slice(&broker.to_be_bytes());
    k
}

pub fn partition_key(p: PartitionId) -> Vec<u8> {
    let mut k = p.topic_id.as_bytes().to_vec();
    k.extend_from_slice(&p.partition.to_be_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(ids: &[i32]) -> Vec<ProxyRecord> {
        ids.iter()
            .map(|&id| ProxyRecord {
                proxy_id: id,
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn rendezvous_spreads_and_moves_only_the_leaving_proxys_keys() {
        let three = proxies(&[11, 22, 33]);
        let two = proxies(&[11, 33]);
        let keys: Vec<Vec<u8>> = (0..3000)
            .map(|i| partition_key(PartitionId::new(Uuid::from_u128(5), i)))
            .collect();
        let mut counts = HashMap::new();
        for k in &keys {
            let a = rendezvous(&three, k).unwrap().proxy_id;
            *counts.entry(a).or_insert(0) += 1;
            let b = rendezvous(&two, k).unwrap().proxy_id;
            if a != 22 {
                assert_eq!(a, b, "a key not on the leaving proxy moved");
            }
        }
        for id in [11, 22, 33] {
            let n = counts[&id];
            assert!((800..1200).contains(&n), "proxy {id} got {n} of 3000");
        }
        assert!(rendezvous(&[], b"x").is_none());
    }

    #[test]
    fn owner_node_ids_are_stable_distinct_and_apart_from_proxy_ids() {
        let proxies: Vec<i32> = (0..20)
            .map(|i| crate::derived_id("10.0.0.1", 9092 + i))
            .collect();
        let mut all = std::collections::HashSet::new();
        for &p in &proxies {
            assert!((1_000_000..1_001_000_000).contains(&p));
            assert!(all.insert(p));
        }
        for &p in &proxies {
            for b in 0..50 {
                let id = owner_node_id(p, b);
                assert_eq!(id, owner_node_id(p, b), "stable");
                assert!(id >= 1_001_000_000, "{id} in the proxy ids' range");
                assert!(all.insert(id), "{id} ({p}, {b}) given twice");
            }
        }
    }
}
