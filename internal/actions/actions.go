// Package actions builds and creates the objects behind Cairn's on-demand
// operations: snapshot a volume now, back it up now, restore a backup to a
// new volume, and verify a backup. cairnctl and the dashboard both call it,
// so an operation creates the same objects whichever one a user clicks or
// types.
//
// Snapshots and backups are ordinary Snapshot and Backup objects, carried
// out by the controllers like a RecurringSnapshot run's (without its
// schedule label). A restore is a Volume with spec.fromBackup.
//
// Verify has no controller of its own: the backup is restored into a
// throw-away one-replica Volume (labelled LabelVerifies). A restore checks
// every block against its content address, so the volume's Restored
// condition turning True is a verified backup, and a corrupt or missing
// block stalls the volume with a message naming it. VerifyOutcome reads
// that result; the caller deletes the volume with Cleanup when it has it.
package actions

import (
	"context"
	"errors"
	"fmt"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// LabelVerifies marks a throw-away Volume that verifies a Backup; the value
// is the Backup's name (as a label value).
const LabelVerifies = "storage.cairn.dev/verifies"

// Errors a user can cause; each wraps the name it is about.
var (
	ErrVolumeNotFound = errors.New("volume not found")
	ErrBackupNotFound = errors.New("backup not found")
	ErrNoBackupTarget = errors.New("no backup target")
	ErrNotCompleted   = errors.New("backup is not completed")
	ErrExists         = errors.New("already exists")
)

// GetVolume reads a Volume, ErrVolumeNotFound when there is none.
func GetVolume(ctx context.Context, c client.Reader, name string) (*v1.Volume, error) {
	vol := &v1.Volume{}
	err := c.Get(ctx, client.ObjectKey{Name: name}, vol)
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("%w: %s", ErrVolumeNotFound, name)
	}
	return vol, err
}

// GetBackup reads a Backup, ErrBackupNotFound when there is none.
func GetBackup(ctx context.Context, c client.Reader, name string) (*v1.Backup, error) {
	b := &v1.Backup{}
	err := c.Get(ctx, client.ObjectKey{Name: name}, b)
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("%w: %s", ErrBackupNotFound, name)
	}
	return b, err
}

// objectMeta names an on-demand object VOLUME-KIND- plus a random suffix
// from the API server, and labels it with its volume.
func objectMeta(volume, kind string) metav1.ObjectMeta {
	base := volume
	if len(base) > 40 {
		base = strings.TrimRight(base[:40], "-.")
	}
	return metav1.ObjectMeta{
		GenerateName: base + "-" + kind + "-",
		Labels:       map[string]string{v1.LabelVolume: v1.LabelValue(volume)},
	}
}

// NewSnapshot builds a Snapshot of vol, owned by it (its replicas hold the
// snapshot, so it goes with the volume), as the scheduler does.
func NewSnapshot(vol *v1.Volume, c client.Client) (*v1.Snapshot, error) {
	snap := &v1.Snapshot{ObjectMeta: objectMeta(vol.Name, "snap"), Spec: v1.SnapshotSpec{VolumeName: vol.Name}}
	if err := controllerutil.SetControllerReference(vol, snap, c.Scheme()); err != nil {
		return nil, err
	}
	return snap, nil
}

// SnapshotNow creates a Snapshot of the named volume.
func SnapshotNow(ctx context.Context, c client.Client, volume string) (*v1.Snapshot, error) {
	vol, err := GetVolume(ctx, c, volume)
	if err != nil {
		return nil, err
	}
	snap, err := NewSnapshot(vol, c)
	if err != nil {
		return nil, err
	}
	return snap, c.Create(ctx, snap)
}

// NewBackup builds a Backup of vol to target. It has no owner (backups
// outlive volumes) and deletePolicy Retain: deleting the object leaves the
// backup in the target.
func NewBackup(vol *v1.Volume, target string) *v1.Backup {
	return &v1.Backup{ObjectMeta: objectMeta(vol.Name, "backup"), Spec: v1.BackupSpec{
		VolumeName: vol.Name, BackupTargetRef: v1.ObjectName(target), DeletePolicy: "Retain",
	}}
}

// BackupNow creates a Backup of the named volume to target, or when target
// is empty to the backupTargetRef of the volume's policy.
func BackupNow(ctx context.Context, c client.Client, volume, target string) (*v1.Backup, error) {
	vol, err := GetVolume(ctx, c, volume)
	if err != nil {
		return nil, err
	}
	if target == "" {
		if target, err = PolicyTarget(ctx, c, vol); err != nil {
			return nil, err
		}
	}
	if err := c.Get(ctx, client.ObjectKey{Name: target}, &v1.BackupTarget{}); apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("%w: BackupTarget %s does not exist", ErrNoBackupTarget, target)
	} else if err != nil {
		return nil, err
	}
	b := NewBackup(vol, target)
	return b, c.Create(ctx, b)
}

// PolicyTarget is the backupTargetRef of vol's policy (spec.policyRef, else
// the effective one); ErrNoBackupTarget when there is none.
func PolicyTarget(ctx context.Context, c client.Reader, vol *v1.Volume) (string, error) {
	name := string(vol.Spec.PolicyRef)
	if name == "" {
		name = vol.Status.EffectivePolicy
	}
	if name == "" {
		return "", fmt.Errorf("%w: volume %s has no policy; name a backup target", ErrNoBackupTarget, vol.Name)
	}
	p := &v1.VolumePolicy{}
	if err := c.Get(ctx, client.ObjectKey{Name: name}, p); apierrors.IsNotFound(err) {
		return "", fmt.Errorf("%w: VolumePolicy %s of volume %s does not exist; name a backup target", ErrNoBackupTarget, name, vol.Name)
	} else if err != nil {
		return "", err
	}
	if p.Spec.BackupTargetRef == "" {
		return "", fmt.Errorf("%w: VolumePolicy %s has no backupTargetRef; name a backup target", ErrNoBackupTarget, name)
	}
	return string(p.Spec.BackupTargetRef), nil
}

// RestoreOptions shape the restored volume.
type RestoreOptions struct {
	// Size of the new volume; zero means the backup's size.
	Size resource.Quantity
	// Policy is the new volume's policyRef (empty: selected by policies).
	Policy string
	// Replicas overrides the policy's replica count when non-zero.
	Replicas int32
}

// NewRestore builds a Volume named name restored from the completed
// backup b (the same spec.fromBackup the CSI driver builds for a backup
// snapshot).
func NewRestore(b *v1.Backup, name string, o RestoreOptions) (*v1.Volume, error) {
	if b.Status.State != "Completed" || b.Status.BackupID == "" {
		return nil, fmt.Errorf("%w: %s is %s", ErrNotCompleted, b.Name, orUnknown(b.Status.State))
	}
	vol := &v1.Volume{ObjectMeta: metav1.ObjectMeta{Name: name}}
	vol.Spec.Size = o.Size
	if o.Size.IsZero() {
		vol.Spec.Size = *resource.NewQuantity(roundUp(b.Status.Size, 4096), resource.BinarySI)
	}
	vol.Spec.PolicyRef = v1.ObjectName(o.Policy)
	if o.Replicas > 0 {
		vol.Spec.Replicas = ptr.To(o.Replicas)
	}
	vol.Spec.FromBackup = &v1.BackupSource{BackupTargetRef: b.Spec.BackupTargetRef, Volume: b.Spec.VolumeName, Backup: b.Status.BackupID}
	return vol, nil
}

// Restore creates a Volume named name from the named Backup.
func Restore(ctx context.Context, c client.Client, backup, name string, o RestoreOptions) (*v1.Volume, error) {
	b, err := GetBackup(ctx, c, backup)
	if err != nil {
		return nil, err
	}
	vol, err := NewRestore(b, name, o)
	if err != nil {
		return nil, err
	}
	if err := c.Create(ctx, vol); apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("%w: volume %s", ErrExists, name)
	} else if err != nil {
		return nil, err
	}
	return vol, nil
}

// RestoreProgress is the mean restore percentage of vol's replicas, 100
// once the volume's Restored condition is True.
func RestoreProgress(ctx context.Context, c client.Reader, vol *v1.Volume) (int, error) {
	if meta.IsStatusConditionTrue(vol.Status.Conditions, v1.ConditionRestored) {
		return 100, nil
	}
	var reps v1.ReplicaList
	if err := c.List(ctx, &reps, client.MatchingLabels{v1.LabelVolume: vol.Name}); err != nil {
		return 0, err
	}
	sum, n := 0, 0
	for _, r := range reps.Items {
		if r.Spec.Restore == nil {
			continue
		}
		n++
		if r.Status.RestoredBackup != "" {
			sum += 100
		} else {
			sum += int(r.Status.RestoreProgress)
		}
	}
	if n == 0 {
		return 0, nil
	}
	return sum / n, nil
}

// Outcome is where a restore (or verification) stands.
type Outcome struct {
	// Done is true once the restore succeeded or failed.
	Done bool
	// Failed is true when it cannot succeed; Message says why.
	Failed  bool
	Message string
}

// RestoreOutcome reads a restored volume's Restored and Stalled conditions.
func RestoreOutcome(vol *v1.Volume) Outcome {
	restored := meta.FindStatusCondition(vol.Status.Conditions, v1.ConditionRestored)
	if restored != nil && restored.Status == metav1.ConditionTrue {
		return Outcome{Done: true, Message: restored.Message}
	}
	if s := meta.FindStatusCondition(vol.Status.Conditions, v1.ConditionStalled); s != nil && s.Status == metav1.ConditionTrue {
		return Outcome{Done: true, Failed: true, Message: s.Message}
	}
	if restored != nil {
		return Outcome{Message: restored.Message}
	}
	return Outcome{Message: "waiting for the restore to start"}
}

// NewVerify builds the throw-away one-replica Volume that verifies the
// completed backup b by restoring it.
func NewVerify(b *v1.Backup) (*v1.Volume, error) {
	vol, err := NewRestore(b, "", RestoreOptions{Replicas: 1})
	if err != nil {
		return nil, err
	}
	base := b.Name
	if len(base) > 40 {
		base = strings.TrimRight(base[:40], "-.")
	}
	vol.GenerateName = "verify-" + base + "-"
	vol.Labels = map[string]string{LabelVerifies: v1.LabelValue(b.Name)}
	return vol, nil
}

// Verify starts verifying the named Backup and returns the throw-away
// Volume; watch it with VerifyOutcome (RestoreOutcome) and RestoreProgress,
// then Cleanup.
func Verify(ctx context.Context, c client.Client, backup string) (*v1.Volume, error) {
	b, err := GetBackup(ctx, c, backup)
	if err != nil {
		return nil, err
	}
	vol, err := NewVerify(b)
	if err != nil {
		return nil, err
	}
	return vol, c.Create(ctx, vol)
}

// Cleanup deletes a verification's throw-away volume.
func Cleanup(ctx context.Context, c client.Client, vol *v1.Volume) error {
	if vol.Labels[LabelVerifies] == "" {
		return fmt.Errorf("volume %s is not a verification volume", vol.Name)
	}
	return client.IgnoreNotFound(c.Delete(ctx, vol))
}

func roundUp(n, to int64) int64 {
	if n <= 0 {
		return to
	}
	return (n + to - 1) / to * to
}

func orUnknown(s string) string {
	if s == "" {
		return "not started"
	}
	return s
}
