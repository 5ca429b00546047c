package v1alpha1

import (
	"crypto/sha256"
	"encoding/hex"

	"k8s.io/apimachinery/pkg/util/validation"
)

// Names the manager and the node agents agree on. Objects Cairn creates
// carry LabelVolume; users' objects never get labels or annotations.
const (
	// SystemNamespace holds Cairn's Secrets and node heartbeat Leases.
	SystemNamespace = "cairn-system"
	// LabelVolume names the Volume a Replica, Engine or token Secret serves.
	LabelVolume = "storage.cairn.dev/volume"
	// LabelBackupTarget names the BackupTarget a Backup object belongs to.
	LabelBackupTarget = "storage.cairn.dev/backup-target"
	// LabelRecurringSnapshot names the RecurringSnapshot whose run created a
	// Snapshot or Backup.
	LabelRecurringSnapshot = "storage.cairn.dev/recurring-snapshot"
	// AnnotationScheduledTime is the scheduled (pre-jitter) time, RFC 3339 in
	// UTC, of the RecurringSnapshot run that created a Snapshot or Backup.
	AnnotationScheduledTime = "storage.cairn.dev/scheduled-time"
	// AnnotationRunReported marks a Snapshot or Backup of a
	// RecurringSnapshot whose failure the scheduler has reported (value
	// "Failed"), so that each failure is reported once.
	AnnotationRunReported = "storage.cairn.dev/run-reported"
	// FinalizerVolume keeps a Volume until its replicas and engine are gone.
	FinalizerVolume = "storage.cairn.dev/volume"
	// FinalizerReplicaData keeps a Replica until its node agent removed its data.
	FinalizerReplicaData = "storage.cairn.dev/replica-data"
	// FinalizerEngine keeps an Engine until its node agent stopped it.
	FinalizerEngine = "storage.cairn.dev/engine"
	// FinalizerSnapshot keeps a taken Snapshot until it is removed from the
	// volume's replicas.
	FinalizerSnapshot = "storage.cairn.dev/snapshot"
	// FinalizerBackupData keeps a Backup with deletePolicy Delete until its
	// backup is deleted from the target.
	FinalizerBackupData = "storage.cairn.dev/backup-data"
	// LabelSnapshot marks a replica snapshot taken for a Snapshot object
	// (the value is its name); LabelBackup one taken for a Backup object.
	LabelSnapshot = "storage.cairn.dev/snapshot"
	LabelBackup   = "storage.cairn.dev/backup"
	// LabelClone marks a Snapshot Cairn took to fill a clone (the value
	// is the clone Volume's name); it is removed once the clone is filled.
	LabelClone = "storage.cairn.dev/clone"
	// LabelFenced is recorded (value "true") with a backup in the target
	// when its volume was detached while the snapshot was taken: nothing
	// written after that backup was acknowledged, so a DR standby
	// activating from it loses nothing (RPO 0, a planned switchover).
	LabelFenced = "storage.cairn.dev/fenced"
	// TokenKey is the key of the volume token in its Secret.
	TokenKey = "token"
	// NodeLeasePrefix prefixes a node agent's heartbeat Lease name.
	NodeLeasePrefix = "cairn-node-"
)

// TokenSecretName is the Secret in SystemNamespace holding a volume's
// token: cairn-token-VOLUME, or for names too long for that, the first 200
// characters and a hash of the whole name.
func TokenSecretName(volume string) string {
	const prefix = "cairn-token-"
	if len(prefix)+len(volume) <= 253 {
		return prefix + volume
	}
	sum := sha256.Sum256([]byte(volume))
	return prefix + volume[:200] + "-" + hex.EncodeToString(sum[:8])
}

// LabelValue is name as a label value: name itself when it is a valid label
// value, otherwise "h-" and a hash of it (object names may be longer than
// the 63 characters a label value allows).
func LabelValue(name string) string {
	if len(validation.IsValidLabelValue(name)) == 0 {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return "h-" + hex.EncodeToString(sum[:16])
}
