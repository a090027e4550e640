//! The `MetadataStore` conformance suite against a real etcd (the embedded
//! store runs the same suite in its unit tests).
// Tests run real processes in real time: outside the time seam.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;

use floe_e2e::Etcd;
use floe_meta::{EtcdStore, MetadataStore};

#[tokio::test]
async fn etcd_store_passes_the_conformance_suite() {
    let etcd = Etcd::start().unwrap();
    let store = EtcdStore::connect(&[etcd.url()]).await.unwrap();
    floe_meta::conformance::run(Arc::new(store) as Arc<dyn MetadataStore>).await;
}

#[tokio::test]
async fn unreachable_etcd_is_a_clear_error() {
    let port = floe_e2e::free_port();
    let err = EtcdStore::connect(&[format!("http://127.0.0.1:{port}")])
        .await
        .unwrap_err();
    assert!(
        matches!(err, floe_meta::MetaError::Unavailable(_)),
        "{err:?}"
    );
    assert!(err.to_string().contains("127.0.0.1"), "{err}");
}
