//! Fuzz target `wal`: see `floe_fuzz::wal`.
#![no_main]

#[global_allocator]
static ALLOC: floe_fuzz::Bounded = floe_fuzz::Bounded;

libfuzzer_sys::fuzz_target!(|data: &[u8]| floe_fuzz::wal(data));
