package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// DRPhase is where a DisasterRecoveryVolume is in its life.
// +kubebuilder:validation:Enum=Pending;Restoring;Standby;Activating;Active;Failed
type DRPhase string

// DR phases.
const (
	DRPending    DRPhase = "Pending"
	DRRestoring  DRPhase = "Restoring"
	DRStandby    DRPhase = "Standby"
	DRActivating DRPhase = "Activating"
	DRActive     DRPhase = "Active"
	DRFailed     DRPhase = "Failed"
)

// DisasterRecoveryVolumeSpec keeps a standby volume restored from another
// cluster's backups and turns it into a live volume when activated.
type DisasterRecoveryVolumeSpec struct {
	// backupTargetRef names the BackupTarget holding the source's backups
	// (usually the primary site's target, read-only here).
	// +required
	BackupTargetRef ObjectName `json:"backupTargetRef"`

	// sourceVolume is the volume's name as recorded in the backup target.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	SourceVolume string `json:"sourceVolume"`

	// policyRef names the VolumePolicy the volume runs under once active.
	// +optional
	PolicyRef ObjectName `json:"policyRef,omitempty"`

	// pollInterval is how often the standby looks for a newer backup.
	// +optional
	// +kubebuilder:default="30s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Format=duration
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('5s') && duration(self) <= duration('24h')",message="pollInterval must be between 5s and 24h"
	PollInterval *metav1.Duration `json:"pollInterval,omitempty"`

	// activate turns the standby into a live volume: Cairn applies the newest
	// backup, stops following the source and binds claim. It is one-way: a
	// git commit flipping it to true is the failover.
	// +optional
	// +kubebuilder:default=false
	// +kubebuilder:validation:XValidation:rule="oldSelf == false || self == true",message="activate cannot move back from true to false: an activated volume is live; delete and recreate the DisasterRecoveryVolume to follow the source again"
	Activate bool `json:"activate,omitempty"`

	// claim is the PersistentVolumeClaim created in this namespace and bound
	// to the volume on activation.
	// +required
	Claim ClaimTemplate `json:"claim"`
}

// ClaimTemplate describes the PVC a DR volume creates on activation.
type ClaimTemplate struct {
	// name of the PersistentVolumeClaim.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Name string `json:"name"`

	// storageClassName of the claim; defaults to the policy's StorageClass.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	StorageClassName string `json:"storageClassName,omitempty"`
}

// DisasterRecoveryVolumeStatus is the observed state of a DR volume.
type DisasterRecoveryVolumeStatus struct {
	// observedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions: Ready, Reconciling, Stalled.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=16
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// phase is Pending, Restoring, Standby, Activating, Active or Failed.
	// +optional
	Phase DRPhase `json:"phase,omitempty"`

	// volumeName is the Cairn Volume holding the restored data.
	// +optional
	VolumeName string `json:"volumeName,omitempty"`

	// lastRestoredBackup is the newest backup applied to the standby.
	// +optional
	LastRestoredBackup string `json:"lastRestoredBackup,omitempty"`

	// lastRestoredBackupTime is when that backup was taken at the source.
	// +optional
	LastRestoredBackupTime *metav1.Time `json:"lastRestoredBackupTime,omitempty"`

	// lag is how far the standby trails the source's newest backup.
	// +optional
	Lag *metav1.Duration `json:"lag,omitempty"`

	// rpo is, once activated, how much of the source's writes activation
	// may have lost: 0s when the backup activated from was taken while the
	// source volume was fenced (detached; a planned switchover), else the
	// time from that backup's creation to the activation.
	// +optional
	RPO *metav1.Duration `json:"rpo,omitempty"`
}

// DisasterRecoveryVolume is a standby copy of another cluster's volume,
// kept current from its backups, that becomes live when activated.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,shortName=drv,categories=cairn
// +kubebuilder:printcolumn:name="Source",type=string,JSONPath=`.spec.sourceVolume`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Lag",type=string,JSONPath=`.status.lag`
// +kubebuilder:printcolumn:name="Activate",type=boolean,JSONPath=`.spec.activate`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type DisasterRecoveryVolume struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the desired standby.
	// +required
	Spec DisasterRecoveryVolumeSpec `json:"spec"`

	// status is the observed state.
	// +optional
	// +kubebuilder:default={"observedGeneration":-1}
	Status DisasterRecoveryVolumeStatus `json:"status,omitempty"`
}

// DisasterRecoveryVolumeList is a list of DR volumes.
// +kubebuilder:object:root=true
type DisasterRecoveryVolumeList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []DisasterRecoveryVolume `json:"items"`
}

func init() {
	SchemeBuilder.Register(&DisasterRecoveryVolume{}, &DisasterRecoveryVolumeList{})
}
