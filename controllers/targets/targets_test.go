package targets

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

func scheme(t *testing.T) *runtime.Scheme {
	s := runtime.NewScheme()
	require.NoError(t, clientgoscheme.AddToScheme(s))
	require.NoError(t, v1.AddToScheme(s))
	return s
}

func secretObj(name string, data map[string]string) *corev1.Secret {
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: v1.SystemNamespace, Name: name, ResourceVersion: "7"}, Data: map[string][]byte{}}
	for k, v := range data {
		s.Data[k] = []byte(v)
	}
	return s
}

// TestResolveSpecErrors: every problem a user must fix is a SpecError
// with its reason, and no message carries a secret value.
func TestResolveSpecErrors(t *testing.T) {
	ctx := context.Background()
	c := fake.NewClientBuilder().WithScheme(scheme(t)).WithObjects(
		secretObj("creds-partial", map[string]string{SecretAccessKeyID: "AKIDEXAMPLE"}),
		secretObj("key-short", map[string]string{SecretEncryptionKey: "short-secret"}),
	).Build()
	cases := map[string]struct {
		spec   v1.BackupTargetSpec
		reason string
	}{
		"other namespace": {v1.BackupTargetSpec{URL: "s3://b", CredentialsSecretRef: &v1.SecretReference{Namespace: "default", Name: "x"}}, ReasonInvalidSpec},
		"missing":         {v1.BackupTargetSpec{URL: "s3://b", CredentialsSecretRef: &v1.SecretReference{Namespace: v1.SystemNamespace, Name: "nope"}}, ReasonSecretNotFound},
		"partial":         {v1.BackupTargetSpec{URL: "s3://b", CredentialsSecretRef: &v1.SecretReference{Namespace: v1.SystemNamespace, Name: "creds-partial"}}, ReasonInvalidSecret},
		"short key":       {v1.BackupTargetSpec{URL: "s3://b", Encryption: &v1.BackupEncryption{KeySecretRef: v1.SecretReference{Namespace: v1.SystemNamespace, Name: "key-short"}}}, ReasonInvalidSecret},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Resolve(ctx, c, &v1.BackupTarget{Spec: tc.spec}, DefaultTimeout)
			var se *SpecError
			require.True(t, errors.As(err, &se), "%v", err)
			assert.Equal(t, tc.reason, se.Reason)
			assert.NotContains(t, se.Message, "short-secret")
			assert.NotContains(t, se.Message, "AKIDEXAMPLE")
		})
	}
}

// TestCacheOpen opens a file target once per fingerprint: a changed
// Secret (resource version) opens it again; a missing target is ErrNotFound.
func TestCacheOpen(t *testing.T) {
	ctx := context.Background()
	bt := &v1.BackupTarget{ObjectMeta: metav1.ObjectMeta{Name: "t", Generation: 1}}
	bt.Spec.URL = "file://" + t.TempDir()
	c := fake.NewClientBuilder().WithScheme(scheme(t)).WithObjects(bt).Build()
	var cache Cache
	s1, err := cache.Open(ctx, c, "t", DefaultTimeout)
	require.NoError(t, err)
	s2, err := cache.Open(ctx, c, "t", DefaultTimeout)
	require.NoError(t, err)
	assert.Same(t, s1, s2)
	cache.Forget("t")
	s3, err := cache.Open(ctx, c, "t", DefaultTimeout)
	require.NoError(t, err)
	assert.NotSame(t, s1, s3)

	_, err = cache.Open(ctx, c, "absent", DefaultTimeout)
	assert.ErrorIs(t, err, ErrNotFound)
}

func TestScrub(t *testing.T) {
	r := Resolved{Secrets: [][]byte{[]byte("AKIDEXAMPLE"), []byte("ab")}}
	got := r.Scrub("denied for AKIDEXAMPLE (ab)")
	assert.False(t, strings.Contains(got, "AKIDEXAMPLE"))
	assert.Contains(t, got, "(ab)", "values shorter than 4 bytes are left: they would mangle messages")
}
