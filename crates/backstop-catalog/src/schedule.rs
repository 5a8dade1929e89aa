//! Plan schedules: five-field cron expressions (`minute hour day-of-month
//! month day-of-week`, with `*`, lists, ranges, steps, month and weekday
//! names, and `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`) in an
//! IANA time zone, and the scheduler's fires.
//!
//! Daylight saving time: a local time that does not exist (the hour the
//! clocks skip) fires at the first instant after the gap; a local time
//! that happens twice fires once, at its first occurrence. As in Vixie
//! cron, when both day fields are restricted a day matching either runs.
//!
//! Fires are idempotent: the job of a fire has the key
//! `schedule:<plan>:<fire time>`, and the plan's next fire moves on by
//! compare-and-set, so two coordinators running the scheduler create one
//! job per fire.

use backstop_types::{JobKind, Misfire, Overlap, Plan};
use jiff::Timestamp;
use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use serde_json::json;
use sqlx::Row;

use crate::scope::{SYSTEM_TENANT, Scope};
use crate::{Catalog, Error, Result};

/// A parsed cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    any_day: bool,
    any_weekday: bool,
    zone: TimeZone,
}

const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// One field: the set of allowed values as a bit mask, and whether it was `*`.
fn field(text: &str, what: &str, min: u32, max: u32, names: &[&str]) -> Result<(u64, bool)> {
    let bad = |why: &str| Error::Invalid(format!("cron {what} field {text:?}: {why}"));
    let value = |s: &str| -> Result<u32> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i as u32 + min);
        }
        let v: u32 = s.parse().map_err(|_| bad(&format!("{s:?} is not a number")))?;
        if v < min || v > max {
            return Err(bad(&format!("{v} is outside {min}–{max}")));
        }
        Ok(v)
    };
    let mut mask = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().map_err(|_| bad(&format!("step {s:?} is not a number")))?;
                if step == 0 {
                    return Err(bad("a step of 0 never fires"));
                }
                if step > max {
                    return Err(bad(&format!("a step of {step} is larger than the field ({min}–{max})")));
                }
                (r, step)
            }
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (value(a)?, value(b)?);
            if a > b {
                return Err(bad(&format!("range {a}-{b} runs backwards")));
            }
            (a, b)
        } else {
            let v = value(range)?;
            // `5/15` means from 5 to the end, every 15.
            (v, if step > 1 { max } else { v })
        };
        let mut v = lo;
        while v <= hi {
            mask |= 1 << v;
            v += step;
        }
    }
    // As in Vixie cron, a field starting with `*` (`*`, `*/2`) counts as
    // unrestricted when combining the two day fields.
    Ok((mask, text.starts_with('*')))
}

/// A plan's schedule (`expr`, in `timezone`, UTC by default), the
/// expression and the zone checked, each error on its field; `None` for a
/// plan without one.
pub fn plan_schedule(expr: Option<&str>, timezone: Option<&str>) -> Result<Option<Schedule>> {
    if let Some(expr) = expr {
        backstop_types::check::text("schedule", expr, 0, 200).map_err(|e| Error::Invalid(e).on("schedule"))?;
    }
    if let Some(zone) = timezone {
        backstop_types::check::text("timezone", zone, 0, 100).map_err(|e| Error::Invalid(e).on("timezone"))?;
    }
    let timezone = timezone.unwrap_or("UTC");
    // The zone is checked even without a schedule.
    Schedule::zone(timezone).map_err(|e| e.on("timezone"))?;
    match expr {
        Some(expr) => Ok(Some(Schedule::parse(expr, timezone).map_err(|e| e.on("schedule"))?)),
        None => Ok(None),
    }
}

impl Schedule {
    /// The IANA time zone `name`, e.g. `Europe/Berlin` or `UTC`.
    pub fn zone(name: &str) -> Result<TimeZone> {
        TimeZone::get(name)
            .map_err(|_| Error::Invalid(format!("unknown time zone {name:?} (use an IANA name like Europe/Berlin)")))
    }

    pub fn parse(expr: &str, timezone: &str) -> Result<Schedule> {
        let zone = Schedule::zone(timezone)?;
        let expanded = match expr.trim() {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(Error::Invalid(format!(
                "cron expression {expr:?} needs five fields: minute hour day-of-month month day-of-week (e.g. \"30 2 * * *\")"
            )));
        }
        let (minutes, _) = field(fields[0], "minute", 0, 59, &[])?;
        let (hours, _) = field(fields[1], "hour", 0, 23, &[])?;
        let (days, any_day) = field(fields[2], "day-of-month", 1, 31, &[])?;
        let (months, _) = field(fields[3], "month", 1, 12, &MONTHS)?;
        let (weekdays, any_weekday) = field(fields[4], "day-of-week", 0, 7, &WEEKDAYS)?;
        // Day of week 7 is Sunday too.
        let weekdays = (weekdays | (weekdays >> 7)) & 0x7f;
        let s = Schedule {
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays: weekdays as u8,
            any_day,
            any_weekday,
            zone,
        };
        if s.next_after(0).is_none() {
            return Err(Error::Invalid(format!("cron expression {expr:?} never fires (no such date)")));
        }
        Ok(s)
    }

    fn day_matches(&self, date: Date) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let dom = self.days & (1 << date.day()) != 0;
        let dow = self.weekdays & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        // Vixie cron: both day fields restricted means either; otherwise both.
        if self.any_day || self.any_weekday { dom && dow } else { dom || dow }
    }

    /// The first `count` fires strictly after `after_ms`, soonest first.
    pub fn fires(&self, after_ms: i64, count: usize) -> Vec<i64> {
        std::iter::successors(self.next_after(after_ms), |t| self.next_after(*t)).take(count).collect()
    }

    /// The first fire strictly after `after_ms` (ms since the epoch).
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let after = Timestamp::from_millisecond(after_ms).ok()?;
        let start = after.to_zoned(self.zone.clone()).date();
        let mut date = start;
        // Eight years cover every combination (Feb 29 on a given weekday).
        for _ in 0..(8 * 366) {
            if self.day_matches(date) {
                for hour in 0..24 {
                    if self.hours & (1 << hour) == 0 {
                        continue;
                    }
                    for minute in 0..60 {
                        if self.minutes & (1 << minute) == 0 {
                            continue;
                        }
                        let local = DateTime::from_parts(date, jiff::civil::time(hour, minute, 0, 0));
                        // Gaps resolve forward, folds to the first occurrence.
                        let Ok(zoned) = self.zone.to_ambiguous_zoned(local).compatible() else { continue };
                        let ms = zoned.timestamp().as_millisecond();
                        if ms > after_ms {
                            return Some(ms);
                        }
                    }
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }
}

/// A fire's start delay within the plan's jitter, the same on every
/// coordinator.
fn jitter_ms(plan: &str, fire_ms: i64, jitter_s: u32) -> i64 {
    if jitter_s == 0 {
        return 0;
    }
    let h = blake3::hash(format!("{plan}:{fire_ms}").as_bytes());
    let v = u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"));
    (v % (jitter_s as u64 * 1000)) as i64
}

/// What the scheduler did with one due plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FireOutcome {
    /// A job was queued (or existed already from another coordinator).
    Queued { plan: String, fire_ms: i64, job: String },
    /// The previous run is still queued or running and the plan skips overlaps.
    SkippedOverlap { plan: String, fire_ms: i64 },
    /// The fire was missed by more than the grace period and the plan skips misfires.
    SkippedMisfire { plan: String, fire_ms: i64 },
}

impl Catalog {
    /// Fire every enabled plan whose next fire is due at `now`. A fire
    /// more than `grace` late is a misfire, handled by the plan's policy.
    pub async fn fire_due_plans(&self, now: i64, grace: std::time::Duration) -> Result<Vec<FireOutcome>> {
        let ids: Vec<String> = sqlx::query_scalar(&self.sql(
            "SELECT id FROM plans WHERE enabled = 1 AND next_fire_ms IS NOT NULL AND next_fire_ms <= ? ORDER BY next_fire_ms",
        ))
        .bind(now)
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::new();
        for id in ids {
            match self.fire_plan(&id, now, grace).await {
                Ok(Some(o)) => out.push(o),
                Ok(None) => {}
                // A broken plan (deleted repository, bad zone) must not stop the others.
                Err(Error::NotFound(_) | Error::Invalid(_) | Error::Corrupt(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn fire_plan(&self, id: &str, now: i64, grace: std::time::Duration) -> Result<Option<FireOutcome>> {
        let plan: Plan = self.plan(&Scope::All, id).await?;
        let (Some(expr), Some(fire)) = (&plan.schedule, plan.next_fire) else { return Ok(None) };
        let fire_ms = fire.timestamp_millis();
        if fire_ms > now {
            // Another coordinator fired it since we listed the due plans.
            return Ok(None);
        }
        let schedule = Schedule::parse(expr, &plan.timezone)?;
        let missed = now - fire_ms > grace.as_millis() as i64;
        // After a misfire the schedule resumes from now; otherwise from this fire.
        let next = if missed { schedule.next_after(now) } else { schedule.next_after(fire_ms) };

        let mut tx = self.pool().begin().await?;
        let moved = sqlx::query(&self.sql("UPDATE plans SET next_fire_ms = ? WHERE id = ? AND next_fire_ms = ?"))
            .bind(next)
            .bind(id)
            .bind(fire_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if moved == 0 {
            // Another coordinator handled this fire.
            return Ok(None);
        }
        let outcome = if missed && plan.misfire == Misfire::Skip {
            FireOutcome::SkippedMisfire { plan: plan.id.clone(), fire_ms }
        } else {
            let active: i64 = sqlx::query_scalar(
                &self
                    .sql("SELECT COUNT(*) FROM jobs WHERE plan_id = ? AND kind = ? AND state IN ('queued', 'running')"),
            )
            .bind(&plan.id)
            .bind(JobKind::Backup.as_str())
            .fetch_one(&mut *tx)
            .await?;
            if active > 0 && plan.overlap == Overlap::Skip {
                FireOutcome::SkippedOverlap { plan: plan.id.clone(), fire_ms }
            } else {
                let start =
                    fire_ms.max(if missed { now } else { fire_ms }) + jitter_ms(&plan.id, fire_ms, plan.jitter_seconds);
                let key = format!("schedule:{}:{fire_ms}", plan.id);
                let job = self.plan_job(&mut tx, &plan, Some(key), Some(start)).await?;
                let (job, _) = self.enqueue_in(&mut tx, job, now).await?;
                FireOutcome::Queued { plan: plan.id.clone(), fire_ms, job: job.id }
            }
        };
        tx.commit().await?;
        let (action, detail) = match &outcome {
            FireOutcome::Queued { job, .. } => ("schedule.fire", json!({"job": job, "fire_ms": fire_ms})),
            FireOutcome::SkippedOverlap { .. } => ("schedule.skip_overlap", json!({"fire_ms": fire_ms})),
            FireOutcome::SkippedMisfire { .. } => ("schedule.skip_misfire", json!({"fire_ms": fire_ms})),
        };
        self.audit(&plan.tenant, SYSTEM_TENANT, action, &format!("plan/{}", plan.name), detail, now).await?;
        Ok(Some(outcome))
    }

    /// The earliest next fire of any enabled plan (the scheduler sleeps until then).
    pub async fn next_fire(&self) -> Result<Option<i64>> {
        let row =
            sqlx::query("SELECT MIN(next_fire_ms) AS t FROM plans WHERE enabled = 1").fetch_one(self.pool()).await?;
        Ok(row.try_get("t")?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_millisecond()
    }

    fn next(expr: &str, tz: &str, after: &str) -> String {
        let s = Schedule::parse(expr, tz).unwrap();
        Timestamp::from_millisecond(s.next_after(ms(after)).unwrap()).unwrap().to_string()
    }

    #[test]
    fn fields_lists_ranges_steps_and_names() {
        assert_eq!(next("30 2 * * *", "UTC", "2026-03-01T00:00:00Z"), "2026-03-01T02:30:00Z");
        assert_eq!(next("30 2 * * *", "UTC", "2026-03-01T02:30:00Z"), "2026-03-02T02:30:00Z", "strictly after");
        assert_eq!(next("*/15 * * * *", "UTC", "2026-03-01T00:07:00Z"), "2026-03-01T00:15:00Z");
        assert_eq!(next("0 9-17/4 * * *", "UTC", "2026-03-01T10:00:00Z"), "2026-03-01T13:00:00Z");
        assert_eq!(next("0 0 * * mon", "UTC", "2026-03-01T00:00:00Z"), "2026-03-02T00:00:00Z"); // Sunday -> Monday
        assert_eq!(next("0 0 * * 7", "UTC", "2026-03-02T00:00:00Z"), "2026-03-08T00:00:00Z", "7 is Sunday");
        assert_eq!(next("0 0 1 jan,jul *", "UTC", "2026-03-01T00:00:00Z"), "2026-07-01T00:00:00Z");
        assert_eq!(next("0 0 29 2 *", "UTC", "2026-03-01T00:00:00Z"), "2028-02-29T00:00:00Z");
        assert_eq!(next("@daily", "UTC", "2026-03-01T12:00:00Z"), "2026-03-02T00:00:00Z");
        // Both day fields restricted: either matches (the 13th, or any Friday).
        assert_eq!(next("0 0 13 * fri", "UTC", "2026-03-01T00:00:00Z"), "2026-03-06T00:00:00Z");
        // A stepped star day field is no restriction: odd days that are Mondays.
        assert_eq!(next("0 0 */2 * mon", "UTC", "2026-03-01T00:00:00Z"), "2026-03-09T00:00:00Z");
    }

    #[test]
    fn time_zones_and_daylight_saving() {
        // 02:30 in Berlin is 01:30 UTC in winter.
        assert_eq!(next("30 2 * * *", "Europe/Berlin", "2026-01-10T00:00:00Z"), "2026-01-10T01:30:00Z");
        // On 2026-03-29 Berlin skips 02:00–03:00: 02:30 fires just after the gap.
        assert_eq!(next("30 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00Z"), "2026-03-29T01:30:00Z");
        // On 2026-10-25 01:30 UTC and 00:30 UTC are both 02:30 local: fire once, at the first.
        assert_eq!(next("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00Z"), "2026-10-25T00:30:00Z");
        assert_eq!(next("30 2 * * *", "Europe/Berlin", "2026-10-25T00:30:00Z"), "2026-10-26T01:30:00Z");
    }

    #[test]
    fn bad_expressions_say_what_is_wrong() {
        for (expr, tz, needle) in [
            ("* * *", "UTC", "five fields"),
            ("61 * * * *", "UTC", "outside 0–59"),
            ("*/0 * * * *", "UTC", "step of 0"),
            ("0 0 31 2 *", "UTC", "never fires"),
            ("0 0 * * funday", "UTC", "not a number"),
            ("5-1 * * * *", "UTC", "backwards"),
            ("1/4294967295 * * * *", "UTC", "larger than the field"),
            ("0 0 * * *", "Mars/Olympus", "unknown time zone"),
        ] {
            let err = Schedule::parse(expr, tz).unwrap_err().to_string();
            assert!(err.contains(needle), "{expr} in {tz}: {err}");
        }
    }

    #[test]
    fn jitter_is_deterministic_and_bounded() {
        assert_eq!(jitter_ms("p", 1000, 0), 0);
        let a = jitter_ms("plan-1", 1_700_000_000_000, 600);
        assert_eq!(a, jitter_ms("plan-1", 1_700_000_000_000, 600));
        assert!((0..600_000).contains(&a));
        let spread: std::collections::HashSet<i64> =
            (0..50).map(|i| jitter_ms("p", i * 60_000, 600) / 60_000).collect();
        assert!(spread.len() > 5, "fires spread over the window: {spread:?}");
    }
}
