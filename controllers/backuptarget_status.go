package controllers

import (
	"context"
	"errors"
	"net"
	"strings"

	"github.com/cairnstore/cairn/controllers/targets"
	"github.com/cairnstore/cairn/engine/backupstore"
)

// Reasons a BackupTarget reports in its Ready and Stalled conditions.
const (
	ReasonTargetReady        = "TargetReady"
	ReasonBadCredentials     = "BadCredentials"
	ReasonBucketNotFound     = "BucketNotFound"
	ReasonUnreachable        = "Unreachable"
	ReasonWrongKey           = "WrongKey"
	ReasonEncryptionMismatch = "EncryptionMismatch"
	ReasonInvalidSpec        = targets.ReasonInvalidSpec
	ReasonSecretNotFound     = targets.ReasonSecretNotFound
	ReasonInvalidSecret      = targets.ReasonInvalidSecret
	ReasonIncompatible       = "IncompatibleTarget"
	ReasonNotInitialized     = "NotInitialized"
	ReasonProbeFailed        = "ProbeFailed"
	ReasonProbing            = "Probing"
	ReasonTargetError        = "TargetError"
)

// targetFailure is a classified target error: the condition reason, whether
// a user must change something (stalled), and the message shown. Messages
// come from backupstore errors, which name the target URL, bucket and
// object keys but never credentials or key material.
type targetFailure struct {
	reason  string
	stalled bool
	message string
}

// classifyTargetError maps a backupstore (or context/network) error to the
// reason the target reports. Every sentinel a user can fix stalls; errors
// of unknown cause are transient and retried with backoff.
func classifyTargetError(err error) targetFailure {
	msg := err.Error()
	switch {
	case errors.Is(err, backupstore.ErrAccessDenied), errors.Is(err, backupstore.ErrNoCredentials):
		return targetFailure{ReasonBadCredentials, true, msg}
	case errors.Is(err, backupstore.ErrBucketNotFound):
		return targetFailure{ReasonBucketNotFound, true, msg}
	case errors.Is(err, backupstore.ErrWrongKey):
		return targetFailure{ReasonWrongKey, true, msg}
	case errors.Is(err, backupstore.ErrKeyRequired), errors.Is(err, backupstore.ErrNotEncrypted):
		return targetFailure{ReasonEncryptionMismatch, true, msg}
	case errors.Is(err, backupstore.ErrBadURL), errors.Is(err, backupstore.ErrUnsupportedScheme):
		return targetFailure{ReasonInvalidSpec, true, msg}
	case errors.Is(err, backupstore.ErrFormat):
		return targetFailure{ReasonIncompatible, true, msg}
	case errors.Is(err, backupstore.ErrNotInitialized):
		// A read-only target the primary site has not written to yet:
		// nothing to fix here, so wait rather than stall.
		return targetFailure{ReasonNotInitialized, false, msg}
	case isUnreachable(err):
		return targetFailure{ReasonUnreachable, true, msg}
	}
	return targetFailure{ReasonTargetError, false, msg}
}

// isUnreachable reports errors that mean the endpoint did not answer in
// time: the store's own sentinel, a stall, a deadline, or a network error
// that escaped mapping (the file target's are *fs.PathError, not these).
func isUnreachable(err error) bool {
	var netErr net.Error
	return errors.Is(err, backupstore.ErrUnreachable) || errors.Is(err, backupstore.ErrStalled) ||
		errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &netErr) && netErr.Timeout()) ||
		strings.Contains(err.Error(), "connection refused")
}
