//! Fuzz target `admin_request`: see `floe_fuzz::admin_request`.
#![no_main]

#[global_allocator]
static ALLOC: floe_fuzz::Bounded = floe_fuzz::Bounded;

libfuzzer_sys::fuzz_target!(|data: &[u8]| floe_fuzz::admin_request(data));
