package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// BackupSpec is one backup of a volume's snapshot to a BackupTarget.
// Deleting a Backup object never deletes the backup from the target unless
// deletePolicy is Delete.
type BackupSpec struct {
	// volumeName is the Volume backed up.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="volumeName is immutable"
	VolumeName string `json:"volumeName"`

	// snapshotName is the Snapshot to back up; empty takes a new snapshot.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	SnapshotName string `json:"snapshotName,omitempty"`

	// backupTargetRef names the BackupTarget to write to.
	// +required
	BackupTargetRef ObjectName `json:"backupTargetRef"`

	// deletePolicy is Retain (keep the backup in the target when this object
	// is deleted) or Delete.
	// +optional
	// +kubebuilder:default=Retain
	// +kubebuilder:validation:Enum=Retain;Delete
	DeletePolicy string `json:"deletePolicy,omitempty"`

	// backupID, when set, names a backup that already exists in the target
	// (volumeName's catalogue): this object describes it and no snapshot is
	// taken and nothing is uploaded. The BackupTarget controller sets it on
	// the Backup objects it imports from a target's catalogue (a rebuilt
	// cluster, another cluster's backups), so `kubectl get backups` shows
	// what can be restored.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9][A-Za-z0-9._-]*$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="backupID is immutable"
	BackupID string `json:"backupID,omitempty"`
}

// BackupStatus is the observed state of a backup.
type BackupStatus struct {
	// observedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// conditions: Ready, Reconciling, Stalled.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=16
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// state is Pending, InProgress, Completed or Failed.
	// +optional
	// +kubebuilder:validation:Enum=Pending;InProgress;Completed;Failed
	State string `json:"state,omitempty"`
	// progress is the percentage of bytes processed.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	Progress int32 `json:"progress,omitempty"`
	// backupID is the backup's id in the target.
	// +optional
	BackupID string `json:"backupID,omitempty"`
	// uploadedBytes is the compressed bytes newly stored by this backup.
	// +optional
	UploadedBytes int64 `json:"uploadedBytes,omitempty"`
	// completionTime is when the backup became complete.
	// +optional
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`
	// creationTime is when the backup was started, as recorded in the
	// target; for an imported backup it predates metadata.creationTimestamp.
	// +optional
	CreationTime *metav1.Time `json:"creationTime,omitempty"`
	// size is the volume's size in bytes at the backup (what a restore
	// writes).
	// +optional
	// +kubebuilder:validation:Minimum=0
	Size int64 `json:"size,omitempty"`
}

// Backup is one backup of a Volume in a BackupTarget.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=cbak,categories=cairn
// +kubebuilder:printcolumn:name="Volume",type=string,JSONPath=`.spec.volumeName`
// +kubebuilder:printcolumn:name="Target",type=string,JSONPath=`.spec.backupTargetRef`
// +kubebuilder:printcolumn:name="State",type=string,JSONPath=`.status.state`
// +kubebuilder:printcolumn:name="Progress",type=integer,JSONPath=`.status.progress`
// +kubebuilder:printcolumn:name="Backup ID",type=string,JSONPath=`.status.backupID`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Backup struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	// spec is the desired backup.
	// +required
	Spec BackupSpec `json:"spec"`
	// status is the observed state.
	// +optional
	// +kubebuilder:default={"observedGeneration":-1}
	Status BackupStatus `json:"status,omitempty"`
}

// BackupList is a list of Backups.
// +kubebuilder:object:root=true
type BackupList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Backup `json:"items"`
}

func init() {
	SchemeBuilder.Register(&Backup{}, &BackupList{})
}
