//! `floe-operator`: runs the FloeCluster reconcile loop (`run`), or prints
//! the CRD (`crd`).

use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use floe_operator::crd::FloeCluster;
use floe_operator::reconcile::{reconcile, Context, Error};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client};

#[derive(Parser)]
#[command(
    name = "floe-operator",
    about = "Kubernetes operator for Floe clusters"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the FloeCluster CustomResourceDefinition (YAML).
    Crd,
    /// Delete the FloeClusters of a namespace and wait until they are gone
    /// (the chart's pre-delete hook: the operator, still running, takes
    /// the cluster down in order before Helm removes it).
    DeleteClusters {
        #[arg(long, env = "FLOE_OPERATOR_NAMESPACE")]
        namespace: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
    },
    /// Reconcile FloeClusters (in-cluster config, or the kubeconfig).
    Run {
        /// Only this namespace (default: every namespace).
        #[arg(long, env = "FLOE_OPERATOR_NAMESPACE")]
        namespace: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Crd => print!("{}", floe_operator::crd::crd_yaml()),
        Cmd::DeleteClusters {
            namespace,
            timeout_s,
        } => {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(delete_clusters(&namespace, Duration::from_secs(timeout_s)))?;
        }
        Cmd::Run { namespace } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_env("FLOE_LOG")
                        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
                        .unwrap_or_else(|_| "info".into()),
                )
                .init();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(run(namespace))?;
        }
    }
    Ok(())
}

async fn delete_clusters(namespace: &str, timeout: Duration) -> anyhow::Result<()> {
    use kube::api::{DeleteParams, ListParams};
    let client = Client::try_default().await?;
    let crs = Api::<FloeCluster>::namespaced(client, namespace);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = crs.list(&ListParams::default()).await?.items;
        if left.is_empty() {
            println!("no FloeCluster left in {namespace}");
            return Ok(());
        }
        for cr in &left {
            let name = cr.metadata.name.clone().unwrap_or_default();
            if cr.metadata.deletion_timestamp.is_none() {
                println!("deleting FloeCluster {namespace}/{name}");
                crs.delete(&name, &DeleteParams::default()).await?;
            }
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "FloeClusters still in {namespace} after {timeout:?}: {:?} (is floe-operator running?)",
                left.iter().map(|c| c.metadata.name.clone().unwrap_or_default()).collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn run(namespace: Option<String>) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let (crs, sts, deps) = match &namespace {
        Some(ns) => (
            Api::<FloeCluster>::namespaced(client.clone(), ns),
            Api::<StatefulSet>::namespaced(client.clone(), ns),
            Api::<Deployment>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::<FloeCluster>::all(client.clone()),
            Api::<StatefulSet>::all(client.clone()),
            Api::<Deployment>::all(client.clone()),
        ),
    };
    tracing::info!(
        namespace = namespace.as_deref().unwrap_or("*"),
        "floe-operator started"
    );
    let ctx = Arc::new(Context { client });
    Controller::new(crs, watcher::Config::default())
        .owns(sts, watcher::Config::default())
        .owns(deps, watcher::Config::default())
        .shutdown_on_signal()
        .run(
            |cr, ctx| async move { reconcile(cr, ctx).await.map(|o| Action::requeue(o.requeue)) },
            |_cr, e: &Error, _ctx| {
                tracing::warn!("reconcile failed: {e}");
                Action::requeue(Duration::from_secs(10))
            },
            ctx,
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!("{e}");
            }
        })
        .await;
    Ok(())
}
