package controllers

import (
	"context"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/cairnstore/cairn/engine/backupstore"
)

func TestBackupTargetClassify(t *testing.T) {
	for _, tc := range []struct {
		err     error
		reason  string
		stalled bool
	}{
		{fmt.Errorf("%w: s3 open: InvalidAccessKeyId", backupstore.ErrAccessDenied), ReasonBadCredentials, true},
		{backupstore.ErrNoCredentials, ReasonBadCredentials, true},
		{fmt.Errorf("%w: bucket x", backupstore.ErrBucketNotFound), ReasonBucketNotFound, true},
		{fmt.Errorf("%w: dial", backupstore.ErrUnreachable), ReasonUnreachable, true},
		{fmt.Errorf("get: %w", backupstore.ErrStalled), ReasonUnreachable, true},
		{fmt.Errorf("open: %w", context.DeadlineExceeded), ReasonUnreachable, true},
		{backupstore.ErrWrongKey, ReasonWrongKey, true},
		{backupstore.ErrKeyRequired, ReasonEncryptionMismatch, true},
		{backupstore.ErrNotEncrypted, ReasonEncryptionMismatch, true},
		{backupstore.ErrBadURL, ReasonInvalidSpec, true},
		{backupstore.ErrFormat, ReasonIncompatible, true},
		{backupstore.ErrNotInitialized, ReasonNotInitialized, false},
		{fmt.Errorf("backupstore: s3 get: InternalError"), ReasonTargetError, false},
	} {
		f := classifyTargetError(tc.err)
		assert.Equal(t, tc.reason, f.reason, tc.err.Error())
		assert.Equal(t, tc.stalled, f.stalled, tc.err.Error())
	}
}

func TestBackupTargetImportedName(t *testing.T) {
	const id = "b20261201-100000.123-a1b2c3"
	seen := map[string]bool{}
	for _, tc := range []struct{ volume, want string }{
		{"pvc-1", "pvc-1-" + id},
		{"PVC-1", ""},
		{"pvc_1", ""},
		{"pvc..1", ""},
		{strings.Repeat("v", 253), ""},
	} {
		got := importedBackupName(tc.volume, id)
		assert.Empty(t, validation.IsDNS1123Subdomain(got), got)
		if tc.want != "" {
			assert.Equal(t, tc.want, got)
		}
		assert.Equal(t, got, importedBackupName(tc.volume, id), "deterministic")
		assert.False(t, seen[got], "collision: %s", got)
		seen[got] = true
	}
}

func TestBackupTargetDecodeKey(t *testing.T) {
	k := make([]byte, 32)
	for i := range k {
		k[i] = byte(i)
	}
	assert.Equal(t, k, backupstore.DecodeKey([]byte(hex.EncodeToString(k)+"\n")))
	assert.Equal(t, []byte("a passphrase of some length"), backupstore.DecodeKey([]byte("a passphrase of some length\n")))
	assert.Equal(t, []byte(" raw key with spaces \n\n"), backupstore.DecodeKey([]byte(" raw key with spaces \n\n")))
}
