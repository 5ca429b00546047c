package controllers

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/controllers/phases"
	"github.com/cairnstore/cairn/controllers/targets"
	"github.com/cairnstore/cairn/engine/backupstore"
)

// +kubebuilder:rbac:groups=storage.cairn.dev,resources=backuptargets,verbs=get;list;watch
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=backuptargets/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=backups,verbs=get;list;watch;create
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=backups/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=core,resources=secrets,verbs=get;list;watch,namespace=cairn-system

// Defaults of the BackupTarget controller.
const (
	// DefaultUnreachableRetry is how often an unreachable target is tried
	// again without any change.
	DefaultUnreachableRetry = 5 * time.Minute
	// defaultPollInterval applies when spec.pollInterval is unset (the CRD
	// defaults it to the same).
	defaultPollInterval = 30 * time.Second
	// maxImportsPerReconcile bounds the Backup objects created in one
	// reconcile; the rest follow immediately after.
	maxImportsPerReconcile = 200
	// targetSecretIndex indexes BackupTargets by the Secrets they read.
	targetSecretIndex = "backupTargetSecrets"
	// probePrefix holds the probe object (see engine/backupstore doc.go).
	probePrefix = "probe/"
)

// BackupTargetReconciler probes a BackupTarget with the credentials and key
// its Secrets hold, reads its catalogue every pollInterval into status and
// imports every complete backup it lists as a Backup object. It never
// writes to a read-only target, and never deletes anything in a target:
// deleting a BackupTarget leaves its data and its Backup objects.
type BackupTargetReconciler struct {
	client.Client
	Recorder recorder.EventRecorder
	// Timeout bounds opening and probing a target (default 30s); reading
	// the catalogue gets four times as long.
	Timeout time.Duration
	// UnreachableRetry is the retry interval of an unreachable target
	// (default 5m); other stalled targets wait for a change.
	UnreachableRetry time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time

	// Stores caches each target's opened and probed store (shared with
	// the controllers that read backups; default a private cache).
	Stores *targets.Cache
}

// targetScope is what one reconcile of a target works with.
type targetScope struct {
	bt *v1.BackupTarget
	// res holds the store options and the secret values read, scrubbed
	// from every message written.
	res   targets.Resolved
	store *backupstore.Store
	// catalogue maps each volume to its complete backups.
	catalogue map[string][]backupstore.BackupInfo
	// backups are the Backup objects, listed before the catalogue is read.
	backups []v1.Backup
	out     outcome
}

type targetPhase func(context.Context, *targetScope) (ctrl.Result, error)

// Reconcile follows the controller skeleton: get, deferred status patch,
// phases. A BackupTarget has no finalizer: there is nothing to clean up.
func (r *BackupTargetReconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, err error) {
	bt := &v1.BackupTarget{}
	if err := r.Get(ctx, req.NamespacedName, bt); err != nil {
		if apierrors.IsNotFound(err) {
			r.forget(req.Name)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !bt.DeletionTimestamp.IsZero() {
		r.forget(bt.Name)
		return ctrl.Result{}, nil
	}
	s := &targetScope{bt: bt, out: outcome{reason: ReasonProbing, message: "probing the target"}}
	orig := bt.DeepCopy()
	defer func() {
		err = s.scrubError(err)
		r.finishStatus(ctx, s, orig)
		if perr := r.Status().Patch(ctx, bt, client.MergeFrom(orig)); perr != nil && !apierrors.IsNotFound(perr) {
			err = errors.Join(err, perr)
		}
	}()
	var phaseRes ctrl.Result
	for _, p := range []targetPhase{r.resolveSecrets, r.openStore, r.listBackups, r.readCatalogue, r.importBackups} {
		pr, err := p(ctx, s)
		phaseRes = phases.Soonest(phaseRes, pr)
		if err != nil || s.out.stalled || pr.RequeueAfter > 0 {
			return phaseRes, err
		}
	}
	s.out = outcome{ready: true, reason: ReasonTargetReady, message: fmt.Sprintf("target reachable; %d backups of %d volumes in the catalogue",
		bt.Status.BackupCount, bt.Status.VolumeCount)}
	return ctrl.Result{RequeueAfter: pollInterval(bt)}, nil
}

func pollInterval(bt *v1.BackupTarget) time.Duration {
	if p := bt.Spec.PollInterval; p != nil && p.Duration > 0 {
		return p.Duration
	}
	return defaultPollInterval
}

// stall records a condition a user must fix and stops without a retry.
func (s *targetScope) stall(reason, format string, args ...any) (ctrl.Result, error) {
	s.out = outcome{stalled: true, reason: reason, message: fmt.Sprintf(format, args...)}
	return ctrl.Result{}, reconcile.TerminalError(errors.New(s.out.message))
}

// fail classifies a target error: stalled (an unreachable target is
// retried slowly), waiting, or transient (returned for backoff). The
// cached store is dropped so the next attempt opens and probes again.
func (r *BackupTargetReconciler) fail(s *targetScope, what string, err error) (ctrl.Result, error) {
	r.forget(s.bt.Name)
	f := classifyTargetError(err)
	msg := what + ": " + f.message
	switch {
	case f.reason == ReasonUnreachable:
		s.out = outcome{stalled: true, reason: f.reason, message: msg}
		return ctrl.Result{RequeueAfter: r.UnreachableRetry}, nil
	case f.stalled:
		return s.stall(f.reason, "%s", msg)
	case f.reason == ReasonNotInitialized:
		s.out = outcome{reason: f.reason, message: msg + " (waiting for a writer to initialise it)"}
		return ctrl.Result{RequeueAfter: pollInterval(s.bt)}, nil
	}
	s.out = outcome{reason: f.reason, message: msg}
	return ctrl.Result{}, fmt.Errorf("%s: %w", what, err)
}

// resolveSecrets reads the credentials and key Secrets into store options.
func (r *BackupTargetReconciler) resolveSecrets(ctx context.Context, s *targetScope) (ctrl.Result, error) {
	res, err := targets.Resolve(ctx, r.Client, s.bt, r.Timeout)
	s.res = res
	var se *targets.SpecError
	switch {
	case errors.As(err, &se):
		return s.stall(se.Reason, "%s", se.Message)
	case err != nil:
		s.out = outcome{reason: ReasonTargetError, message: err.Error()}
		return ctrl.Result{}, err
	}
	return ctrl.Result{}, nil
}

// openStore opens and probes the target within Timeout, or reuses the
// store opened for the same spec and Secrets.
func (r *BackupTargetReconciler) openStore(ctx context.Context, s *targetScope) (ctrl.Result, error) {
	if st := r.Stores.Get(s.bt.Name, s.res.Fingerprint); st != nil {
		s.store = st
		return ctrl.Result{}, nil
	}
	octx, cancel := context.WithTimeout(ctx, r.Timeout)
	defer cancel()
	store, err := backupstore.Open(octx, s.bt.Spec.URL, s.res.Options)
	if err != nil {
		return r.fail(s, "open", err)
	}
	if !s.bt.Spec.ReadOnly {
		if err := probe(octx, store.Target(), s.bt.Name); err != nil {
			if errors.Is(err, errProbeMismatch) {
				return s.stall(ReasonProbeFailed, "%v", err)
			}
			return r.fail(s, "probe", err)
		}
	}
	log.FromContext(ctx).V(1).Info("Opened backup target", "url", store.String(), "readOnly", s.bt.Spec.ReadOnly, "encrypted", store.Encrypted())
	r.Stores.Put(s.bt.Name, s.res.Fingerprint, store)
	s.store = store
	return ctrl.Result{}, nil
}

var errProbeMismatch = errors.New("probe object read back differs from what was written")

// probe writes a small object, reads it back and deletes it, so write
// permission and read-after-write are known before a backup needs them.
func probe(ctx context.Context, t backupstore.Target, name string) error {
	var nonce [8]byte
	_, _ = rand.Read(nonce[:])
	key := probePrefix + hex.EncodeToString(nonce[:])
	data := []byte("cairn probe of BackupTarget " + name + " " + hex.EncodeToString(nonce[:]) + "\n")
	if err := t.Put(ctx, key, data); err != nil {
		return err
	}
	got, err := t.Get(ctx, key)
	if err != nil {
		_ = t.Delete(ctx, key)
		return err
	}
	if !bytes.Equal(got, data) {
		_ = t.Delete(ctx, key)
		return fmt.Errorf("%w (%s %s)", errProbeMismatch, t, key)
	}
	return t.Delete(ctx, key)
}

// listBackups lists the Backup objects before the catalogue is read: a
// Backup deleted with its remote backup in between is then either in this
// list or already gone from the catalogue, never imported again.
func (r *BackupTargetReconciler) listBackups(ctx context.Context, s *targetScope) (ctrl.Result, error) {
	var list v1.BackupList
	if err := r.List(ctx, &list); err != nil {
		return ctrl.Result{}, err
	}
	s.backups = list.Items
	return ctrl.Result{}, nil
}

// readCatalogue lists every volume's catalogue (one object each, never the
// blocks) into status. A volume whose catalogue cannot be trusted
// (rolled back, corrupt, inconsistent) is left out and named in the
// VolumesUnreadable condition; the rest are still counted.
func (r *BackupTargetReconciler) readCatalogue(ctx context.Context, s *targetScope) (ctrl.Result, error) {
	cctx, cancel := context.WithTimeout(ctx, 4*r.Timeout)
	defer cancel()
	vols, err := s.store.Volumes(cctx)
	if err != nil {
		return r.fail(s, "list volumes", err)
	}
	s.catalogue = map[string][]backupstore.BackupInfo{}
	var bad []string
	var volumes, backups int32
	var stored int64
	for _, v := range vols {
		list, err := s.store.List(cctx, v)
		switch {
		case isCatalogueDataError(err):
			bad = append(bad, v)
			log.FromContext(ctx).Info("Skipping an unreadable catalogue", "volume", v, "error", err.Error())
			continue
		case err != nil:
			return r.fail(s, "read catalogue of volume "+v, err)
		}
		s.catalogue[v] = list
		if len(list) > 0 {
			volumes++
		}
		for _, b := range list {
			backups++
			stored += b.NewBytes
		}
	}
	st := &s.bt.Status
	st.VolumeCount, st.BackupCount, st.StoredBytes = volumes, backups, stored
	now := metav1.NewTime(r.Now().UTC().Truncate(time.Second))
	st.LastSyncTime = &now
	setFlag(&st.Conditions, "VolumesUnreadable", len(bad) > 0, "CatalogueUnreadable",
		fmt.Sprintf("catalogues of volumes %v cannot be read (rolled back, corrupt or inconsistent; see `cairn backup list --volume NAME`); their backups are not counted", bad), s.bt.Generation)
	return ctrl.Result{}, nil
}

func isCatalogueDataError(err error) bool {
	for _, e := range []error{backupstore.ErrCatalogueRollback, backupstore.ErrCorrupt, backupstore.ErrInconsistent,
		backupstore.ErrFormat, backupstore.ErrObjectTooLarge, backupstore.ErrInvalidName} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// importBackups creates a Backup object for every complete backup in the
// catalogue that none describes yet, and completes the status of imported
// objects whose status write was interrupted.
func (r *BackupTargetReconciler) importBackups(ctx context.Context, s *targetScope) (ctrl.Result, error) {
	known := map[string]*v1.Backup{}
	taken := map[string]bool{}
	for i := range s.backups {
		b := &s.backups[i]
		taken[b.Name] = true
		id := b.Spec.BackupID
		if id == "" {
			id = b.Status.BackupID
		}
		if id != "" {
			known[backupKey(string(b.Spec.BackupTargetRef), b.Spec.VolumeName, id)] = b
		}
	}
	created := 0
	for _, vol := range sortedKeys(s.catalogue) {
		for _, info := range s.catalogue[vol] {
			b, ok := known[backupKey(s.bt.Name, vol, info.ID)]
			if ok {
				if b.Spec.BackupID != "" && b.Labels[v1.LabelBackupTarget] == s.bt.Name && b.Status.State != "Completed" {
					if err := r.patchImportedStatus(ctx, b, info); err != nil {
						return ctrl.Result{}, err
					}
				}
				continue
			}
			if created == maxImportsPerReconcile {
				s.out = outcome{reason: "Importing", message: fmt.Sprintf("importing backups from the catalogue (%d so far)", created)}
				return ctrl.Result{RequeueAfter: time.Second}, nil
			}
			name := importedBackupName(vol, info.ID)
			if taken[name] || taken[info.Labels[v1.LabelBackup]] {
				// Another object has this name (the same backup imported
				// through another target of the same bucket), or the Backup
				// that made it exists and is recording its ID: leave it.
				continue
			}
			if err := r.createImported(ctx, s.bt, name, info); err != nil {
				return ctrl.Result{}, err
			}
			created++
		}
	}
	if created > 0 {
		log.FromContext(ctx).Info("Imported backups from the catalogue", "count", created)
		r.Recorder.Eventf(s.bt, nil, corev1.EventTypeNormal, "BackupsImported", "Import", "created %d Backup objects for backups found in the catalogue", created)
	}
	return ctrl.Result{}, nil
}

func backupKey(target, volume, id string) string { return target + "\x00" + volume + "\x00" + id }

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// createImported creates the Backup object describing an existing backup,
// then its status. It has no owner: deleting the target leaves it.
func (r *BackupTargetReconciler) createImported(ctx context.Context, bt *v1.BackupTarget, name string, info backupstore.BackupInfo) error {
	b := &v1.Backup{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
			v1.LabelBackupTarget: bt.Name,
			v1.LabelVolume:       labelValue(info.Volume),
		}},
		Spec: v1.BackupSpec{VolumeName: info.Volume, BackupTargetRef: v1.ObjectName(bt.Name), DeletePolicy: "Retain", BackupID: info.ID},
	}
	if err := r.Create(ctx, b); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return nil
		}
		return fmt.Errorf("create Backup %s: %w", name, err)
	}
	log.FromContext(ctx).V(1).Info("Imported backup", "backup", name, "volume", info.Volume, "backupID", info.ID)
	return r.patchImportedStatus(ctx, b, info)
}

// patchImportedStatus marks an imported Backup complete, as the catalogue
// lists it.
func (r *BackupTargetReconciler) patchImportedStatus(ctx context.Context, b *v1.Backup, info backupstore.BackupInfo) error {
	orig := b.DeepCopy()
	st := &b.Status
	st.State, st.Progress, st.BackupID = "Completed", 100, info.ID
	st.UploadedBytes, st.Size = info.NewBytes, info.Size
	created, completed := metav1.NewTime(info.Created), metav1.NewTime(info.Completed)
	st.CreationTime, st.CompletionTime = &created, &completed
	setConditions(&st.Conditions, &st.ObservedGeneration, b.Generation, outcome{ready: true, reason: "Imported",
		message: "complete in the target; imported from its catalogue"})
	return r.Status().Patch(ctx, b, client.MergeFrom(orig))
}

// importedBackupName derives a Backup object's name from the volume and
// backup id: "<volume>-<id>" when that is already a valid lower-case DNS
// subdomain, else a sanitized prefix and a hash of both, so different
// (volume, id) pairs never collide.
func importedBackupName(volume, id string) string {
	name := volume + "-" + id
	if len(validation.IsDNS1123Subdomain(name)) == 0 {
		return name
	}
	sum := sha256.Sum256([]byte(volume + "/" + id))
	var b strings.Builder
	for _, c := range strings.ToLower(name) {
		if (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') {
			b.WriteRune(c)
		} else {
			b.WriteByte('-')
		}
	}
	prefix := b.String()
	if len(prefix) > 200 {
		prefix = prefix[:200]
	}
	prefix = strings.Trim(prefix, "-")
	if prefix == "" {
		prefix = "backup"
	}
	return prefix + "-" + hex.EncodeToString(sum[:5])
}

// labelValue returns v if it is a valid label value, else a hash of it.
func labelValue(v string) string {
	if len(validation.IsValidLabelValue(v)) == 0 {
		return v
	}
	sum := sha256.Sum256([]byte(v))
	return "h-" + hex.EncodeToString(sum[:16])
}

// finishStatus writes the conditions (scrubbed of Secret values), and logs
// and records an event when Ready or Stalled changed.
func (r *BackupTargetReconciler) finishStatus(ctx context.Context, s *targetScope, orig *v1.BackupTarget) {
	s.out.message = s.scrub(s.out.message)
	st := &s.bt.Status
	setConditions(&st.Conditions, &st.ObservedGeneration, s.bt.Generation, s.out)
	recordTargetReady(s.bt.Name, s.out.ready)
	before, after := meta.FindStatusCondition(orig.Status.Conditions, v1.ConditionReady), meta.FindStatusCondition(st.Conditions, v1.ConditionReady)
	stalledBefore := meta.FindStatusCondition(orig.Status.Conditions, v1.ConditionStalled)
	logger := log.FromContext(ctx)
	switch {
	case s.out.ready && (before == nil || before.Status != metav1.ConditionTrue):
		logger.Info("Backup target ready", "volumes", st.VolumeCount, "backups", st.BackupCount)
		r.Recorder.Eventf(s.bt, nil, corev1.EventTypeNormal, ReasonTargetReady, "Probe", "%s", after.Message)
	case s.out.stalled && (stalledBefore == nil || stalledBefore.Reason != s.out.reason):
		logger.Info("Backup target stalled", "reason", s.out.reason, "message", s.out.message)
		r.Recorder.Eventf(s.bt, nil, corev1.EventTypeWarning, s.out.reason, "Probe", "%s", s.out.message)
	}
}

// scrub replaces every Secret value that occurs in msg.
func (s *targetScope) scrub(msg string) string { return s.res.Scrub(msg) }

func (s *targetScope) scrubError(err error) error {
	if err == nil || len(s.res.Secrets) == 0 {
		return err
	}
	if m := s.scrub(err.Error()); m != err.Error() {
		if errors.Is(err, reconcile.TerminalError(nil)) {
			return reconcile.TerminalError(errors.New(m))
		}
		return errors.New(m)
	}
	return err
}

func (r *BackupTargetReconciler) forget(name string) { r.Stores.Forget(name) }

// SetupWithManager watches BackupTargets (spec changes only: the status a
// reconcile writes must not trigger another) and the Secrets they read.
func (r *BackupTargetReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Timeout <= 0 {
		r.Timeout = targets.DefaultTimeout
	}
	if r.Stores == nil {
		r.Stores = &targets.Cache{}
	}
	if r.UnreachableRetry <= 0 {
		r.UnreachableRetry = DefaultUnreachableRetry
	}
	if r.Now == nil {
		r.Now = time.Now
	}
	if r.Recorder == nil {
		r.Recorder = mgr.GetEventRecorder("cairn-backuptarget")
	}
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &v1.BackupTarget{}, targetSecretIndex, func(o client.Object) []string {
		spec := o.(*v1.BackupTarget).Spec
		var out []string
		if ref := spec.CredentialsSecretRef; ref != nil {
			out = append(out, ref.Namespace+"/"+ref.Name)
		}
		if spec.Encryption != nil {
			out = append(out, spec.Encryption.KeySecretRef.Namespace+"/"+spec.Encryption.KeySecretRef.Name)
		}
		return out
	}); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&v1.BackupTarget{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Named("backuptarget").
		WithOptions(controller.Options{MaxConcurrentReconciles: 4}).
		Watches(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(r.targetsOfSecret)).
		Complete(r)
}

// targetsOfSecret enqueues the targets that read a Secret, so fixing
// credentials or a key re-probes without touching the target.
func (r *BackupTargetReconciler) targetsOfSecret(ctx context.Context, o client.Object) []reconcile.Request {
	var list v1.BackupTargetList
	if err := r.List(ctx, &list, client.MatchingFields{targetSecretIndex: o.GetNamespace() + "/" + o.GetName()}); err != nil {
		log.FromContext(ctx).Error(err, "List backup targets for a Secret change")
		return nil
	}
	out := make([]reconcile.Request, 0, len(list.Items))
	for _, t := range list.Items {
		out = append(out, reconcile.Request{NamespacedName: client.ObjectKey{Name: t.Name}})
	}
	return out
}
