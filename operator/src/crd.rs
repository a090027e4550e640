//! The `FloeCluster` custom resource (`floe.dev/v1alpha1`): what a
//! platform team declares — image, controllers, brokers, proxies, etcd,
//! the storage pool, the admin token — and the status the operator
//! reports back. The CRD's YAML is generated from these types
//! (`floe-operator crd`) and committed in the chart's `crds/`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A Floe cluster: controllers, brokers and proxies over an etcd and a
/// storage pool.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "floe.dev",
    version = "v1alpha1",
    kind = "FloeCluster",
    namespaced,
    status = "FloeClusterStatus",
    shortname = "floe",
    category = "floe",
    printcolumn = r#"{"name":"Brokers","type":"integer","jsonPath":".status.brokersReady"}"#,
    printcolumn = r#"{"name":"Proxies","type":"integer","jsonPath":".status.proxiesReady"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Operation","type":"string","jsonPath":".status.operation.kind"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct FloeClusterSpec {
    /// The Floe image (controllers, brokers and proxies all run it),
    /// e.g. `ghcr.io/floe-streaming/floe:0.1.0`. Changing it upgrades the
    /// cluster: brokers one at a time, then proxies, then controllers.
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    #[serde(default)]
    pub controllers: ControllerSpec,
    #[serde(default)]
    pub brokers: BrokerSpec,
    #[serde(default)]
    pub proxies: ProxySpec,
    pub etcd: EtcdSpec,
    pub storage: StorageSpec,
    pub admin: AdminSpec,
    /// How long a broker's write lease lasts (ms); a broker that stops
    /// loses its partitions this long after (default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ttl_ms: Option<u64>,
    /// An existing ServiceAccount for every pod (e.g. one annotated for
    /// cloud IAM); without it the operator makes one named after the
    /// cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// `RUST_LOG` of every process (default `info`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
}

/// Where pods of a component may run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Default: prefer one pod of the component per node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControllerSpec {
    /// Controllers (one leads; the others stand by). Default 2.
    #[serde(default = "two")]
    pub replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default)]
    pub placement: Placement,
    /// Rebalance when a broker joins (default true).
    #[serde(default = "yes")]
    pub balance_on_join: bool,
}

impl Default for ControllerSpec {
    fn default() -> Self {
        ControllerSpec {
            replicas: 2,
            resources: None,
            placement: Placement::default(),
            balance_on_join: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokerSpec {
    /// Brokers (ignored while autoscaling is on). Default 3.
    #[serde(default = "three")]
    pub replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default)]
    pub placement: Placement,
    /// The `[broker]` section of floe.toml (docs/configuration.md).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "free_form")]
    pub config: BTreeMap<String, serde_json::Value>,
    /// Time a broker has to release its partitions on shutdown (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
}

impl Default for BrokerSpec {
    fn default() -> Self {
        BrokerSpec {
            replicas: 3,
            resources: None,
            placement: Placement::default(),
            config: BTreeMap::new(),
            termination_grace_period_seconds: None,
            autoscaling: None,
        }
    }
}

/// Broker count from the load the controller measures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    pub min_brokers: i32,
    pub max_brokers: i32,
    /// Bytes in per second one broker should take (from the brokers'
    /// load reports).
    pub target_bytes_in_per_broker: u64,
    /// Time after a scaling step before the next (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_seconds: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxySpec {
    /// Proxies (clients connect to them). Default 2.
    #[serde(default = "two")]
    pub replicas: i32,
    /// Kafka port of the proxies and their Service (default 9092).
    #[serde(default = "kafka_port")]
    pub port: i32,
    /// Type of the proxies' Service: ClusterIP (default), NodePort or
    /// LoadBalancer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub service_annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default)]
    pub placement: Placement,
    /// The `[proxy]` section of floe.toml.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "free_form")]
    pub config: BTreeMap<String, serde_json::Value>,
}

impl Default for ProxySpec {
    fn default() -> Self {
        ProxySpec {
            replicas: 2,
            port: 9092,
            service_type: None,
            service_annotations: BTreeMap::new(),
            resources: None,
            placement: Placement::default(),
            config: BTreeMap::new(),
        }
    }
}

/// The etcd Floe keeps its metadata in: external endpoints (an etcd run
/// and backed up by its own operator, the usual choice in production), or
/// one the operator runs beside the cluster (`managed`). One of the two.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdSpec {
    /// Client URLs, e.g. `http://etcd-0.etcd:2379`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedEtcd>,
}

/// An etcd the operator runs: a StatefulSet, one member and volume per pod,
/// at most one member down at a time (a disruption budget).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedEtcd {
    /// Members: 1, 3 or 5 (default 3).
    #[serde(default = "three")]
    pub replicas: i32,
    /// Default `quay.io/coreos/etcd:v3.5.17`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Volume size per member (default `8Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// The pool's targets. Adding one adds it to the pool; removing one
    /// drains it (its segments repaired onto the others) and then
    /// removes it.
    pub targets: Vec<StorageTarget>,
    /// R: replicas of every segment (fixed once the cluster exists).
    pub replicas: u32,
    /// W: replicas written before a produce is acknowledged.
    pub write_quorum: u32,
    /// Secret whose keys become environment variables of every process
    /// (e.g. AWS_ACCESS_KEY_ID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageTarget {
    /// The target's id in the pool (the first targets of a new cluster
    /// must be `t0`, `t1`, … in order: the controller seeds them so).
    pub id: String,
    /// `s3://bucket/prefix?endpoint=...`, `file:///path` or `memory://`.
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Share of new replicas (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminSpec {
    /// Secret with the admin API's bearer token under key `token`; the
    /// operator uses it too.
    pub token_secret: String,
    /// Port of the admin API (default 9647).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    /// Where the operator reaches the admin API, if not at the
    /// controllers' Service (an operator outside the cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Serve the web console on the admin port, at `/console/` (login
    /// with the admin token; off by default).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub console: bool,
}

/// What the operator saw and is doing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FloeClusterStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing and Degraded, with reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub brokers: i32,
    #[serde(default)]
    pub brokers_ready: i32,
    #[serde(default)]
    pub proxies_ready: i32,
    #[serde(default)]
    pub controllers_ready: i32,
    /// Partitions by state (writing, recovering, unowned, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub partitions: BTreeMap<String, u32>,
    /// The operation in progress, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<OperationStatus>,
    /// Segments still to be repaired off draining or failed targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments_to_repair: Option<u64>,
    /// When the autoscaler last changed the broker count (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
}

/// An operation the operator runs across reconciles.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperationStatus {
    /// scale-in, scale-out, upgrade, storage.
    pub kind: String,
    /// What it waits for now, in words.
    pub phase: String,
    /// Brokers it concerns (scale-in: the ones that go).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub brokers: Vec<i32>,
    /// The controller's operation ids (drains, rebalance).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub controller_operations: Vec<String>,
    /// Broker count before the operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_brokers: Option<i32>,
    /// RFC 3339.
    pub started: String,
}

fn two() -> i32 {
    2
}
fn three() -> i32 {
    3
}
fn yes() -> bool {
    true
}
fn kafka_port() -> i32 {
    9092
}

fn free_form(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// The CRD as YAML, as committed in the chart.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = FloeCluster::crd();
    format!(
        "# Generated by `floe-operator crd` from operator/src/crd.rs; do not edit.\n{}",
        serde_yaml_ng::to_string(&crd).expect("a CRD serializes")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chart installs the CRD from its crds/ directory; that copy must
    /// be what the types generate (`floe-operator crd >
    /// deploy/helm/floe/crds/floeclusters.floe.dev.yaml` refreshes it).
    #[test]
    fn the_committed_crd_is_the_generated_one() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/helm/floe/crds/floeclusters.floe.dev.yaml");
        let committed = std::fs::read_to_string(&path).unwrap();
        assert!(
            committed == crd_yaml(),
            "{} is stale: run `cargo run -p floe-operator -- crd > {}`",
            path.display(),
            path.display()
        );
    }

    #[test]
    fn a_spec_round_trips_through_yaml_with_defaults() {
        let yaml = r#"
image: ghcr.io/floe-streaming/floe:0.1.0
etcd: {endpoints: ["http://etcd:2379"]}
storage:
  targets: [{id: t0, url: "s3://b/p"}]
  replicas: 1
  writeQuorum: 1
admin: {tokenSecret: floe-admin}
"#;
        let spec: FloeClusterSpec = serde_yaml_ng::from_str(yaml).unwrap();
        assert_eq!(spec.brokers.replicas, 3);
        assert_eq!(spec.controllers.replicas, 2);
        assert!(spec.controllers.balance_on_join);
        assert_eq!((spec.proxies.replicas, spec.proxies.port), (2, 9092));
        let back: FloeClusterSpec =
            serde_yaml_ng::from_str(&serde_yaml_ng::to_string(&spec).unwrap()).unwrap();
        assert_eq!(back, spec);
    }
}
