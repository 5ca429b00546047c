package v1alpha1

import (
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ReplicaSpec is one copy of a volume on one node. Replicas are created by
// the volume controller and run by the node agent of spec.nodeID.
type ReplicaSpec struct {
	// volumeName is the Volume this replica belongs to.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	VolumeName string `json:"volumeName"`

	// nodeID is the node that stores the replica.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	NodeID string `json:"nodeID"`

	// diskPath is the node disk (data directory root) holding the replica.
	// +optional
	// +kubebuilder:validation:MaxLength=4096
	DiskPath string `json:"diskPath,omitempty"`

	// size is the volume size the replica is created with.
	// +required
	Size resource.Quantity `json:"size"`

	// restore fills a new replica from a backup before it first runs (set
	// by the volume controller for a volume created fromBackup; backup is
	// always the resolved backup ID).
	// +optional
	Restore *BackupSource `json:"restore,omitempty"`

	// copyFrom fills a new replica, before it first runs, from a snapshot
	// of another volume, read through a running replica of that volume
	// (set by the volume controller for a volume created fromSnapshot or
	// fromVolume).
	// +optional
	CopyFrom *SnapshotSource `json:"copyFrom,omitempty"`
}

// ReplicaRestoreResult summarises one completed restore into a replica.
type ReplicaRestoreResult struct {
	// backup restored.
	// +required
	Backup string `json:"backup"`
	// since is the backup the replica held before (empty when an earlier
	// update was interrupted: its blocks were then rewritten too).
	// +optional
	Since string `json:"since,omitempty"`
	// incremental is true when only differing blocks were written.
	// +optional
	Incremental bool `json:"incremental,omitempty"`
	// bytesWritten is how many bytes of blocks were written or zeroed.
	// +optional
	BytesWritten int64 `json:"bytesWritten,omitempty"`
	// bytesFetched is how many (stored, compressed) bytes were read from
	// the target.
	// +optional
	BytesFetched int64 `json:"bytesFetched,omitempty"`
	// duration is how long the update took on the node.
	// +optional
	Duration *metav1.Duration `json:"duration,omitempty"`
}

// ReplicaStatus is the observed state of a replica.
type ReplicaStatus struct {
	// observedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// conditions: Ready, Reconciling, Stalled.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=16
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// state is Restoring, Stopped, Starting, Running or Error.
	// +optional
	// +kubebuilder:validation:Enum=Restoring;Stopped;Starting;Running;Error
	State string `json:"state,omitempty"`
	// restoredBackup is the backup spec.restore filled the replica from,
	// once that restore completed.
	// +optional
	RestoredBackup string `json:"restoredBackup,omitempty"`
	// copiedSnapshot is the snapshot spec.copyFrom filled the replica from
	// (volume/snapshot), once that copy completed.
	// +optional
	CopiedSnapshot string `json:"copiedSnapshot,omitempty"`
	// restoreProgress is the percentage of an ongoing restore.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	RestoreProgress int32 `json:"restoreProgress,omitempty"`
	// lastRestore is what the replica's last incremental update (a DR
	// standby applying its source's next backup) wrote: only the blocks
	// that differ from the backup it held.
	// +optional
	LastRestore *ReplicaRestoreResult `json:"lastRestore,omitempty"`
	// address the replica server listens on (host:port). The node agent
	// picks the port once and keeps it, so the address is reported before
	// the process first runs and survives restarts.
	// +optional
	Address string `json:"address,omitempty"`
	// pid of the replica process on its node (0 when none runs).
	// +optional
	// +kubebuilder:validation:Minimum=0
	PID int32 `json:"pid,omitempty"`
	// restarts counts how often the node agent restarted a crashed replica
	// process since the agent started.
	// +optional
	// +kubebuilder:validation:Minimum=0
	Restarts int32 `json:"restarts,omitempty"`
	// dataGeneration is the replica's durable membership generation.
	// +optional
	DataGeneration int64 `json:"dataGeneration,omitempty"`
}

// Replica is one copy of a volume on one node (internal; created by Cairn).
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=crep,categories=cairn
// +kubebuilder:printcolumn:name="Volume",type=string,JSONPath=`.spec.volumeName`
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.spec.nodeID`
// +kubebuilder:printcolumn:name="State",type=string,JSONPath=`.status.state`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Replica struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	// spec is the desired replica.
	// +required
	Spec ReplicaSpec `json:"spec"`
	// status is the observed state.
	// +optional
	// +kubebuilder:default={"observedGeneration":-1}
	Status ReplicaStatus `json:"status,omitempty"`
}

// ReplicaList is a list of Replicas.
// +kubebuilder:object:root=true
type ReplicaList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Replica `json:"items"`
}

func init() {
	SchemeBuilder.Register(&Replica{}, &ReplicaList{})
}
