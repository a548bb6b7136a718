//! Sizes and durations: no panic on any text; what is shown parses back.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nixcell::units::{human_size, parse_duration, parse_size};

fuzz_target!(|data: &[u8]| {
    if data.len() >= 8 {
        let n = u64::from_le_bytes(data[..8].try_into().unwrap());
        let shown = human_size(n);
        let back = parse_size(&shown).unwrap_or_else(|e| panic!("{shown}: {e}"));
        if !shown.contains('.') {
            // An exact multiple is shown exactly (up to the largest unit's range).
            assert!(back == n || n > 1 << 63, "{n} shown as {shown} read {back}");
        } else {
            // One decimal: within 5% of the value.
            let (a, b) = (n as f64, back as f64);
            assert!(
                (a - b).abs() <= a * 0.05,
                "{n} shown as {shown} read {back}"
            );
        }
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = parse_duration(text) {
        let _ = d.as_secs_f64();
    }
    let _ = parse_size(text);
});
