// Package scheduler runs RecurringSnapshots inside the manager (no CronJob
// pods; the manager is leader-elected, so one scheduler acts at a time).
//
// A run is one scheduled time of a schedule's cron expression, read in its
// time zone. status.lastScheduleTime is the current run; the cursor for the
// next one is that time (or the schedule's creation). When a reconcile
// finds activations due after the cursor, the latest becomes the current
// run and the ones before it count as missed (the manager was down):
//
//	cursor        missed   missed   current       now      next
//	  |-------------x--------x---------R-------------|--------N---->
//	                                   |  R+jitter(v1) ... R+jitter(vn)
//
// Within a run each volume v starts at R+JitterOffset(v): then, if the
// schedule's windows allow that start, the scheduler creates one Snapshot
// or Backup named SCHEDULE-VOLUME-YYYYMMDDHHMM (R in UTC), labelled with
// the volume and the schedule and annotated with R, while fewer than
// spec.concurrency of the schedule's objects are in flight; a start outside
// the windows is recorded as skipped. The deterministic name makes creation
// idempotent: AlreadyExists means that run already started there. Volumes
// still waiting for a slot when the next run comes due are reported as not
// started. A volume created after its start joins at the next run. While
// suspended, due runs are passed over (the cursor moves, nothing starts).
//
// The scheduler wakes at the next start or run (RequeueAfter, from an
// injectable clock) and whenever one of its objects finishes, appears or
// goes, or a volume, policy or DR volume changes.
//
// Executors write the outcome: a Snapshot is done when readyToUse and
// failed while Stalled; a Backup is done when Completed and failed when
// Failed. Retention runs per kind and volume over the completed objects
// (policies.Retain in the schedule's zone) and never deletes the newest,
// an object in flight, a Backup a restoring volume or a DR standby still
// needs, or a Snapshot an unfinished Backup reads; of the failed objects
// it keeps the newest. Snapshots are owned by their Volume, Backups by
// nothing, and nothing by the schedule, so deleting a schedule or a policy
// deletes no data.
package scheduler
