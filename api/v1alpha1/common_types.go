package v1alpha1

// Condition types every Cairn kind reports, following kstatus: Ready is the
// summary; Reconciling and Stalled are abnormal-true and present only while
// true.
const (
	// ConditionReady is True when the object's desired state has been reached.
	ConditionReady = "Ready"
	// ConditionReconciling is True while the controller is working towards the spec.
	ConditionReconciling = "Reconciling"
	// ConditionStalled is True when progress needs a user to change something.
	ConditionStalled = "Stalled"
	// ConditionRestored is the Volume condition of a volume created
	// fromBackup: False while its replicas are being filled from the backup,
	// True once every replica holds it (then the volume may attach).
	ConditionRestored = "Restored"
	// ConditionReplicaScheduling is the Volume condition present while too
	// few nodes can take the replicas the policy asks for (reason
	// NotEnoughNodes, the message says why nodes were passed over).
	ConditionReplicaScheduling = "ReplicaScheduling"
	// ConditionReplicasMoving is the Volume condition present while replicas
	// on nodes the placement no longer admits wait for their replacements
	// (the message names them and why they move).
	ConditionReplicasMoving = "ReplicasMoving"
)

// CategoryCairn is the kubectl category every Cairn kind belongs to, so that
// `kubectl get cairn` lists them all.
const CategoryCairn = "cairn"

// SecretReference names a Secret in a given namespace. Cairn reads the Secret
// and never copies its values into status, events or logs.
type SecretReference struct {
	// namespace of the Secret.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Namespace string `json:"namespace"`

	// name of the Secret.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Name string `json:"name"`
}

// ObjectName is the name of another cluster-scoped Cairn object.
// +kubebuilder:validation:MinLength=1
// +kubebuilder:validation:MaxLength=253
// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
type ObjectName string

// Robustness summarizes how many healthy copies a volume has.
// +kubebuilder:validation:Enum=healthy;degraded;faulted;unknown
type Robustness string

// Robustness values.
const (
	RobustnessHealthy  Robustness = "healthy"
	RobustnessDegraded Robustness = "degraded"
	RobustnessFaulted  Robustness = "faulted"
	RobustnessUnknown  Robustness = "unknown"
)
