//! One reconcile pass of a `FloeCluster`: validate the spec, observe
//! (the broker StatefulSet and pods, the controller's admin API), plan,
//! apply the rendered objects with server-side apply, carry out the plan's
//! calls, and write the status. Deletion goes through a finalizer that
//! removes proxies, then brokers (each releases its partitions on
//! SIGTERM), then controllers, before the resource goes; the data in the
//! storage pool and etcd is left where it is.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};

use crate::admin::{Admin, AdminError};
use crate::crd::{FloeCluster, FloeClusterStatus};
use crate::plan::{self, Action, Observed, PodView};
use crate::render::{self, Names, TEMPLATE_HASH};
use crate::validate::validate;

/// The finalizer the operator puts on every FloeCluster.
pub const FINALIZER: &str = "floe.dev/cleanup";
/// Field manager of the operator's server-side applies.
pub const MANAGER: &str = "floe-operator";

/// What a pass needs besides the resource.
pub struct Context {
    pub client: Client,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Other(String),
}

/// What a pass ended with: when to look again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub requeue: Duration,
    /// Nothing in progress and everything ready.
    pub settled: bool,
    /// The plan's calls made in this pass.
    pub actions: Vec<Action>,
}

fn api_for(client: &Client, ns: &str, obj: &Value) -> Api<DynamicObject> {
    let (group, version) = match obj["apiVersion"].as_str().unwrap_or("v1").split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (
            String::new(),
            obj["apiVersion"].as_str().unwrap_or("v1").to_string(),
        ),
    };
    let gvk = GroupVersionKind::gvk(&group, &version, obj["kind"].as_str().unwrap_or_default());
    Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk(&gvk))
}

async fn apply(client: &Client, ns: &str, objects: &[Value]) -> Result<(), Error> {
    let pp = PatchParams::apply(MANAGER).force();
    for o in objects {
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        api_for(client, ns, o)
            .patch(name, &pp, &Patch::Apply(o))
            .await?;
    }
    Ok(())
}

fn pod_view(pod: &Pod) -> Option<PodView> {
    let ordinal = pod
        .labels()
        .get("apps.kubernetes.io/pod-index")
        .and_then(|i| i.parse().ok())
        .or_else(|| pod.name_any().rsplit('-').next()?.parse().ok())?;
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    Some(PodView {
        ordinal,
        template_hash: pod
            .annotations()
            .get(TEMPLATE_HASH)
            .cloned()
            .unwrap_or_default(),
        ready,
        terminating: pod.metadata.deletion_timestamp.is_some(),
    })
}

async fn admin_token(client: &Client, ns: &str, secret: &str) -> Result<String, AdminError> {
    let s = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(secret)
        .await
        .map_err(|e| AdminError {
            reason: "AdminTokenMissing",
            message: format!("reading Secret {secret}: {e}"),
        })?
        .ok_or_else(|| AdminError {
            reason: "AdminTokenMissing",
            message: format!("spec.admin.tokenSecret: Secret {secret} does not exist"),
        })?;
    let token = s
        .data
        .as_ref()
        .and_then(|d| d.get("token"))
        .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
        .or_else(|| {
            s.string_data
                .as_ref()
                .and_then(|d| d.get("token"))
                .map(|t| t.trim().to_string())
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(|| AdminError {
            reason: "AdminTokenMissing",
            message: format!("spec.admin.tokenSecret: Secret {secret} has no key `token`"),
        })?;
    Ok(token)
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    old: &[Condition],
) -> Condition {
    let status = if ok { "True" } else { "False" }.to_string();
    let since = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(Timestamp::now()));
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}

async fn write_status(
    api: &Api<FloeCluster>,
    name: &str,
    old: &FloeClusterStatus,
    status: &FloeClusterStatus,
) -> Result<(), Error> {
    // A merge patch merges maps, so what is gone is sent as null: a
    // cleared operation, partition states no longer reported, an
    // operation's fields that are empty now.
    let mut s = serde_json::to_value(status).map_err(|e| Error::Other(e.to_string()))?;
    for key in [
        "operation",
        "segmentsToRepair",
        "lastScaleTime",
        "partitions",
    ] {
        if s.get(key).is_none() {
            s[key] = Value::Null;
        }
    }
    for state in old.partitions.keys() {
        if !status.partitions.contains_key(state) {
            if !s["partitions"].is_object() {
                s["partitions"] = json!({});
            }
            s["partitions"][state] = Value::Null;
        }
    }
    if s["operation"].is_object() {
        for key in ["brokers", "controllerOperations", "fromBrokers"] {
            if s["operation"].get(key).is_none() {
                s["operation"][key] = Value::Null;
            }
        }
    }
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": s })),
    )
    .await?;
    Ok(())
}

async fn ready_replicas(client: &Client, ns: &str, name: &str) -> Result<i32, Error> {
    Ok(Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?
        .and_then(|d| d.status)
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0))
}

/// One pass over `cr`.
pub async fn reconcile(cached: Arc<FloeCluster>, ctx: Arc<Context>) -> Result<Outcome, Error> {
    let client = &ctx.client;
    let ns = cached.namespace().unwrap_or_else(|| "default".into());
    let name = cached.name_any();
    let crs: Api<FloeCluster> = Api::namespaced(client.clone(), &ns);
    // The resource as stored now, not as the watch cache last saw it: the
    // previous pass's status (its operation) must be what this one starts
    // from.
    let Some(cr) = crs.get_opt(&name).await? else {
        return Ok(Outcome {
            requeue: Duration::from_secs(300),
            settled: true,
            actions: vec![],
        });
    };
    let n = Names::of(&cr);
    if cr.metadata.deletion_timestamp.is_some() {
        return cleanup(&cr, &n, client, &crs).await;
    }
    if !cr.finalizers().iter().any(|f| f == FINALIZER) {
        let mut finalizers = cr.finalizers().to_vec();
        finalizers.push(FINALIZER.into());
        crs.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": finalizers}})),
        )
        .await?;
    }
    let generation = cr.metadata.generation;
    let old = cr.status.clone().unwrap_or_default();
    let mut status = FloeClusterStatus {
        observed_generation: generation,
        ..old.clone()
    };

    let invalid = validate(&cr.spec);
    if !invalid.is_empty() {
        let msg = invalid
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        tracing::warn!(cluster = %name, "invalid spec: {msg}");
        status.conditions = vec![
            condition(
                "Degraded",
                true,
                "InvalidSpec",
                msg,
                generation,
                &old.conditions,
            ),
            condition(
                "Progressing",
                false,
                "InvalidSpec",
                "the spec must be fixed first".into(),
                generation,
                &old.conditions,
            ),
            condition(
                "Ready",
                false,
                "InvalidSpec",
                "the spec must be fixed first".into(),
                generation,
                &old.conditions,
            ),
        ];
        write_status(&crs, &name, &old, &status).await?;
        return Ok(Outcome {
            requeue: Duration::from_secs(300),
            settled: false,
            actions: vec![],
        });
    }

    // Observe.
    let sts = Api::<StatefulSet>::namespaced(client.clone(), &ns)
        .get_opt(&n.broker())
        .await?;
    let broker_replicas = sts
        .as_ref()
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.replicas);
    let pods = Api::<Pod>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().labels(&render::selector_query(&n, "broker")))
        .await?;
    let broker_pods: Vec<PodView> = pods.items.iter().filter_map(pod_view).collect();
    let mut admin_error = None;
    let mut admin = None;
    let mut cluster = None;
    if sts.is_some() {
        let endpoint = cr
            .spec
            .admin
            .endpoint
            .clone()
            .unwrap_or_else(|| n.admin_url(cr.spec.admin.port.unwrap_or(render::ADMIN_PORT)));
        let connected = match admin_token(client, &ns, &cr.spec.admin.token_secret).await {
            Ok(token) => Admin::connect(&endpoint, &token).await,
            Err(e) => Err(e),
        };
        match connected {
            Ok(mut a) => match a.observe().await {
                Ok(c) => {
                    cluster = Some(c);
                    admin = Some(a);
                }
                Err(e) => admin_error = Some(e),
            },
            Err(e) => admin_error = Some(e),
        }
    }
    let since_last_scale_s = old
        .last_scale_time
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .map(|t| Timestamp::now().duration_since(t).as_secs().max(0) as u64);
    let seen = Observed {
        broker_replicas,
        broker_pods,
        cluster,
        operation: old.operation.clone(),
        since_last_scale_s,
    };
    let now = Timestamp::now().to_string();

    // Plan and apply.
    let probe = render::desired(&cr, 1);
    let hash = render::broker_template_hash(&probe).unwrap_or_default();
    let mut p = plan::plan(&cr.spec, &seen, &hash, &now);
    let mut failures = Vec::new();
    let mut done = Vec::new();
    if let Err(e) = apply(client, &ns, &render::desired(&cr, p.broker_replicas)).await {
        // Nothing else moves while the objects cannot be applied (e.g. an
        // immutable field changed); the status says why.
        failures.push(AdminError {
            reason: "KubernetesCallFailed",
            message: format!("applying the cluster's objects: {e}"),
        });
        p.actions.clear();
        p.operation = seen.operation.clone();
        p.broker_replicas = seen.broker_replicas.unwrap_or(p.broker_replicas);
    }
    for action in &p.actions {
        let r = match action {
            Action::RestartBroker(id) => Api::<Pod>::namespaced(client.clone(), &ns)
                .delete(&n.broker_pod(*id), &DeleteParams::default())
                .await
                .map(|_| None)
                .map_err(|e| AdminError {
                    reason: "KubernetesCallFailed",
                    message: format!("deleting the pod of broker {id}: {e}"),
                }),
            a => match admin.as_mut() {
                Some(admin) => admin.act(a).await,
                None => continue,
            },
        };
        match r {
            Ok(op_id) => {
                tracing::info!(cluster = %name, ?action, "done");
                done.push(action.clone());
                if let (Some(id), Some(o)) = (op_id, p.operation.as_mut()) {
                    if !o.controller_operations.contains(&id) {
                        o.controller_operations.push(id);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(cluster = %name, ?action, "failed: {e}");
                failures.push(e);
            }
        }
    }

    // A call failed where the plan meant to finish the operation (e.g. the
    // undrains ending a scale-in): it stays, so the next pass does it again.
    if !failures.is_empty() && p.operation.is_none() && seen.operation.is_some() {
        p.operation = seen.operation.clone();
    }

    // Status.
    let c = seen.cluster.as_ref();
    status.brokers = p.broker_replicas;
    status.brokers_ready = seen
        .broker_pods
        .iter()
        .filter(|pod| {
            pod.ready
                && !pod.terminating
                && c.is_some_and(|c| c.brokers.iter().any(|b| b.id == pod.ordinal))
        })
        .count() as i32;
    status.proxies_ready = ready_replicas(client, &ns, &n.proxy()).await?;
    status.controllers_ready = ready_replicas(client, &ns, &n.controller()).await?;
    if let Some(c) = c {
        status.partitions = c
            .partition_states
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect::<BTreeMap<_, _>>();
        status.segments_to_repair = Some(c.segments_to_repair);
    }
    if p.scaled {
        status.last_scale_time = Some(now.clone());
    }
    status.operation = p.operation.clone();
    let mut degraded: Vec<(String, String)> = Vec::new();
    if let Some(e) = &admin_error {
        degraded.push((e.reason.to_string(), e.message.clone()));
    }
    for e in &failures {
        degraded.push((e.reason.to_string(), e.message.clone()));
    }
    for problem in std::mem::take(&mut p.problems) {
        degraded.push(("StorageChangeRefused".into(), problem));
    }
    let all_writing = c.is_some_and(|c| c.all_writing());
    let ready = degraded.is_empty()
        && p.operation.is_none()
        && status.brokers_ready == p.broker_replicas
        && status.proxies_ready >= cr.spec.proxies.replicas
        && all_writing;
    let not_ready_reason = if !degraded.is_empty() {
        (degraded[0].0.clone(), degraded[0].1.clone())
    } else if let Some(o) = &p.operation {
        (
            "OperationInProgress".into(),
            format!("{}: {}", o.kind, o.phase),
        )
    } else if status.brokers_ready < p.broker_replicas {
        (
            "BrokersNotReady".into(),
            format!(
                "{} of {} brokers ready",
                status.brokers_ready, p.broker_replicas
            ),
        )
    } else if status.proxies_ready < cr.spec.proxies.replicas {
        (
            "ProxiesNotReady".into(),
            format!(
                "{} of {} proxies ready",
                status.proxies_ready, cr.spec.proxies.replicas
            ),
        )
    } else {
        (
            "PartitionsNotWriting".into(),
            format!("partitions by state: {:?}", status.partitions),
        )
    };
    status.conditions = vec![
        if ready {
            condition(
                "Ready",
                true,
                "Ready",
                "every broker, proxy and partition is ready".into(),
                generation,
                &old.conditions,
            )
        } else {
            condition(
                "Ready",
                false,
                &not_ready_reason.0,
                not_ready_reason.1.clone(),
                generation,
                &old.conditions,
            )
        },
        match &p.operation {
            Some(o) => condition(
                "Progressing",
                true,
                &camel(&o.kind),
                o.phase.clone(),
                generation,
                &old.conditions,
            ),
            None => condition(
                "Progressing",
                false,
                "Idle",
                "no operation in progress".into(),
                generation,
                &old.conditions,
            ),
        },
        if degraded.is_empty() {
            condition(
                "Degraded",
                false,
                "AsExpected",
                "no problem seen".into(),
                generation,
                &old.conditions,
            )
        } else {
            let msg = degraded
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            condition(
                "Degraded",
                true,
                &degraded[0].0,
                msg,
                generation,
                &old.conditions,
            )
        },
    ];
    write_status(&crs, &name, &old, &status).await?;
    let busy = p.operation.is_some() || !done.is_empty();
    Ok(Outcome {
        requeue: if busy || !ready {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(30)
        },
        settled: ready && !busy,
        actions: done,
    })
}

/// `scale-in` → `ScaleIn`.
fn camel(kind: &str) -> String {
    kind.split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next().map_or(String::new(), |f| {
                f.to_uppercase().collect::<String>() + c.as_str()
            })
        })
        .collect()
}

/// Deletion: proxies, then brokers, then controllers, each waited for;
/// then the finalizer goes and Kubernetes removes the rest by owner.
async fn cleanup(
    cr: &FloeCluster,
    n: &Names,
    client: &Client,
    crs: &Api<FloeCluster>,
) -> Result<Outcome, Error> {
    let ns = &n.namespace;
    let deployments = Api::<Deployment>::namespaced(client.clone(), ns);
    let sts = Api::<StatefulSet>::namespaced(client.clone(), ns);
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let wait = Outcome {
        requeue: Duration::from_secs(2),
        settled: false,
        actions: vec![],
    };
    for (component, is_sts) in [("proxy", false), ("broker", true), ("controller", false)] {
        let name = format!("{}-{component}", n.full);
        let exists = if is_sts {
            sts.get_opt(&name).await?.is_some()
        } else {
            deployments.get_opt(&name).await?.is_some()
        };
        if exists {
            if is_sts {
                sts.delete(&name, &DeleteParams::default()).await?;
            } else {
                deployments.delete(&name, &DeleteParams::default()).await?;
            }
            return Ok(wait);
        }
        let left = pods
            .list(&ListParams::default().labels(&render::selector_query(n, component)))
            .await?;
        if !left.items.is_empty() {
            return Ok(wait);
        }
    }
    let finalizers: Vec<String> = cr
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    crs.patch(
        &cr.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": finalizers}})),
    )
    .await?;
    Ok(Outcome {
        requeue: Duration::from_secs(300),
        settled: true,
        actions: vec![],
    })
}
