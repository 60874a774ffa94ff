//! Weekly maintenance windows in a time zone: `DAYS HH:MM-HH:MM ZONE`, e.g.
//! `Sat,Sun 02:00-06:00 Europe/Berlin` or `Mon-Fri 22:00-04:00 UTC` (a window that ends at or
//! before its start runs over midnight into the next day; `DAYS` names the day it opens).
//!
//! Times are wall-clock times in the zone (IANA names, from the `chrono-tz` database compiled
//! in, so the server does not depend on the host's tzdata). Across a daylight-saving change a
//! window keeps its wall-clock times: an opening time that does not exist that day (skipped
//! hour) opens at the first instant after it, an ambiguous one at the earlier instant.

use std::fmt;
use std::str::FromStr;

use basalt_manifest::chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveTime, TimeZone, Utc,
};
use chrono_tz::Tz;

/// A weekly window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Days it opens on, Monday = bit 0.
    days: u8,
    start: NaiveTime,
    /// Minutes it stays open (1 to 24 h).
    minutes: u32,
    zone: Tz,
    text: String,
}

/// A window specification that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "maintenance window {text:?}: {reason} (expected e.g. \"Sat,Sun 02:00-06:00 Europe/Berlin\")"
)]
pub struct WindowError {
    pub text: String,
    pub reason: String,
}

/// Day names, Monday first (the bit order of `Window::days`).
const DAYS: [(&str, &str); 7] = [
    ("mon", "monday"),
    ("tue", "tuesday"),
    ("wed", "wednesday"),
    ("thu", "thursday"),
    ("fri", "friday"),
    ("sat", "saturday"),
    ("sun", "sunday"),
];

fn day(name: &str) -> Option<u32> {
    let name = name.to_ascii_lowercase();
    DAYS.iter()
        .position(|(short, long)| name == *short || name == *long)
        .map(|i| i as u32)
}

fn parse_days(text: &str) -> Result<u8, String> {
    let mut mask = 0u8;
    for part in text.split(',') {
        let (from, to) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let from = day(from).ok_or_else(|| format!("{from:?} is not a day name"))?;
        let to = day(to).ok_or_else(|| format!("{to:?} is not a day name"))?;
        // A range wraps around the week (Fri-Mon).
        let mut d = from;
        loop {
            mask |= 1 << d;
            if d == to {
                break;
            }
            d = (d + 1) % 7;
        }
    }
    Ok(mask)
}

fn parse_time(text: &str) -> Result<NaiveTime, String> {
    NaiveTime::parse_from_str(text, "%H:%M").map_err(|_| format!("{text:?} is not HH:MM"))
}

impl FromStr for Window {
    type Err = WindowError;

    fn from_str(text: &str) -> Result<Self, WindowError> {
        let err = |reason: String| WindowError {
            text: text.to_owned(),
            reason,
        };
        let parts: Vec<&str> = text.split_whitespace().collect();
        let [days, times, zone] = parts.as_slice() else {
            return Err(err(
                "three parts needed: days, HH:MM-HH:MM, time zone".into()
            ));
        };
        let days = parse_days(days).map_err(err)?;
        let (start, end) = times
            .split_once('-')
            .ok_or_else(|| err(format!("{times:?} is not HH:MM-HH:MM")))?;
        let start = parse_time(start).map_err(err)?;
        let end = parse_time(end).map_err(err)?;
        let zone: Tz = zone
            .parse()
            .map_err(|_| err(format!("{zone:?} is not an IANA time zone name")))?;
        let mut minutes = (end - start).num_minutes();
        if minutes <= 0 {
            minutes += 24 * 60;
        }
        Ok(Window {
            days,
            start,
            minutes: minutes as u32,
            zone,
            text: text.split_whitespace().collect::<Vec<_>>().join(" "),
        })
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl serde::Serialize for Window {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for Window {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Window {
    /// The instant the window opens on local date `date`, if it opens that day.
    fn opening(&self, date: NaiveDate) -> Option<DateTime<Utc>> {
        if self.days & (1 << date.weekday().num_days_from_monday()) == 0 {
            return None;
        }
        let local = date.and_time(self.start);
        match self.zone.from_local_datetime(&local) {
            LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
            LocalResult::Ambiguous(early, _) => Some(early.with_timezone(&Utc)),
            // Skipped by a DST change: the first instant after the gap (gaps are < 3 h).
            LocalResult::None => (1..=180).find_map(|m| {
                self.zone
                    .from_local_datetime(&(local + Duration::minutes(m)))
                    .earliest()
                    .map(|t| t.with_timezone(&Utc))
            }),
        }
    }

    fn local_date(&self, now: DateTime<Utc>) -> NaiveDate {
        now.with_timezone(&self.zone).date_naive()
    }

    /// Whether `now` is inside an opening of this window.
    pub fn contains(&self, now: DateTime<Utc>) -> bool {
        let today = self.local_date(now);
        // An opening from yesterday may still run (over midnight).
        [today.pred_opt(), Some(today)]
            .into_iter()
            .flatten()
            .filter_map(|d| self.opening(d))
            .any(|open| open <= now && now < open + Duration::minutes(self.minutes.into()))
    }

    /// The next instant at or after `now` when the window is open (`now` itself when it is).
    pub fn next_open(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        if self.contains(now) {
            return now;
        }
        let today = self.local_date(now);
        (0..9)
            .filter_map(|i| today.checked_add_signed(Duration::days(i)))
            .filter_map(|d| self.opening(d))
            .find(|open| *open > now)
            // Unreachable for a window with at least one day; a week is a safe answer.
            .unwrap_or(now + Duration::days(7))
    }
}

/// Whether `now` is in any of `windows` (no windows = always).
pub fn in_windows(windows: &[Window], now: DateTime<Utc>) -> bool {
    windows.is_empty() || windows.iter().any(|w| w.contains(now))
}

/// The next instant any of `windows` is open (`now` when one is, or there are none).
pub fn next_open(windows: &[Window], now: DateTime<Utc>) -> DateTime<Utc> {
    windows
        .iter()
        .map(|w| w.next_open(now))
        .min()
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("time")
            .with_timezone(&Utc)
    }

    fn w(text: &str) -> Window {
        text.parse().expect(text)
    }

    #[test]
    fn weekend_window_in_berlin() {
        // 2026-12-05 is a Saturday; Berlin is UTC+1 in December.
        let win = w("Sat,Sun 02:00-06:00 Europe/Berlin");
        assert!(!win.contains(t("2026-12-05T00:59:00Z")));
        assert!(win.contains(t("2026-12-05T01:00:00Z")));
        assert!(win.contains(t("2026-12-06T04:59:59Z")));
        assert!(!win.contains(t("2026-12-06T05:00:00Z")));
        assert!(!win.contains(t("2026-12-07T01:30:00Z")), "Monday");
        assert_eq!(
            win.next_open(t("2026-12-02T12:00:00Z")),
            t("2026-12-05T01:00:00Z")
        );
        assert_eq!(
            win.next_open(t("2026-12-05T03:00:00Z")),
            t("2026-12-05T03:00:00Z")
        );
    }

    #[test]
    fn over_midnight_and_ranges() {
        let win = w("Mon-Fri 22:00-04:00 UTC");
        // Friday 23:00 is in; Saturday 03:00 still in (opened Friday); Saturday 22:00 not.
        assert!(win.contains(t("2026-12-04T23:00:00Z")));
        assert!(win.contains(t("2026-12-05T03:00:00Z")));
        assert!(!win.contains(t("2026-12-05T22:00:00Z")));
        assert!(
            !win.contains(t("2026-12-07T03:00:00Z")),
            "Sunday's night: no"
        );
        let wrap = w("fri-mon 00:00-00:00 UTC");
        assert!(wrap.contains(t("2026-12-06T12:00:00Z")));
        assert!(!wrap.contains(t("2026-12-09T12:00:00Z")), "Wednesday");
    }

    #[test]
    fn daylight_saving_keeps_wall_clock() {
        // Berlin switches to summer time on 2027-03-28 at 02:00 local (skipped to 03:00).
        let win = w("Sun 02:30-04:00 Europe/Berlin");
        assert_eq!(
            win.next_open(t("2027-03-27T12:00:00Z")),
            t("2027-03-28T01:00:00Z"),
            "02:30 does not exist that day: opens at 03:00 local = 01:00Z"
        );
        // In summer, 02:30 local is 00:30Z.
        assert!(win.contains(t("2027-04-04T00:30:00Z")));
        assert!(!win.contains(t("2027-04-04T02:00:00Z")));
    }

    #[test]
    fn bad_windows_are_refused_naming_the_problem() {
        for (text, expected) in [
            ("Sat 02:00-06:00", "three parts"),
            ("Sat 2-6 UTC", "not HH:MM"),
            ("Sat 0200 UTC", "HH:MM-HH:MM"),
            ("Sat 25:00-06:00 UTC", "not HH:MM"),
            ("Caturday 02:00-06:00 UTC", "not a day name"),
            ("Sat 02:00-06:00 Mars/Olympus", "IANA"),
        ] {
            let e = text.parse::<Window>().expect_err(text).to_string();
            assert!(e.contains(expected), "{text}: {e}");
        }
    }

    #[test]
    fn no_window_means_always() {
        let now = t("2026-12-02T12:00:00Z");
        assert!(in_windows(&[], now));
        assert_eq!(next_open(&[], now), now);
    }
}
