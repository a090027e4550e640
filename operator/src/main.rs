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
