//! `floectl`: the operator's CLI for the controller's admin API. Human
//! tables by default, `-o json` for scripts; clear errors and distinct exit
//! codes (2 unreachable controller, 3 refused token, 4 not found, 1 other).

mod admin_pb;

use std::path::PathBuf;
use std::process::ExitCode;

use admin_pb::admin_client::AdminClient;
use clap::{Parser, Subcommand, ValueEnum};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

#[derive(Parser)]
#[command(
    name = "floectl",
    version,
    about = "Operate a Floe cluster through its controller"
)]
struct Cli {
    /// The controller's admin API (any controller; writes reach the leader).
    #[arg(
        long,
        env = "FLOECTL_CONTROLLER",
        default_value = "http://127.0.0.1:9647",
        global = true
    )]
    controller: String,
    /// Bearer token of the admin API.
    #[arg(long, env = "FLOE_ADMIN_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// File holding the bearer token.
    #[arg(long, env = "FLOE_ADMIN_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Brokers, proxies, controllers, storage targets and partition states.
    Status,
    /// Topics and their configs.
    Topics,
    /// One topic's partitions: owner, epoch, state, segments.
    Topic { name: String },
    /// Broker operations.
    Broker {
        #[command(subcommand)]
        op: BrokerOp,
    },
    /// Move a partition to a broker (no data is copied); waits until the
    /// new owner writes it.
    Move {
        topic: String,
        partition: i32,
        /// The broker to move it to.
        #[arg(long)]
        to: i32,
        /// How long to wait for the new owner (ms).
        #[arg(long, default_value_t = 30_000)]
        timeout_ms: u32,
    },
}

#[derive(Subcommand)]
enum BrokerOp {
    /// Move every partition off a broker and give it none (each move a
    /// release and an acquire, nothing copied); it can then be stopped.
    Drain {
        broker: i32,
        /// Wait until the broker writes no partition.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long (ms).
        #[arg(long, default_value_t = 300_000)]
        timeout_ms: u64,
    },
    /// Make a drained broker take partitions again.
    Undrain { broker: i32 },
}

struct Failure {
    code: u8,
    message: String,
}

impl From<Status> for Failure {
    fn from(s: Status) -> Self {
        let code = match s.code() {
            Code::Unauthenticated | Code::PermissionDenied => 3,
            Code::NotFound => 4,
            Code::Unavailable if s.message().contains("connect") => 2,
            _ => 1,
        };
        Failure {
            code,
            message: format!("{:?}: {}", s.code(), s.message()),
        }
    }
}

fn fail(code: u8, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect()) + "\n";
    for r in rows {
        out += &(line(r) + "\n");
    }
    out
}

fn json(v: &impl serde::Serialize) -> Result<String, Failure> {
    serde_json::to_string_pretty(v)
        .map(|s| s + "\n")
        .map_err(|e| fail(1, e.to_string()))
}

async fn run(cli: Cli) -> Result<String, Failure> {
    let token = match (&cli.token, &cli.token_file) {
        (Some(t), _) => t.trim().to_string(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .map_err(|e| fail(1, format!("reading the token file {}: {e}", f.display())))?
            .trim()
            .to_string(),
        (None, None) => String::new(),
    };
    let channel = Channel::from_shared(cli.controller.clone())
        .map_err(|e| fail(1, format!("bad --controller {:?}: {e}", cli.controller)))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| {
            fail(
                2,
                format!("cannot reach the controller at {}: {e}", cli.controller),
            )
        })?;
    let bearer: MetadataValue<_> = format!("Bearer {token}")
        .parse()
        .map_err(|_| fail(1, "the token has characters a header cannot carry"))?;
    let mut client = AdminClient::with_interceptor(channel, move |mut r: Request<()>| {
        r.metadata_mut().insert("authorization", bearer.clone());
        Ok(r)
    });
    let json_out = cli.output == Output::Json;
    match cli.command {
        Command::Status => {
            let s = client
                .get_cluster_status(admin_pb::ClusterStatusRequest {})
                .await?
                .into_inner();
            if json_out {
                return json(&s);
            }
            let mut out = format!(
                "cluster {}: {} topics, {} partitions; storage R={} W={}\n\n",
                s.cluster_id, s.topics, s.partitions, s.replicas, s.write_quorum
            );
            out += &table(
                &["BROKER", "ADDRESS", "PARTITIONS", "DRAINED", "TAIL"],
                s.brokers
                    .iter()
                    .map(|b| {
                        vec![
                            b.id.to_string(),
                            b.address.clone(),
                            b.partitions.to_string(),
                            b.drained.to_string(),
                            b.tail.clone(),
                        ]
                    })
                    .collect(),
            );
            out += "\n";
            out += &table(
                &["PROXY", "ADDRESS"],
                s.proxies
                    .iter()
                    .map(|p| vec![p.id.to_string(), p.address.clone()])
                    .collect(),
            );
            out += "\n";
            out += &table(
                &["CONTROLLER", "HTTP", "LEADER"],
                s.controllers
                    .iter()
                    .map(|c| vec![c.id.clone(), c.http.clone(), c.leader.to_string()])
                    .collect(),
            );
            out += "\n";
            out += &table(
                &["TARGET", "URL", "ZONE", "WEIGHT"],
                s.storage_targets
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.url.clone(),
                            t.zone.clone(),
                            t.weight.to_string(),
                        ]
                    })
                    .collect(),
            );
            out += "\n";
            out += &table(
                &["STATE", "PARTITIONS"],
                s.partition_states
                    .iter()
                    .map(|c| vec![c.state.clone(), c.partitions.to_string()])
                    .collect(),
            );
            Ok(out)
        }
        Command::Topics => {
            let l = client
                .list_topics(admin_pb::ListTopicsRequest {})
                .await?
                .into_inner();
            if json_out {
                return json(&l);
            }
            Ok(table(
                &["TOPIC", "PARTITIONS", "ID", "CONFIGS"],
                l.topics
                    .iter()
                    .map(|t| {
                        let mut configs: Vec<_> = t.configs.iter().collect();
                        configs.sort();
                        vec![
                            t.name.clone(),
                            t.partitions.to_string(),
                            t.id.clone(),
                            configs
                                .iter()
                                .map(|(k, v)| format!("{k}={v}"))
                                .collect::<Vec<_>>()
                                .join(","),
                        ]
                    })
                    .collect(),
            ))
        }
        Command::Topic { name } => {
            let d = client
                .describe_topic(admin_pb::DescribeTopicRequest { name })
                .await?
                .into_inner();
            if json_out {
                return json(&d);
            }
            Ok(table(
                &[
                    "PARTITION",
                    "OWNER",
                    "EPOCH",
                    "STATE",
                    "ASSIGNED",
                    "LOG START",
                    "CHECKPOINT END",
                    "SEALED",
                    "OPEN",
                ],
                d.partitions
                    .iter()
                    .map(|p| {
                        vec![
                            p.partition.to_string(),
                            p.owner.to_string(),
                            p.epoch.to_string(),
                            p.state.clone(),
                            p.assigned.to_string(),
                            p.log_start_offset.to_string(),
                            p.checkpoint_next_offset.to_string(),
                            p.sealed_segments.to_string(),
                            p.open_segments.to_string(),
                        ]
                    })
                    .collect(),
            ))
        }
        Command::Broker {
            op: BrokerOp::Undrain { broker },
        } => {
            let r = client
                .undrain_broker(admin_pb::BrokerRequest { broker })
                .await?
                .into_inner();
            if json_out {
                return json(&r);
            }
            Ok(format!(
                "broker {broker} undrained: it takes its share of partitions again\n"
            ))
        }
        Command::Broker {
            op:
                BrokerOp::Drain {
                    broker,
                    wait,
                    timeout_ms,
                },
        } => {
            let started = std::time::Instant::now();
            let mut r = client
                .drain_broker(admin_pb::BrokerRequest { broker })
                .await?
                .into_inner();
            let total = r.partitions;
            while wait && r.partitions > 0 {
                if started.elapsed().as_millis() as u64 > timeout_ms {
                    return Err(fail(
                        1,
                        format!(
                            "broker {broker} still writes {} partitions after {timeout_ms} ms",
                            r.partitions
                        ),
                    ));
                }
                if !json_out {
                    eprint!(
                        "\rdraining broker {broker}: {}/{total} partitions moved",
                        total - r.partitions.min(total)
                    );
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                let s = client
                    .get_cluster_status(admin_pb::ClusterStatusRequest {})
                    .await?
                    .into_inner();
                r.partitions = s
                    .brokers
                    .iter()
                    .find(|b| b.id == broker)
                    .map_or(0, |b| b.partitions);
            }
            if wait && !json_out {
                eprintln!("\rdraining broker {broker}: {total}/{total} partitions moved");
            }
            if json_out {
                return json(&r);
            }
            Ok(if wait {
                format!(
                    "broker {broker} drained in {:.1} s: it writes no partition and can be stopped\n",
                    started.elapsed().as_secs_f64()
                )
            } else {
                format!(
                    "broker {broker} draining: {} partitions to move (floectl status shows progress)\n",
                    r.partitions
                )
            })
        }
        Command::Move {
            topic,
            partition,
            to,
            timeout_ms,
        } => {
            let r = client
                .move_partition(admin_pb::MovePartitionRequest {
                    topic: topic.clone(),
                    partition,
                    broker: to,
                    timeout_ms,
                })
                .await?
                .into_inner();
            if json_out {
                return json(&r);
            }
            Ok(format!(
                "moved {topic}/{partition} to broker {to}: epoch {}, written there after {} ms\n",
                r.epoch, r.took_ms
            ))
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("floectl: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(f) => {
            eprintln!("floectl: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
