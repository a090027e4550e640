//! The Kubernetes objects a `FloeCluster` stands for, as a pure function
//! of its spec (and of the broker count the operator's plan allows): the
//! same shape as the Helm chart's workloads (deploy/helm/floe), so a
//! cluster installed either way looks the same — a broker StatefulSet
//! whose ordinals are broker ids, controller and proxy Deployments, their
//! Services and disruption budgets, the floe.toml ConfigMap and a
//! ServiceAccount. Two differences, both because the operator drives them:
//! brokers use the `OnDelete` update strategy (the operator restarts them
//! one at a time, each only once the cluster writes every partition again)
//! and every pod template carries `floe.dev/template-hash`, which tells
//! the operator which pods run an old template.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::crd::{FloeCluster, Placement};

/// Annotation on pod templates: a hash of the template without it.
pub const TEMPLATE_HASH: &str = "floe.dev/template-hash";
/// Ports, as in the chart.
pub const BROKER_KAFKA_PORT: i32 = 9092;
pub const BROKER_TAIL_PORT: i32 = 9093;
pub const BROKER_HTTP_PORT: i32 = 9644;
pub const CONTROLLER_HTTP_PORT: i32 = 9645;
pub const PROXY_HTTP_PORT: i32 = 9646;
pub const ADMIN_PORT: i32 = 9647;

/// Names of a cluster's objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// The chart's `floe.fullname`: the resource's name if it contains
    /// "floe", else `<name>-floe`.
    pub full: String,
    pub instance: String,
    pub namespace: String,
}

impl Names {
    pub fn of(cr: &FloeCluster) -> Names {
        let name = cr.metadata.name.clone().unwrap_or_default();
        let mut full = if name.contains("floe") {
            name.clone()
        } else {
            format!("{name}-floe")
        };
        full.truncate(50);
        let full = full.trim_end_matches('-').to_string();
        Names {
            full,
            instance: name,
            namespace: cr
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
        }
    }
    pub fn broker(&self) -> String {
        format!("{}-broker", self.full)
    }
    pub fn controller(&self) -> String {
        format!("{}-controller", self.full)
    }
    pub fn proxy(&self) -> String {
        format!("{}-proxy", self.full)
    }
    pub fn etcd(&self) -> String {
        format!("{}-etcd", self.full)
    }
    pub fn config(&self) -> String {
        format!("{}-config", self.full)
    }
    /// The pod of broker `id`.
    pub fn broker_pod(&self, id: i32) -> String {
        format!("{}-broker-{id}", self.full)
    }
    /// Where the admin API answers inside the cluster.
    pub fn admin_url(&self, port: i32) -> String {
        format!("http://{}.{}.svc:{port}", self.controller(), self.namespace)
    }
}

fn labels(n: &Names, component: Option<&str>) -> Value {
    let mut l = json!({
        "app.kubernetes.io/name": "floe",
        "app.kubernetes.io/instance": n.instance,
        "app.kubernetes.io/managed-by": "floe-operator",
    });
    if let Some(c) = component {
        l["app.kubernetes.io/component"] = json!(c);
    }
    l
}

/// The labels that select a component's pods.
pub fn selector(n: &Names, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "floe".to_string()),
        ("app.kubernetes.io/instance".to_string(), n.instance.clone()),
        (
            "app.kubernetes.io/component".to_string(),
            component.to_string(),
        ),
    ])
}

/// `app.kubernetes.io/...=...,...` for a label selector query.
pub fn selector_query(n: &Names, component: &str) -> String {
    selector(n, component)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn metadata(cr: &FloeCluster, n: &Names, name: &str, component: Option<&str>) -> Value {
    let mut m = json!({
        "name": name,
        "namespace": n.namespace,
        "labels": labels(n, component),
    });
    if let Some(uid) = &cr.metadata.uid {
        m["ownerReferences"] = json!([{
            "apiVersion": "floe.dev/v1alpha1",
            "kind": "FloeCluster",
            "name": n.instance,
            "uid": uid,
            "controller": true,
            "blockOwnerDeletion": true,
        }]);
    }
    m
}

/// The etcd client URLs every process gets: the spec's, or the managed
/// etcd's members.
pub fn etcd_endpoints(cr: &FloeCluster) -> Vec<String> {
    let n = Names::of(cr);
    match &cr.spec.etcd.managed {
        None => cr.spec.etcd.endpoints.clone(),
        Some(m) => (0..m.replicas)
            .map(|i| {
                format!(
                    "http://{etcd}-{i}.{etcd}.{ns}.svc:2379",
                    etcd = n.etcd(),
                    ns = n.namespace
                )
            })
            .collect(),
    }
}

fn common_env(cr: &FloeCluster) -> Vec<Value> {
    vec![
        json!({"name": "FLOE_ETCD", "value": etcd_endpoints(cr).join(",")}),
        json!({"name": "RUST_LOG", "value": cr.spec.log_level.as_deref().unwrap_or("info")}),
        json!({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}),
    ]
}

fn env_from(cr: &FloeCluster) -> Option<Value> {
    cr.spec
        .storage
        .credentials_secret
        .as_ref()
        .map(|s| json!([{"secretRef": {"name": s}}]))
}

/// Every pod's security context (non-root, the image's user), as the
/// chart's `podSecurityContext`.
fn pod_security() -> Value {
    json!({
        "runAsNonRoot": true, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

/// Every container's security context, as the chart's `securityContext`.
fn container_security() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]},
    })
}

/// A component's pods spread over zones where the scheduler can.
fn zone_spread(sel: &BTreeMap<String, String>) -> Value {
    json!([{
        "maxSkew": 1,
        "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": sel},
    }])
}

fn probes(c: &mut Value) {
    c["livenessProbe"] = json!({
        "httpGet": {"path": "/healthz", "port": "http"},
        "periodSeconds": 10,
        "failureThreshold": 6,
    });
    c["readinessProbe"] = json!({
        "httpGet": {"path": "/readyz", "port": "http"},
        "periodSeconds": 5,
        "failureThreshold": 3,
    });
}

fn pod_spec(
    cr: &FloeCluster,
    n: &Names,
    component: &str,
    placement: &Placement,
    container: Value,
    volumes: Value,
) -> Value {
    let sel = selector(n, component);
    let mut spec = json!({
        "serviceAccountName": cr.spec.service_account_name.as_deref().unwrap_or(&n.full),
        "securityContext": pod_security(),
        "topologySpreadConstraints": zone_spread(&sel),
        "affinity": placement.affinity.as_ref().map_or_else(
            || json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                "weight": 100,
                "podAffinityTerm": {
                    "topologyKey": "kubernetes.io/hostname",
                    "labelSelector": {"matchLabels": sel},
                },
            }]}}),
            |a| serde_json::to_value(a).expect("affinity serializes"),
        ),
        "containers": [container],
        "volumes": volumes,
    });
    if !placement.node_selector.is_empty() {
        spec["nodeSelector"] = json!(placement.node_selector);
    }
    if !placement.tolerations.is_empty() {
        spec["tolerations"] = serde_json::to_value(&placement.tolerations).expect("serializes");
    }
    spec
}

fn container(
    cr: &FloeCluster,
    name: &str,
    args: Vec<String>,
    env: Vec<Value>,
    ports: Value,
    resources: Option<&k8s_openapi::api::core::v1::ResourceRequirements>,
    mounts: Value,
) -> Value {
    let mut all_env = common_env(cr);
    all_env.extend(env);
    let mut c = json!({
        "name": name,
        "image": cr.spec.image,
        "imagePullPolicy": cr.spec.image_pull_policy.as_deref().unwrap_or("IfNotPresent"),
        "args": args,
        "env": all_env,
        "ports": ports,
        "securityContext": container_security(),
        "volumeMounts": mounts,
    });
    if let Some(e) = env_from(cr) {
        c["envFrom"] = e;
    }
    if let Some(r) = resources {
        c["resources"] = serde_json::to_value(r).expect("resources serialize");
    }
    probes(&mut c);
    c
}

/// A pod template with its hash annotation (plus `extra` annotations).
fn template(n: &Names, component: &str, spec: Value, extra: &[(&str, String)]) -> Value {
    let mut annotations = serde_json::Map::new();
    for (k, v) in extra {
        annotations.insert((*k).into(), json!(v));
    }
    let mut t = json!({
        "metadata": {"labels": labels(n, Some(component)), "annotations": annotations},
        "spec": spec,
    });
    let hash = hash_hex(&t);
    t["metadata"]["annotations"][TEMPLATE_HASH] = json!(hash);
    t
}

fn hash_hex(v: &Value) -> String {
    format!(
        "{:08x}",
        crc32c::crc32c(serde_json::to_string(v).expect("json").as_bytes())
    )
}

/// floe.toml: `[broker]` and `[proxy]` from the spec's config maps.
pub fn floe_toml(cr: &FloeCluster) -> String {
    #[derive(serde::Serialize)]
    struct File<'a> {
        broker: &'a BTreeMap<String, Value>,
        proxy: &'a BTreeMap<String, Value>,
    }
    let body = toml::to_string(&File {
        broker: &cr.spec.brokers.config,
        proxy: &cr.spec.proxies.config,
    })
    .unwrap_or_else(|e| format!("# spec.brokers.config or spec.proxies.config: {e}\n"));
    format!("# Written by floe-operator from spec.brokers.config and spec.proxies.config.\n{body}")
}

fn controller_args(cr: &FloeCluster) -> Vec<String> {
    let s = &cr.spec.storage;
    let mut args = vec!["controller".to_string()];
    // The pool is seeded from these once (while etcd has none); later
    // target changes go through the admin API.
    for t in &s.targets {
        let mut url = t.url.clone();
        let mut params = Vec::new();
        if let Some(z) = &t.zone {
            params.push(format!("zone={z}"));
        }
        if let Some(w) = t.weight {
            params.push(format!("weight={w}"));
        }
        if !params.is_empty() {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&params.join("&"));
        }
        args.push(format!("--storage={url}"));
    }
    args.push(format!("--replicas={}", s.replicas));
    args.push(format!("--write-quorum={}", s.write_quorum));
    args.push(format!(
        "--lease-ttl-ms={}",
        cr.spec.lease_ttl_ms.unwrap_or(10_000)
    ));
    args
}

/// Every object of the cluster, with `brokers` broker pods.
pub fn desired(cr: &FloeCluster, brokers: i32) -> Vec<Value> {
    let n = Names::of(cr);
    let spec = &cr.spec;
    let admin_port = spec.admin.port.unwrap_or(ADMIN_PORT);
    let config_toml = floe_toml(cr);
    // Each workload restarts for its own section only.
    let broker_config_hash = hash_hex(&json!(spec.brokers.config));
    let proxy_config_hash = hash_hex(&json!(spec.proxies.config));
    let config_volume = json!([{"name": "config", "configMap": {"name": n.config()}}]);
    let config_mount = json!([{"name": "config", "mountPath": "/etc/floe", "readOnly": true}]);
    let mut out = Vec::new();

    if spec.service_account_name.is_none() {
        out.push(json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": metadata(cr, &n, &n.full, None),
            "automountServiceAccountToken": false,
        }));
    }
    out.push(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(cr, &n, &n.config(), None),
        "data": {"floe.toml": config_toml},
    }));

    if let Some(m) = &spec.etcd.managed {
        out.extend(managed_etcd(cr, &n, m));
    }

    // Brokers.
    let broker = container(
        cr,
        "broker",
        vec!["broker".into()],
        vec![
            json!({"name": "FLOE_BROKER_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}}}),
            json!({"name": "FLOE_LISTEN", "value": format!("0.0.0.0:{BROKER_KAFKA_PORT}")}),
            json!({"name": "FLOE_ADVERTISE", "value": format!("$(POD_IP):{BROKER_KAFKA_PORT}")}),
            json!({"name": "FLOE_TAIL_LISTEN", "value": format!("0.0.0.0:{BROKER_TAIL_PORT}")}),
            json!({"name": "FLOE_HTTP_LISTEN", "value": format!("0.0.0.0:{BROKER_HTTP_PORT}")}),
            json!({"name": "FLOE_CONFIG", "value": "/etc/floe/floe.toml"}),
        ],
        json!([
            {"name": "kafka", "containerPort": BROKER_KAFKA_PORT},
            {"name": "tail", "containerPort": BROKER_TAIL_PORT},
            {"name": "http", "containerPort": BROKER_HTTP_PORT},
        ]),
        spec.brokers.resources.as_ref(),
        config_mount.clone(),
    );
    let mut broker_pod = pod_spec(
        cr,
        &n,
        "broker",
        &spec.brokers.placement,
        broker,
        config_volume.clone(),
    );
    broker_pod["terminationGracePeriodSeconds"] =
        json!(spec.brokers.termination_grace_period_seconds.unwrap_or(60));
    out.push(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(cr, &n, &n.broker(), Some("broker")),
        "spec": {
            "serviceName": n.broker(),
            "replicas": brokers,
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "OnDelete"},
            "selector": {"matchLabels": selector(&n, "broker")},
            "template": template(&n, "broker", broker_pod, &[("checksum/config", broker_config_hash)]),
        },
    }));
    out.push(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(cr, &n, &n.broker(), Some("broker")),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": true,
            "selector": selector(&n, "broker"),
            "ports": [
                {"name": "kafka", "port": BROKER_KAFKA_PORT, "targetPort": "kafka"},
                {"name": "http", "port": BROKER_HTTP_PORT, "targetPort": "http"},
            ],
        },
    }));
    out.push(json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(cr, &n, &n.broker(), Some("broker")),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(&n, "broker")}},
    }));

    // Controllers.
    let mut controller_env = vec![
        json!({"name": "FLOE_CONTROLLER_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        json!({"name": "FLOE_HTTP_LISTEN", "value": format!("0.0.0.0:{CONTROLLER_HTTP_PORT}")}),
        json!({"name": "FLOE_ADMIN_LISTEN", "value": format!("0.0.0.0:{admin_port}")}),
        json!({"name": "FLOE_BALANCE_ON_JOIN", "value": spec.controllers.balance_on_join.to_string()}),
        json!({"name": "FLOE_ADMIN_TOKEN_FILE", "value": "/etc/floe/admin/token"}),
    ];
    if spec.admin.console {
        controller_env.push(json!({"name": "FLOE_CONSOLE", "value": "true"}));
    }
    let controller = container(
        cr,
        "controller",
        controller_args(cr),
        controller_env,
        json!([
            {"name": "http", "containerPort": CONTROLLER_HTTP_PORT},
            {"name": "admin", "containerPort": admin_port},
        ]),
        spec.controllers.resources.as_ref(),
        json!([{"name": "admin-token", "mountPath": "/etc/floe/admin", "readOnly": true}]),
    );
    let controller_pod = pod_spec(
        cr,
        &n,
        "controller",
        &spec.controllers.placement,
        controller,
        json!([{"name": "admin-token", "secret": {
            "secretName": spec.admin.token_secret,
            "items": [{"key": "token", "path": "token"}],
        }}]),
    );
    out.push(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(cr, &n, &n.controller(), Some("controller")),
        "spec": {
            "replicas": spec.controllers.replicas,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "selector": {"matchLabels": selector(&n, "controller")},
            "template": template(&n, "controller", controller_pod, &[]),
        },
    }));
    out.push(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(cr, &n, &n.controller(), Some("controller")),
        "spec": {
            "selector": selector(&n, "controller"),
            "ports": [
                {"name": "admin", "port": admin_port, "targetPort": "admin"},
                {"name": "http", "port": CONTROLLER_HTTP_PORT, "targetPort": "http"},
            ],
        },
    }));

    // Proxies.
    let port = spec.proxies.port;
    let proxy = container(
        cr,
        "proxy",
        vec!["proxy".into()],
        vec![
            json!({"name": "FLOE_LISTEN", "value": format!("0.0.0.0:{port}")}),
            json!({"name": "FLOE_ADVERTISE", "value": format!("$(POD_IP):{port}")}),
            json!({"name": "FLOE_HTTP_LISTEN", "value": format!("0.0.0.0:{PROXY_HTTP_PORT}")}),
            json!({"name": "FLOE_CONFIG", "value": "/etc/floe/floe.toml"}),
        ],
        json!([
            {"name": "kafka", "containerPort": port},
            {"name": "http", "containerPort": PROXY_HTTP_PORT},
        ]),
        spec.proxies.resources.as_ref(),
        config_mount,
    );
    let mut proxy_pod = pod_spec(
        cr,
        &n,
        "proxy",
        &spec.proxies.placement,
        proxy,
        config_volume,
    );
    proxy_pod["terminationGracePeriodSeconds"] = json!(30);
    out.push(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(cr, &n, &n.proxy(), Some("proxy")),
        "spec": {
            "replicas": spec.proxies.replicas,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "selector": {"matchLabels": selector(&n, "proxy")},
            "template": template(&n, "proxy", proxy_pod, &[("checksum/config", proxy_config_hash)]),
        },
    }));
    let mut svc_meta = metadata(cr, &n, &n.proxy(), Some("proxy"));
    if !spec.proxies.service_annotations.is_empty() {
        svc_meta["annotations"] = json!(spec.proxies.service_annotations);
    }
    out.push(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": svc_meta,
        "spec": {
            "type": spec.proxies.service_type.as_deref().unwrap_or("ClusterIP"),
            "selector": selector(&n, "proxy"),
            "ports": [
                {"name": "kafka", "port": port, "targetPort": "kafka"},
                {"name": "http", "port": PROXY_HTTP_PORT, "targetPort": "http"},
            ],
        },
    }));
    out.push(json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(cr, &n, &n.proxy(), Some("proxy")),
        "spec": {
            "minAvailable": if spec.proxies.replicas > 1 { 1 } else { 0 },
            "selector": {"matchLabels": selector(&n, "proxy")},
        },
    }));
    out
}

/// The managed etcd: a StatefulSet (a member and a volume per pod), its
/// headless Service and a disruption budget of one — as the chart's
/// bundled etcd.
fn managed_etcd(cr: &FloeCluster, n: &Names, m: &crate::crd::ManagedEtcd) -> Vec<Value> {
    let name = n.etcd();
    let ns = &n.namespace;
    let peers: Vec<String> = (0..m.replicas)
        .map(|i| format!("{name}-{i}=http://{name}-{i}.{name}.{ns}.svc:2380"))
        .collect();
    let sel = selector(n, "etcd");
    let mut container = json!({
        "name": "etcd",
        "image": m.image.as_deref().unwrap_or("quay.io/coreos/etcd:v3.5.17"),
        "imagePullPolicy": "IfNotPresent",
        "command": ["etcd"],
        "args": [
            "--name=$(POD_NAME)",
            "--data-dir=/var/lib/etcd",
            "--listen-client-urls=http://0.0.0.0:2379",
            format!("--advertise-client-urls=http://$(POD_NAME).{name}.{ns}.svc:2379"),
            "--listen-peer-urls=http://0.0.0.0:2380",
            format!("--initial-advertise-peer-urls=http://$(POD_NAME).{name}.{ns}.svc:2380"),
            format!("--initial-cluster={}", peers.join(",")),
            "--initial-cluster-state=new",
            format!("--initial-cluster-token={name}"),
        ],
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "ports": [
            {"name": "client", "containerPort": 2379},
            {"name": "peer", "containerPort": 2380},
        ],
        "readinessProbe": {"httpGet": {"path": "/health", "port": "client"}, "periodSeconds": 5},
        "securityContext": container_security(),
        "volumeMounts": [{"name": "data", "mountPath": "/var/lib/etcd"}],
    });
    if let Some(r) = &m.resources {
        container["resources"] = serde_json::to_value(r).expect("resources serialize");
    }
    let mut claim = json!({
        "metadata": {"name": "data"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": m.storage_size.as_deref().unwrap_or("8Gi")}},
        },
    });
    if let Some(class) = &m.storage_class_name {
        claim["spec"]["storageClassName"] = json!(class);
    }
    let pod = json!({
        "securityContext": pod_security(),
        "topologySpreadConstraints": zone_spread(&sel),
        "containers": [container],
    });
    vec![
        json!({
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": metadata(cr, n, &name, Some("etcd")),
            "spec": {
                "serviceName": name,
                "replicas": m.replicas,
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": sel},
                "template": template(n, "etcd", pod, &[]),
                "volumeClaimTemplates": [claim],
            },
        }),
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(cr, n, &name, Some("etcd")),
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": true,
                "selector": sel,
                "ports": [
                    {"name": "client", "port": 2379, "targetPort": "client"},
                    {"name": "peer", "port": 2380, "targetPort": "peer"},
                ],
            },
        }),
        json!({
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": metadata(cr, n, &name, Some("etcd")),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": sel}},
        }),
    ]
}

/// The template hash the broker pods should carry.
pub fn broker_template_hash(objects: &[Value]) -> Option<String> {
    objects
        .iter()
        .find(|o| {
            o["kind"] == "StatefulSet"
                && o["metadata"]["labels"]["app.kubernetes.io/component"] == "broker"
        })
        .and_then(|o| o["spec"]["template"]["metadata"]["annotations"][TEMPLATE_HASH].as_str())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::cluster;
    use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
    use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use serde::Deserialize;

    /// Compares with operator/tests/golden/NAME.yaml (UPDATE_GOLDEN=1
    /// writes it).
    fn golden(name: &str, objects: &[Value]) {
        let text: String = objects
            .iter()
            .map(|o| format!("---\n{}", serde_yaml_ng::to_string(o).unwrap()))
            .collect();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(format!("{name}.yaml"));
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &text).unwrap();
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
        assert!(
            want == text,
            "{name}: rendered objects differ from {} (UPDATE_GOLDEN=1 rewrites it)",
            path.display()
        );
    }

    /// Every object parses as its Kubernetes type (unknown fields refused).
    fn typed(objects: &[Value]) {
        for o in objects {
            let kind = o["kind"].as_str().unwrap();
            let text = o.to_string();
            let r = match kind {
                "StatefulSet" => serde_json::from_str::<StatefulSet>(&text).map(drop),
                "Deployment" => serde_json::from_str::<Deployment>(&text).map(drop),
                "Service" => serde_json::from_str::<Service>(&text).map(drop),
                "ConfigMap" => serde_json::from_str::<ConfigMap>(&text).map(drop),
                "ServiceAccount" => serde_json::from_str::<ServiceAccount>(&text).map(drop),
                "PodDisruptionBudget" => {
                    serde_json::from_str::<PodDisruptionBudget>(&text).map(drop)
                }
                k => panic!("unexpected kind {k}"),
            };
            r.unwrap_or_else(|e| panic!("{kind}: {e}"));
        }
    }

    #[test]
    fn the_default_cluster_renders_as_the_golden_file() {
        let cr = cluster("floe", crate::testing::spec());
        let objects = desired(&cr, 3);
        typed(&objects);
        golden("default", &objects);
        let kinds: Vec<&str> = objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            [
                "ServiceAccount",
                "ConfigMap",
                "StatefulSet",
                "Service",
                "PodDisruptionBudget",
                "Deployment",
                "Service",
                "Deployment",
                "Service",
                "PodDisruptionBudget"
            ]
        );
        let sts = &objects[2];
        assert_eq!(sts["metadata"]["name"], "floe-broker");
        assert_eq!(sts["spec"]["replicas"], 3);
        assert_eq!(sts["spec"]["updateStrategy"]["type"], "OnDelete");
        // Every object is owned by the FloeCluster.
        for o in &objects {
            assert_eq!(o["metadata"]["ownerReferences"][0]["uid"], "uid-1", "{o}");
        }
    }

    #[test]
    fn a_tuned_cluster_renders_as_the_golden_file() {
        let mut spec = crate::testing::spec();
        spec.image = "registry.example.com/floe:0.2.0".into();
        spec.proxies.replicas = 3;
        spec.proxies.port = 19092;
        spec.proxies.service_type = Some("LoadBalancer".into());
        spec.brokers
            .config
            .insert("load_report_interval_ms".into(), json!(2000));
        spec.brokers.placement.node_selector =
            BTreeMap::from([("floe.dev/pool".to_string(), "brokers".to_string())]);
        spec.storage.credentials_secret = Some("floe-s3".into());
        spec.storage.targets[0].weight = Some(2);
        spec.lease_ttl_ms = Some(6000);
        spec.admin.console = true;
        let cr = cluster("prod", spec);
        let objects = desired(&cr, 5);
        typed(&objects);
        golden("tuned", &objects);
        assert_eq!(objects[2]["metadata"]["name"], "prod-floe-broker");
        let env = &objects[5]["spec"]["template"]["spec"]["containers"][0]["env"];
        assert!(
            env.as_array()
                .unwrap()
                .contains(&json!({"name": "FLOE_CONSOLE", "value": "true"})),
            "admin.console: {env}"
        );
        let args = &objects[5]["spec"]["template"]["spec"]["containers"][0]["args"];
        assert_eq!(
            args[1],
            "--storage=s3://floe-a/c1?region=eu-west-1&zone=a&weight=2"
        );
        assert!(objects[1]["data"]["floe.toml"]
            .as_str()
            .unwrap()
            .contains("[broker]\nload_report_interval_ms = 2000\n"));
    }

    #[test]
    fn an_iam_bound_pinned_cluster_renders_as_the_golden_file() {
        let mut spec = crate::testing::spec();
        spec.service_account_name = Some("floe-irsa".into());
        spec.controllers.replicas = 3;
        spec.brokers.placement.tolerations = vec![serde_json::from_value(json!({
            "key": "dedicated", "operator": "Equal", "value": "floe", "effect": "NoSchedule"
        }))
        .unwrap()];
        spec.proxies.placement.affinity = Some(
            serde_json::from_value(json!({"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "edge", "operator": "In", "values": ["true"]}]}
                ]}
            }}))
            .unwrap(),
        );
        spec.brokers.autoscaling = Some(crate::crd::Autoscaling {
            min_brokers: 3,
            max_brokers: 12,
            target_bytes_in_per_broker: 50_000_000,
            cooldown_seconds: None,
        });
        spec.log_level = Some("floe=debug,info".into());
        spec.etcd.endpoints.clear();
        spec.etcd.managed = Some(crate::crd::ManagedEtcd {
            replicas: 3,
            image: None,
            storage_size: Some("20Gi".into()),
            storage_class_name: Some("gp3".into()),
            resources: None,
        });
        let cr = cluster("floe-prod", spec);
        let objects = desired(&cr, 3);
        typed(&objects);
        golden("iam-pinned", &objects);
        // An existing ServiceAccount is used, not made.
        assert!(!objects.iter().any(|o| o["kind"] == "ServiceAccount"));
        for o in objects.iter().filter(|o| {
            o["spec"]["template"].is_object()
                && o["metadata"]["labels"]["app.kubernetes.io/component"] != "etcd"
        }) {
            assert_eq!(
                o["spec"]["template"]["spec"]["serviceAccountName"],
                "floe-irsa"
            );
        }
        // The managed etcd, and every process pointed at its members.
        assert_eq!(objects[1]["metadata"]["name"], "floe-prod-etcd");
        assert_eq!(
            objects[1]["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"],
            "gp3"
        );
        let broker = objects
            .iter()
            .find(|o| o["metadata"]["name"] == "floe-prod-broker" && o["kind"] == "StatefulSet")
            .unwrap();
        assert_eq!(
            broker["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"],
            "http://floe-prod-etcd-0.floe-prod-etcd.streaming.svc:2379,http://floe-prod-etcd-1.floe-prod-etcd.streaming.svc:2379,http://floe-prod-etcd-2.floe-prod-etcd.streaming.svc:2379"
        );
    }

    /// The chart (deploy/helm/floe, its golden rendering of
    /// ci/minimal-external-etcd.yaml) and the operator, given the same
    /// cluster, run the same containers: one shape of the workloads.
    #[test]
    fn the_operator_runs_the_same_containers_as_the_chart() {
        use k8s_openapi::api::core::v1::ResourceRequirements;
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/helm/floe/golden/minimal-external-etcd.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let chart: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
            .filter_map(|d| Value::deserialize(d).ok())
            .filter(|v| v.is_object())
            .collect();
        let resources =
            |req_cpu: &str, req_mem: &str, lim_mem: &str| -> Option<ResourceRequirements> {
                serde_json::from_value(json!({
                    "requests": {"cpu": req_cpu, "memory": req_mem},
                    "limits": {"memory": lim_mem},
                }))
                .ok()
            };
        let mut spec = crate::testing::spec();
        spec.etcd.endpoints = vec!["http://etcd.infra.svc:2379".into()];
        spec.storage.targets.truncate(1);
        spec.storage.targets[0].url = "s3://floe-data/cluster-1?region=eu-west-1".into();
        spec.storage.targets[0].zone = None;
        spec.storage.replicas = 1;
        spec.storage.write_quorum = 1;
        spec.storage.credentials_secret = Some("floe-s3".into());
        spec.brokers.resources = resources("1", "2Gi", "4Gi");
        spec.controllers.resources = resources("100m", "128Mi", "512Mi");
        spec.proxies.resources = resources("500m", "1Gi", "2Gi");
        let ours = desired(&cluster("floe", spec), 3);
        let find = |set: &[Value], kind: &str, name: &str| -> Value {
            set.iter()
                .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
                .cloned()
                .unwrap_or_else(|| panic!("no {kind} {name}"))
        };
        for (kind, name) in [
            ("StatefulSet", "floe-broker"),
            ("Deployment", "floe-controller"),
            ("Deployment", "floe-proxy"),
        ] {
            let (a, b) = (find(&chart, kind, name), find(&ours, kind, name));
            assert_eq!(
                a["spec"]["replicas"], b["spec"]["replicas"],
                "{name} replicas"
            );
            let (pa, pb) = (
                &a["spec"]["template"]["spec"],
                &b["spec"]["template"]["spec"],
            );
            for field in [
                "serviceAccountName",
                "securityContext",
                "topologySpreadConstraints",
                "affinity",
                "volumes",
                "terminationGracePeriodSeconds",
            ] {
                assert_eq!(pa[field], pb[field], "{name}: pod {field}");
            }
            let (ca, cb) = (&pa["containers"][0], &pb["containers"][0]);
            assert!(
                ca["env"].as_array().is_some_and(|e| e.len() >= 5) && ca["args"].is_array(),
                "{name}: the chart's container did not parse: {ca}"
            );
            for field in [
                "name",
                "image",
                "imagePullPolicy",
                "args",
                "env",
                "envFrom",
                "ports",
                "livenessProbe",
                "readinessProbe",
                "resources",
                "securityContext",
                "volumeMounts",
            ] {
                assert_eq!(ca[field], cb[field], "{name}: container {field}");
            }
        }
        for name in ["floe-broker", "floe-controller", "floe-proxy"] {
            let (a, b) = (find(&chart, "Service", name), find(&ours, "Service", name));
            for field in [
                "clusterIP",
                "publishNotReadyAddresses",
                "type",
                "selector",
                "ports",
            ] {
                assert_eq!(
                    a["spec"][field], b["spec"][field],
                    "Service {name}: {field}"
                );
            }
        }
    }

    #[test]
    fn the_broker_template_hash_follows_the_image_and_only_what_pods_run() {
        let cr = cluster("floe", crate::testing::spec());
        let a = broker_template_hash(&desired(&cr, 3)).unwrap();
        // The broker count is not part of the pods.
        assert_eq!(broker_template_hash(&desired(&cr, 5)).unwrap(), a);
        let mut cr2 = cr.clone();
        cr2.spec.image = "ghcr.io/floe-streaming/floe:0.2.0".into();
        assert_ne!(broker_template_hash(&desired(&cr2, 3)).unwrap(), a);
        // A proxy-only change leaves brokers alone, its config included.
        let mut cr3 = cr.clone();
        cr3.spec.proxies.replicas = 4;
        cr3.spec
            .proxies
            .config
            .insert("produce_hold_ms".into(), json!(250));
        assert_eq!(broker_template_hash(&desired(&cr3, 3)).unwrap(), a);
        // A broker config change restarts brokers.
        let mut cr4 = cr.clone();
        cr4.spec
            .brokers
            .config
            .insert("load_report_interval_ms".into(), json!(2000));
        assert_ne!(broker_template_hash(&desired(&cr4, 3)).unwrap(), a);
    }
}
