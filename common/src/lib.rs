//! Shared vocabulary of every Floe crate: partition identities, offsets and
//! epochs, Kafka's topic naming rules, the `Clock` seam that leases,
//! lingers and retention read time from, and the seam of the randomness
//! that decides behaviour (replica sets, ids), which a simulation seeds.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub use uuid::Uuid;

pub mod topic;

/// A Kafka offset: dense, assigned by the partition's single writer.
pub type Offset = i64;

/// The partition epoch. It is Kafka's leader epoch: bumped by every change of
/// owner, written into each batch's partitionLeaderEpoch.
pub type Epoch = i32;

/// A partition of a topic, named by the topic's id (stable across renames and
/// distinct across delete/re-create) and its index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId {
    pub topic_id: Uuid,
    pub partition: i32,
}

impl PartitionId {
    pub fn new(topic_id: Uuid, partition: i32) -> Self {
        Self {
            topic_id,
            partition,
        }
    }
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic_id.simple(), self.partition)
    }
}

/// Wall-clock time in milliseconds since the Unix epoch, read through a seam so
/// that leases, lingers and retention can be tested with a clock under the
/// test's control.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    fn now_ms(&self) -> i64;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one reading of the real wall clock
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Default, Clone)]
pub struct ManualClock {
    now: Arc<AtomicI64>,
}

impl ManualClock {
    pub fn new(start_ms: i64) -> Self {
        Self {
            now: Arc::new(AtomicI64::new(start_ms)),
        }
    }

    pub fn advance_ms(&self, ms: i64) {
        self.now.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn set_ms(&self, ms: i64) {
        self.now.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }
}

pub type SharedClock = Arc<dyn Clock>;

static WALL_CLOCK: std::sync::OnceLock<SharedClock> = std::sync::OnceLock::new();

/// Wall time for code that is not handed a [`Clock`] (timestamps of
/// coordinator records, operations, offset commits): the process's wall
/// clock — the real one, unless a simulation installed its own with
/// [`set_wall_clock`].
pub fn wall_ms() -> i64 {
    match WALL_CLOCK.get() {
        Some(c) => c.now_ms(),
        None => SystemClock.now_ms(),
    }
}

/// Install the process's wall clock (a simulation's, before anything reads
/// it); false if one was installed already.
pub fn set_wall_clock(clock: SharedClock) -> bool {
    WALL_CLOCK.set(clock).is_ok()
}

thread_local! {
    /// The seeded generator of a simulation running on this thread.
    static SEEDED: std::cell::RefCell<Option<rand::rngs::StdRng>> =
        const { std::cell::RefCell::new(None) };
}

/// A random number for choices that shape behaviour — replica sets, the
/// ids of topics, clusters, operations and group members — from the OS,
/// unless a simulation running on this thread seeded it with
/// [`set_random_seed`], so a run replays from its seed. (Secrets — SCRAM nonces and salts, a
/// process's secret — take the OS's randomness directly, always.)
pub fn random_u64() -> u64 {
    use rand::RngCore;
    let seeded = SEEDED.with(|s| s.borrow_mut().as_mut().map(|rng| rng.next_u64()));
    match seeded {
        Some(n) => n,
        #[allow(clippy::disallowed_methods)] // the seam's one draw from the OS
        None => rand::random(),
    }
}

/// A version-4 UUID from [`random_u64`].
pub fn new_uuid() -> Uuid {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&random_u64().to_le_bytes());
    bytes[8..].copy_from_slice(&random_u64().to_le_bytes());
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// Seed this thread's behaviour-shaping randomness: a simulation does at
/// the start of each run (its hosts all run on the thread that drives it;
/// runs on other threads keep their own seeds).
pub fn set_random_seed(seed: u64) {
    use rand::SeedableRng;
    SEEDED.with(|s| *s.borrow_mut() = Some(rand::rngs::StdRng::seed_from_u64(seed)));
}

/// An error and its sources on one line (tonic's own message is only the
/// outermost, e.g. "transport error"), without repeating a message a
/// wrapper already quoted.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let msg = s.to_string();
        if !text.contains(&msg) {
            text.push_str(": ");
            text.push_str(&msg);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A seeded process replays its choices: the draws are the seed's
    /// own sequence (nextest runs each test in a process of its own).
    #[test]
    fn a_seeded_process_draws_the_seeds_sequence() {
        use rand::{RngCore, SeedableRng};
        set_random_seed(7);
        let _ = random_u64();
        set_random_seed(42);
        let mut expected = rand::rngs::StdRng::seed_from_u64(42);
        assert_eq!(random_u64(), expected.next_u64());
        assert_eq!(random_u64(), expected.next_u64());
        let u = new_uuid();
        assert_eq!(u.get_version_num(), 4);
        let (a, b) = (expected.next_u64(), expected.next_u64());
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&a.to_le_bytes());
        bytes[8..].copy_from_slice(&b.to_le_bytes());
        assert_eq!(u, uuid::Builder::from_random_bytes(bytes).into_uuid());
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(1_000);
        assert_eq!(c.now_ms(), 1_000);
        c.advance_ms(250);
        assert_eq!(c.now_ms(), 1_250);
        c.set_ms(5);
        assert_eq!(c.now_ms(), 5);
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now_ms() > 1_577_836_800_000);
    }

    #[test]
    fn error_chain_names_every_cause_once() {
        let cause = || std::io::Error::other("certificate unknown");
        let plain = Wrapped("transport error", cause());
        assert_eq!(error_chain(&plain), "transport error: certificate unknown");
        let quoting = Wrapped("handshake: certificate unknown", cause());
        assert_eq!(error_chain(&quoting), "handshake: certificate unknown");
    }

    #[derive(Debug)]
    struct Wrapped(&'static str, std::io::Error);
    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.1)
        }
    }
}
