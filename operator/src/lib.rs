//! The Floe operator: keeps Kubernetes objects and the Floe cluster true
//! to a `FloeCluster` resource — renders the workloads, and scales,
//! drains, upgrades and changes storage through the controller's admin
//! API (docs/operator.md).

/// The kube-rs this crate is built with (for tests driving the twin).
pub use kube;

pub mod admin;
pub mod crd;
pub mod plan;
pub mod reconcile;
pub mod render;
#[cfg(feature = "twin")]
pub mod twin;
pub mod validate;

#[cfg(test)]
pub(crate) mod testing {
    //! Specs the unit tests start from.
    use crate::crd::*;

    /// Three brokers over three zoned S3 targets, R=2, W=2.
    pub fn spec() -> FloeClusterSpec {
        FloeClusterSpec {
            image: "ghcr.io/floe-streaming/floe:0.1.0".into(),
            image_pull_policy: None,
            controllers: ControllerSpec::default(),
            brokers: BrokerSpec::default(),
            proxies: ProxySpec::default(),
            etcd: EtcdSpec {
                endpoints: vec!["http://etcd.infra.svc:2379".into()],
                managed: None,
            },
            storage: StorageSpec {
                targets: ["a", "b", "c"]
                    .iter()
                    .enumerate()
                    .map(|(i, z)| StorageTarget {
                        id: format!("t{i}"),
                        url: format!("s3://floe-{z}/c1?region=eu-west-1"),
                        zone: Some(z.to_string()),
                        weight: None,
                    })
                    .collect(),
                replicas: 2,
                write_quorum: 2,
                credentials_secret: None,
            },
            admin: AdminSpec {
                token_secret: "floe-admin".into(),
                port: None,
                endpoint: None,
                console: false,
            },
            lease_ttl_ms: None,
            service_account_name: None,
            log_level: None,
        }
    }

    /// A FloeCluster named `name` in namespace `streaming` with uid `uid-1`.
    pub fn cluster(name: &str, spec: FloeClusterSpec) -> FloeCluster {
        let mut c = FloeCluster::new(name, spec);
        c.metadata.namespace = Some("streaming".into());
        c.metadata.uid = Some("uid-1".into());
        c
    }
}
