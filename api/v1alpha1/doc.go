// Package v1alpha1 holds Cairn's API types, group storage.cairn.dev.
//
// Users commit the four policy kinds (BackupTarget, RecurringSnapshot,
// VolumePolicy, DisasterRecoveryVolume) to git; Volume is user-visible and
// usually created by CSI or a DR volume; Replica, Engine, Snapshot, Backup and
// CairnNode are written by Cairn's controllers and node agents.
//
// Validation lives in the schema: bounds, enums and patterns from markers,
// cross-field rules as CEL x-kubernetes-validations, and what CEL cannot say
// exactly (cron semantics, IANA zone names, label selectors) in the validating
// webhook under internal/webhook. Status follows kstatus: observedGeneration
// defaults to -1 and conditions carry Ready, Reconciling and Stalled.
//
// +kubebuilder:object:generate=true
// +groupName=storage.cairn.dev
package v1alpha1
