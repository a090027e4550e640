//! Storage requests counted by target and kind, as an object store bills
//! them (`floe_storage_requests_total{target,op}`): every target's store
//! is wrapped in [`Counted`] when it is opened, so brokers, proxies and
//! controllers count what they ask of each target — PUTs and GETs are most
//! of an S3 bill (docs/storage.md, "Cost model").

use std::ops::Range;
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    pub target: String,
    /// put (single PUTs, conditional creates included), multipart (an
    /// upload started), part (one part of an upload), complete (an upload
    /// finished), abort, get (whole or ranged), list, delete, copy.
    pub op: &'static str,
}

static REQUESTS: LazyLock<Family<RequestLabel, Counter>> = LazyLock::new(Family::default);

/// Add the request counters to `registry` (once per registry).
pub fn register(registry: &mut Registry) {
    registry.register(
        "storage_requests",
        "Requests made to each storage target, by kind (put, multipart, part, complete, abort, get, list, delete, copy): what an object store bills",
        REQUESTS.clone(),
    );
}

/// Requests of kind `op` made to `target` so far by this process.
pub fn requests(target: &str, op: &'static str) -> u64 {
    REQUESTS
        .get_or_create(&RequestLabel {
            target: target.to_string(),
            op,
        })
        .get()
}

/// A store whose requests are counted under its target's id.
#[derive(Debug)]
pub struct Counted {
    target: String,
    inner: Arc<dyn ObjectStore>,
}

impl Counted {
    pub fn wrap(target: impl Into<String>, inner: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
        Arc::new(Self {
            target: target.into(),
            inner,
        })
    }

    fn count(&self, op: &'static str) {
        count(&self.target, op);
    }
}

fn count(target: &str, op: &'static str) {
    REQUESTS
        .get_or_create(&RequestLabel {
            target: target.to_string(),
            op,
        })
        .inc();
}

/// A multipart upload whose parts and completion are counted too: on an
/// object store each is a billed request like a PUT.
#[derive(Debug)]
struct CountedUpload {
    target: String,
    inner: Box<dyn MultipartUpload>,
}

#[async_trait]
impl MultipartUpload for CountedUpload {
    fn put_part(&mut self, data: PutPayload) -> object_store::UploadPart {
        count(&self.target, "part");
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        count(&self.target, "complete");
        self.inner.complete().await
    }

    async fn abort(&mut self) -> Result<()> {
        count(&self.target, "abort");
        self.inner.abort().await
    }
}

impl std::fmt::Display for Counted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Counted {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.count("put");
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.count("multipart");
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(CountedUpload {
            target: self.target.clone(),
            inner,
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.count("get");
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.count("get");
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let target = self.target.clone();
        self.inner.delete_stream(
            locations
                .inspect(move |l| {
                    if l.is_ok() {
                        count(&target, "delete");
                    }
                })
                .boxed(),
        )
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.count("list");
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.count("list");
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.count("copy");
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    /// Each kind of request is counted once under its target.
    #[tokio::test]
    async fn requests_are_counted_by_target_and_kind() {
        let store = Counted::wrap(
            "counted-test",
            Arc::new(object_store::memory::InMemory::new()),
        );
        let p = Path::from("a/b");
        store.put(&p, PutPayload::from_static(b"x")).await.unwrap();
        store.put(&p, PutPayload::from_static(b"y")).await.unwrap();
        store.get(&p).await.unwrap();
        store.get_range(&p, 0..1).await.unwrap();
        let _: Vec<_> = store.list(Some(&"a".into())).collect().await;
        store.delete(&p).await.unwrap();
        // An upload of three parts: one request to start it, one a part,
        // one to finish it.
        let mut up = store.put_multipart(&"a/c".into()).await.unwrap();
        for part in [b"1", b"2", b"3"] {
            up.put_part(PutPayload::from_static(part)).await.unwrap();
        }
        up.complete().await.unwrap();
        assert_eq!(
            store
                .get(&"a/c".into())
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap(),
            "123"
        );
        let got: Vec<(&str, u64)> = [
            "put",
            "multipart",
            "part",
            "complete",
            "get",
            "list",
            "delete",
            "copy",
        ]
        .into_iter()
        .map(|op| (op, requests("counted-test", op)))
        .collect();
        assert_eq!(
            got,
            [
                ("put", 2),
                ("multipart", 1),
                ("part", 3),
                ("complete", 1),
                ("get", 3),
                ("list", 1),
                ("delete", 1),
                ("copy", 0)
            ]
        );
    }
}
