//! Any text as an `Authorization` header value.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(c) = sip::header::auth::DigestCredentials::parse(text)
    {
        let _ = c.algorithm();
    }
});
