// Package targets opens the backup store a BackupTarget describes, with the
// credentials and encryption key its Secrets hold. The manager (BackupTarget
// and Volume controllers) and the node agent (restores) share it, so a
// target is read the same way everywhere.
//
// Secrets are read only in cairn-system. Their values never appear in an
// error this package returns: Scrub removes them from any message built
// from a store error.
package targets

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/engine/backupstore"
)

// Keys read from a BackupTarget's Secrets (the same names `cairn backup
// --credentials-file` reads, so one Secret serves both).
const (
	SecretAccessKeyID     = "AWS_ACCESS_KEY_ID"
	SecretSecretAccessKey = "AWS_SECRET_ACCESS_KEY"
	SecretSessionToken    = "AWS_SESSION_TOKEN" // optional
	SecretCABundle        = "AWS_CA_BUNDLE"     // optional PEM bundle
	SecretCert            = "AWS_CERT"          // optional, alias of AWS_CA_BUNDLE (the CLI's name)
	// SecretEncryptionKey is the key of the encryption Secret: a passphrase
	// or a 32-byte key, raw, hex or base64 (decoded as the CLI's --key-file).
	SecretEncryptionKey = "key"
)

// Reasons of a SpecError, as they appear in conditions.
const (
	ReasonInvalidSpec    = "InvalidSpec"
	ReasonSecretNotFound = "SecretNotFound"
	ReasonInvalidSecret  = "InvalidSecret"
)

// DefaultTimeout bounds opening a target.
const DefaultTimeout = 30 * time.Second

// SpecError is a problem a user must fix in the BackupTarget or its
// Secrets; retrying without a change does not help.
type SpecError struct {
	Reason  string
	Message string
}

func (e *SpecError) Error() string { return e.Message }

func specErr(reason, format string, args ...any) error {
	return &SpecError{Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// Resolved is what a BackupTarget and its Secrets say about opening it.
type Resolved struct {
	Options backupstore.Options
	// Fingerprint changes whenever the spec or a referenced Secret does.
	Fingerprint string
	// Secrets are the values read, for Scrub.
	Secrets [][]byte
}

// Scrub replaces every secret value in msg.
func (r *Resolved) Scrub(msg string) string {
	for _, s := range r.Secrets {
		if len(s) >= 4 {
			msg = strings.ReplaceAll(msg, string(s), "[REDACTED]")
		}
	}
	return msg
}

// Resolve reads the BackupTarget's Secrets (through rd) into store options
// whose timeouts derive from timeout. A missing or malformed Secret is a
// *SpecError; a failed read is returned as is.
func Resolve(ctx context.Context, rd client.Reader, bt *v1.BackupTarget, timeout time.Duration) (Resolved, error) {
	spec := &bt.Spec
	o := backupstore.Options{ReadOnly: spec.ReadOnly}
	o.Region, o.Endpoint = spec.Region, spec.Endpoint
	o.ProbeTimeout, o.RequestTimeout, o.StallTimeout, o.MaxAttempts = timeout/2, timeout*2/3, timeout*2/3, 2
	res := Resolved{Fingerprint: fmt.Sprintf("g%d", bt.Generation)}
	if ref := spec.CredentialsSecretRef; ref != nil {
		sec, err := secret(ctx, rd, "credentials", ref)
		if err != nil {
			return res, err
		}
		res.Fingerprint += "/c" + sec.ResourceVersion
		id, key := sec.Data[SecretAccessKeyID], sec.Data[SecretSecretAccessKey]
		if len(id) == 0 || len(key) == 0 {
			return res, specErr(ReasonInvalidSecret, "credentials Secret %s/%s needs keys %s and %s", ref.Namespace, ref.Name, SecretAccessKeyID, SecretSecretAccessKey)
		}
		o.AccessKeyID, o.SecretAccessKey, o.SessionToken = string(id), string(key), string(sec.Data[SecretSessionToken])
		res.Secrets = append(res.Secrets, id, key, sec.Data[SecretSessionToken])
		o.CABundle = sec.Data[SecretCABundle]
		if len(o.CABundle) == 0 {
			o.CABundle = sec.Data[SecretCert]
		}
	}
	if enc := spec.Encryption; enc != nil {
		sec, err := secret(ctx, rd, "encryption key", &enc.KeySecretRef)
		if err != nil {
			return res, err
		}
		res.Fingerprint += "/k" + sec.ResourceVersion
		raw := sec.Data[SecretEncryptionKey]
		if len(raw) == 0 {
			return res, specErr(ReasonInvalidSecret, "encryption key Secret %s/%s has no key %q", enc.KeySecretRef.Namespace, enc.KeySecretRef.Name, SecretEncryptionKey)
		}
		o.Key = backupstore.DecodeKey(raw)
		res.Secrets = append(res.Secrets, raw, o.Key)
		if len(o.Key) < 16 {
			return res, specErr(ReasonInvalidSecret, "encryption key in Secret %s/%s is too short (%d bytes, need at least 16)", enc.KeySecretRef.Namespace, enc.KeySecretRef.Name, len(o.Key))
		}
	}
	res.Options = o
	return res, nil
}

// secret gets a referenced Secret; a missing one, or one outside the
// namespace Cairn may read, is a SpecError.
func secret(ctx context.Context, rd client.Reader, what string, ref *v1.SecretReference) (*corev1.Secret, error) {
	if ref.Namespace != v1.SystemNamespace {
		return nil, specErr(ReasonInvalidSpec, "%s Secret %s/%s must be in namespace %s, the only one Cairn reads Secrets in", what, ref.Namespace, ref.Name, v1.SystemNamespace)
	}
	sec := &corev1.Secret{}
	err := rd.Get(ctx, client.ObjectKey{Namespace: ref.Namespace, Name: ref.Name}, sec)
	if apierrors.IsNotFound(err) {
		return nil, specErr(ReasonSecretNotFound, "%s Secret %s/%s not found", what, ref.Namespace, ref.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s Secret %s/%s: %w", what, ref.Namespace, ref.Name, err)
	}
	return sec, nil
}

// Cache keeps one opened store per BackupTarget name while its fingerprint
// holds. It is safe for concurrent use; the zero value is ready.
type Cache struct {
	mu     sync.Mutex
	stores map[string]entry
}

type entry struct {
	fingerprint string
	store       *backupstore.Store
}

// Get returns the store cached for name under fingerprint, or nil.
func (c *Cache) Get(name, fingerprint string) *backupstore.Store {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.stores[name]; ok && e.fingerprint == fingerprint {
		return e.store
	}
	return nil
}

// Put caches store for name under fingerprint.
func (c *Cache) Put(name, fingerprint string, store *backupstore.Store) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stores == nil {
		c.stores = map[string]entry{}
	}
	c.stores[name] = entry{fingerprint: fingerprint, store: store}
}

// Forget drops name's store, so the next use opens it again.
func (c *Cache) Forget(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.stores, name)
}

// ErrNotFound says the BackupTarget does not exist.
var ErrNotFound = errors.New("backup target not found")

// Open gets the BackupTarget called name, resolves its Secrets and opens
// its store within timeout, reusing the cached one while nothing changed.
// Errors are scrubbed of secret values.
func (c *Cache) Open(ctx context.Context, rd client.Reader, name string, timeout time.Duration) (*backupstore.Store, error) {
	bt := &v1.BackupTarget{}
	if err := rd.Get(ctx, client.ObjectKey{Name: name}, bt); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("%w: %s", ErrNotFound, name)
		}
		return nil, err
	}
	res, err := Resolve(ctx, rd, bt, timeout)
	if err != nil {
		return nil, err
	}
	if s := c.Get(name, res.Fingerprint); s != nil {
		return s, nil
	}
	octx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	store, err := backupstore.Open(octx, bt.Spec.URL, res.Options)
	if err != nil {
		return nil, errors.New(res.Scrub(fmt.Sprintf("open backup target %s: %v", name, err)))
	}
	c.Put(name, res.Fingerprint, store)
	return store, nil
}
