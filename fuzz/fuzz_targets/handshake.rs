//! cargo-fuzz target: see `wsgate::ws::fuzzing::handshake` for the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wsgate::ws::fuzzing::handshake(data);
});
