//! Attacks on the host side of a run: what a cell leaves in its copy-on-write workdir
//! (sizes, names, links) is hostile input for nixcell applying it back, listing it
//! and undoing it. Root and rootless.

mod common;

use common::*;
use std::os::unix::fs::MetadataExt;
use std::process::Output;

fn run(mode: Mode, wd: &std::path::Path, script: &str) -> Output {
    sh(mode, &["--json", "--workdir", path_str(wd)], script)
}

/// A sparse file costs the cell nothing in its capped layer, whatever its apparent
/// size; applied back it must cost the host no more (it used to be written out in
/// full: 3 GB of zeros on the host disk from a run that used none).
#[test]
fn sparse_files_made_by_a_cell_stay_sparse_on_the_host() {
    for mode in MODES {
        let wd = workdir(mode);
        let o = run(
            mode,
            wd.path(),
            "for i in 1 2 3; do truncate -s 1000M /work/big$i; done; \
             dd if=/dev/zero of=/work/mix bs=1k count=1 seek=4096 2>/dev/null; echo tail >> /work/mix",
        );
        let v = verdict(&o);
        assert_eq!(v["exit_code"], 0, "{mode:?}: {v}");
        assert_eq!(v["workdir"]["counts"]["added"], 4, "{mode:?}: {v}");
        let mut blocks = 0;
        for n in ["big1", "big2", "big3"] {
            let m = std::fs::metadata(wd.path().join(n)).unwrap();
            assert_eq!(
                m.len(),
                1000 << 20,
                "{mode:?}: {n}: the apparent size stays"
            );
            blocks += m.blocks();
        }
        let mix = wd.path().join("mix");
        let m = std::fs::metadata(&mix).unwrap();
        blocks += m.blocks();
        let body = std::fs::read(&mix).unwrap();
        assert_eq!(body.len(), 4097 * 1024 + 5, "{mode:?}");
        assert!(body[..4097 * 1024].iter().all(|&b| b == 0), "{mode:?}");
        assert_eq!(&body[4097 * 1024..], b"tail\n", "{mode:?}");
        // 512-byte blocks: well under 1 MiB for all four files.
        assert!(
            blocks * 512 < 1 << 20,
            "{mode:?}: {} bytes on the host disk",
            blocks * 512
        );
    }
}
