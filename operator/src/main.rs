//! `floe-operator`: runs the FloeCluster reconcile loop, or prints the CRD.

use clap::{Parser, Subcommand};

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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Crd => print!("{}", floe_operator::crd::crd_yaml()),
    }
    Ok(())
}
