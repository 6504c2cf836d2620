//! Cron schedules of CronJobs: standard five-field cron and the `@hourly`
//! style aliases (parsed by `croner`), in a named time zone, as Kubernetes
//! reads `spec.schedule` and `spec.timeZone` (also `CRON_TZ=` / `TZ=`
//! prefixes). Pure: the caller passes the times.

use std::str::FromStr;

use croner::Cron;
use jiff::tz::TimeZone;

/// Why a schedule cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScheduleError {
    #[error("unparseable schedule {schedule:?}: {reason}")]
    Schedule { schedule: String, reason: String },
    #[error("unknown time zone {0:?}")]
    TimeZone(String),
}

/// A parsed schedule in its zone.
pub struct Schedule {
    cron: Cron,
    tz: TimeZone,
}

impl Schedule {
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let mut text = schedule.trim();
        let mut zone = time_zone.map(str::to_string);
        // `CRON_TZ=Europe/Paris 0 * * * *`, which Kubernetes also reads.
        for prefix in ["CRON_TZ=", "TZ="] {
            if let Some(rest) = text.strip_prefix(prefix)
                && let Some((tz, rest)) = rest.split_once(' ')
            {
                zone = Some(tz.to_string());
                text = rest.trim();
            }
        }
        if text.split_whitespace().count() != 5 && !text.starts_with('@') {
            return Err(ScheduleError::Schedule {
                schedule: schedule.into(),
                reason: "expected exactly 5 fields".into(),
            });
        }
        let cron = Cron::from_str(text).map_err(|e| ScheduleError::Schedule {
            schedule: schedule.into(),
            reason: e.to_string(),
        })?;
        let tz = match zone.as_deref() {
            None | Some("") | Some("UTC") | Some("Etc/UTC") => TimeZone::UTC,
            Some(name) => {
                TimeZone::get(name).map_err(|_| ScheduleError::TimeZone(name.to_string()))?
            }
        };
        Ok(Schedule { cron, tz })
    }

    /// The latest scheduled time in `(after, now]`, if any.
    pub fn most_recent(
        &self,
        after: jiff::Timestamp,
        now: jiff::Timestamp,
    ) -> Option<jiff::Timestamp> {
        let now_z = now.to_zoned(self.tz.clone());
        let prev = self.cron.find_previous_occurrence(&now_z, true).ok()?;
        let t = prev.timestamp();
        (t > after).then_some(t)
    }

    /// The next scheduled time after `t`.
    pub fn next_after(&self, t: jiff::Timestamp) -> Option<jiff::Timestamp> {
        let z = t.to_zoned(self.tz.clone());
        Some(self.cron.find_next_occurrence(&z, false).ok()?.timestamp())
    }
}
