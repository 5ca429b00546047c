package v1alpha1

import (
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// EngineSpec is the per-volume engine process on the node a volume is
// attached to.
type EngineSpec struct {
	// volumeName is the Volume the engine serves.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	VolumeName string `json:"volumeName"`

	// nodeID is the node the engine runs on.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	NodeID string `json:"nodeID"`

	// frontend is how the volume is exposed on the node: nbd (kernel NBD
	// client), fuse (a FUSE file on a loop device), none (no device: the
	// engine of a detached volume serves only snapshots and backups), or
	// empty to let the node agent choose (nbd where the nbd module and
	// nbd-client are available, else fuse).
	// +optional
	// +kubebuilder:validation:Enum=nbd;fuse;none
	Frontend string `json:"frontend,omitempty"`

	// replicas are the addresses (host:port, as in Replica status.address)
	// of the replicas the engine writes to. The node agent adds and removes
	// members of the running engine when this list changes.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MaxLength=263
	Replicas []string `json:"replicas,omitempty"`

	// size is the volume size in bytes; a positive multiple of 4096.
	// +required
	Size resource.Quantity `json:"size"`
}

// EngineStatus is the observed state of an engine.
type EngineStatus struct {
	// observedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// conditions: Ready, Reconciling, Stalled.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=16
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// state is Stopped, Starting, Running or Error.
	// +optional
	// +kubebuilder:validation:Enum=Stopped;Starting;Running;Error
	State string `json:"state,omitempty"`
	// endpoint is the device or socket the frontend serves.
	// +optional
	Endpoint string `json:"endpoint,omitempty"`
	// replicaModes maps each replica address to its mode in the engine:
	// healthy, rebuilding, resyncing, stale or failed.
	// +optional
	ReplicaModes map[string]string `json:"replicaModes,omitempty"`
	// robustness is the engine's view of the volume's redundancy: healthy,
	// degraded or faulted.
	// +optional
	// +kubebuilder:validation:Enum=healthy;degraded;faulted
	Robustness string `json:"robustness,omitempty"`
	// pid of the engine process on its node (0 when none runs).
	// +optional
	// +kubebuilder:validation:Minimum=0
	PID int32 `json:"pid,omitempty"`
	// restarts counts how often the node agent restarted a crashed engine
	// process since the agent started.
	// +optional
	// +kubebuilder:validation:Minimum=0
	Restarts int32 `json:"restarts,omitempty"`
	// rebuildProgress is the percentage of an ongoing rebuild.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	RebuildProgress int32 `json:"rebuildProgress,omitempty"`
}

// Engine is the process that serves one attached volume (internal; created by Cairn).
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=ceng,categories=cairn
// +kubebuilder:printcolumn:name="Volume",type=string,JSONPath=`.spec.volumeName`
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.spec.nodeID`
// +kubebuilder:printcolumn:name="State",type=string,JSONPath=`.status.state`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Engine struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	// spec is the desired engine.
	// +required
	Spec EngineSpec `json:"spec"`
	// status is the observed state.
	// +optional
	// +kubebuilder:default={"observedGeneration":-1}
	Status EngineStatus `json:"status,omitempty"`
}

// EngineList is a list of Engines.
// +kubebuilder:object:root=true
type EngineList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Engine `json:"items"`
}

func init() {
	SchemeBuilder.Register(&Engine{}, &EngineList{})
}
