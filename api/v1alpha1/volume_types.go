package v1alpha1

import (
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// VolumeState is the lifecycle state of a volume.
// +kubebuilder:validation:Enum=Pending;Creating;Detached;Attaching;Attached;Detaching;Restoring;Deleting;Faulted
type VolumeState string

// Volume states.
const (
	VolumePending   VolumeState = "Pending"
	VolumeCreating  VolumeState = "Creating"
	VolumeDetached  VolumeState = "Detached"
	VolumeAttaching VolumeState = "Attaching"
	VolumeAttached  VolumeState = "Attached"
	VolumeDetaching VolumeState = "Detaching"
	VolumeRestoring VolumeState = "Restoring"
	VolumeDeleting  VolumeState = "Deleting"
	VolumeFaulted   VolumeState = "Faulted"
)

// VolumeSpec is a replicated block volume.
// +kubebuilder:validation:XValidation:rule="has(self.fromBackup) == has(oldSelf.fromBackup) && (!has(self.fromBackup) || self.fromBackup == oldSelf.fromBackup || (has(oldSelf.standby) && oldSelf.standby && self.fromBackup.backupTargetRef == oldSelf.fromBackup.backupTargetRef && self.fromBackup.volume == oldSelf.fromBackup.volume))",message="fromBackup is set only when the volume is created and cannot change (a standby may only move fromBackup.backup to another backup of the same source)"
// +kubebuilder:validation:XValidation:rule="has(self.fromSnapshot) == has(oldSelf.fromSnapshot) && (!has(self.fromSnapshot) || self.fromSnapshot == oldSelf.fromSnapshot)",message="fromSnapshot is set only when the volume is created and cannot change"
// +kubebuilder:validation:XValidation:rule="has(self.fromVolume) == has(oldSelf.fromVolume) && (!has(self.fromVolume) || self.fromVolume == oldSelf.fromVolume)",message="fromVolume is set only when the volume is created and cannot change"
// +kubebuilder:validation:XValidation:rule="(has(self.fromBackup) ? 1 : 0) + (has(self.fromSnapshot) ? 1 : 0) + (has(self.fromVolume) ? 1 : 0) <= 1",message="at most one of fromBackup, fromSnapshot and fromVolume may be set"
type VolumeSpec struct {
	// size of the volume in bytes (a quantity such as 10Gi); a positive
	// multiple of 4096. It can grow but never shrink.
	// +required
	// +kubebuilder:validation:XValidation:rule="quantity(string(self)).isGreaterThan(quantity('0'))",message="size must be greater than zero"
	// +kubebuilder:validation:XValidation:rule="quantity(string(self)).isInteger() && quantity(string(self)).asInteger() % 4096 == 0",message="size must be a whole multiple of 4096 bytes (4Ki)"
	// +kubebuilder:validation:XValidation:rule="quantity(string(self)).isLessThan(quantity('64Ti')) || quantity(string(self)).compareTo(quantity('64Ti')) == 0",message="size must be at most 64Ti"
	// +kubebuilder:validation:XValidation:rule="quantity(string(self)).compareTo(quantity(string(oldSelf))) >= 0",message="size cannot shrink: volumes can only grow"
	Size resource.Quantity `json:"size"`

	// policyRef names the VolumePolicy the volume runs under. Empty means the
	// highest-priority policy whose selector matches, if any.
	// +optional
	PolicyRef ObjectName `json:"policyRef,omitempty"`

	// replicas overrides the policy's replica count for this volume.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=7
	Replicas *int32 `json:"replicas,omitempty"`

	// fromBackup restores the volume from a backup when it is created.
	// +optional
	FromBackup *BackupSource `json:"fromBackup,omitempty"`

	// fromSnapshot fills the volume, when it is created, from a Snapshot
	// (of another volume, held in that volume's replicas): the new
	// replicas copy it from a running replica of the source volume.
	// +optional
	FromSnapshot ObjectName `json:"fromSnapshot,omitempty"`

	// fromVolume clones a Volume when the volume is created: Cairn takes a
	// snapshot of it for the purpose (owned by this volume, removed once
	// the clone is filled) and fills the new replicas from it.
	// +optional
	FromVolume ObjectName `json:"fromVolume,omitempty"`

	// standby keeps the volume detached and restoring from its backup source
	// (set by a DisasterRecoveryVolume); it cannot be attached until cleared.
	// +optional
	Standby bool `json:"standby,omitempty"`

	// nodeID is the node the volume is attached to (set by the CSI controller
	// on ControllerPublish); empty means detached.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	NodeID string `json:"nodeID,omitempty"`
}

// BackupSource names one backup in a target.
type BackupSource struct {
	// backupTargetRef names the BackupTarget.
	// +required
	BackupTargetRef ObjectName `json:"backupTargetRef"`

	// volume is the source volume's name in the target.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Volume string `json:"volume"`

	// backup is the backup's name; empty means the newest complete backup.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	Backup string `json:"backup,omitempty"`
}

// VolumeReplicaStatus is one replica as the volume sees it.
type VolumeReplicaStatus struct {
	// name of the Replica object.
	// +required
	Name string `json:"name"`
	// node the replica lives on.
	// +optional
	Node string `json:"node,omitempty"`
	// mode is RW (healthy), WO (rebuilding or catching up), ERR (failed
	// or stale), or Unknown (detached and its node not ready, or its
	// process not yet started).
	// +optional
	// +kubebuilder:validation:Enum=RW;WO;ERR;Unknown
	Mode string `json:"mode,omitempty"`
}

// VolumeStatus is the observed state of a volume.
type VolumeStatus struct {
	// observedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions: Ready, Reconciling, Stalled, and PolicyResolved.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=16
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// state is the lifecycle state.
	// +optional
	State VolumeState `json:"state,omitempty"`

	// robustness is healthy (all replicas RW), degraded (fewer than wanted)
	// or faulted (none).
	// +optional
	Robustness Robustness `json:"robustness,omitempty"`

	// effectivePolicy is the VolumePolicy currently applied, kept when that
	// policy is deleted so the volume keeps running with its last settings.
	// +optional
	EffectivePolicy string `json:"effectivePolicy,omitempty"`

	// replicas lists the volume's replicas.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=16
	Replicas []VolumeReplicaStatus `json:"replicas,omitempty"`

	// attachedNode is the node whose engine serves the volume.
	// +optional
	AttachedNode string `json:"attachedNode,omitempty"`

	// endpoint is where the engine's frontend listens (a device path or
	// socket on attachedNode).
	// +optional
	Endpoint string `json:"endpoint,omitempty"`

	// actualSize is the bytes the volume uses on one replica, snapshots included.
	// +optional
	ActualSize *resource.Quantity `json:"actualSize,omitempty"`

	// lastBackup is the newest complete backup of the volume.
	// +optional
	LastBackup string `json:"lastBackup,omitempty"`

	// lastBackupTime is when lastBackup was taken.
	// +optional
	LastBackupTime *metav1.Time `json:"lastBackupTime,omitempty"`

	// restoredBackup is the backup spec.fromBackup resolved to (the newest
	// complete one when spec.fromBackup.backup is empty), fixed once chosen
	// except on a standby, where it follows spec.fromBackup.backup;
	// condition Restored says when every replica holds it.
	// +optional
	RestoredBackup string `json:"restoredBackup,omitempty"`

	// restoredSnapshot is the snapshot spec.fromSnapshot or spec.fromVolume
	// resolved to (for a clone, the one Cairn took), fixed once chosen;
	// condition Restored says when every replica holds a copy of it.
	// +optional
	RestoredSnapshot *SnapshotSource `json:"restoredSnapshot,omitempty"`
}

// SnapshotSource names a snapshot held in a volume's replicas.
type SnapshotSource struct {
	// volume is the Volume whose replicas hold the snapshot.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Volume string `json:"volume"`

	// snapshot is the snapshot's name in those replicas (the Snapshot
	// object's name).
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Snapshot string `json:"snapshot"`
}

// Volume is a replicated block volume served by Cairn's engine.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=cvol,categories=cairn
// +kubebuilder:printcolumn:name="Size",type=string,JSONPath=`.spec.size`
// +kubebuilder:printcolumn:name="State",type=string,JSONPath=`.status.state`
// +kubebuilder:printcolumn:name="Robustness",type=string,JSONPath=`.status.robustness`
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.status.attachedNode`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Volume struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the desired volume.
	// +required
	Spec VolumeSpec `json:"spec"`

	// status is the observed state.
	// +optional
	// +kubebuilder:default={"observedGeneration":-1}
	Status VolumeStatus `json:"status,omitempty"`
}

// VolumeList is a list of Volumes.
// +kubebuilder:object:root=true
type VolumeList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Volume `json:"items"`
}

func init() {
	SchemeBuilder.Register(&Volume{}, &VolumeList{})
}
