//! Write the seed inputs of every target under `fuzz/corpus/<target>/`
//! (named `seed-<what>`; inputs the fuzzer found sit beside them).

// Linked for the coverage callbacks the instrumented library calls (this
// program has its own main and never fuzzes).
extern crate libfuzzer_sys;

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let seeds = floe_fuzz::seeds::all();
    for target in floe_fuzz::seeds::targets() {
        let n = seeds.iter().filter(|(t, _, _)| *t == target).count();
        assert!(n > 0, "no seed for {target}");
        std::fs::create_dir_all(root.join(target)).expect("the corpus directory");
    }
    for (target, name, input) in &seeds {
        let path = root.join(target).join(format!("seed-{name}"));
        std::fs::write(&path, input).expect("a seed file");
    }
    println!("{} seeds written under {}", seeds.len(), root.display());
}
