//! A project's nixcell.toml: an error naming the file (and a line within it), or a
//! configuration whose limits parsed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("/project/nixcell.toml");
    match nixcell::project::Config::parse(file, text) {
        Ok((_, limits)) => assert!(limits.tmp_size_bytes > 0 || text.contains("tmp_size")),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("nixcell.toml"), "{msg}");
            if let nixcell::project::ProjectError::Config { line, .. } = e {
                assert!(
                    line >= 1 && line <= text.lines().count().max(1) + 1,
                    "{msg}"
                );
            }
        }
    }
});
