package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// SpreadDomain is the failure domain replicas are spread across.
// +kubebuilder:validation:Enum=node;zone
type SpreadDomain string

// Spread domains.
const (
	SpreadNode SpreadDomain = "node"
	SpreadZone SpreadDomain = "zone"
)

// VolumePolicySpec is how a class of volumes is replicated, scheduled and
// backed up.
type VolumePolicySpec struct {
	// replicas is the number of copies of each volume, each on a different
	// node (or zone, see placement).
	// +optional
	// +kubebuilder:default=3
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=7
	Replicas int32 `json:"replicas,omitempty"`

	// placement says where replicas may go.
	// +optional
	Placement *Placement `json:"placement,omitempty"`

	// recurringSnapshots names the RecurringSnapshot schedules that apply to
	// the policy's volumes.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=16
	RecurringSnapshots []ObjectName `json:"recurringSnapshots,omitempty"`

	// backupTargetRef is the default BackupTarget for the policy's volumes.
	// +optional
	BackupTargetRef ObjectName `json:"backupTargetRef,omitempty"`

	// storageClass, when set, makes Cairn maintain a StorageClass that
	// provisions volumes under this policy.
	// +optional
	StorageClass *StorageClassTemplate `json:"storageClass,omitempty"`

	// selector picks existing volumes (by the labels of the Volume or its
	// PVC) that this policy governs besides those provisioned from its
	// StorageClass.
	// +optional
	Selector *metav1.LabelSelector `json:"selector,omitempty"`

	// priority decides between several policies that select the same volume:
	// the highest wins; ties go to the alphabetically first name.
	// +optional
	// +kubebuilder:default=0
	// +kubebuilder:validation:Minimum=-1000
	// +kubebuilder:validation:Maximum=1000
	Priority int32 `json:"priority,omitempty"`

	// replenishWait is how long a replica may stay lost (its process down
	// or its node gone) before a replacement is built on another node; a
	// replica that returns sooner is caught up instead of rebuilt.
	// +optional
	// +kubebuilder:default="10m"
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s') && duration(self) <= duration('168h')",message="replenishWait must be between 1s and 168h"
	ReplenishWait *metav1.Duration `json:"replenishWait,omitempty"`
}

// Placement constrains where replicas go.
type Placement struct {
	// spread is the failure domain no two replicas of a volume share.
	// Switching to zone moves replicas that share a zone, as a nodeSelector
	// change does.
	// +optional
	// +kubebuilder:default=node
	Spread SpreadDomain `json:"spread,omitempty"`

	// nodeSelector restricts replicas to nodes with these labels. When it
	// stops admitting a node, the volume's replica there is replaced: a new
	// one is placed on an admitted node and the old one is removed once
	// the new one is healthy in the engine (a detached volume keeps both
	// until it is attached).
	// +optional
	// +kubebuilder:validation:MaxProperties=32
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`
}

// StorageClassTemplate describes the StorageClass a VolumePolicy maintains.
type StorageClassTemplate struct {
	// name of the StorageClass.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Name string `json:"name"`

	// isDefault marks the StorageClass as the cluster default.
	// +optional
	// +kubebuilder:default=false
	IsDefault bool `json:"isDefault,omitempty"`

	// reclaimPolicy of volumes provisioned from the class. Retain keeps the
	// Volume (and its data) when its PVC is deleted.
	// +optional
	// +kubebuilder:default=Delete
	// +kubebuilder:validation:Enum=Delete;Retain
	ReclaimPolicy corev1.PersistentVolumeReclaimPolicy `json:"reclaimPolicy,omitempty"`

	// allowVolumeExpansion lets PVCs of the class grow.
	// +optional
	// +kubebuilder:default=true
	AllowVolumeExpansion *bool `json:"allowVolumeExpansion,omitempty"`

	// fsType is the filesystem CSI creates on new filesystem volumes.
	// +optional
	// +kubebuilder:default=ext4
	// +kubebuilder:validation:Enum=ext4;xfs
	FSType string `json:"fsType,omitempty"`
}

// VolumePolicyStatus is the observed state of a VolumePolicy.
type VolumePolicyStatus struct {
	// observedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions: Ready, Reconciling, Stalled.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=16
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// volumeCount is the number of volumes the policy governs.
	// +optional
	VolumeCount int32 `json:"volumeCount,omitempty"`

	// healthyCount is the number of those with every replica healthy.
	// +optional
	HealthyCount int32 `json:"healthyCount,omitempty"`

	// degradedCount is the number of those running with fewer healthy
	// replicas than wanted.
	// +optional
	DegradedCount int32 `json:"degradedCount,omitempty"`
}

// VolumePolicy says how a class of volumes is replicated, placed,
// snapshotted and backed up.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=cvp,categories=cairn
// +kubebuilder:printcolumn:name="Replicas",type=integer,JSONPath=`.spec.replicas`
// +kubebuilder:printcolumn:name="StorageClass",type=string,JSONPath=`.spec.storageClass.name`
// +kubebuilder:printcolumn:name="Volumes",type=integer,JSONPath=`.status.volumeCount`
// +kubebuilder:printcolumn:name="Degraded",type=integer,JSONPath=`.status.degradedCount`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type VolumePolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the desired policy.
	// +required
	Spec VolumePolicySpec `json:"spec"`

	// status is the observed state.
	// +optional
	// +kubebuilder:default={"observedGeneration":-1}
	Status VolumePolicyStatus `json:"status,omitempty"`
}

// VolumePolicyList is a list of VolumePolicies.
// +kubebuilder:object:root=true
type VolumePolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []VolumePolicy `json:"items"`
}

func init() {
	SchemeBuilder.Register(&VolumePolicy{}, &VolumePolicyList{})
}
