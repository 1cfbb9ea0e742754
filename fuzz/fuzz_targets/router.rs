//! cargo-fuzz target: see `wsgate::server::fuzzing::router` for the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wsgate::server::fuzzing::router(data);
});
