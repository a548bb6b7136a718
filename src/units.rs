//! Sizes ("512M") and durations ("30s") as CLI users write them, and the one way
//! nixcell shows a size to a human or an agent ([`human_size`], [`human_delta`]).

use std::time::Duration;

/// Bytes from "1024", "64k", "512M", "2G" (binary multiples, case-insensitive, an
/// optional trailing "B" or "iB").
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let body = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (num, mult) = match body.chars().last() {
        Some('k') => (&body[..body.len() - 1], 1u64 << 10),
        Some('m') => (&body[..body.len() - 1], 1 << 20),
        Some('g') => (&body[..body.len() - 1], 1 << 30),
        Some('t') => (&body[..body.len() - 1], 1 << 40),
        _ => (body, 1),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a size (examples: 4096, 64K, 512M, 2G)"))?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!("'{s}' is not a size"));
    }
    Ok((n * mult as f64) as u64)
}

/// A size as nixcell shows it everywhere (limits, closure sizes, caps): binary units,
/// an exact multiple without decimals, else one decimal: `512 B`, `64 KiB`, `2 GiB`,
/// `112.9 MiB`.
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut u = 0;
    while u < UNITS.len() - 1 && n >> (10 * (u + 1)) > 0 {
        u += 1;
    }
    if n.is_multiple_of(1 << (10 * u)) {
        format!("{} {}", n >> (10 * u), UNITS[u])
    } else {
        format!("{:.1} {}", n as f64 / (1u64 << (10 * u)) as f64, UNITS[u])
    }
}

/// A signed change of size, shown as [`human_size`] with its sign: `+112.9 MiB`, `-4 B`.
pub fn human_delta(n: i64) -> String {
    let sign = if n < 0 { "-" } else { "+" };
    format!("{sign}{}", human_size(n.unsigned_abs()))
}

/// A duration from "30", "30s", "500ms", "5m", "1h", "7d", "1.5s".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let err = || format!("'{s}' is not a duration (examples: 30s, 500ms, 5m, 1h, 7d)");
    let (num, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let n: f64 = num.parse().map_err(|_| err())?;
    if !n.is_finite() || n < 0.0 {
        return Err(err());
    }
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return Err(err()),
    };
    // A finite number may still be more seconds than a Duration holds.
    Duration::try_from_secs_f64(secs).map_err(|_| format!("'{s}' is too long a duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_for_people() {
        assert_eq!(human_delta(118_388_152), "+112.9 MiB");
        assert_eq!(human_delta(-512), "-512 B");
        assert_eq!(human_size(5_000_000), "4.8 MiB");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("2MiB").unwrap(), 2 << 20);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1M").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert!(parse_duration("3w").is_err());
    }

    #[test]
    fn durations_beyond_what_a_duration_holds_are_refused() {
        // These panicked (Duration::from_secs_f64), e.g. in NIXCELL_LOG_MAX_AGE.
        assert!(parse_duration("99999999999999999999").is_err());
        assert!(parse_duration("1e300").is_err());
        assert!(parse_duration("300000000000000000d").is_err());
    }

    #[test]
    fn shown_sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1 KiB");
        assert_eq!(human_size(64 << 10), "64 KiB");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(118_388_152), "112.9 MiB");
        assert_eq!(human_size(300 << 20), "300 MiB");
        assert_eq!(human_size(2 << 30), "2 GiB");
        assert_eq!(human_size(3 << 29), "1.5 GiB");
        assert_eq!(human_size(u64::MAX), "16777216.0 TiB");
        assert_eq!(human_delta(118_388_152), "+112.9 MiB");
        assert_eq!(human_delta(-2048), "-2 KiB");
        assert_eq!(human_delta(0), "+0 B");
    }
}
