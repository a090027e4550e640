//! Fuzz target `legacy_message_set`: see `floe_fuzz::legacy_message_set`.
#![no_main]

#[global_allocator]
static ALLOC: floe_fuzz::Bounded = floe_fuzz::Bounded;

libfuzzer_sys::fuzz_target!(|data: &[u8]| floe_fuzz::legacy_message_set(data));
