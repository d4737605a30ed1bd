//! When a job runs: Chronos' ISO 8601 repeating intervals (`R[n]/start/period`) and cron
//! expressions, each read on the calendar of a time zone.
//!
//! Pure and deterministic: the time-zone database is the copy built into the binary
//! (jiff's `tzdb-bundle-always`), never the host's `/usr/share/zoneinfo`, so every
//! master computes the same instants whatever its packages. Instants are Unix
//! milliseconds.
//!
//! Calendar arithmetic follows the zone: a period of days, weeks, months or years keeps
//! the wall-clock time (a daily job at 02:30 stays at 02:30 across a daylight-saving
//! change); hours, minutes and seconds are exact durations. A wall-clock time the zone
//! skips (02:30 on the night clocks go forward) runs at the same distance past the gap
//! (03:30), and a time that happens twice runs at the first (RFC 5545's rule, jiff's
//! "compatible" disambiguation).

// State-machine code: deterministic on every member (see coord/clippy.toml).
#![deny(clippy::disallowed_types, clippy::disallowed_methods)]

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp, Zoned};

/// At most this many instants are stepped over to find one (a schedule whose next run
/// is further than this many periods away is refused rather than searched forever).
pub const MAX_STEPS: u64 = 1_000_000;
pub const MAX_SCHEDULE_BYTES: usize = 256;

/// A parsed schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    Iso(Iso),
    Cron { cron: Box<croner::Cron>, tz: TimeZone },
}

/// `R[n]/start/period`.
#[derive(Debug, Clone)]
pub struct Iso {
    /// `None`: repeat forever.
    pub repeats: Option<u64>,
    pub start: Zoned,
    pub period: Span,
    /// The period in milliseconds when it has no calendar units (then instant `k` is
    /// plain arithmetic), else `None`.
    exact_ms: Option<i64>,
}

/// The zone of a job's `scheduleTimeZone` (empty: UTC).
pub fn zone(name: &str) -> Result<TimeZone, String> {
    if name.is_empty() || name == "UTC" || name == "Z" {
        return Ok(TimeZone::UTC);
    }
    TimeZone::get(name)
        .map_err(|_| format!("scheduleTimeZone: unknown time zone {name:?} (use a tz name such as Europe/Berlin)"))
}

fn ts(ms: u64) -> Timestamp {
    Timestamp::from_millisecond(ms.min(i64::MAX as u64) as i64).unwrap_or(Timestamp::MAX)
}

fn ms_of(z: &Zoned) -> Option<u64> {
    u64::try_from(z.timestamp().as_millisecond()).ok()
}

/// Reads an ISO 8601 repeating interval. An empty start means `created_ms` (the instant
/// the job was created, stamped by the leader). A start without an offset is a wall-clock
/// time in `tz`.
pub fn parse_iso(text: &str, tz: &TimeZone, created_ms: u64) -> Result<Iso, String> {
    if text.len() > MAX_SCHEDULE_BYTES {
        return Err(format!("schedule: longer than {MAX_SCHEDULE_BYTES} bytes"));
    }
    let mut parts = text.split('/');
    let (Some(r), Some(start), Some(period), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(format!("schedule {text:?}: expected R[n]/start/period, e.g. R/2030-03-08T20:00:00Z/PT2H"));
    };
    let repeats = match r.strip_prefix('R') {
        Some("") => None,
        Some(n) => Some(n.parse::<u64>().map_err(|_| format!("schedule {text:?}: {r:?} is not R or R<count>"))?),
        None => return Err(format!("schedule {text:?}: it must start with R or R<count>")),
    };
    let start = if start.is_empty() {
        ts(created_ms).to_zoned(tz.clone())
    } else if let Ok(t) = start.parse::<Timestamp>() {
        t.to_zoned(tz.clone())
    } else if let Ok(dt) = start.parse::<DateTime>() {
        dt.to_zoned(tz.clone()).map_err(|e| format!("schedule {text:?}: start {start:?}: {e}"))?
    } else {
        return Err(format!(
            "schedule {text:?}: start {start:?} is not an ISO 8601 date-time (e.g. 2030-03-08T20:00:00Z, or without \
             the offset for a time in scheduleTimeZone)"
        ));
    };
    let period = iso_span(period).ok_or_else(|| {
        format!("schedule {text:?}: period {period:?} is not an ISO 8601 duration such as PT1H or P1D")
    })?;
    if period.is_negative() || period.is_zero() {
        return Err(format!("schedule {text:?}: the period must be positive"));
    }
    let calendar =
        period.get_years() != 0 || period.get_months() != 0 || period.get_weeks() != 0 || period.get_days() != 0;
    let exact_ms = if calendar {
        None
    } else {
        let ms = period.total(jiff::Unit::Millisecond).map_err(|e| format!("schedule {text:?}: {e}"))?;
        if ms < 1000.0 {
            return Err(format!("schedule {text:?}: the period must be at least one second"));
        }
        Some(ms as i64)
    };
    Ok(Iso { repeats, start, period, exact_ms })
}

impl Iso {
    /// Instant number `k` (0 is the start), or `None` past the repeat count or the
    /// calendar's range.
    pub fn instant(&self, k: u64) -> Option<u64> {
        if self.repeats.is_some_and(|n| k >= n) {
            return None;
        }
        match self.exact_ms {
            Some(p) => {
                let start = self.start.timestamp().as_millisecond();
                let off = p.checked_mul(i64::try_from(k).ok()?)?;
                u64::try_from(start.checked_add(off)?).ok()
            }
            None => {
                let span = self.period.checked_mul(i64::try_from(k).ok()?).ok()?;
                ms_of(&self.start.checked_add(span).ok()?)
            }
        }
    }

    /// The first `k` whose instant is at or after `at_ms`, with that instant.
    pub fn first_at_or_after(&self, at_ms: u64) -> Result<Option<(u64, u64)>, String> {
        let start = ms_of(&self.start).unwrap_or(0);
        // A guess from the period's rough length, then exact steps: instants only grow.
        let mut k = match self.exact_ms {
            Some(p) if at_ms > start => (at_ms - start) / p as u64,
            None if at_ms > start => {
                let rough = self.period.total((jiff::Unit::Millisecond, &self.start)).unwrap_or(1.0).max(1.0);
                (((at_ms - start) as f64 / rough) as u64).saturating_sub(2)
            }
            _ => 0,
        };
        // The guess can overshoot for a calendar period (months differ in length).
        // Past the repeat count the guess finds no instant: step back over those too.
        while k > 0 && self.instant(k - 1).is_none_or(|t| t >= at_ms) {
            k -= 1;
        }
        for _ in 0..MAX_STEPS {
            match self.instant(k) {
                None => return Ok(None),
                Some(t) if t >= at_ms => return Ok(Some((k, t))),
                Some(_) => k += 1,
            }
        }
        Err(format!("schedule: no run within {MAX_STEPS} periods of {at_ms} ms"))
    }
}

/// Reads a cron expression: five fields (minute hour day-of-month month day-of-week),
/// optionally with seconds first; names (`MON`, `JAN`) and `@daily`-style nicknames as
/// croner reads them.
pub fn parse_cron(text: &str, tz: &TimeZone) -> Result<Schedule, String> {
    if text.len() > MAX_SCHEDULE_BYTES {
        return Err(format!("cron: longer than {MAX_SCHEDULE_BYTES} bytes"));
    }
    let cron: croner::Cron = text.parse().map_err(|e| format!("cron {text:?}: {e}"))?;
    Ok(Schedule::Cron { cron: Box::new(cron), tz: tz.clone() })
}

/// The first cron instant strictly after `after_ms`.
pub fn cron_next(cron: &croner::Cron, tz: &TimeZone, after_ms: u64) -> Option<u64> {
    let z = ts(after_ms).to_zoned(tz.clone());
    ms_of(&cron.find_next_occurrence(&z, false).ok()?)
}

/// An instant as people read it in `tz`: `2030-03-08T20:00:00+01:00[Europe/Berlin]`.
pub fn show(ms: u64, tz: &TimeZone) -> String {
    let z = ts(ms).to_zoned(tz.clone());
    if tz == &TimeZone::UTC {
        z.timestamp().to_string()
    } else {
        z.to_string()
    }
}

/// An instant in UTC, ISO 8601 (`2030-03-08T19:00:00Z`).
pub fn show_utc(ms: u64) -> String {
    show(ms, &TimeZone::UTC)
}

/// An ISO 8601 duration only (jiff also reads a friendlier form, `5 minutes`, which
/// Chronos does not).
fn iso_span(text: &str) -> Option<Span> {
    if !text.starts_with(['P', 'p']) {
        return None;
    }
    text.parse().ok()
}

/// An ISO 8601 duration (Chronos' `epsilon`, e.g. `PT60S`) in milliseconds; exact units
/// only.
pub fn parse_duration_ms(field: &str, text: &str) -> Result<u64, String> {
    let span = iso_span(text).ok_or_else(|| format!("{field}: {text:?} is not an ISO 8601 duration such as PT60S"))?;
    if span.is_negative() {
        return Err(format!("{field}: must not be negative"));
    }
    if span.get_years() != 0 || span.get_months() != 0 {
        return Err(format!("{field}: use days or smaller units, not months or years"));
    }
    let ms = span
        .total((jiff::Unit::Millisecond, jiff::SpanRelativeTo::days_are_24_hours()))
        .map_err(|e| format!("{field}: {e}"))?;
    Ok(ms as u64)
}

/// `ms` as an ISO 8601 duration (`PT60S`).
pub fn show_duration(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("PT{}S", ms / 1000)
    } else {
        format!("PT{}.{:03}S", ms / 1000, ms % 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> u64 {
        s.parse::<Timestamp>().unwrap().as_millisecond() as u64
    }

    #[test]
    fn iso_intervals_count_from_the_start_and_stop_after_n() {
        let tz = zone("").unwrap();
        let s = parse_iso("R3/2030-01-01T00:00:00Z/PT5S", &tz, 0).unwrap();
        let t0 = at("2030-01-01T00:00:00Z");
        assert_eq!(s.instant(0), Some(t0));
        assert_eq!(s.instant(2), Some(t0 + 10_000));
        assert_eq!(s.instant(3), None);
        assert_eq!(s.first_at_or_after(t0 + 1).unwrap(), Some((1, t0 + 5000)));
        assert_eq!(s.first_at_or_after(t0 + 10_001).unwrap(), None);
        // An empty start is the creation instant; R alone repeats forever.
        let s = parse_iso("R//PT1H", &tz, t0).unwrap();
        assert_eq!(s.instant(1_000_000), Some(t0 + 1_000_000 * 3_600_000));
    }

    #[test]
    fn malformed_schedules_are_refused_with_the_reason() {
        let tz = zone("").unwrap();
        for (bad, why) in [
            ("2030-01-01T00:00:00Z/PT5S", "expected R[n]/start/period"),
            ("X/2030-01-01T00:00:00Z/PT5S", "must start with R"),
            ("Rx/2030-01-01T00:00:00Z/PT5S", "is not R or R<count>"),
            ("R/yesterday/PT5S", "is not an ISO 8601 date-time"),
            ("R/2030-01-01T00:00:00Z/5 minutes", "is not an ISO 8601 duration"),
            ("R/2030-01-01T00:00:00Z/PT0S", "must be positive"),
            ("R/2030-01-01T00:00:00Z/PT0.5S", "at least one second"),
        ] {
            let e = parse_iso(bad, &tz, 0).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(zone("Mars/Olympus").unwrap_err().contains("unknown time zone"));
        assert!(parse_cron("61 * * * *", &tz).is_err());
    }

    #[test]
    fn a_daily_run_keeps_its_wall_clock_time_across_daylight_saving_changes() {
        // Europe/Berlin: clocks go forward at 02:00 on 2030-03-31 and back at 03:00 on
        // 2030-10-27.
        let tz = zone("Europe/Berlin").unwrap();
        let s = parse_iso("R/2030-03-29T02:30:00/P1D", &tz, 0).unwrap();
        let shown: Vec<String> = (0..4).map(|k| show(s.instant(k).unwrap(), &tz)).collect();
        assert_eq!(
            shown,
            [
                "2030-03-29T02:30:00+01:00[Europe/Berlin]",
                "2030-03-30T02:30:00+01:00[Europe/Berlin]",
                // 02:30 does not exist that night: the same distance past the gap.
                "2030-03-31T03:30:00+02:00[Europe/Berlin]",
                "2030-04-01T02:30:00+02:00[Europe/Berlin]",
            ]
        );
        // 24 h between the runs that straddle the gap (01:30 UTC both), 23 h after it.
        let gaps: Vec<u64> = (0..3).map(|k| s.instant(k + 1).unwrap() - s.instant(k).unwrap()).collect();
        assert_eq!(gaps, [86_400_000, 86_400_000, 86_400_000 - 3_600_000]);
        // In autumn 02:30 happens twice: the first one runs.
        let s = parse_iso("R/2030-10-26T02:30:00/P1D", &tz, 0).unwrap();
        assert_eq!(show(s.instant(1).unwrap(), &tz), "2030-10-27T02:30:00+02:00[Europe/Berlin]");
        assert_eq!(show(s.instant(2).unwrap(), &tz), "2030-10-28T02:30:00+01:00[Europe/Berlin]");
        // An exact period does not follow the wall clock: PT24H is 24 real hours.
        let s = parse_iso("R/2030-03-30T02:30:00/PT24H", &tz, 0).unwrap();
        assert_eq!(show(s.instant(1).unwrap(), &tz), "2030-03-31T03:30:00+02:00[Europe/Berlin]");
        assert_eq!(show(s.instant(2).unwrap(), &tz), "2030-04-01T03:30:00+02:00[Europe/Berlin]");
    }

    #[test]
    fn cron_follows_the_zone_calendar() {
        let tz = zone("America/New_York").unwrap();
        let Schedule::Cron { cron, tz } = parse_cron("30 2 * * *", &tz).unwrap() else { unreachable!() };
        // 2030-03-10: New York skips 02:00–03:00.
        let mut runs = Vec::new();
        let mut t = at("2030-03-08T12:00:00Z");
        for _ in 0..3 {
            t = cron_next(&cron, &tz, t).unwrap();
            runs.push(show(t, &tz));
        }
        assert_eq!(runs[0], "2030-03-09T02:30:00-05:00[America/New_York]");
        assert!(runs.contains(&"2030-03-11T02:30:00-04:00[America/New_York]".to_string()), "{runs:?}");
        // The night of the change has no 02:30: it runs at most once, that day.
        assert!(runs.iter().filter(|r| r.starts_with("2030-03-10")).count() <= 1, "{runs:?}");
    }

    #[test]
    fn epsilon_durations() {
        assert_eq!(parse_duration_ms("epsilon", "PT60S").unwrap(), 60_000);
        assert_eq!(parse_duration_ms("epsilon", "PT1M30S").unwrap(), 90_000);
        assert_eq!(parse_duration_ms("epsilon", "P1D").unwrap(), 86_400_000);
        assert!(parse_duration_ms("epsilon", "P1M").is_err());
        assert!(parse_duration_ms("epsilon", "soon").is_err());
        assert_eq!(show_duration(90_000), "PT90S");
    }
}
