//! The short human text that goes with a tool's structured result: the verdict itself
//! travels once, in `structuredContent`; the text says what happened and shows the
//! head and tail of each stream, within [`MAX_SUMMARY_BYTES`].

use super::*;
use crate::units::{human_delta, human_size as human_bytes};

/// Bytes of the start and of the end of each stream the text shows.
pub const SUMMARY_STREAM_BYTES: usize = 1 << 10;
/// The largest summary text of a run.
pub const MAX_SUMMARY_BYTES: usize = 8 << 10;

/// "3 store paths added, 1 removed, +112.9 MiB".
pub(super) fn closure_change(d: &ClosureDiff) -> String {
    format!(
        "{} store paths added, {} removed, {}",
        d.added.len(),
        d.removed.len(),
        human_delta(d.size_delta_bytes)
    )
}

/// The longest prefix of `s` of at most `n` bytes ending on a character boundary.
fn head(s: &str, n: usize) -> &str {
    let mut i = n.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    &s[..i]
}

/// The longest suffix of `s` of at most `n` bytes starting on a character boundary.
fn tail(s: &str, n: usize) -> &str {
    let mut i = s.len().saturating_sub(n);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

/// `s` up to its last line break, when that keeps at least half of it.
fn whole_lines_head(s: &str) -> &str {
    match s.rfind('\n') {
        Some(i) if i >= s.len() / 2 => &s[..=i],
        _ => s,
    }
}

/// `s` from after its first line break, when that keeps at least half of it.
fn whole_lines_tail(s: &str) -> &str {
    match s.find('\n') {
        Some(i) if i + 1 < s.len() && i <= s.len() / 2 => &s[i + 1..],
        _ => s,
    }
}

fn push_line(s: &mut String, text: &str) {
    s.push_str(text);
    if !text.ends_with('\n') {
        s.push('\n');
    }
}

/// One stream: all of it when short, else its head, how much is not shown, its tail.
fn stream(s: &mut String, name: &str, st: &Stream) {
    if st.bytes == 0 {
        return;
    }
    let n = SUMMARY_STREAM_BYTES;
    let end = st.tail.as_deref().unwrap_or("");
    if !st.truncated && st.text.len() <= 2 * n {
        s.push_str(&format!("--- {name} ({}) ---\n", human_bytes(st.bytes)));
        push_line(s, &st.text);
        return;
    }
    let h = whole_lines_head(head(&st.text, n));
    // The end of the stream: its kept tail, else the end of what was captured.
    let t = whole_lines_tail(if end.is_empty() {
        tail(&st.text[h.len()..], n)
    } else {
        tail(end, n)
    });
    let hidden = st.bytes.saturating_sub((h.len() + t.len()) as u64);
    s.push_str(&format!(
        "--- {name} ({} bytes; first and last {} shown, all captured in structuredContent.{name}) ---\n",
        st.bytes,
        human_bytes(n as u64)
    ));
    push_line(s, h);
    s.push_str(&format!("[... {hidden} bytes not shown ...]\n"));
    push_line(s, t);
}

/// The agent-facing text of a run's verdict.
pub(super) fn summarize(r: &RunResult) -> String {
    let mut s = String::new();
    let status = if r.timed_out {
        "timed out; the cell was killed".to_string()
    } else if r.oom_killed {
        "killed: out of memory (the cell's memory limit)".to_string()
    } else if let Some(e) = &r.error {
        format!("nixcell error ({}): {}", e.kind, e.message)
    } else if let Some(sig) = r.signal {
        format!("killed by signal {sig}")
    } else if r.exit_code == 0 {
        "exit code 0".to_string()
    } else {
        format!("exit code {}: the command failed", r.exit_code)
    };
    s.push_str(&format!("{status} ({:.0} ms)\n", r.wall_time_ms));
    if let Some(peak) = r.usage.as_ref().and_then(|u| u.peak_memory_bytes)
        && r.oom_killed
    {
        s.push_str(&format!("peak memory {}\n", human_bytes(peak)));
    }
    for h in &r.hints {
        s.push_str(&format!("hint: {}\n", h.message));
    }
    for f in r.files.iter().filter(|f| f.over_limit) {
        s.push_str(&format!(
            "collect {}: {}\n",
            f.path,
            f.note.as_deref().unwrap_or("")
        ));
    }
    stream(&mut s, "stdout", &r.stdout);
    stream(&mut s, "stderr", &r.stderr);
    if !r.files.is_empty() {
        let list: Vec<String> = r
            .files
            .iter()
            .map(|f| match (&f.encoding, f.bytes, &f.note) {
                (Some(e), Some(b), _) => format!(
                    "{} ({}, {})",
                    f.path,
                    human_bytes(b),
                    match e {
                        Encoding::Utf8 => "utf-8",
                        Encoding::Base64 => "base64",
                    }
                ),
                (_, _, Some(n)) => format!("{}: {n}", f.path),
                _ => f.path.clone(),
            })
            .collect();
        s.push_str(&format!(
            "collected (content in structuredContent.files): {}\n",
            list.join("; ")
        ));
    }
    if let Some(w) = &r.workdir {
        let c = &w.counts;
        if c.added + c.modified + c.deleted + c.refused > 0 {
            s.push_str(&format!(
                "/work changes: {} added, {} modified, {} deleted, {} refused (this run's private copy: collect the files to keep)\n",
                c.added, c.modified, c.deleted, c.refused
            ));
        }
        if w.cap_hit {
            s.push_str("/work: the run's copy-on-write layer ran out of space (writes failed with ENOSPC)\n");
        }
    }
    if s.len() > MAX_SUMMARY_BYTES {
        let cut = head(&s, MAX_SUMMARY_BYTES - 64).len();
        s.truncate(cut);
        s.push_str("\n[summary cut; the full verdict is in structuredContent]\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(stdout: Stream) -> RunResult {
        RunResult {
            exit_code: 0,
            command_exit_code: Some(0),
            signal: None,
            timed_out: false,
            oom_killed: false,
            wall_time_ms: 1.0,
            usage: None,
            error: None,
            stdout,
            stderr: stream_of(None),
            hints: Vec::new(),
            files: Vec::new(),
            workdir: None,
            network: None,
            closure_hash: None,
        }
    }

    #[test]
    fn a_long_stream_shows_its_head_and_tail_with_byte_counts() {
        let r = result(Stream {
            text: format!("FIRST{}", "a".repeat(16 << 10)),
            bytes: 5_000_000,
            truncated: true,
            tail: Some(format!("{}LAST\n", "z".repeat(4000))),
        });
        let t = summarize(&r);
        assert!(t.contains("FIRST") && t.contains("LAST"), "{t}");
        assert!(t.contains("5000000 bytes"), "{t}");
        assert!(t.contains(&format!("[... {} bytes not shown ...]", 5_000_000 - 2048)));
        // Whole lines when the stream has lines.
        let lines = "line\n".repeat(10_000);
        let r = result(Stream {
            text: lines.clone(),
            bytes: lines.len() as u64,
            truncated: false,
            tail: None,
        });
        let t = summarize(&r);
        let shown = &t[t.find("---\n").unwrap() + 4..];
        assert!(
            shown.lines().all(|l| l == "line" || l.starts_with("[...")),
            "{t}"
        );
        assert!(t.len() < 3 << 10, "{}", t.len());
    }

    #[test]
    fn a_short_stream_is_shown_whole_and_cut_characters_stay_whole() {
        let r = result(Stream {
            text: "hello\n".into(),
            bytes: 6,
            truncated: false,
            tail: None,
        });
        assert!(summarize(&r).contains("--- stdout (6 B) ---\nhello\n"));
        assert_eq!(head("aé", 2), "a");
        assert_eq!(tail("éa", 2), "a");
    }
}
