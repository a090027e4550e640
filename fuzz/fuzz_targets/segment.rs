//! Fuzz target `segment`: see `floe_fuzz::segment`.
#![no_main]

#[global_allocator]
static ALLOC: floe_fuzz::Bounded = floe_fuzz::Bounded;

libfuzzer_sys::fuzz_target!(|data: &[u8]| floe_fuzz::segment(data));
