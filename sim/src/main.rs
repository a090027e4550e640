//! `floe-sim`: run seeds of Floe's deterministic simulation.
//!
//!   floe-sim --seed 17                 one seed, its faults and history
//!   floe-sim --seeds 1-1000            many, a summary, failing seeds
//!   floe-sim --seed 17 --broken ack-before-durable
//!   floe-sim --seeds 1-1000 --layout wal   every seed on shared WAL objects
//!                                          (default: odd seeds wal, even
//!                                          ones per-partition chunks)

/// Log lines stamped with the simulation's elapsed time (real time would
/// differ between two runs of one seed).
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let t = turmoil::sim_elapsed().unwrap_or_default();
        write!(w, "sim+{:>10.3}s", t.as_secs_f64())
    }
}

// A command-line program timing itself in real time: outside the time seam.
#[allow(clippy::disallowed_methods)]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut seeds = 1..=1u64;
    let mut broken = None;
    let mut layout = None;
    let mut verbose = false;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--seed" => {
                let s: u64 = args[i + 1].parse().expect("--seed N");
                seeds = s..=s;
                verbose = true;
                i += 1;
            }
            "--seeds" => {
                let (a, b) = args[i + 1].split_once('-').expect("--seeds A-B");
                seeds = a.parse().expect("A")..=b.parse().expect("B");
                i += 1;
            }
            "--broken" => {
                broken = Some(match args[i + 1].as_str() {
                    "ack-before-durable" => floe_sim::Broken::AckBeforeDurable,
                    other => panic!("unknown broken variant {other}"),
                });
                i += 1;
            }
            "--layout" => {
                layout = Some(match args[i + 1].as_str() {
                    "wal" => floe_sim::Layout::Wal,
                    "partition" => floe_sim::Layout::Partition,
                    other => panic!("unknown layout {other} (wal or partition)"),
                });
                i += 1;
            }
            "-v" => verbose = true,
            other => panic!("unknown argument {other}"),
        }
        i += 1;
    }
    if verbose {
        let _ = tracing_subscriber::fmt()
            .with_timer(SimTime)
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .try_init();
    }
    let started = std::time::Instant::now();
    let (mut runs, mut failed, mut faults, mut records) = (0u64, Vec::new(), 0usize, 0usize);
    let mut simulated = std::time::Duration::ZERO;
    for seed in seeds {
        let mut o = floe_sim::Options::new(seed);
        o.broken = broken;
        if let Some(l) = layout {
            o.layout = l;
        }
        let r = floe_sim::run(&o);
        runs += 1;
        faults += r.faults.len();
        records += r.acked_records;
        simulated += r.sim_elapsed;
        if verbose {
            for f in &r.faults {
                println!("fault {f}");
            }
            for e in &r.exits {
                println!("exit {e}");
            }
            for e in &r.sre {
                println!("{e}");
            }
            println!(
                "{} writer commits checked, {} records consumed",
                r.commits, r.consumed
            );
        }
        if runs % 250 == 0 && !verbose {
            println!(
                "... {runs} seeds, {} failed, {faults} faults, {records} acked records, {:.1} simulated hours, {:.0} s",
                failed.len(),
                simulated.as_secs_f64() / 3600.0,
                started.elapsed().as_secs_f64()
            );
        }
        if !r.ok() {
            println!("seed {seed}: {} violation(s):", r.violations.len());
            for v in r.violations.iter().take(10) {
                println!("  {v}");
            }
            let mut extra = if broken.is_some() {
                " --broken ack-before-durable".to_string()
            } else {
                String::new()
            };
            match layout {
                Some(floe_sim::Layout::Wal) => extra.push_str(" --layout wal"),
                Some(floe_sim::Layout::Partition) => extra.push_str(" --layout partition"),
                None => {}
            }
            println!("  reproduce: scripts/sim.sh --seed {seed}{extra}");
            failed.push(seed);
        }
    }
    let wall = started.elapsed();
    println!(
        "{runs} seeds, {} failed, {faults} faults, {records} acked records, {:.1} simulated hours in {:.1} s ({:.0} seeds/min)",
        failed.len(),
        simulated.as_secs_f64() / 3600.0,
        wall.as_secs_f64(),
        runs as f64 / wall.as_secs_f64() * 60.0
    );
    if !failed.is_empty() {
        std::process::exit(1);
    }
}
