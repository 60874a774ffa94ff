//! When things happen: the next periodic check (interval plus random jitter) and the weekly
//! maintenance window. Pure functions of their inputs (`now`, the settings, a random number
//! source), so the daemon's timing is tested without waiting.
//!
//! Why jitter: a fleet that booted together must not poll the repository together; each wait is
//! `interval + U[0, jitter]`, drawn independently per wait (not a fixed per-node offset), so
//! nodes drift apart even when they started in lock step.

use std::time::Duration;

use basalt_manifest::chrono::{DateTime, Datelike, Duration as ChronoDuration, NaiveDateTime, Utc};

use crate::config::{CheckSettings, Window, Zone};

/// A source of random numbers (passed in: tests use a fixed sequence).
pub trait Random: Send {
    /// A uniformly distributed number in `0..=max`.
    fn up_to(&mut self, max: u64) -> u64;
}

/// The system's random numbers (`ring`'s CSPRNG: `getrandom(2)`).
#[derive(Debug)]
pub struct SystemRandom(ring::rand::SystemRandom);

impl Default for SystemRandom {
    fn default() -> Self {
        Self(ring::rand::SystemRandom::new())
    }
}

impl Random for SystemRandom {
    fn up_to(&mut self, max: u64) -> u64 {
        use ring::rand::SecureRandom;
        let mut b = [0u8; 8];
        if self.0.fill(&mut b).is_err() {
            // No randomness: no jitter is still a correct (if less polite) schedule.
            return 0;
        }
        match max.checked_add(1) {
            Some(n) => u64::from_le_bytes(b) % n,
            None => u64::from_le_bytes(b),
        }
    }
}

/// Wait before the next check: `interval + U[0, jitter]`.
pub fn next_check_delay(check: &CheckSettings, rng: &mut dyn Random) -> Duration {
    Duration::from_secs(check.interval_secs + rng.up_to(check.jitter_secs))
}

/// Wait before the first check after start: `initial_delay + U[0, jitter]`.
pub fn first_check_delay(check: &CheckSettings, rng: &mut dyn Random) -> Duration {
    Duration::from_secs(check.initial_delay_secs + rng.up_to(check.jitter_secs))
}

/// The UTC instant of a local wall-clock time in `zone`. DST gaps (the local time does not
/// exist) resolve to the instant after the gap; overlaps (it exists twice) to the first one.
fn local_to_utc(zone: &Zone, local: NaiveDateTime) -> DateTime<Utc> {
    let t = local.and_utc().timestamp();
    // A zone changes its offset at most once around a given day: the offsets a day before and
    // after cover both sides.
    let mut offsets = [zone.offset_at(t - 86_400), zone.offset_at(t + 86_400)];
    offsets.sort_unstable_by(|a, b| b.cmp(a));
    let unix = offsets
        .iter()
        .map(|o| t - i64::from(*o))
        .find(|u| i64::from(zone.offset_at(*u)) == t - u)
        .unwrap_or(t - i64::from(offsets[1]));
    DateTime::from_timestamp(unix, 0).unwrap_or_default()
}

/// The window openings around `now`: the opening on each configured day of the week before,
/// this week and the next (enough to cover a window of up to a week that started earlier).
fn openings(w: &Window, now: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let offset = i64::from(w.zone.offset_at(now.timestamp()));
    let today = (now + ChronoDuration::seconds(offset)).date_naive();
    let mut out = Vec::new();
    for delta in -8i64..=8 {
        let day = today + ChronoDuration::days(delta);
        if w.days.contains(&day.weekday()) {
            out.push(local_to_utc(&w.zone, day.and_time(w.start)));
        }
    }
    out.sort();
    out
}

/// Whether `now` is inside the window (an opening at or before `now` whose length has not
/// passed).
pub fn in_window(w: &Window, now: DateTime<Utc>) -> bool {
    let len = ChronoDuration::minutes(i64::from(w.length_minutes));
    openings(w, now)
        .into_iter()
        .any(|open| open <= now && now < open + len)
}

/// The next opening strictly after `now` (within eight days; `None` only for a window without
/// days, which validation refuses).
pub fn next_opening(w: &Window, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    openings(w, now).into_iter().find(|open| *open > now)
}

/// How long to wait from `now` until rebooting is allowed by the window: zero inside it.
pub fn wait_for_window(w: &Window, now: DateTime<Utc>) -> Option<Duration> {
    if in_window(w, now) {
        return Some(Duration::ZERO);
    }
    next_opening(w, now).and_then(|t| (t - now).to_std().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_manifest::chrono::{FixedOffset, NaiveTime, Weekday};

    struct Fixed(Vec<u64>);
    impl Random for Fixed {
        fn up_to(&mut self, max: u64) -> u64 {
            self.0.pop().unwrap_or(0).min(max)
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn window(days: &[Weekday], start: &str, minutes: u32, offset_secs: i32) -> Window {
        Window {
            days: days.to_vec(),
            start: NaiveTime::parse_from_str(start, "%H:%M").unwrap(),
            length_minutes: minutes,
            zone: Zone::Fixed(FixedOffset::east_opt(offset_secs).unwrap()),
        }
    }

    #[test]
    fn check_delay_is_interval_plus_bounded_jitter() {
        let c = CheckSettings {
            interval_secs: 3600,
            jitter_secs: 600,
            initial_delay_secs: 30,
        };
        assert_eq!(next_check_delay(&c, &mut Fixed(vec![0])).as_secs(), 3600);
        assert_eq!(next_check_delay(&c, &mut Fixed(vec![599])).as_secs(), 4199);
        // The source is clamped to the jitter even when it misbehaves.
        assert_eq!(
            next_check_delay(&c, &mut Fixed(vec![10_000])).as_secs(),
            4200
        );
        assert_eq!(first_check_delay(&c, &mut Fixed(vec![5])).as_secs(), 35);
        let mut sys = SystemRandom::default();
        for _ in 0..200 {
            let d = next_check_delay(&c, &mut sys).as_secs();
            assert!((3600..=4200).contains(&d), "{d}");
        }
    }

    #[test]
    fn system_random_spreads() {
        let mut sys = SystemRandom::default();
        let draws: std::collections::BTreeSet<u64> = (0..64).map(|_| sys.up_to(1000)).collect();
        assert!(draws.len() > 16, "{draws:?}");
        assert_eq!(sys.up_to(0), 0);
    }

    #[test]
    fn window_in_utc() {
        // Saturdays and Sundays 02:00-04:00 UTC. 2026-12-05 is a Saturday.
        let w = window(&[Weekday::Sat, Weekday::Sun], "02:00", 120, 0);
        assert!(!in_window(&w, at("2026-12-05T01:59:59Z")));
        assert!(in_window(&w, at("2026-12-05T02:00:00Z")));
        assert!(in_window(&w, at("2026-12-05T03:59:59Z")));
        assert!(!in_window(&w, at("2026-12-05T04:00:00Z")));
        assert!(in_window(&w, at("2026-12-06T02:30:00Z")));
        assert!(!in_window(&w, at("2026-12-07T02:30:00Z")), "Monday");
        assert_eq!(
            next_opening(&w, at("2026-12-02T10:00:00Z")),
            Some(at("2026-12-05T02:00:00Z"))
        );
        assert_eq!(
            wait_for_window(&w, at("2026-12-05T01:00:00Z")),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            wait_for_window(&w, at("2026-12-05T02:10:00Z")),
            Some(Duration::ZERO)
        );
        // After Sunday's window: next Saturday.
        assert_eq!(
            next_opening(&w, at("2026-12-06T05:00:00Z")),
            Some(at("2026-12-12T02:00:00Z"))
        );
    }

    #[test]
    fn window_with_offset_and_across_midnight() {
        // Fridays 23:30-01:30 at +02:00, i.e. Friday 21:30-23:30 UTC.
        let w = window(&[Weekday::Fri], "23:30", 120, 2 * 3600);
        // 2026-12-04 is a Friday.
        assert!(!in_window(&w, at("2026-12-04T21:29:00Z")));
        assert!(in_window(&w, at("2026-12-04T21:30:00Z")));
        assert!(in_window(&w, at("2026-12-04T23:29:00Z")));
        assert!(!in_window(&w, at("2026-12-04T23:30:00Z")));
        // Same instant seen from UTC's Saturday: the local day decides.
        let w2 = window(&[Weekday::Sat], "00:30", 60, 2 * 3600);
        assert!(in_window(&w2, at("2026-12-04T22:45:00Z")));
    }

    fn berlin() -> Zone {
        crate::config::parse_zone(
            "Europe/Berlin",
            std::path::Path::new(crate::config::ZONEINFO),
        )
        .expect("tzdata: apt-get install tzdata")
    }

    #[test]
    fn a_named_zone_follows_daylight_saving_time() {
        // Sundays 02:30-03:30 Berlin time. 2026-03-29 is the spring-forward Sunday (02:00 →
        // 03:00, so 02:30 does not exist); 2026-10-25 the fall-back one (02:30 exists twice).
        let w = Window {
            zone: berlin(),
            ..window(&[Weekday::Sun], "02:30", 60, 0)
        };
        // Winter: 02:30 CET = 01:30 UTC.
        assert_eq!(
            next_opening(&w, at("2026-12-01T00:00:00Z")),
            Some(at("2026-12-06T01:30:00Z"))
        );
        // Summer: 02:30 CEST = 00:30 UTC.
        assert_eq!(
            next_opening(&w, at("2026-07-01T00:00:00Z")),
            Some(at("2026-07-05T00:30:00Z"))
        );
        assert!(in_window(&w, at("2026-07-05T01:00:00Z")));
        assert!(!in_window(&w, at("2026-07-05T01:30:00Z")));
        // The gap: 02:30 does not exist; the window opens right after the gap (03:30 CEST).
        assert_eq!(
            next_opening(&w, at("2026-03-28T12:00:00Z")),
            Some(at("2026-03-29T01:30:00Z"))
        );
        // The overlap: the first 02:30 (CEST, 00:30 UTC).
        assert_eq!(
            next_opening(&w, at("2026-10-24T12:00:00Z")),
            Some(at("2026-10-25T00:30:00Z"))
        );
    }

    #[test]
    fn a_week_long_window_is_always_open() {
        let w = window(&[Weekday::Mon], "00:00", 7 * 24 * 60, 0);
        for day in 1..=14 {
            let t = at("2026-12-01T12:00:00Z") + ChronoDuration::hours(day * 11);
            assert!(in_window(&w, t), "{t}");
        }
    }
}
