//! The recordings directory: segment names (their UTC start time), listing, and retention by
//! age, by total size and by free space. Only files named like segments are ever listed or
//! deleted, so a directory shared with other files is safe.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A segment file's name ends in this.
pub const EXTENSION: &str = ".mp4";

/// The name of a segment that starts at `t`: `2026-12-03T17-51-21Z.mp4` (no colons, so it is
/// a valid name on FAT and SMB shares too, and names sort by time).
pub fn segment_name(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}-{mi:02}-{s:02}Z{EXTENSION}")
}

/// `t` as RFC 3339 in UTC, to the second: `2026-12-03T17:51:21Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// The start time a segment name says, or `None` when `name` is not a segment's (this is also
/// what keeps requests for `../` or any other file out). A `-N` suffix after the seconds (a
/// second segment started within the same second) is allowed.
pub fn parse_segment_name(name: &str) -> Option<SystemTime> {
    let stem = name.strip_suffix(EXTENSION)?;
    let b = stem.as_bytes();
    if b.len() < 20 || b[19] != b'Z' {
        return None;
    }
    let suffix = &stem[20..];
    if !(suffix.is_empty()
        || (suffix.len() <= 4
            && suffix.starts_with('-')
            && suffix.len() > 1
            && suffix[1..].bytes().all(|c| c.is_ascii_digit())))
    {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<u64> {
        let t = stem.get(r)?;
        if t.bytes().all(|c| c.is_ascii_digit()) {
            t.parse().ok()
        } else {
            None
        }
    };
    let seps = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b'-'), (16, b'-')];
    if seps.iter().any(|&(i, c)| b[i] != c) {
        return None;
    }
    let (y, mo, d) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (h, mi, s) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if !(1970..=9999).contains(&y)
        || !(1..=12).contains(&mo)
        || !(1..=31).contains(&d)
        || h > 23
        || mi > 59
        || s > 59
    {
        return None;
    }
    let days = days_from_civil(y as i64, mo as u32, d as u32);
    let secs = u64::try_from(days).ok()? * 86_400 + h * 3600 + mi * 60 + s;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

/// (year, month, day, hour, minute, second) of `secs` since the epoch, UTC.
fn civil(secs: u64) -> (i64, u32, u32, u64, u64, u64) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since the epoch of a civil date (Howard Hinnant's days_from_civil).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// One segment on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Its file name.
    pub name: String,
    /// When it started (from its name).
    pub start: SystemTime,
    /// Its size now.
    pub bytes: u64,
    /// When it was last written.
    pub modified: SystemTime,
}

/// The segments in `dir`, oldest first. A directory that does not exist has none.
pub fn list(dir: &Path) -> io::Result<Vec<Segment>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some(start) = parse_segment_name(&name) else {
            continue;
        };
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        out.push(Segment {
            name,
            start,
            bytes: meta.len(),
            modified: meta.modified().unwrap_or(start),
        });
    }
    // Within one second, `-N` suffixes come after the plain name and in their order.
    out.sort_by(|a, b| (a.start, a.name.len(), &a.name).cmp(&(b.start, b.name.len(), &b.name)));
    Ok(out)
}

/// A free name for a segment starting at `t` in `dir`.
pub fn new_path(dir: &Path, t: SystemTime) -> PathBuf {
    let name = segment_name(t);
    let first = dir.join(&name);
    if !first.exists() {
        return first;
    }
    let stem = name.trim_end_matches(EXTENSION);
    (1..1000)
        .map(|n| dir.join(format!("{stem}-{n}{EXTENSION}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

/// What retention keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Segments last written longer ago are deleted (`None`: whatever their age).
    pub keep: Option<Duration>,
    /// All segments together take at most this many bytes (`None`: no cap).
    pub max_bytes: Option<u64>,
    /// The file system keeps at least this many bytes free.
    pub min_free: u64,
}

/// Which of `segments` (oldest first) to delete under `rule` at `now` with `free` bytes free
/// on their file system, never `current` (the one being written).
pub fn to_delete(
    segments: &[Segment],
    current: Option<&str>,
    rule: &Retention,
    now: SystemTime,
    free: u64,
) -> Vec<String> {
    let mut total: u64 = segments.iter().map(|s| s.bytes).sum();
    let mut free = free;
    let mut out = Vec::new();
    for s in segments {
        if Some(s.name.as_str()) == current {
            continue;
        }
        let too_old = rule
            .keep
            .is_some_and(|keep| now.duration_since(s.modified).is_ok_and(|age| age > keep));
        let too_big = rule.max_bytes.is_some_and(|max| total > max);
        let too_full = free < rule.min_free;
        if too_old || too_big || too_full {
            total = total.saturating_sub(s.bytes);
            free = free.saturating_add(s.bytes);
            out.push(s.name.clone());
        }
    }
    out
}

/// Bytes free for an unprivileged writer on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter that
    // statvfs fills on success.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_utc_start_and_parse_back() {
        let t = UNIX_EPOCH + Duration::from_secs(1_796_320_281); // 2026-12-03T17:51:21Z
        assert_eq!(segment_name(t), "2026-12-03T17-51-21Z.mp4");
        assert_eq!(rfc3339(t), "2026-12-03T17:51:21Z");
        assert_eq!(parse_segment_name("2026-12-03T17-51-21Z.mp4"), Some(t));
        assert_eq!(parse_segment_name("2026-12-03T17-51-21Z-2.mp4"), Some(t));
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29T00:00:00Z
        assert_eq!(segment_name(leap), "2000-02-29T00-00-00Z.mp4");
        assert_eq!(parse_segment_name(&segment_name(leap)), Some(leap));
    }

    #[test]
    fn only_segment_names_parse() {
        for bad in [
            "../etc/passwd",
            "2026-12-03T17-51-21Z.mp4/..",
            "2026-12-03T17-51-21Z.mkv",
            "2026-13-03T17-51-21Z.mp4",
            "2026-12-03T24-00-00Z.mp4",
            "2026-12-03 17-51-21Z.mp4",
            "2026-12-03T17-51-21Z-.mp4",
            "2026-12-03T17-51-21Z-x.mp4",
            "2026-12-03T17-51-21Z/x.mp4",
            "+026-12-03T17-51-21Z.mp4",
            "",
        ] {
            assert_eq!(parse_segment_name(bad), None, "{bad:?}");
        }
    }

    fn seg(name: &str, bytes: u64, age_s: u64, now: SystemTime) -> Segment {
        Segment {
            name: name.into(),
            start: now - Duration::from_secs(age_s + 10),
            bytes,
            modified: now - Duration::from_secs(age_s),
        }
    }

    #[test]
    fn retention_deletes_the_oldest_first_and_never_the_open_segment() {
        let now = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let segs = vec![
            seg("a", 100, 300, now),
            seg("b", 100, 200, now),
            seg("c", 100, 100, now),
            seg("d", 100, 0, now),
        ];
        let keep_all = Retention {
            keep: None,
            max_bytes: None,
            min_free: 0,
        };
        assert!(to_delete(&segs, Some("d"), &keep_all, now, 1 << 30).is_empty());
        let by_age = Retention {
            keep: Some(Duration::from_secs(150)),
            ..keep_all
        };
        assert_eq!(
            to_delete(&segs, Some("d"), &by_age, now, 1 << 30),
            ["a", "b"]
        );
        let by_size = Retention {
            max_bytes: Some(250),
            ..keep_all
        };
        assert_eq!(
            to_delete(&segs, Some("d"), &by_size, now, 1 << 30),
            ["a", "b"]
        );
        let by_space = Retention {
            min_free: 1000,
            ..keep_all
        };
        assert_eq!(to_delete(&segs, Some("d"), &by_space, now, 850), ["a", "b"]);
        // Not even a full disk deletes the segment being written.
        assert_eq!(
            to_delete(&segs, Some("d"), &by_space, now, 0),
            ["a", "b", "c"]
        );
        assert_eq!(
            to_delete(&segs[3..], Some("d"), &by_space, now, 0),
            Vec::<String>::new()
        );
    }

    #[test]
    fn listing_skips_other_files_and_new_paths_do_not_collide() {
        let dir = std::env::temp_dir().join(format!("campeer-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let t = UNIX_EPOCH + Duration::from_secs(1_796_320_281);
        let first = new_path(&dir, t);
        std::fs::write(&first, b"x").unwrap();
        let second = new_path(&dir, t);
        assert_ne!(first, second);
        std::fs::write(&second, b"yy").unwrap();
        std::fs::write(dir.join("notes.txt"), b"keep me").unwrap();
        std::fs::create_dir(dir.join("2026-12-03T17-51-22Z.mp4")).unwrap();
        let names: Vec<_> = list(&dir).unwrap().into_iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            ["2026-12-03T17-51-21Z.mp4", "2026-12-03T17-51-21Z-1.mp4"]
        );
        assert!(list(&dir.join("missing")).unwrap().is_empty());
        assert!(free_bytes(&dir).unwrap() > 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
