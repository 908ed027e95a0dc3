//! Schedules: a cron expression (five fields, or six with seconds first) read in an IANA
//! time zone, and the params each run it starts is given. Pure: the fire times are
//! computed from the times passed in.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::ValidationErrors;

/// The zone of a schedule that names none.
pub const DEFAULT_TIMEZONE: &str = "UTC";

/// `POST /api/workflows/{id}/schedules` as a client writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewScheduleRequest {
    /// `min hour day-of-month month day-of-week`, or with a seconds field first
    /// (`*/10 * * * * *`); names (`MON`, `JAN`), lists, ranges, steps, `L`, `W` and `#`.
    #[schema(min_length = 1, max_length = 200, example = "0 9 * * MON-FRI")]
    pub cron: String,
    /// An IANA zone (`Europe/Berlin`); `UTC` when absent.
    #[serde(default)]
    #[schema(example = "Europe/Berlin")]
    pub timezone: Option<String>,
    /// The params of each run, checked against the workflow's when the schedule is made
    /// and again at each firing (the workflow may change).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: Map<String, Value>,
}

/// A schedule that passed every check; what a Schedule aggregate stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    pub cron: String,
    pub timezone: String,
    pub params: Map<String, Value>,
}

fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
}

/// The cron expression, parsed; the message says what is wrong.
pub fn parse_cron(expression: &str) -> Result<Cron, String> {
    let expression = expression.trim();
    if expression.is_empty() || expression.chars().count() > 200 {
        return Err("must be 1 to 200 characters".into());
    }
    parser()
        .parse(expression)
        .map_err(|e| format!("is not a cron expression: {e}"))
}

/// The IANA zone named `name`.
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    Tz::from_str(name.trim()).map_err(|_| "is not an IANA time zone (e.g. `Europe/Berlin`)".into())
}

impl NewScheduleRequest {
    /// Checks the expression and the zone, and that the expression ever fires.
    pub fn validate(self) -> Result<ScheduleSpec, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let timezone = self
            .timezone
            .as_deref()
            .map_or(DEFAULT_TIMEZONE, str::trim)
            .to_owned();
        let zone = errors.check("timezone", parse_timezone(&timezone));
        match (parse_cron(&self.cron), zone) {
            (Err(message), _) => errors.push("cron", message),
            (Ok(cron), Some(zone)) => {
                if cron
                    .find_next_occurrence(&Utc::now().with_timezone(&zone), false)
                    .is_err()
                {
                    errors.push("cron", "never fires");
                }
            }
            (Ok(_), None) => {}
        }
        errors.finish(|| ScheduleSpec {
            cron: self.cron.trim().to_owned(),
            timezone,
            params: self.params,
        })
    }
}

/// `at` without its fraction of a second: fire times are whole seconds, and croner keeps
/// the fraction of the time it searches from.
fn whole_second(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(at.timestamp(), 0).unwrap_or(at)
}

impl ScheduleSpec {
    fn parts(&self) -> Option<(Cron, Tz)> {
        Some((
            parse_cron(&self.cron).ok()?,
            parse_timezone(&self.timezone).ok()?,
        ))
    }

    /// The first fire time strictly after `after`; `None` when there is none (or the
    /// stored expression no longer parses).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let (cron, zone) = self.parts()?;
        cron.find_next_occurrence(&whole_second(after).with_timezone(&zone), false)
            .ok()
            .map(|at| at.with_timezone(&Utc))
    }

    /// The latest fire time in `(after, until]`: the one firing that is due at `until`
    /// when every one since `after` was missed — a catch-up, never a flood.
    pub fn latest_due(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let (cron, zone) = self.parts()?;
        let latest = cron
            .find_previous_occurrence(&whole_second(until).with_timezone(&zone), true)
            .ok()?
            .with_timezone(&Utc);
        (latest > after).then_some(latest)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    fn request(body: Value) -> NewScheduleRequest {
        serde_json::from_value(body).unwrap()
    }

    fn fields(body: Value) -> Vec<String> {
        request(body)
            .validate()
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn five_and_six_fields_are_accepted_utc_by_default() {
        let spec = request(json!({"cron": "*/1 * * * * *"}))
            .validate()
            .unwrap();
        assert_eq!(spec.timezone, "UTC");
        let spec = request(json!({"cron": " 0 9 * * MON-FRI ", "timezone": "Europe/Berlin"}))
            .validate()
            .unwrap();
        assert_eq!(spec.cron, "0 9 * * MON-FRI");
    }

    #[test]
    fn a_bad_expression_or_zone_names_its_field() {
        assert_eq!(fields(json!({"cron": "every day"})), ["cron"]);
        assert_eq!(fields(json!({"cron": ""})), ["cron"]);
        assert_eq!(fields(json!({"cron": "61 * * * *"})), ["cron"]);
        assert_eq!(fields(json!({"cron": "0 0 * * * * 2030"})), ["cron"]);
        assert_eq!(
            fields(json!({"cron": "* * * * *", "timezone": "Mars/Olympus"})),
            ["timezone"]
        );
        assert_eq!(
            fields(json!({"cron": "nope", "timezone": "nope"})),
            ["timezone", "cron"]
        );
    }

    #[test]
    fn fire_times_follow_the_zone() {
        let spec = request(json!({"cron": "0 9 * * *", "timezone": "Europe/Berlin"}))
            .validate()
            .unwrap();
        // 09:00 in Berlin is 08:00 UTC in winter, 07:00 UTC in summer.
        assert_eq!(
            spec.next_after(at("2026-12-07T00:00:00Z")),
            Some(at("2026-12-07T08:00:00Z"))
        );
        assert_eq!(
            spec.next_after(at("2026-07-07T00:00:00Z")),
            Some(at("2026-07-07T07:00:00Z"))
        );
    }

    #[test]
    fn the_latest_due_firing_is_one_catch_up_not_every_missed_one() {
        let spec = request(json!({"cron": "*/10 * * * * *"}))
            .validate()
            .unwrap();
        let last = at("2026-12-07T10:00:00Z");
        assert_eq!(spec.latest_due(last, at("2026-12-07T10:00:09Z")), None);
        assert_eq!(
            spec.latest_due(last, at("2026-12-07T10:00:10Z")),
            Some(at("2026-12-07T10:00:10Z"))
        );
        assert_eq!(
            spec.latest_due(last, at("2026-12-07T13:47:55Z")),
            Some(at("2026-12-07T13:47:50Z")),
            "hours missed are one firing"
        );
        assert_eq!(
            spec.next_after(Utc.with_ymd_and_hms(2026, 12, 7, 10, 0, 10).unwrap()),
            Some(at("2026-12-07T10:00:20Z"))
        );
        assert_eq!(
            spec.next_after(at("2026-12-07T10:00:10.75Z")),
            Some(at("2026-12-07T10:00:20Z")),
            "fire times are whole seconds"
        );
        assert_eq!(
            spec.latest_due(last, at("2026-12-07T10:00:20.5Z")),
            Some(at("2026-12-07T10:00:20Z"))
        );
    }
}
