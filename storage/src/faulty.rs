//! A fault-injecting `ObjectStore` wrapper for tests and benchmarks: latency
//! drawn from a log-normal distribution fitted to a p50 and a p99, an error
//! rate, a hang rate (requests that never answer), faults after the fact
//! (a write that landed but whose answer was lost; a write that timed out
//! for its caller yet lands later), and a switch that takes the whole target
//! away and brings it back.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What goes wrong, and how often.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// Median added latency (zero: none).
    pub p50: Duration,
    /// 99th percentile of the added latency (at least `p50`).
    pub p99: Duration,
    /// Share of requests that fail with an error, 0..=1.
    pub error_rate: f64,
    /// Share of requests that never answer, 0..=1.
    pub hang_rate: f64,
    /// Share of writes (puts, copies) that are applied but answer with an
    /// error, as when the connection drops after the store committed: the
    /// caller cannot tell it from a write that never happened.
    pub lost_answer_rate: f64,
    /// Share of puts that answer with an error (the caller's timeout) and
    /// land later, 100 ms to 2 s after, as a request stuck in a queue does;
    /// a conditional create is judged when it lands.
    pub late_rate: f64,
}

/// What happens to one write, decided before it is made.
enum WriteFate {
    Now,
    AnswerLost,
    Late(Duration),
}

pub struct FaultyStore {
    name: String,
    inner: Arc<dyn ObjectStore>,
    faults: RwLock<Faults>,
    down: AtomicBool,
    rng: Mutex<StdRng>,
    gets: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyStore")
            .field("name", &self.name)
            .field("faults", &*self.faults.read().unwrap())
            .field("down", &self.down.load(Ordering::SeqCst))
            .finish()
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({}, {})", self.name, self.inner)
    }
}

fn injected(msg: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "faulty",
        source: msg.to_string().into(),
    }
}

impl FaultyStore {
    /// Wrap `inner`; random choices replay from `seed`.
    pub fn new(name: impl Into<String>, inner: Arc<dyn ObjectStore>, seed: u64) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            inner,
            faults: RwLock::new(Faults::default()),
            down: AtomicBool::new(false),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            gets: Default::default(),
        })
    }

    /// GET requests made so far (whole or ranged), answered or not.
    pub fn gets(&self) -> u64 {
        self.gets.load(Ordering::SeqCst)
    }

    pub fn set_faults(&self, faults: Faults) {
        *self.faults.write().unwrap() = faults;
    }

    /// Take the target away (every request fails at once) or bring it back.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    /// A latency sample: log-normal with the configured median and p99.
    fn sample_latency(&self, rng: &mut StdRng, f: &Faults) -> Duration {
        if f.p50.is_zero() {
            return Duration::ZERO;
        }
        let mu = f.p50.as_secs_f64().ln();
        let sigma = ((f.p99.max(f.p50).as_secs_f64()).ln() - mu) / 2.326;
        // Box-Muller.
        let u1: f64 = rng.random_range(f64::EPSILON..1.0);
        let u2: f64 = rng.random();
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        Duration::from_secs_f64((mu + sigma * z).exp().min(60.0))
    }

    /// Apply the faults to one write: wait, hang or fail as any request,
    /// then decide whether it lands as asked, lands with its answer lost,
    /// or lands late.
    async fn before_write(&self) -> Result<WriteFate> {
        self.before().await?;
        let f = self.faults.read().unwrap().clone();
        if f.lost_answer_rate == 0.0 && f.late_rate == 0.0 {
            return Ok(WriteFate::Now);
        }
        let mut rng = self.rng.lock().unwrap();
        if rng.random::<f64>() < f.lost_answer_rate {
            return Ok(WriteFate::AnswerLost);
        }
        if rng.random::<f64>() < f.late_rate {
            return Ok(WriteFate::Late(Duration::from_millis(
                rng.random_range(100..2_000),
            )));
        }
        Ok(WriteFate::Now)
    }

    /// Apply the faults to one request: wait, hang, or fail.
    async fn before(&self) -> Result<()> {
        if self.is_down() {
            return Err(injected("target is down (fault injection)"));
        }
        let (latency, fail, hang) = {
            let f = self.faults.read().unwrap().clone();
            let mut rng = self.rng.lock().unwrap();
            let latency = self.sample_latency(&mut rng, &f);
            let fail = rng.random::<f64>() < f.error_rate;
            let hang = rng.random::<f64>() < f.hang_rate;
            (latency, fail, hang)
        };
        if hang {
            std::future::pending::<()>().await;
        }
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if self.is_down() {
            return Err(injected("target went down (fault injection)"));
        }
        if fail {
            return Err(injected("injected error"));
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        match self.before_write().await? {
            WriteFate::Now => self.inner.put_opts(location, payload, opts).await,
            WriteFate::AnswerLost => {
                self.inner.put_opts(location, payload, opts).await?;
                Err(injected("the put landed but its answer was lost"))
            }
            WriteFate::Late(after) => {
                let inner = self.inner.clone();
                let location = location.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    let _ = inner.put_opts(&location, payload, opts).await;
                });
                Err(injected("the put timed out (it lands later)"))
            }
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.before().await?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.before().await?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.before().await?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        if self.is_down() {
            return futures::stream::once(async {
                Err(injected("target is down (fault injection)"))
            })
            .boxed();
        }
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        if self.is_down() {
            return futures::stream::once(async {
                Err(injected("target is down (fault injection)"))
            })
            .boxed();
        }
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.before().await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        match self.before_write().await? {
            WriteFate::AnswerLost => {
                self.inner.copy_opts(from, to, options).await?;
                Err(injected("the copy landed but its answer was lost"))
            }
            _ => self.inner.copy_opts(from, to, options).await,
        }
    }
}

/// `n` memory targets `t0`, `t1`, ... behind fault-injecting stores, for
/// tests: the stores (to inject faults) and the targets.
#[cfg(test)]
pub(crate) fn test_targets(n: u64) -> (Vec<Arc<FaultyStore>>, Vec<crate::StorageTarget>) {
    let stores: Vec<Arc<FaultyStore>> = (0..n)
        .map(|i| {
            FaultyStore::new(
                format!("t{i}"),
                Arc::new(object_store::memory::InMemory::new()),
                i,
            )
        })
        .collect();
    let targets = stores
        .iter()
        .enumerate()
        .map(|(i, s)| crate::StorageTarget::from_store(format!("t{i}"), s.clone()))
        .collect();
    (stores, targets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn faults_are_injected_and_can_be_lifted() {
        let f = FaultyStore::new("t", Arc::new(InMemory::new()), 1);
        let p = Path::from("a/b");
        f.put(&p, PutPayload::from_static(b"x")).await.unwrap();
        f.set_down(true);
        assert!(f.get(&p).await.is_err(), "down: every request fails");
        assert!(f.list(None).next().await.unwrap().is_err());
        f.set_down(false);
        assert_eq!(f.get(&p).await.unwrap().bytes().await.unwrap(), "x");
        f.set_faults(Faults {
            error_rate: 0.5,
            ..Default::default()
        });
        let mut errors = 0;
        for _ in 0..400 {
            if f.get(&p).await.is_err() {
                errors += 1;
            }
        }
        assert!(
            (150..250).contains(&errors),
            "{errors} of 400 failed at rate 0.5"
        );
        f.set_faults(Faults {
            hang_rate: 1.0,
            ..Default::default()
        });
        let hung = tokio::time::timeout(Duration::from_millis(200), f.get(&p)).await;
        assert!(hung.is_err(), "a hang never answers");
    }

    #[tokio::test]
    async fn writes_can_land_with_their_answer_lost_or_late() {
        let f = FaultyStore::new("t", Arc::new(InMemory::new()), 5);
        f.set_faults(Faults {
            lost_answer_rate: 1.0,
            ..Default::default()
        });
        let p = Path::from("lost");
        let e = f.put(&p, PutPayload::from_static(b"x")).await.unwrap_err();
        assert!(e.to_string().contains("answer was lost"), "{e}");
        f.set_faults(Faults::default());
        assert_eq!(f.get(&p).await.unwrap().bytes().await.unwrap(), "x");
        // A conditional create that lands late is judged when it lands: a
        // key created in between wins.
        f.set_faults(Faults {
            late_rate: 1.0,
            ..Default::default()
        });
        let (a, b) = (Path::from("late"), Path::from("raced"));
        let create = || PutOptions::from(object_store::PutMode::Create);
        let e = f
            .put_opts(&a, PutPayload::from_static(b"late"), create())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("lands later"), "{e}");
        f.put_opts(&b, PutPayload::from_static(b"late"), create())
            .await
            .unwrap_err();
        f.set_faults(Faults::default());
        assert!(f.get(&a).await.is_err(), "not landed yet");
        f.put_opts(&b, PutPayload::from_static(b"first"), create())
            .await
            .unwrap();
        // It lands within 2 s (polled for longer: a loaded machine runs
        // timers late).
        let mut landed = None;
        for _ in 0..100 {
            if let Ok(r) = f.get(&a).await {
                landed = Some(r.bytes().await.unwrap());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(landed.as_deref(), Some(&b"late"[..]));
        assert_eq!(f.get(&b).await.unwrap().bytes().await.unwrap(), "first");
    }

    #[test]
    fn latency_follows_the_configured_median_and_p99() {
        let f = FaultyStore::new("t", Arc::new(InMemory::new()), 42);
        let faults = Faults {
            p50: Duration::from_millis(20),
            p99: Duration::from_millis(80),
            ..Default::default()
        };
        let mut rng = StdRng::seed_from_u64(3);
        let mut v: Vec<f64> = (0..20_000)
            .map(|_| f.sample_latency(&mut rng, &faults).as_secs_f64() * 1000.0)
            .collect();
        v.sort_by(f64::total_cmp);
        let (p50, p99) = (v[10_000], v[19_800]);
        assert!((18.0..22.0).contains(&p50), "p50 {p50}");
        assert!((70.0..92.0).contains(&p99), "p99 {p99}");
    }
}
