//! The control channel's decoders: the supervisor's frame splitter (reports from the
//! cell) and the init stage's message (the spec). Bytes in any split: an error or
//! messages, never a panic, and the same messages whatever the split.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nixcell::sandbox::RunSpec;
use nixcell::sandbox::proto::{Report, decode_frames};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else {
        return;
    };
    let whole: Result<Vec<Report>, _> = decode_frames(&mut bytes.to_vec());
    // The same stream arriving in two reads.
    let cut = (cut as usize).min(bytes.len());
    let mut buf = bytes[..cut].to_vec();
    let mut split: Vec<Report> = Vec::new();
    let first = decode_frames::<Report>(&mut buf);
    let split_ok = first.map(|m| split.extend(m)).and_then(|()| {
        buf.extend_from_slice(&bytes[cut..]);
        decode_frames::<Report>(&mut buf).map(|m| split.extend(m))
    });
    if let Ok(w) = &whole {
        split_ok.expect("split stream failed where the whole one decoded");
        assert_eq!(w, &split);
    }
    let _ = serde_json::from_slice::<RunSpec>(bytes);
});
