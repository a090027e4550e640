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

const USAGE: &str = "usage: floe-sim [--seed N | --seeds A-B] [--layout wal|partition] \
[--broken ack-before-durable] [-v]

  --seed N        run one seed and print its faults and history
  --seeds A-B     run seeds A to B (inclusive) and print a summary
  --layout L      every seed on shared WAL objects (wal) or per-partition
                  chunks (partition); default: odd seeds wal, even partition
  --broken V      run a deliberately broken broker (the checker must fail)
  -v              log (RUST_LOG, default warn)";

/// What the command line asks for.
struct Args {
    seeds: std::ops::RangeInclusive<u64>,
    broken: Option<floe_sim::Broken>,
    layout: Option<floe_sim::Layout>,
    verbose: bool,
}

/// The command line read, or what is wrong with it (`Ok(None)`: --help).
fn parse(args: &[String]) -> Result<Option<Args>, String> {
    let mut a = Args {
        seeds: 1..=1,
        broken: None,
        layout: None,
        verbose: false,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .map(String::as_str)
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--seed" => {
                let v = value()?;
                let s: u64 = v.parse().map_err(|_| format!("--seed {v}: not a seed"))?;
                a.seeds = s..=s;
                a.verbose = true;
            }
            "--seeds" => {
                let v = value()?;
                let range = v
                    .split_once('-')
                    .and_then(|(x, y)| Some((x.parse::<u64>().ok()?, y.parse::<u64>().ok()?)))
                    .filter(|(x, y)| x <= y);
                let (x, y) = range.ok_or_else(|| format!("--seeds {v}: not a range A-B"))?;
                a.seeds = x..=y;
            }
            "--broken" => {
                a.broken = Some(match value()? {
                    "ack-before-durable" => floe_sim::Broken::AckBeforeDurable,
                    other => return Err(format!("--broken {other}: unknown variant")),
                });
            }
            "--layout" => {
                a.layout = Some(match value()? {
                    "wal" => floe_sim::Layout::Wal,
                    "partition" => floe_sim::Layout::Partition,
                    other => return Err(format!("--layout {other}: wal or partition")),
                });
            }
            "-v" => a.verbose = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Some(a))
}

// A command-line program timing itself in real time: outside the time seam.
#[allow(clippy::disallowed_methods)]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Args {
        seeds,
        broken,
        layout,
        verbose,
    } = match parse(&args) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("floe-sim: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn the_command_line_is_read_or_refused_with_a_reason() {
        let a = parse(&args("--seeds 5-9 --layout wal")).unwrap().unwrap();
        assert_eq!(
            (a.seeds, a.layout, a.verbose),
            (5..=9, Some(floe_sim::Layout::Wal), false)
        );
        let a = parse(&args("--seed 17")).unwrap().unwrap();
        assert_eq!((a.seeds, a.verbose), (17..=17, true));
        assert!(parse(&args("--help")).unwrap().is_none());
        for (bad, why) in [
            ("--seed", "--seed needs a value"),
            ("--seed x", "--seed x: not a seed"),
            ("--seeds 9-5", "--seeds 9-5: not a range A-B"),
            ("--layout disk", "--layout disk: wal or partition"),
            ("--broken lying", "--broken lying: unknown variant"),
            ("--frobnicate", "unknown argument --frobnicate"),
        ] {
            assert_eq!(parse(&args(bad)).err().as_deref(), Some(why), "{bad}");
        }
    }
}
