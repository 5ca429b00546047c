package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	cairnv1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/controllers/targets"
	"github.com/cairnstore/cairn/engine"
	"github.com/cairnstore/cairn/engine/backupstore"
	"github.com/cairnstore/cairn/engine/control"
	"github.com/cairnstore/cairn/internal/secretfile"
	"github.com/cairnstore/cairn/replica"
)

// +kubebuilder:rbac:groups=storage.cairn.dev,resources=backups,verbs=get;list;watch
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=backups/status,verbs=get;update;patch

// Backup states (status.state).
const (
	backupPending    = "Pending"
	backupInProgress = "InProgress"
	backupCompleted  = "Completed"
	backupFailed     = "Failed"
)

// backupPoll is how often a running backup's progress is reported.
const backupPoll = 2 * time.Second

// BackupReconciler runs the Backups of volumes whose engine runs on its
// node: it takes the snapshot through the engine (unless the Backup names
// a Snapshot), then streams it from a healthy replica through that
// replica's running process (replica.Remote: the protocol's diff and layer
// reads) to the BackupTarget, incrementally against the volume's last
// backup, under the Volume's name. Backups imported from a catalogue
// (spec.backupID) are only described, never run.
type BackupReconciler struct {
	client.Client
	APIReader client.Reader
	Agent     *Agent
}

// backupScope is one reconcile of a Backup.
type backupScope struct {
	obj  *cairnv1.Backup
	eng  *cairnv1.Engine
	cl   *control.Client
	snap string // the replica snapshot backed up
}

// SetupWithManager watches Backups and this node's Engines.
func (r *BackupReconciler) SetupWithManager(mgr ctrl.Manager, opts controller.Options) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("node-backup").
		For(&cairnv1.Backup{}).
		Watches(&cairnv1.Engine{}, handler.EnqueueRequestsFromMapFunc(r.backupsOfEngine)).
		WatchesRawSource(source.Channel(r.Agent.backupC, &handler.EnqueueRequestForObject{})).
		WithOptions(opts).
		Complete(r)
}

func (r *BackupReconciler) backupsOfEngine(ctx context.Context, o client.Object) []reconcile.Request {
	eng, ok := o.(*cairnv1.Engine)
	if !ok || eng.Spec.NodeID != r.Agent.opts.Name {
		return nil
	}
	var list cairnv1.BackupList
	if err := r.List(ctx, &list); err != nil {
		return nil
	}
	var out []reconcile.Request
	for _, b := range list.Items {
		if b.Spec.VolumeName == eng.Spec.VolumeName && runnable(&b) {
			out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&b)})
		}
	}
	return out
}

// runnable: a Backup this agent may still have to run.
func runnable(b *cairnv1.Backup) bool {
	return b.Spec.BackupID == "" && b.DeletionTimestamp.IsZero() && b.Status.State != backupCompleted && b.Status.State != backupFailed
}

// Reconcile advances one backup: snapshot, upload (polled), completion.
func (r *BackupReconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, retErr error) {
	b := &cairnv1.Backup{}
	if err := r.Get(ctx, req.NamespacedName, b); err != nil {
		if client.IgnoreNotFound(err) == nil {
			r.Agent.jobs.stop(backupKey(req.Name))
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !runnable(b) {
		r.Agent.jobs.stop(backupKey(b.Name))
		return ctrl.Result{}, nil
	}
	cl, eng, err := r.Agent.localEngine(ctx, r.Client, r.APIReader, b.Spec.VolumeName)
	if cl == nil || err != nil {
		return ctrl.Result{}, err
	}
	// With no upload of it running here, read the backup from the API
	// server before acting: the cache can lag this agent's own completion,
	// and a stale copy would start the backup again (a second upload,
	// cancelled once the cache catches up, leaves an uncommitted manifest
	// behind; a completed one, an orphan in the target) or write its retry
	// conditions over the Completed status.
	if r.Agent.jobs.get(backupKey(b.Name)) == nil {
		if err := r.APIReader.Get(ctx, req.NamespacedName, b); err != nil || !runnable(b) {
			return ctrl.Result{}, client.IgnoreNotFound(err)
		}
	}
	ctx = log.IntoContext(ctx, log.FromContext(ctx).WithValues("backup", b.Name, "volume", b.Spec.VolumeName))
	s := &backupScope{obj: b, eng: eng, cl: cl}
	p := newStatusPatcher(r.Client, b)
	defer func() { retErr = errors.Join(retErr, p.patch(ctx, b)) }()
	for _, phase := range []func(context.Context, *backupScope) (ctrl.Result, error){r.snapshot, r.upload} {
		if res, err := phase(ctx, s); err != nil || !res.IsZero() {
			return res, r.fail(s, err)
		}
	}
	return ctrl.Result{}, nil
}

// fail records why a backup has not succeeded yet: a terminal error fails
// it for good, anything else is retried with backoff and shown meanwhile.
func (r *BackupReconciler) fail(s *backupScope, err error) error {
	if err == nil {
		return nil
	}
	st := &s.obj.Status
	if errors.Is(err, reconcile.TerminalError(nil)) {
		st.State = backupFailed
		applyHealth(&st.Conditions, &st.ObservedGeneration, s.obj.Generation, health{stalled: true, reason: "BackupFailed", message: errors.Unwrap(err).Error()})
		r.Agent.recorder.Eventf(s.obj, nil, corev1.EventTypeWarning, "BackupFailed", "Backup", "%v", errors.Unwrap(err))
		return err
	}
	applyHealth(&st.Conditions, &st.ObservedGeneration, s.obj.Generation, health{reconciling: true, reason: "Retrying", message: err.Error()})
	return err
}

// snapshot resolves the snapshot to back up: the named Snapshot once it is
// ready, or one the agent takes through the engine (named after the
// Backup, labelled so the next backup's cleanup finds it).
func (r *BackupReconciler) snapshot(ctx context.Context, s *backupScope) (ctrl.Result, error) {
	if name := s.obj.Spec.SnapshotName; name != "" {
		snap := &cairnv1.Snapshot{}
		if err := r.Get(ctx, client.ObjectKey{Name: name}, snap); err != nil {
			if client.IgnoreNotFound(err) == nil {
				return ctrl.Result{}, reconcile.TerminalError(fmt.Errorf("snapshot %s does not exist", name))
			}
			return ctrl.Result{}, err
		}
		if snap.Spec.VolumeName != s.obj.Spec.VolumeName {
			return ctrl.Result{}, reconcile.TerminalError(fmt.Errorf("snapshot %s is of volume %s, not %s", name, snap.Spec.VolumeName, s.obj.Spec.VolumeName))
		}
		if !snap.Status.ReadyToUse {
			s.obj.Status.State = backupPending
			return ctrl.Result{RequeueAfter: backupPoll}, nil
		}
		s.snap = name
		return ctrl.Result{}, nil
	}
	s.snap = "backup-" + s.obj.Name
	err := s.cl.Snapshot(ctx, s.snap, map[string]string{cairnv1.LabelBackup: s.obj.Name})
	if err != nil && !errors.Is(err, engine.ErrSnapshotExists) {
		return ctrl.Result{}, fmt.Errorf("snapshot for the backup: %w", err)
	}
	return ctrl.Result{}, nil
}

// upload starts the upload job, reports its progress, and completes the
// backup when it succeeded.
func (r *BackupReconciler) upload(ctx context.Context, s *backupScope) (ctrl.Result, error) {
	st := &s.obj.Status
	key := backupKey(s.obj.Name)
	j := r.Agent.jobs.get(key)
	if j == nil {
		var err error
		if j, err = r.startUpload(ctx, s); err != nil {
			return ctrl.Result{}, err
		}
		if st.CreationTime == nil {
			now := metav1.NewTime(time.Now().UTC().Truncate(time.Second))
			st.CreationTime = &now
		}
	}
	if !j.finished() {
		st.State, st.Progress, st.UploadedBytes = backupInProgress, j.percent.Load(), j.bytes.Load()
		applyHealth(&st.Conditions, &st.ObservedGeneration, s.obj.Generation, health{reconciling: true, reason: "Uploading", message: fmt.Sprintf("%d%% of snapshot %s uploaded", st.Progress, s.snap)})
		return ctrl.Result{RequeueAfter: backupPoll}, nil
	}
	r.Agent.jobs.stop(key)
	if j.err != nil {
		err := fmt.Errorf("upload: %w", j.err)
		if errors.Is(j.err, backupstore.ErrTargetFull) {
			// Retrying cannot help until someone frees the target: fail
			// with the reason (nothing of it is listed; GC removes its
			// blocks).
			err = reconcile.TerminalError(err)
		}
		return ctrl.Result{}, err
	}
	info := j.result.(backupstore.BackupInfo)
	completed := metav1.NewTime(info.Completed.UTC().Truncate(time.Second))
	st.State, st.Progress, st.BackupID, st.Size, st.CompletionTime = backupCompleted, 100, info.ID, info.Size, &completed
	st.UploadedBytes = j.bytes.Load()
	applyHealth(&st.Conditions, &st.ObservedGeneration, s.obj.Generation, health{ready: true, reason: "Completed", message: fmt.Sprintf("backup %s complete in the target", info.ID)})
	log.FromContext(ctx).Info("Backup completed", "backupID", info.ID, "bytes", info.Size, "newBytes", info.NewBytes)
	r.Agent.recorder.Eventf(s.obj, nil, corev1.EventTypeNormal, "Completed", "Backup", "backup %s of %s complete (%d new bytes)", info.ID, s.obj.Spec.VolumeName, info.NewBytes)
	r.removeOlderBackupSnapshots(ctx, s)
	return ctrl.Result{}, nil
}

// startUpload opens the target and a healthy replica and starts the job.
func (r *BackupReconciler) startUpload(ctx context.Context, s *backupScope) (*job, error) {
	store, err := r.Agent.stores.Open(ctx, r.APIReader, string(s.obj.Spec.BackupTargetRef), targets.DefaultTimeout)
	if err != nil {
		return nil, err
	}
	addr := healthyReplica(s.eng)
	if addr == "" {
		return nil, errors.New("no healthy replica to read the snapshot from")
	}
	tok, err := secretfile.ReadToken(r.Agent.tokenFile(s.obj.Spec.VolumeName))
	if err != nil {
		return nil, err
	}
	vol, snap, name := s.obj.Spec.VolumeName, s.snap, s.obj.Name
	labels := map[string]string{cairnv1.LabelBackup: name}
	if s.eng.Spec.Frontend == frontendNone {
		labels[cairnv1.LabelFenced] = "true" // detached: nothing writes the volume
	}
	log.FromContext(ctx).Info("Backup started", "snapshot", snap, "replica", addr, "target", s.obj.Spec.BackupTargetRef)
	return r.Agent.jobs.start(backupKey(name), snap, func() { r.Agent.notify(backupKey(name)) }, func(ctx context.Context, j *job) error {
		c, err := replica.Dial(ctx, addr, tok)
		if err != nil {
			return err
		}
		defer c.Close()
		info, err := store.BackupReplica(ctx, replica.NewRemote(ctx, c), backupstore.ReplicaBackupOptions{
			Volume: vol, Snapshot: snap, Labels: labels, Progress: j.progress,
		})
		j.result = info
		return err
	}), nil
}

// healthyReplica picks the first healthy replica address of the engine.
func healthyReplica(eng *cairnv1.Engine) string {
	var addrs []string
	for addr, mode := range eng.Status.ReplicaModes {
		if mode == "healthy" {
			addrs = append(addrs, addr)
		}
	}
	slices.Sort(addrs)
	if len(addrs) == 0 {
		return ""
	}
	return addrs[0]
}

// removeOlderBackupSnapshots drops the snapshots earlier backups took:
// the newest one is the base of the next incremental backup, older ones
// only hold space. A failure is logged; the next backup tries again.
func (r *BackupReconciler) removeOlderBackupSnapshots(ctx context.Context, s *backupScope) {
	if s.obj.Spec.SnapshotName != "" {
		return
	}
	snaps, err := s.cl.Snapshots(ctx)
	if err != nil {
		log.FromContext(ctx).Error(err, "Listing snapshots for cleanup failed")
		return
	}
	var taken time.Time
	for _, sn := range snaps {
		if sn.Name == s.snap {
			taken = sn.Created
		}
	}
	for _, sn := range snaps {
		if sn.Labels[cairnv1.LabelBackup] == "" || sn.Name == s.snap || !sn.Created.Before(taken) {
			continue
		}
		if err := s.cl.RemoveSnapshot(ctx, sn.Name); err != nil && !errors.Is(err, engine.ErrNotFound) {
			log.FromContext(ctx).Error(err, "Removing an older backup snapshot failed", "snapshot", sn.Name)
		}
	}
}

func backupKey(name string) string { return backupPrefix + name }
