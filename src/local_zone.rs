//! The machine's local time zone for loop schedules: `TZ` (a zone name, a zoneinfo file or a
//! POSIX TZ string as OpenWrt sets it), else `/etc/localtime`, else UTC. The I/O part:
//! `time_zone.rs` parses what this reads.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::time_zone::TimeZone;

/// Where zone names are looked up unless `TZDIR` says otherwise.
const ZONEINFO: &str = "/usr/share/zoneinfo";
const LOCALTIME: &str = "/etc/localtime";
/// Real TZif files are a few KB; anything larger is not read.
const MAX_TZIF_BYTES: u64 = 256 * 1024;
const MAX_NAME: usize = 255;

/// The machine's local time zone: `TZ` as a zone name (`Europe/Berlin`, under `TZDIR` or
/// `/usr/share/zoneinfo`), as a path (`:/etc/zones/x`), else as a POSIX TZ string
/// (`CET-1CEST,M3.5.0,M10.5.0/3`, as OpenWrt sets it); with no `TZ`, the system's zone
/// (`/etc/localtime`), else UTC.
pub fn zone_from(tz: Option<&str>) -> Result<TimeZone, String> {
    zone_in(tz, &zoneinfo_dir(), Path::new(LOCALTIME))
}

/// The system's zone (`/etc/localtime`), else UTC: what loops use when `TZ` is wrong.
pub fn system_zone() -> TimeZone {
    system_zone_in(&zoneinfo_dir(), Path::new(LOCALTIME))
}

fn zoneinfo_dir() -> PathBuf {
    std::env::var_os("TZDIR").filter(|dir| !dir.is_empty()).map_or_else(|| PathBuf::from(ZONEINFO), PathBuf::from)
}

fn zone_in(tz: Option<&str>, zoneinfo: &Path, localtime: &Path) -> Result<TimeZone, String> {
    let Some(tz) = tz.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(system_zone_in(zoneinfo, localtime));
    };
    let name = tz.strip_prefix(':').unwrap_or(tz);
    let not_a_name = if name.starts_with('/') {
        match read_tzif(Path::new(name)) {
            Ok(bytes) => {
                let named = name_under_zoneinfo(Path::new(name)).unwrap_or_else(|| name.to_string());
                return TimeZone::tzif(Some(&named), &bytes).map_err(|e| broken(tz, Path::new(name), &e));
            }
            Err(e) => e,
        }
    } else {
        match zone_path(zoneinfo, name).map(|path| read_tzif(&path).map(|bytes| (path, bytes))) {
            Ok(Ok((path, bytes))) => {
                return TimeZone::tzif(Some(name), &bytes).map_err(|e| broken(tz, &path, &e));
            }
            // Known without tzdata, as glibc does.
            _ if name == "UTC" => return Ok(TimeZone::UTC),
            Ok(Err(e)) | Err(e) => e,
        }
    };
    TimeZone::posix(tz).map_err(|e| {
        format!(
            "TZ={tz:?} is neither a known zone name nor a POSIX TZ string ({not_a_name}; {e}); set TZ to a zone \
             name such as Europe/Berlin (from tzdata, under {}) or a POSIX TZ string such as \
             CET-1CEST,M3.5.0,M10.5.0/3",
            zoneinfo.display()
        )
    })
}

fn broken(tz: &str, path: &Path, why: &str) -> String {
    format!("TZ={tz:?}: the zone file {} is broken ({why}); reinstall tzdata or set TZ to another zone", path.display())
}

/// The file of zone `name` under `zoneinfo`: names are relative, of letters, digits and
/// `-_+/`, and never climb out of the directory.
fn zone_path(zoneinfo: &Path, name: &str) -> Result<PathBuf, String> {
    let fits = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '+' | '/' | '.');
    if name.len() > MAX_NAME || !name.chars().all(fits) {
        return Err("not a zone name".to_string());
    }
    if name.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
        return Err("a zone name has no empty, \".\" or \"..\" parts".to_string());
    }
    Ok(zoneinfo.join(name))
}

/// The system's zone from `localtime` (named after its link into the zoneinfo directory), else
/// UTC.
fn system_zone_in(zoneinfo: &Path, localtime: &Path) -> TimeZone {
    let name = std::fs::read_link(localtime).ok().and_then(|target| {
        let target = match target.is_relative() {
            true => localtime.parent().map_or(target.clone(), |dir| dir.join(&target)),
            false => target,
        };
        target
            .strip_prefix(zoneinfo)
            .ok()
            .and_then(|n| n.to_str().map(str::to_string))
            .or_else(|| name_under_zoneinfo(&target))
    });
    match read_tzif(localtime).and_then(|bytes| TimeZone::tzif(name.as_deref(), &bytes)) {
        Ok(zone) => zone,
        Err(e) => {
            if localtime.exists() {
                log::warn!(target: "tether", "{}: {e}; loops use UTC", localtime.display());
            }
            TimeZone::UTC
        }
    }
}

/// `Europe/Berlin` from `/usr/share/zoneinfo/Europe/Berlin` (or any `…/zoneinfo/…`).
fn name_under_zoneinfo(path: &Path) -> Option<String> {
    let text = path.to_str()?;
    let (_, name) = text.rsplit_once("/zoneinfo/")?;
    zone_path(Path::new(""), name).ok().map(|_| name.to_string())
}

/// A TZif file's bytes, bounded.
fn read_tzif(path: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Err(format!("{} is not a file", path.display()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_TZIF_BYTES + 1).read_to_end(&mut bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_TZIF_BYTES {
        return Err(format!("{} is larger than {MAX_TZIF_BYTES} bytes, not a zone file", path.display()));
    }
    if !bytes.starts_with(b"TZif") {
        return Err(format!("{} is not a zone (TZif) file", path.display()));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time_zone::tests::tzif_blob;

    /// 2026-07-02, summer in the north.
    const SUMMER: i64 = 1_783_000_000;

    #[test]
    fn zones_from_tz() {
        // A POSIX TZ string: offsets and DST rules in the string itself.
        let eastern = zone_from(Some("EST5EDT,M3.2.0,M11.1.0")).unwrap();
        assert_eq!(eastern.offset_at(SUMMER).0, -4 * 3600);
        assert!(zone_from(Some("UTC0")).is_ok());
        assert!(zone_from(Some("not a zone !")).unwrap_err().contains("TZ=\"not a zone !\""));
        assert!(zone_from(None).is_ok());
    }

    /// A zoneinfo directory with `Test/Zone` (UTC+1, +2 in summer by its footer), a cut copy
    /// of it, an oversized file and a non-TZif file.
    fn zoneinfo() -> PathBuf {
        let root = std::env::temp_dir().join(format!("tether-zone-{}", std::process::id()));
        let dir = root.join("zoneinfo");
        std::fs::create_dir_all(dir.join("Test")).unwrap();
        let blob = tzif_blob(&[(0, 1)], &[(0, "LMT"), (3600, "TST")], Some("TST-1TDT,M3.5.0,M10.5.0/3"));
        std::fs::write(dir.join("Test/Broken"), &blob[..blob.len() - 20]).unwrap();
        std::fs::write(dir.join("Test/Zone"), blob).unwrap();
        std::fs::write(dir.join("Test/Huge"), vec![b'T'; 300 * 1024]).unwrap();
        std::fs::write(dir.join("Test/Text"), "not a zone").unwrap();
        root
    }

    #[test]
    fn zones_by_name_path_and_posix_string() {
        let root = zoneinfo();
        let dir = root.join("zoneinfo");
        let nowhere = root.join("no-localtime");
        let zone_path = dir.join("Test/Zone").display().to_string();
        // (TZ, the zone's name, its offset in summer)
        let table: Vec<(String, Option<&str>, i32)> = vec![
            ("Test/Zone".into(), Some("Test/Zone"), 7200),
            (":Test/Zone".into(), Some("Test/Zone"), 7200),
            (zone_path.clone(), Some("Test/Zone"), 7200),
            (format!(":{zone_path}"), Some("Test/Zone"), 7200),
            // Not under the directory: a POSIX string.
            ("EST5EDT,M3.2.0,M11.1.0".into(), None, -4 * 3600),
            ("<+0330>-3:30".into(), None, 12600),
            // UTC is known without tzdata.
            ("UTC".into(), Some("UTC"), 0),
        ];
        for (tz, name, offset) in &table {
            let zone = zone_in(Some(tz), &dir, &nowhere).unwrap_or_else(|e| panic!("{tz}: {e}"));
            assert_eq!((zone.name(), zone.offset_at(SUMMER).0), (*name, *offset), "{tz}");
        }
        // (TZ, part of the error)
        let mistakes = [
            ("../zoneinfo/Test/Zone", "no empty, \".\" or \"..\" parts"),
            ("Test/../Test/Zone", "no empty, \".\" or \"..\" parts"),
            ("Test//Zone", "no empty, \".\" or \"..\" parts"),
            ("Test/Huge", "is larger than 262144 bytes"),
            ("Test/Text", "is not a zone (TZif) file"),
            ("Test", "is not a file"),
            ("Nowhere/City", "No such file"),
            ("not a zone !", "not a zone name"),
            ("/etc/passwd", "is not a zone (TZif) file"),
        ];
        for (tz, why) in mistakes {
            let error = zone_in(Some(tz), &dir, &nowhere).unwrap_err();
            assert!(error.starts_with(&format!("TZ=\"{tz}\" is neither a known zone name")), "{error}");
            assert!(error.contains(why) && error.contains("set TZ to a zone name such as Europe/Berlin"), "{error}");
        }
        let broken = zone_in(Some("Test/Broken"), &dir, &nowhere).unwrap_err();
        assert!(
            broken.starts_with("TZ=\"Test/Broken\": the zone file ") && broken.contains("reinstall tzdata"),
            "{broken}"
        );
        // No TZ: the localtime link, named after its target; without one, UTC.
        #[cfg(unix)]
        {
            let link = root.join("localtime");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(dir.join("Test/Zone"), &link).unwrap();
            let zone = zone_in(None, &dir, &link).unwrap();
            assert_eq!((zone.name(), zone.offset_at(SUMMER).0), (Some("Test/Zone"), 7200));
        }
        assert_eq!(zone_in(None, &dir, &nowhere), Ok(TimeZone::UTC));
        assert_eq!(zone_in(Some("  "), &dir, &nowhere), Ok(TimeZone::UTC));
        let _ = std::fs::remove_dir_all(root);
    }
}
