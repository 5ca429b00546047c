package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// RecurringAction is what a RecurringSnapshot does at each run.
// +kubebuilder:validation:Enum=snapshot;backup
type RecurringAction string

// Recurring actions.
const (
	ActionSnapshot RecurringAction = "snapshot"
	ActionBackup   RecurringAction = "backup"
)

// WindowKind says whether a window allows or forbids runs.
// +kubebuilder:validation:Enum=allow;deny
type WindowKind string

// Window kinds.
const (
	WindowAllow WindowKind = "allow"
	WindowDeny  WindowKind = "deny"
)

// RecurringSnapshotSpec is a cron schedule of snapshots or backups and how
// many of them to keep.
// +kubebuilder:validation:XValidation:rule="self.action != 'backup' || has(self.backupTargetRef)",message="action backup needs backupTargetRef (the BackupTarget to write to)",fieldPath=".backupTargetRef",reason=FieldValueRequired
type RecurringSnapshotSpec struct {
	// schedule in 5-field cron syntax (minute hour day-of-month month
	// day-of-week), interpreted in timeZone. Descriptors such as @hourly and
	// @daily are accepted.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	Schedule string `json:"schedule"`

	// timeZone is the IANA time zone the schedule is read in, for example
	// Europe/Berlin. Runs that fall in a DST gap run at the first instant after
	// it; runs in a repeated hour run once, at the first occurrence.
	// +optional
	// +kubebuilder:default=UTC
	// +kubebuilder:validation:MaxLength=64
	TimeZone string `json:"timeZone,omitempty"`

	// jitter spreads runs over this window after the scheduled time,
	// deterministically per volume, so that many volumes do not start at once.
	// It must be shorter than the schedule's shortest interval.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Format=duration
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('0s') && duration(self) <= duration('24h')",message="jitter must be between 0s and 24h"
	Jitter *metav1.Duration `json:"jitter,omitempty"`

	// windows restrict when runs may start. With any allow window, runs start
	// only inside an allow window; a run inside a deny window is skipped.
	// +optional
	// +kubebuilder:validation:MaxItems=16
	// +listType=atomic
	Windows []TimeWindow `json:"windows,omitempty"`

	// action is snapshot (local, on every replica) or backup (snapshot, then
	// upload to backupTargetRef).
	// +optional
	// +kubebuilder:default=snapshot
	Action RecurringAction `json:"action,omitempty"`

	// backupTargetRef names the BackupTarget backups go to; required when
	// action is backup.
	// +optional
	BackupTargetRef ObjectName `json:"backupTargetRef,omitempty"`

	// retention says which of this schedule's snapshots or backups to keep.
	// +optional
	// +kubebuilder:default={keepLast: 10, hourly: 0, daily: 0, weekly: 0, monthly: 0, yearly: 0}
	Retention *Retention `json:"retention,omitempty"`

	// concurrency is how many volumes run at the same time.
	// +optional
	// +kubebuilder:default=4
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=64
	Concurrency int32 `json:"concurrency,omitempty"`

	// selector picks volumes by label, in addition to volumes whose
	// VolumePolicy lists this schedule.
	// +optional
	Selector *metav1.LabelSelector `json:"selector,omitempty"`

	// suspend stops new runs; running ones finish.
	// +optional
	// +kubebuilder:default=false
	Suspend bool `json:"suspend,omitempty"`
}

// TimeWindow is a daily window in the schedule's time zone.
// +kubebuilder:validation:XValidation:rule="self.start != self.end",message="window start and end must differ"
type TimeWindow struct {
	// kind is allow or deny.
	// +required
	Kind WindowKind `json:"kind"`

	// start time of day, HH:MM (24h).
	// +required
	// +kubebuilder:validation:Pattern=`^([01][0-9]|2[0-3]):[0-5][0-9]$`
	Start string `json:"start"`

	// end time of day, HH:MM (24h); earlier than start means the window crosses midnight.
	// +required
	// +kubebuilder:validation:Pattern=`^([01][0-9]|2[0-3]):[0-5][0-9]$`
	End string `json:"end"`

	// days of the week the window applies to (Mon..Sun); empty means every day.
	// +optional
	// +kubebuilder:validation:MaxItems=7
	// +listType=set
	Days []Weekday `json:"days,omitempty"`
}

// Weekday is a three-letter day name.
// +kubebuilder:validation:Enum=Mon;Tue;Wed;Thu;Fri;Sat;Sun
type Weekday string

// Retention keeps the union of the newest keepLast items and the newest item
// of each of the last N hours, days, weeks, months and years (GFS). Items a
// DR volume or a running restore needs are never pruned.
// +kubebuilder:validation:XValidation:rule="self.keepLast + self.hourly + self.daily + self.weekly + self.monthly + self.yearly > 0",message="retention keeps nothing: set keepLast or at least one of hourly, daily, weekly, monthly, yearly above zero"
type Retention struct {
	// keepLast keeps the newest N.
	// +optional
	// +kubebuilder:default=0
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000
	KeepLast int32 `json:"keepLast"`

	// hourly keeps the newest of each of the last N hours.
	// +optional
	// +kubebuilder:default=0
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000
	Hourly int32 `json:"hourly"`

	// daily keeps the newest of each of the last N days.
	// +optional
	// +kubebuilder:default=0
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000
	Daily int32 `json:"daily"`

	// weekly keeps the newest of each of the last N ISO weeks.
	// +optional
	// +kubebuilder:default=0
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000
	Weekly int32 `json:"weekly"`

	// monthly keeps the newest of each of the last N months.
	// +optional
	// +kubebuilder:default=0
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000
	Monthly int32 `json:"monthly"`

	// yearly keeps the newest of each of the last N years.
	// +optional
	// +kubebuilder:default=0
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	Yearly int32 `json:"yearly"`

	// maxAge prunes anything older than this even if a bucket above would
	// keep it; 0 disables. The newest item is always kept.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Format=duration
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('0s')",message="maxAge must not be negative"
	MaxAge *metav1.Duration `json:"maxAge,omitempty"`
}

// RunResult is the outcome of one run on one volume.
type RunResult struct {
	// volume the run was for.
	// +required
	Volume string `json:"volume"`
	// scheduledTime is the (jittered) time the run was due.
	// +required
	ScheduledTime metav1.Time `json:"scheduledTime"`
	// succeeded is true when the snapshot or backup completed.
	// +required
	Succeeded bool `json:"succeeded"`
	// message explains a failure.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Message string `json:"message,omitempty"`
}

// RecurringSnapshotStatus is the observed state of a RecurringSnapshot.
type RecurringSnapshotStatus struct {
	// observedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions: Ready, Reconciling, Stalled.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=16
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// lastScheduleTime is when the latest run was due.
	// +optional
	LastScheduleTime *metav1.Time `json:"lastScheduleTime,omitempty"`

	// nextScheduleTime is when the next run is due (before jitter).
	// +optional
	NextScheduleTime *metav1.Time `json:"nextScheduleTime,omitempty"`

	// lastSuccessfulTime is when a run last succeeded on every volume.
	// +optional
	LastSuccessfulTime *metav1.Time `json:"lastSuccessfulTime,omitempty"`

	// volumeCount is the number of volumes the schedule applies to.
	// +optional
	VolumeCount int32 `json:"volumeCount,omitempty"`

	// recentResults are the latest per-volume outcomes, newest first.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=20
	RecentResults []RunResult `json:"recentResults,omitempty"`
}

// RecurringSnapshot takes snapshots or backups of volumes on a cron schedule
// and prunes them by retention.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=crs,categories=cairn
// +kubebuilder:printcolumn:name="Schedule",type=string,JSONPath=`.spec.schedule`
// +kubebuilder:printcolumn:name="Zone",type=string,JSONPath=`.spec.timeZone`
// +kubebuilder:printcolumn:name="Action",type=string,JSONPath=`.spec.action`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Next",type=string,JSONPath=`.status.nextScheduleTime`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type RecurringSnapshot struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the desired schedule.
	// +required
	Spec RecurringSnapshotSpec `json:"spec"`

	// status is the observed state.
	// +optional
	// +kubebuilder:default={"observedGeneration":-1}
	Status RecurringSnapshotStatus `json:"status,omitempty"`
}

// RecurringSnapshotList is a list of RecurringSnapshots.
// +kubebuilder:object:root=true
type RecurringSnapshotList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []RecurringSnapshot `json:"items"`
}

func init() {
	SchemeBuilder.Register(&RecurringSnapshot{}, &RecurringSnapshotList{})
}
