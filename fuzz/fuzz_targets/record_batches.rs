//! Fuzz target `record_batches`: see `floe_fuzz::record_batches`.
#![no_main]

#[global_allocator]
static ALLOC: floe_fuzz::Bounded = floe_fuzz::Bounded;

libfuzzer_sys::fuzz_target!(|data: &[u8]| floe_fuzz::record_batches(data));
