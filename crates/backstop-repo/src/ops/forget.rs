//! Retention policies: which snapshots to keep.
//!
//! Snapshots are grouped by host and paths (as restic does). Within a
//! group, newest first, each rule keeps snapshots until it has kept its
//! count: `last` the newest n; `hourly`…`yearly` the newest snapshot of each
//! of the last n hours, days, ISO weeks, months and years that have one (in
//! local time); `within` everything younger than a duration before the
//! newest; `tags` every snapshot with one of the tags. A snapshot is kept if
//! any rule keeps it.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Local, Timelike, Utc};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::id::SnapshotId;
use crate::snapshot::Snapshot;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
    pub within: Option<chrono::Duration>,
    pub tags: Vec<String>,
}

impl KeepPolicy {
    pub fn is_empty(&self) -> bool {
        self.last == 0
            && self.hourly == 0
            && self.daily == 0
            && self.weekly == 0
            && self.monthly == 0
            && self.yearly == 0
            && self.within.is_none()
            && self.tags.is_empty()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub id: SnapshotId,
    pub time: DateTime<Utc>,
    pub hostname: String,
    pub paths: Vec<String>,
    pub keep: bool,
    /// The rules that keep it (empty when it is forgotten).
    pub reasons: Vec<String>,
}

type Group<'a> = Vec<&'a (SnapshotId, Snapshot)>;

/// A time bucket: (year, day or week or month, hour, 0).
type BucketKey = (i32, u32, u32, u32);

/// Decide for every snapshot. Refuses an empty policy, which would forget
/// everything.
pub fn apply(snapshots: &[(SnapshotId, Snapshot)], policy: &KeepPolicy) -> Result<Vec<Decision>> {
    if policy.is_empty() {
        return Err(Error::Invalid(
            "no keep rule given; refusing to forget every snapshot (use --keep-last, --keep-daily, …)".into(),
        ));
    }
    let mut groups: BTreeMap<(String, Vec<String>), Group> = BTreeMap::new();
    for s in snapshots {
        groups.entry((s.1.hostname.clone(), s.1.paths.clone())).or_default().push(s);
    }
    let mut out = Vec::new();
    for (_, mut group) in groups {
        group.sort_by(|a, b| b.1.time.cmp(&a.1.time).then(b.0.cmp(&a.0)));
        let newest = group.first().map(|s| s.1.time);
        type Bucket = fn(&DateTime<Local>) -> BucketKey;
        let rules: [(&str, u32, Bucket); 5] = [
            ("hourly", policy.hourly, |t| (t.year(), t.ordinal(), t.hour(), 0)),
            ("daily", policy.daily, |t| (t.year(), t.ordinal(), 0, 0)),
            ("weekly", policy.weekly, |t| (t.iso_week().year(), t.iso_week().week(), 0, 0)),
            ("monthly", policy.monthly, |t| (t.year(), t.month(), 0, 0)),
            ("yearly", policy.yearly, |t| (t.year(), 0, 0, 0)),
        ];
        // Per rule: how many more buckets it keeps, and the last bucket kept.
        let mut kept_buckets: Vec<(u32, Option<BucketKey>)> = rules.iter().map(|r| (r.1, None)).collect();
        for (i, (id, snap)) in group.iter().map(|s| (&s.0, &s.1)).enumerate() {
            let mut reasons = Vec::new();
            if (i as u32) < policy.last {
                reasons.push(format!("last {}", policy.last));
            }
            let local = snap.time.with_timezone(&Local);
            for (rule, state) in rules.iter().zip(kept_buckets.iter_mut()) {
                let bucket = (rule.2)(&local);
                if state.0 > 0 && state.1 != Some(bucket) {
                    state.0 -= 1;
                    state.1 = Some(bucket);
                    reasons.push(rule.0.to_string());
                }
            }
            if let (Some(within), Some(newest)) = (policy.within, newest)
                && snap.time >= newest - within
            {
                reasons.push("within".into());
            }
            for tag in &policy.tags {
                if snap.has_tag(tag) {
                    reasons.push(format!("tag {tag}"));
                }
            }
            out.push(Decision {
                id: *id,
                time: snap.time,
                hostname: snap.hostname.clone(),
                paths: snap.paths.clone(),
                keep: !reasons.is_empty(),
                reasons,
            });
        }
    }
    out.sort_by_key(|d| d.time);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{BlobId, SessionId};
    use crate::snapshot::{SnapshotKind, Summary};
    use chrono::TimeZone;

    fn snap(time: DateTime<Utc>, host: &str, tags: &[&str]) -> (SnapshotId, Snapshot) {
        (
            SnapshotId(*blake3::hash(format!("{time}{host}").as_bytes()).as_bytes()),
            Snapshot {
                version: 1,
                time,
                hostname: host.into(),
                username: String::new(),
                uid: 0,
                gid: 0,
                paths: vec!["/data".into()],
                tags: tags.iter().map(|t| t.to_string()).collect(),
                kind: SnapshotKind::Files,
                tree: BlobId([0; 32]),
                parent: None,
                session: SessionId([0; 16]),
                excludes: vec![],
                program_version: String::new(),
                summary: Summary::default(),
                source: None,
                job: None,
            },
        )
    }

    /// Four snapshots a day, at 01:00, 07:00, 13:00, 19:00 local time, for 60 days.
    fn history() -> Vec<(SnapshotId, Snapshot)> {
        let start = Local.with_ymd_and_hms(2026, 1, 1, 1, 0, 0).unwrap();
        (0..240).map(|i| snap((start + chrono::Duration::hours(6 * i)).with_timezone(&Utc), "h", &[])).collect()
    }

    fn kept(decisions: &[Decision]) -> usize {
        decisions.iter().filter(|d| d.keep).count()
    }

    #[test]
    fn keep_last_and_daily() {
        let h = history();
        assert_eq!(kept(&apply(&h, &KeepPolicy { last: 3, ..Default::default() }).unwrap()), 3);
        let daily = apply(&h, &KeepPolicy { daily: 7, ..Default::default() }).unwrap();
        assert_eq!(kept(&daily), 7);
        // The newest snapshot of each of the last 7 days: 19:00 local.
        for d in daily.iter().filter(|d| d.keep) {
            assert_eq!(d.time.with_timezone(&Local).hour(), 19);
        }
        // Rules overlap: last 3 are within the last day, daily 7 adds 6 more.
        assert_eq!(kept(&apply(&h, &KeepPolicy { last: 3, daily: 7, ..Default::default() }).unwrap()), 9);
    }

    #[test]
    fn keep_weekly_monthly_yearly() {
        let h = history();
        assert_eq!(
            kept(&apply(&h, &KeepPolicy { monthly: 12, ..Default::default() }).unwrap()),
            3,
            "January, February and 1 March"
        );
        assert_eq!(kept(&apply(&h, &KeepPolicy { yearly: 3, ..Default::default() }).unwrap()), 1);
        let weeks = kept(&apply(&h, &KeepPolicy { weekly: 4, ..Default::default() }).unwrap());
        assert_eq!(weeks, 4);
    }

    #[test]
    fn keep_within_and_tags() {
        let mut h = history();
        h.push(snap(Utc.with_ymd_and_hms(2025, 6, 1, 0, 0, 0).unwrap(), "h", &["keep"]));
        let d = apply(&h, &KeepPolicy { within: Some(chrono::Duration::days(2)), ..Default::default() }).unwrap();
        assert_eq!(kept(&d), 9, "two days back from the newest, inclusive");
        let d = apply(&h, &KeepPolicy { tags: vec!["keep".into()], ..Default::default() }).unwrap();
        assert_eq!(kept(&d), 1);
    }

    #[test]
    fn groups_by_host_and_paths() {
        let t = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
        let h = vec![snap(t, "a", &[]), snap(t + chrono::Duration::hours(1), "a", &[]), snap(t, "b", &[])];
        let d = apply(&h, &KeepPolicy { last: 1, ..Default::default() }).unwrap();
        assert_eq!(kept(&d), 2, "the newest of each host");
    }

    #[test]
    fn an_empty_policy_is_refused() {
        assert!(apply(&history(), &KeepPolicy::default()).is_err());
    }
}
