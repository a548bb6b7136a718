//! A sandbox profile's TOML: an error naming file, line and key, or a profile whose
//! limits are the ones the checks promise.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `extends` may name a file; the fuzzer reads none of the host's.
    if text.contains('/') {
        return;
    }
    match nixcell::profile::from_text("fuzz.toml", text) {
        Ok(p) => {
            if let Some(c) = p.limits.cpus {
                assert!(c.is_finite() && c > 0.0 && c <= 1024.0, "cpus {c}");
            }
            for n in [p.limits.pids, p.limits.open_files].into_iter().flatten() {
                assert!(n >= 1);
            }
            assert!(p.filesystem.work_inodes >= 1 && p.filesystem.tmp_inodes >= 1);
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty());
            if let nixcell::profile::ProfileError::Invalid { file, line, .. } = &e {
                assert!(file.ends_with(".toml") && *line >= 1, "{msg}");
                assert!(*line <= text.lines().count().max(1) + 1, "{msg}");
            }
        }
    }
});
