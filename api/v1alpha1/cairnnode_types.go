package v1alpha1

import (
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// CairnNodeSpec is how Cairn may use one Kubernetes node.
type CairnNodeSpec struct {
	// disks are the data directories replicas may be placed on.
	// +optional
	// +listType=map
	// +listMapKey=path
	// +kubebuilder:validation:MaxItems=32
	Disks []NodeDisk `json:"disks,omitempty"`

	// allowScheduling lets new replicas be placed on the node.
	// +optional
	// +kubebuilder:default=true
	AllowScheduling *bool `json:"allowScheduling,omitempty"`

	// evictionRequested moves every replica off the node (for maintenance
	// or decommissioning): each gets a replacement on another node and goes
	// once its volume has as many healthy replicas elsewhere (a detached
	// volume's stays until its next attach). No new replica is placed on
	// the node meanwhile.
	// +optional
	EvictionRequested bool `json:"evictionRequested,omitempty"`
}

// How a node takes new replicas (CairnNodeSpec.Scheduling).
const (
	NodeSchedulingOn  = "on"
	NodeSchedulingOff = "off" // allowScheduling false
	NodeEvicting      = "evicting"
)

// Scheduling says how the node takes new replicas: NodeEvicting when
// eviction is requested, NodeSchedulingOff when allowScheduling is false,
// else NodeSchedulingOn.
func (s *CairnNodeSpec) Scheduling() string {
	switch {
	case s.EvictionRequested:
		return NodeEvicting
	case s.AllowScheduling != nil && !*s.AllowScheduling:
		return NodeSchedulingOff
	}
	return NodeSchedulingOn
}

// NodeDisk is one data directory on a node.
type NodeDisk struct {
	// path of the directory.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=4096
	// +kubebuilder:validation:Pattern=`^/`
	Path string `json:"path"`
	// reserved is space kept free for other uses.
	// +optional
	Reserved *resource.Quantity `json:"reserved,omitempty"`
}

// NodeDiskStatus is the observed state of a disk.
type NodeDiskStatus struct {
	// path of the directory.
	// +required
	Path string `json:"path"`
	// capacity of the filesystem.
	// +optional
	Capacity *resource.Quantity `json:"capacity,omitempty"`
	// available space on the filesystem.
	// +optional
	Available *resource.Quantity `json:"available,omitempty"`
	// replicaCount is the number of replicas stored on the disk.
	// +optional
	ReplicaCount int32 `json:"replicaCount,omitempty"`
}

// CairnNodeStatus is the observed state of a node agent.
type CairnNodeStatus struct {
	// observedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// conditions: Ready, Reconciling, Stalled.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=16
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// disks as the node agent last saw them.
	// +optional
	// +listType=map
	// +listMapKey=path
	// +kubebuilder:validation:MaxItems=32
	Disks []NodeDiskStatus `json:"disks,omitempty"`
	// zone of the node (topology.kubernetes.io/zone).
	// +optional
	Zone string `json:"zone,omitempty"`
	// lastHeartbeatTime is when the node agent last reported.
	// +optional
	LastHeartbeatTime *metav1.Time `json:"lastHeartbeatTime,omitempty"`
}

// CairnNode is Cairn's view of a Kubernetes node (created by the node agent).
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=cnode,categories=cairn
// +kubebuilder:printcolumn:name="Zone",type=string,JSONPath=`.status.zone`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Heartbeat",type=date,JSONPath=`.status.lastHeartbeatTime`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type CairnNode struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	// spec is how Cairn may use the node.
	// +optional
	Spec CairnNodeSpec `json:"spec,omitempty"`
	// status is the observed state.
	// +optional
	// +kubebuilder:default={"observedGeneration":-1}
	Status CairnNodeStatus `json:"status,omitempty"`
}

// CairnNodeList is a list of CairnNodes.
// +kubebuilder:object:root=true
type CairnNodeList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []CairnNode `json:"items"`
}

func init() {
	SchemeBuilder.Register(&CairnNode{}, &CairnNodeList{})
}
