// Package dr is the manager's DisasterRecoveryVolume controller: a standby
// copy, in this cluster, of a volume whose backups another cluster writes
// to a shared BackupTarget, and its activation (failover).
//
//	primary cluster                 target                 this cluster
//	Volume ──backups──▶ catalogue + manifests + blocks ──poll──▶ DisasterRecoveryVolume
//	                                                             │ spec.fromBackup.backup
//	                                                             ▼
//	                                                 standby Volume (spec.standby)
//	                                                 Replicas: agents apply only the
//	                                                 blocks that differ (node/standby.go)
//
// Following: the controller creates the standby Volume dr-<hash> from the
// newest complete backup of spec.sourceVolume, then every pollInterval
// looks for a newer one and, once the standby holds the previous one
// (condition Restored), points the Volume's spec.fromBackup.backup at it.
// The creation time of the backup named there is kept in the Volume's
// annotation storage.cairn.dev/dr-backup-created, so lag survives the
// backup's deletion by the source's retention.
//
// Activation (spec.activate): the newest backup whose manifest reads back
// (older ones are used when newer ones are unreadable or fail to restore,
// and condition BackupSkipped says so) is recorded in the annotation
// storage.cairn.dev/dr-activate-backup, applied, and then the Volume leaves
// standby under spec.policyRef; a PersistentVolume for driver
// csi.cairn.dev (volumeHandle = the Volume's name, reclaim policy Retain)
// is pre-bound to the claim spec.claim.name, which is created in the DR
// volume's namespace. Every step is read back from the objects, so a
// restart in the middle resumes where it stopped.
//
// Deleting a DisasterRecoveryVolume deletes its standby Volume while it is
// still a standby (its data is the source's backups, which stay in the
// target) and leaves an activated Volume, its PV and PVC alone.
package dr
