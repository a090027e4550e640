//! The operator's side of the controller's admin API (the gRPC API
//! floectl uses): what it observes of the cluster, and the calls its plan
//! makes. Errors say what to fix, for the status's conditions.

use std::time::Duration;

use floe_rpc::admin as pb;
use floe_rpc::admin::admin_client::AdminClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::plan::{Action, BrokerView, ClusterView, OpView, TargetView};

/// Why the admin API could not be used, as a condition reason and a
/// message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct AdminError {
    /// `ControllerUnreachable`, `AdminTokenRefused` or `AdminCallFailed`.
    pub reason: &'static str,
    pub message: String,
}

fn from_status(endpoint: &str, what: &str, s: Status) -> AdminError {
    match s.code() {
        Code::Unauthenticated => AdminError {
            reason: "AdminTokenRefused",
            message: format!(
                "the controller at {endpoint} refused the admin token (spec.admin.tokenSecret: the Secret's `token` must be the controllers' token)"
            ),
        },
        Code::Unavailable | Code::DeadlineExceeded => AdminError {
            reason: "ControllerUnreachable",
            message: format!("{what} at {endpoint}: {}", s.message()),
        },
        _ => AdminError {
            reason: "AdminCallFailed",
            message: format!("{what}: {} ({:?})", s.message(), s.code()),
        },
    }
}

type Auth = Box<dyn FnMut(Request<()>) -> Result<Request<()>, Status> + Send + Sync>;

/// A connection to one cluster's admin API.
pub struct Admin {
    client: AdminClient<InterceptedService<Channel, Auth>>,
    endpoint: String,
}

impl Admin {
    /// Connects to `endpoint` (`http://` or `https://` with the system's
    /// roots) with `token`.
    pub async fn connect(endpoint: &str, token: &str) -> Result<Admin, AdminError> {
        let unreachable = |e: String| AdminError {
            reason: "ControllerUnreachable",
            message: format!("cannot reach the controller's admin API at {endpoint}: {e}"),
        };
        let mut ep = Channel::from_shared(endpoint.to_string())
            .map_err(|e| AdminError {
                reason: "AdminCallFailed",
                message: format!("admin endpoint {endpoint:?}: {e}"),
            })?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30));
        if endpoint.starts_with("https://") {
            ep = ep
                .tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots())
                .map_err(|e| unreachable(e.to_string()))?;
        }
        let channel = ep.connect().await.map_err(|e| {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            unreachable(msg)
        })?;
        let bearer: MetadataValue<_> =
            format!("Bearer {}", token.trim())
                .parse()
                .map_err(|_| AdminError {
                    reason: "AdminTokenRefused",
                    message: "the admin token has characters a header cannot carry".into(),
                })?;
        let auth: Auth = Box::new(move |mut r: Request<()>| {
            r.metadata_mut().insert("authorization", bearer.clone());
            Ok(r)
        });
        Ok(Admin {
            client: AdminClient::with_interceptor(channel, auth),
            endpoint: endpoint.to_string(),
        })
    }

    fn err(&self, what: &str, s: Status) -> AdminError {
        from_status(&self.endpoint, what, s)
    }

    /// Brokers, partition states, operations and storage targets.
    pub async fn observe(&mut self) -> Result<ClusterView, AdminError> {
        let status = self
            .client
            .get_cluster_status(pb::ClusterStatusRequest {})
            .await
            .map_err(|s| self.err("reading the cluster status", s))?
            .into_inner();
        let ops = self
            .client
            .list_operations(pb::ListOperationsRequest {})
            .await
            .map_err(|s| self.err("listing operations", s))?
            .into_inner();
        let storage = self
            .client
            .list_storage_targets(pb::ListStorageTargetsRequest {})
            .await
            .map_err(|s| self.err("listing storage targets", s))?
            .into_inner();
        Ok(ClusterView {
            brokers: status
                .brokers
                .iter()
                .map(|b| BrokerView {
                    id: b.id,
                    partitions: b.partitions,
                    drained: b.drained,
                    bytes_in_per_sec: b.bytes_in_per_sec as f64,
                    load_reported: b.load_reported_ms > 0,
                })
                .collect(),
            partition_states: status
                .partition_states
                .iter()
                .map(|s| (s.state.clone(), s.partitions))
                .collect(),
            operations: ops
                .operations
                .iter()
                .map(|o| OpView {
                    id: o.id.clone(),
                    kind: o.kind.clone(),
                    state: o.state.clone(),
                    broker: o.broker,
                })
                .collect(),
            targets: storage
                .targets
                .iter()
                .map(|t| TargetView {
                    id: t.id.clone(),
                    url: t.url.clone(),
                    zone: t.zone.clone(),
                    weight: t.weight,
                    draining: t.draining,
                    segments: t.segments as u64,
                })
                .collect(),
            segments_to_repair: storage.segments_to_repair as u64,
            replicas: storage.replicas,
            write_quorum: storage.write_quorum,
        })
    }

    /// Carries out `action`; the id of the controller operation it
    /// started, if any.
    pub async fn act(&mut self, action: &Action) -> Result<Option<String>, AdminError> {
        let what = format!("{action:?}");
        let r = match action {
            Action::DrainBroker(id) => self
                .client
                .drain_broker(pb::BrokerRequest { broker: *id })
                .await
                .map(|r| r.into_inner().operation.map(|o| o.id)),
            Action::UndrainBroker(id) => self
                .client
                .undrain_broker(pb::BrokerRequest { broker: *id })
                .await
                .map(|_| None),
            Action::StartRebalance => self
                .client
                .start_rebalance(pb::RebalanceRequest::default())
                .await
                .map(|r| r.into_inner().operation.map(|o| o.id)),
            Action::AddTarget(t) => self
                .client
                .add_storage_target(pb::AddStorageTargetRequest {
                    id: t.id.clone(),
                    url: t.url.clone(),
                    zone: t.zone.clone().unwrap_or_default(),
                    weight: t.weight.unwrap_or(1),
                })
                .await
                .map(|_| None),
            Action::DrainTarget(id) => self
                .client
                .drain_storage_target(pb::StorageTargetRequest { id: id.clone() })
                .await
                .map(|_| None),
            Action::UndrainTarget(id) => self
                .client
                .undrain_storage_target(pb::StorageTargetRequest { id: id.clone() })
                .await
                .map(|_| None),
            Action::RemoveTarget(id) => self
                .client
                .remove_storage_target(pb::StorageTargetRequest { id: id.clone() })
                .await
                .map(|_| None),
            Action::RestartBroker(_) => {
                return Err(AdminError {
                    reason: "AdminCallFailed",
                    message: "a broker restart is a Kubernetes call".into(),
                })
            }
        };
        match r {
            Ok(id) => Ok(id),
            // Someone (or an earlier pass) got there first.
            Err(s) if s.code() == Code::AlreadyExists => Ok(None),
            // A rebalance runs already (the controller's balance-on-join,
            // or someone's): that one is followed instead.
            Err(s)
                if s.code() == Code::FailedPrecondition
                    && matches!(action, Action::StartRebalance) =>
            {
                let ops = self
                    .client
                    .list_operations(pb::ListOperationsRequest {})
                    .await
                    .map_err(|s| self.err("listing operations", s))?
                    .into_inner();
                match ops.operations.into_iter().find(|o| {
                    o.kind == "rebalance" && matches!(o.state.as_str(), "pending" | "running")
                }) {
                    Some(o) => Ok(Some(o.id)),
                    None => Err(self.err(&what, s)),
                }
            }
            Err(s) => Err(self.err(&what, s)),
        }
    }
}
