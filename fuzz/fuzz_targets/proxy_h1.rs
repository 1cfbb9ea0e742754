//! cargo-fuzz target: see `wsgate::server::fuzzing::proxy_h1` for the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wsgate::server::fuzzing::proxy_h1(data);
});
