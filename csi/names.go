package csi

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"strings"
)

// Annotations and labels on the objects the driver creates (never on
// objects users commit).
const (
	// AnnotationName holds the CSI name a Volume, Snapshot or Backup was
	// created for, so a repeated create finds it and a different name
	// that hashes alike is told apart.
	AnnotationName = "csi.cairn.dev/name"
	// AnnotationSnapshotID holds the CSI snapshot id a Volume was
	// restored from (its content source).
	AnnotationSnapshotID = "csi.cairn.dev/source-snapshot"
)

// maxPlainName is the longest CSI name used verbatim as an object name:
// the name appears in the node agent's socket paths, which must stay
// short (the provisioner's pvc-<uuid> is 40 characters).
const maxPlainName = 40

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// objectName maps a CSI name to the name of the object created for it:
// the name itself when it is a DNS label of at most 40 characters,
// otherwise "csi-" and 24 hex digits of its SHA-256.
func objectName(csiName string) string {
	if len(csiName) <= maxPlainName && dnsLabel.MatchString(csiName) {
		return csiName
	}
	sum := sha256.Sum256([]byte(csiName))
	return "csi-" + hex.EncodeToString(sum[:12])
}

// Snapshot kinds, the prefix of a snapshot id.
const (
	kindSnapshot = "snapshot"
	kindBackup   = "backup"
)

// snapshotID is KIND/NAME: a Snapshot or a Backup object.
func snapshotID(kind, name string) string { return kind + "/" + name }

// parseSnapshotID splits a snapshot id; ok is false for an id the driver
// never returns.
func parseSnapshotID(id string) (kind, name string, ok bool) {
	kind, name, ok = strings.Cut(id, "/")
	if !ok || (kind != kindSnapshot && kind != kindBackup) || !isObjectName(name) {
		return "", "", false
	}
	return kind, name, true
}

var dnsSubdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

// isObjectName reports whether s can name a cluster-scoped object; a
// volume id that cannot is unknown (NotFound), never an API error.
func isObjectName(s string) bool { return len(s) <= 253 && dnsSubdomain.MatchString(s) }
