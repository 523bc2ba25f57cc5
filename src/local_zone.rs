//! The machine's local time zone for loop schedules: `TZ` (a zone name, a zoneinfo file or a
//! POSIX TZ string as OpenWrt sets it), else `/etc/localtime`, else UTC.

use jiff::tz::TimeZone;

/// The machine's local time zone: `TZ` as a zone name (`Europe/Berlin`, from the system's
/// zoneinfo), else as a POSIX TZ string (`CET-1CEST,M3.5.0,M10.5.0/3`, as OpenWrt sets it);
/// with no `TZ`, the system's zone (`/etc/localtime`), else UTC.
pub fn zone_from(tz: Option<&str>) -> Result<TimeZone, String> {
    let Some(tz) = tz.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(TimeZone::try_system().unwrap_or(TimeZone::UTC));
    };
    let name = tz.strip_prefix(':').unwrap_or(tz);
    if let Ok(zone) = TimeZone::get(name) {
        return Ok(zone);
    }
    if name.starts_with('/')
        && let Ok(bytes) = std::fs::read(name)
        && let Ok(zone) = TimeZone::tzif(name, &bytes)
    {
        return Ok(zone);
    }
    TimeZone::posix(tz).map_err(|e| {
        format!("TZ={tz:?} is neither a known zone name nor a POSIX TZ string ({e}); set TZ to e.g. Europe/Berlin")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_from_tz() {
        // A POSIX TZ string: offsets and DST rules in the string itself.
        let eastern = zone_from(Some("EST5EDT,M3.2.0,M11.1.0")).unwrap();
        let summer = jiff::Timestamp::from_second(1_783_000_000).unwrap(); // 2026-07-02
        assert_eq!(eastern.to_offset(summer), jiff::tz::offset(-4));
        assert!(zone_from(Some("UTC0")).is_ok());
        assert!(zone_from(Some("not a zone !")).unwrap_err().contains("TZ=\"not a zone !\""));
        assert!(zone_from(None).is_ok());
    }
}
