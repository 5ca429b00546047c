package v1alpha1

import (
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Compression is the codec applied to backup blocks before upload.
// +kubebuilder:validation:Enum=zstd;lz4;none
type Compression string

// Compression codecs.
const (
	CompressionZstd Compression = "zstd"
	CompressionLZ4  Compression = "lz4"
	CompressionNone Compression = "none"
)

// BackupTargetSpec says where and how backups are stored.
// +kubebuilder:validation:XValidation:rule="!self.url.startsWith('s3://') || has(self.credentialsSecretRef)",message="an s3:// target needs credentialsSecretRef (a Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",fieldPath=".credentialsSecretRef",reason=FieldValueRequired
// +kubebuilder:validation:XValidation:rule="!self.url.startsWith('s3://') || has(self.region) || has(self.endpoint)",message="an s3:// target needs region or endpoint",fieldPath=".region",reason=FieldValueRequired
// +kubebuilder:validation:XValidation:rule="self.url.startsWith('s3://') || !has(self.endpoint)",message="endpoint applies only to s3:// targets",fieldPath=".endpoint"
type BackupTargetSpec struct {
	// url of the target: s3://bucket[/prefix] for any S3-compatible store, or
	// file:///absolute/path for a directory (the embedded default).
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:XValidation:rule="self.startsWith('s3://') || self.startsWith('file:///')",message="url must start with s3:// or file:/// (other schemes are not supported)"
	// +kubebuilder:validation:XValidation:rule="!self.startsWith('s3://') || self.matches('^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^?#]*)?$')",message="s3 url must be s3://bucket[/prefix] with a valid bucket name (3-63 lower-case letters, digits, dots, hyphens)"
	// +kubebuilder:validation:XValidation:rule="!self.startsWith('file:///') || !self.contains('/../')",message="file url must not contain '..'"
	URL string `json:"url"`

	// region of the S3 bucket, for example us-east-1.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:Pattern=`^[a-z0-9-]+$`
	Region string `json:"region,omitempty"`

	// endpoint of an S3-compatible server, for example http://minio.storage:9000.
	// Path-style addressing is used when it is set.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:XValidation:rule="isURL(self) && (url(self).getScheme() == 'http' || url(self).getScheme() == 'https')",message="endpoint must be an http:// or https:// URL"
	Endpoint string `json:"endpoint,omitempty"`

	// credentialsSecretRef names a Secret holding AWS_ACCESS_KEY_ID and
	// AWS_SECRET_ACCESS_KEY (and optionally AWS_CA_BUNDLE, a PEM bundle for
	// endpoints with a private CA). Required for s3:// targets.
	// +optional
	CredentialsSecretRef *SecretReference `json:"credentialsSecretRef,omitempty"`

	// encryption enables client-side AES-256-GCM encryption of every block and
	// manifest. Losing the key makes the backups unreadable.
	// +optional
	Encryption *BackupEncryption `json:"encryption,omitempty"`

	// compression codec for blocks.
	// +optional
	// +kubebuilder:default=zstd
	Compression Compression `json:"compression,omitempty"`

	// blockSize is the size of the content-addressed blocks backups are cut
	// into; a power of two from 64Ki to 16Mi. Changing it only affects new
	// backups, at the cost of less deduplication against older ones.
	// +optional
	// +kubebuilder:default="2Mi"
	// +kubebuilder:validation:XValidation:rule="quantity(string(self)).isGreaterThan(quantity('64Ki')) || quantity(string(self)).compareTo(quantity('64Ki')) == 0",message="blockSize must be at least 64Ki"
	// +kubebuilder:validation:XValidation:rule="quantity(string(self)).isLessThan(quantity('16Mi')) || quantity(string(self)).compareTo(quantity('16Mi')) == 0",message="blockSize must be at most 16Mi"
	BlockSize *resource.Quantity `json:"blockSize,omitempty"`

	// pollInterval is how often Cairn refreshes the target's catalogue; it
	// bounds how far a DR standby volume lags behind the newest backup.
	// +optional
	// +kubebuilder:default="30s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Format=duration
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('5s') && duration(self) <= duration('24h')",message="pollInterval must be between 5s and 24h"
	PollInterval *metav1.Duration `json:"pollInterval,omitempty"`

	// readOnly forbids Cairn from writing to or deleting from the target; a DR
	// site uses the primary site's target this way. The one exception are
	// the small expiring pins (pins/...) a DR standby writes on the backup it
	// is about to apply, so the primary does not delete it meanwhile.
	// +optional
	// +kubebuilder:default=false
	ReadOnly bool `json:"readOnly,omitempty"`
}

// BackupEncryption configures client-side encryption.
type BackupEncryption struct {
	// keySecretRef names a Secret whose key "key" holds the encryption
	// passphrase or a 32-byte key.
	// +required
	KeySecretRef SecretReference `json:"keySecretRef"`
}

// BackupTargetStatus is the observed state of a BackupTarget.
type BackupTargetStatus struct {
	// observedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions: Ready, Reconciling, Stalled.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=16
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// lastSyncTime is when the catalogue was last read successfully.
	// +optional
	LastSyncTime *metav1.Time `json:"lastSyncTime,omitempty"`

	// volumeCount is the number of volumes with backups in the target.
	// +optional
	VolumeCount int32 `json:"volumeCount,omitempty"`

	// backupCount is the number of complete backups in the target.
	// +optional
	BackupCount int32 `json:"backupCount,omitempty"`

	// storedBytes is the stored (compressed, encrypted) size of the blocks
	// the listed backups uploaded: the sum of each complete backup's new
	// bytes as its catalogue records them, read without listing blocks.
	// Blocks first uploaded by a backup since deleted, but still used by
	// others, are not counted.
	// +optional
	StoredBytes int64 `json:"storedBytes,omitempty"`
}

// BackupTarget is a place backups are written to and restored from.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=cbt,categories=cairn
// +kubebuilder:printcolumn:name="URL",type=string,JSONPath=`.spec.url`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Backups",type=integer,JSONPath=`.status.backupCount`
// +kubebuilder:printcolumn:name="Last Sync",type=date,JSONPath=`.status.lastSyncTime`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type BackupTarget struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the desired target.
	// +required
	Spec BackupTargetSpec `json:"spec"`

	// status is the observed state.
	// +optional
	// +kubebuilder:default={"observedGeneration":-1}
	Status BackupTargetStatus `json:"status,omitempty"`
}

// BackupTargetList is a list of BackupTargets.
// +kubebuilder:object:root=true
type BackupTargetList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []BackupTarget `json:"items"`
}

func init() {
	SchemeBuilder.Register(&BackupTarget{}, &BackupTargetList{})
}
