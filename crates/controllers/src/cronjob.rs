//! The CronJob controller and its schedule: five-field cron expressions (with names, ranges,
//! steps, lists and the `@hourly`-style macros) evaluated in the CronJob's `timeZone`; one Job
//! per scheduled time, concurrencyPolicy Allow/Forbid/Replace, suspend,
//! startingDeadlineSeconds, and the history limits.

use std::sync::Arc;
use std::time::Duration;

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use serde_json::{Map, Value, json};
use shoal_api::meta;

use crate::events::ObjectReference;
use crate::harness::{self, Action, Reconciler, Result};
use crate::informer::{controller_of, split_key};
use crate::{Context, Registered, info};

pub const SCHEDULED_TIMESTAMP_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// How many missed schedules are walked at most (Kubernetes gives up after 100 too).
const MAX_MISSED: usize = 100;
const MANAGER: &str = "shoal-cronjob-controller";

/// A parsed five-field schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: Vec<bool>,
    hours: Vec<bool>,
    days_of_month: Vec<bool>,
    months: Vec<bool>,
    days_of_week: Vec<bool>,
    /// Whether day-of-month or day-of-week was `*` (cron ORs the two only when both are set).
    any_day_of_month: bool,
    any_day_of_week: bool,
}

const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn parse_field(field: &str, min: u32, max: u32, names: &[&str], name_base: u32) -> Result<Vec<bool>, String> {
    let mut allowed = vec![false; max as usize + 1];
    let value = |text: &str| -> Result<u32, String> {
        if let Some(position) = names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
            return Ok(position as u32 + name_base);
        }
        text.parse::<u32>().map_err(|_| format!("{text:?} is not a number"))
    };
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (range, step.parse::<u32>().ok().filter(|s| *s > 0).ok_or_else(|| format!("bad step in {part:?}"))?),
            None => (part, 1),
        };
        let (start, end) = if range == "*" || range == "?" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let start = value(range)?;
            (start, if part.contains('/') { max } else { start })
        };
        if start < min || end > max || start > end {
            return Err(format!("{part:?} is out of range {min}-{max}"));
        }
        let mut at = start;
        while at <= end {
            allowed[at as usize] = true;
            at += step;
        }
    }
    Ok(allowed)
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let expanded = match text {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [minute, hour, day_of_month, month, day_of_week] = fields.as_slice() else {
            return Err(format!("expected exactly 5 fields, found {}: {text:?}", fields.len()));
        };
        let mut days_of_week = parse_field(day_of_week, 0, 7, &WEEKDAYS, 0)?;
        // 7 is Sunday too.
        if days_of_week[7] {
            days_of_week[0] = true;
        }
        days_of_week.truncate(7);
        Ok(Self {
            minutes: parse_field(minute, 0, 59, &[], 0)?,
            hours: parse_field(hour, 0, 23, &[], 0)?,
            days_of_month: parse_field(day_of_month, 1, 31, &[], 0)?,
            months: parse_field(month, 1, 12, &MONTHS, 1)?,
            days_of_week,
            any_day_of_month: day_of_month.starts_with('*') || *day_of_month == "?",
            any_day_of_week: day_of_week.starts_with('*') || *day_of_week == "?",
        })
    }

    fn day_matches(&self, date: jiff::civil::Date) -> bool {
        let dom = self.days_of_month[date.day() as usize];
        let dow = self.days_of_week[date.weekday().to_sunday_zero_offset() as usize];
        match (self.any_day_of_month, self.any_day_of_week) {
            (false, false) => dom || dow,
            _ => dom && dow,
        }
    }

    /// The first scheduled time strictly after `after`, in `zone`.
    pub fn next_after(&self, after: jiff::Timestamp, zone: &TimeZone) -> Option<jiff::Timestamp> {
        let local = after.to_zoned(zone.clone()).datetime();
        // Start at the next whole minute.
        let mut at = DateTime::new(local.year(), local.month(), local.day(), local.hour(), local.minute(), 0, 0).ok()?.checked_add(jiff::Span::new().minutes(1)).ok()?;
        let limit = at.checked_add(jiff::Span::new().years(5)).ok()?;
        while at < limit {
            if !self.months[at.month() as usize] {
                let first = jiff::civil::date(at.year(), at.month(), 1).checked_add(jiff::Span::new().months(1)).ok()?;
                at = first.to_datetime(jiff::civil::Time::midnight());
                continue;
            }
            if !self.day_matches(at.date()) {
                at = at.date().checked_add(jiff::Span::new().days(1)).ok()?.to_datetime(jiff::civil::Time::midnight());
                continue;
            }
            if !self.hours[at.hour() as usize] {
                at = DateTime::new(at.year(), at.month(), at.day(), at.hour(), 0, 0, 0).ok()?.checked_add(jiff::Span::new().hours(1)).ok()?;
                continue;
            }
            if !self.minutes[at.minute() as usize] {
                at = at.checked_add(jiff::Span::new().minutes(1)).ok()?;
                continue;
            }
            // A local time a DST gap skips resolves forward, as cron implementations do.
            let zoned = at.to_zoned(zone.clone()).ok()?;
            if zoned.timestamp() > after {
                return Some(zoned.timestamp());
            }
            at = at.checked_add(jiff::Span::new().minutes(1)).ok()?;
        }
        None
    }
}

/// The latest scheduled time in `(since, now]`, and how many fell in that window (after
/// [`MAX_MISSED`], the walk skips ahead to the last hour, so the count is then a lower bound).
pub fn most_recent(schedule: &Schedule, zone: &TimeZone, since: jiff::Timestamp, now: jiff::Timestamp) -> (Option<jiff::Timestamp>, usize) {
    let mut latest = None;
    let mut count = 0;
    let mut cursor = since;
    let mut skipped = false;
    while let Some(next) = schedule.next_after(cursor, zone) {
        if next > now {
            break;
        }
        latest = Some(next);
        count += 1;
        cursor = next;
        if count == MAX_MISSED && !skipped {
            skipped = true;
            let recent = now.checked_sub(jiff::SignedDuration::from_hours(1)).unwrap_or(now);
            cursor = cursor.max(recent);
        }
    }
    (latest, count)
}

fn job_finished(job: &Value) -> Option<&'static str> {
    ["Complete", "Failed"].into_iter().find(|&kind| job["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == kind && c["status"] == "True")).map(|v| v as _)
}

pub struct CronJobController {
    context: Arc<Context>,
}

impl CronJobController {
    pub fn register(context: &Arc<Context>) -> Registered<Self> {
        let queue = Arc::new(crate::queue::WorkQueue::default());
        let cron_jobs = Arc::clone(context.informers.get("CronJob"));
        harness::watch_into(&cron_jobs, &queue, harness::own_keys);
        harness::watch_into(context.informers.get("Job"), &queue, harness::owners_of_kind("CronJob"));
        Registered::new(Self { context: Arc::clone(context) }, queue, &cron_jobs)
    }

    async fn delete_job(&self, job: &Value) -> Result<()> {
        let options = json!({"propagationPolicy": "Background", "preconditions": {"uid": meta::uid(job)}});
        match self.context.client.delete(info("Job"), Some(meta::namespace(job)), meta::name(job), &options).await {
            Ok(_) | Err(shoal_client::Error::Api(shoal_api::ApiError { code: 404 | 409, .. })) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}

impl Reconciler for CronJobController {
    fn name(&self) -> &'static str {
        "cronjob"
    }

    async fn reconcile(&self, key: &str) -> Result<Action> {
        let context = &self.context;
        let cron_jobs = context.informers.get("CronJob");
        let Some(cron_job) = cron_jobs.get(key) else { return Ok(Action::Done) };
        if !cron_job["metadata"]["deletionTimestamp"].is_null() {
            return Ok(Action::Done);
        }
        let (namespace, name) = split_key(key);
        let uid = meta::uid(&cron_job);
        let spec = &cron_job["spec"];
        let reference = ObjectReference::of("batch/v1", "CronJob", &cron_job);
        let now = jiff::Timestamp::now();
        let zone = match spec["timeZone"].as_str() {
            Some(name) => match TimeZone::get(name) {
                Ok(zone) => zone,
                Err(error) => {
                    context.recorder.warning(reference, "UnknownTimeZone", format!("invalid timeZone {name:?}: {error}"));
                    return Ok(Action::Done);
                }
            },
            None => TimeZone::UTC,
        };
        let schedule = match Schedule::parse(spec["schedule"].as_str().unwrap_or_default()) {
            Ok(schedule) => schedule,
            Err(error) => {
                context.recorder.warning(reference, "UnparseableSchedule", format!("unparseable schedule {:?}: {error}", spec["schedule"].as_str().unwrap_or_default()));
                return Ok(Action::Done);
            }
        };

        let mut jobs: Vec<Arc<Value>> = context.informers.get("Job").owned_by(uid).into_iter().filter(|j| controller_of(j).is_some_and(|o| o["uid"] == uid)).collect();
        jobs.sort_by_key(|j| j["metadata"]["creationTimestamp"].as_str().unwrap_or_default().to_owned());
        let active: Vec<&Arc<Value>> = jobs.iter().filter(|j| job_finished(j).is_none() && j["metadata"]["deletionTimestamp"].is_null()).collect();

        // History limits, oldest first.
        for (kind, limit) in [("Complete", spec["successfulJobsHistoryLimit"].as_i64().unwrap_or(3)), ("Failed", spec["failedJobsHistoryLimit"].as_i64().unwrap_or(1))] {
            let finished: Vec<&Arc<Value>> = jobs.iter().filter(|j| job_finished(j) == Some(kind) && j["metadata"]["deletionTimestamp"].is_null()).collect();
            let excess = finished.len().saturating_sub(limit.max(0) as usize);
            for job in &finished[..excess] {
                self.delete_job(job).await?;
                context.recorder.normal(reference.clone(), "SuccessfulDelete", format!("Deleted job {}", meta::name(job)));
            }
        }

        let mut status = json!({});
        let active_refs: Vec<Value> = active.iter().map(|j| json!({"apiVersion": "batch/v1", "kind": "Job", "namespace": namespace, "name": meta::name(j), "uid": meta::uid(j), "resourceVersion": j["metadata"]["resourceVersion"]})).collect();
        if !active_refs.is_empty() {
            status["active"] = Value::Array(active_refs);
        }
        if let Some(last) = cron_job["status"]["lastScheduleTime"].as_str() {
            status["lastScheduleTime"] = json!(last);
        }
        let last_success = jobs.iter().filter(|j| job_finished(j) == Some("Complete")).filter_map(|j| j["status"]["completionTime"].as_str()).max().map(str::to_owned);
        if let Some(success) = last_success.or_else(|| cron_job["status"]["lastSuccessfulTime"].as_str().map(str::to_owned)) {
            status["lastSuccessfulTime"] = json!(success);
        }

        let mut requeue = schedule.next_after(now, &zone).map(|next| Duration::from_secs(next.duration_since(now).as_secs().max(0) as u64 + 1));
        if spec["suspend"] != true {
            let since = cron_job["status"]["lastScheduleTime"]
                .as_str()
                .or(cron_job["metadata"]["creationTimestamp"].as_str())
                .and_then(meta::parse_time)
                .unwrap_or(now);
            let (due, missed) = most_recent(&schedule, &zone, since, now);
            if missed > MAX_MISSED {
                context.recorder.warning(reference.clone(), "TooManyMissedTimes", format!("too many missed start times ({missed}); check clock skew"));
            }
            if let Some(due) = due {
                let too_late = spec["startingDeadlineSeconds"].as_i64().is_some_and(|deadline| now.duration_since(due).as_secs() > deadline);
                let policy = spec["concurrencyPolicy"].as_str().unwrap_or("Allow");
                if too_late {
                    context.recorder.warning(reference.clone(), "MissSchedule", format!("Missed scheduled time to start a job: {}", meta::format_time(due)));
                    status["lastScheduleTime"] = json!(meta::format_time(due));
                } else if policy == "Forbid" && !active.is_empty() {
                    // Wait for the running job; the due time stays due.
                    context.recorder.normal(reference.clone(), "JobAlreadyActive", "Not starting job because prior execution is running and concurrency policy is Forbid");
                    requeue = Some(Duration::from_secs(5).min(requeue.unwrap_or(Duration::MAX)));
                } else {
                    if policy == "Replace" {
                        for job in &active {
                            self.delete_job(job).await?;
                            context.recorder.normal(reference.clone(), "SuccessfulDelete", format!("Deleted job {}", meta::name(job)));
                        }
                    }
                    let job_name = format!("{name}-{}", due.as_second() / 60);
                    let template = &spec["jobTemplate"];
                    let mut annotations: Map<String, Value> = template["metadata"]["annotations"].as_object().cloned().unwrap_or_default();
                    annotations.insert(SCHEDULED_TIMESTAMP_ANNOTATION.into(), json!(meta::format_time(due)));
                    let job = json!({
                        "apiVersion": "batch/v1", "kind": "Job",
                        "metadata": {"name": job_name, "namespace": namespace, "labels": template["metadata"]["labels"].as_object().cloned().unwrap_or_default(), "annotations": annotations,
                                     "ownerReferences": [crate::pods::controller_reference("batch/v1", "CronJob", &cron_job)]},
                        "spec": template["spec"].clone(),
                    });
                    match context.client.create(info("Job"), Some(namespace), &job, MANAGER).await {
                        Ok(created) => {
                            context.informers.get("Job").remember(created);
                            context.recorder.normal(reference.clone(), "SuccessfulCreate", format!("Created job {job_name}"));
                        }
                        Err(shoal_client::Error::Api(error)) if error.code == 409 => {}
                        Err(error) => return Err(error.into()),
                    }
                    status["lastScheduleTime"] = json!(meta::format_time(due));
                }
            }
        }
        let unchanged = cron_job["status"].is_null() && status == json!({});
        if !unchanged && let Some(action) = harness::write_status(&context.client, "CronJob", cron_jobs, &cron_job, status).await? {
            return Ok(action);
        }
        Ok(requeue.map_or(Action::Done, Action::RequeueAfter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> jiff::Timestamp {
        text.parse().expect("timestamp")
    }

    #[test]
    fn schedules_parse_and_step() {
        let cases = [
            ("* * * * *", "2026-03-01T10:00:30Z", "2026-03-01T10:01:00Z"),
            ("*/15 * * * *", "2026-03-01T10:01:00Z", "2026-03-01T10:15:00Z"),
            ("0 9-17/4 * * MON-FRI", "2026-03-06T18:00:00Z", "2026-03-09T09:00:00Z"),
            ("30 2 1 * *", "2026-03-01T03:00:00Z", "2026-04-01T02:30:00Z"),
            ("@hourly", "2026-03-01T10:00:00Z", "2026-03-01T11:00:00Z"),
            ("0 0 29 feb *", "2026-03-01T00:00:00Z", "2028-02-29T00:00:00Z"),
            // Day-of-month and day-of-week both set: either matches.
            ("0 0 13 * 5", "2026-03-01T00:00:00Z", "2026-03-06T00:00:00Z"),
            ("0 0 * * 7", "2026-03-01T00:00:00Z", "2026-03-08T00:00:00Z"),
        ];
        for (expression, after, expected) in cases {
            let schedule = Schedule::parse(expression).expect(expression);
            assert_eq!(schedule.next_after(at(after), &TimeZone::UTC), Some(at(expected)), "{expression} after {after}");
        }
    }

    #[test]
    fn bad_schedules_say_why() {
        assert!(Schedule::parse("* * * *").unwrap_err().contains("5 fields"));
        assert!(Schedule::parse("61 * * * *").unwrap_err().contains("out of range"));
        assert!(Schedule::parse("*/0 * * * *").unwrap_err().contains("step"));
        assert!(Schedule::parse("* * * foo *").unwrap_err().contains("not a number"));
    }

    #[test]
    fn time_zones_shift_the_schedule() {
        let schedule = Schedule::parse("0 9 * * *").expect("schedule");
        let berlin = TimeZone::get("Europe/Berlin").expect("tzdb has Berlin");
        // 09:00 in Berlin in winter is 08:00 UTC.
        assert_eq!(schedule.next_after(at("2026-01-10T00:00:00Z"), &berlin), Some(at("2026-01-10T08:00:00Z")));
    }

    #[test]
    fn the_most_recent_missed_time_is_taken() {
        let schedule = Schedule::parse("*/10 * * * *").expect("schedule");
        let (due, missed) = most_recent(&schedule, &TimeZone::UTC, at("2026-03-01T10:00:00Z"), at("2026-03-01T10:35:00Z"));
        assert_eq!(due, Some(at("2026-03-01T10:30:00Z")));
        assert_eq!(missed, 3);
        let (due, _) = most_recent(&schedule, &TimeZone::UTC, at("2026-03-01T10:30:00Z"), at("2026-03-01T10:35:00Z"));
        assert_eq!(due, None);
    }
}
