//! The storage conformance suite against a real S3-compatible server
//! (moto), as the memory and filesystem backends pass it in unit tests.
// Tests run real processes in real time: outside the time seam.
#![allow(clippy::disallowed_methods)]

use floe_e2e::Moto;
use floe_storage::StorageTarget;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_passes_the_storage_conformance_suite() {
    let moto = Moto::start("floe-conformance").unwrap();
    let t = StorageTarget::open("s3", &moto.url("prefix")).unwrap();
    floe_storage::conformance::run(t.store, "conformance")
        .await
        .unwrap();
}

#[test]
fn bad_s3_urls_are_clear_errors() {
    let e = StorageTarget::open("s3", "s3:///nobucket")
        .unwrap_err()
        .to_string();
    assert!(e.contains("no bucket"), "{e}");
    let e = StorageTarget::open("s3", "s3://b?frobnicate=1")
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown S3 option"), "{e}");
}
