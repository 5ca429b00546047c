package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/internal/actions"
)

// pollEvery is how often a waiting command reads the object it waits on.
const pollEvery = time.Second

func newSnapshotCmd(o *globalOptions) *cobra.Command {
	var waitFlag bool
	cmd := &cobra.Command{
		Use:   "snapshot VOLUME",
		Short: "Snapshot a volume now (a Snapshot object, kept on the volume's replicas)",
		Args:  cobra.ExactArgs(1),
		RunE: o.withClient(func(cmd *cobra.Command, c client.WithWatch, args []string) error {
			snap, err := actions.SnapshotNow(cmd.Context(), c, args[0])
			if err != nil {
				return userError(err)
			}
			if waitFlag {
				err = waitSnapshot(cmd.Context(), c, snap)
			}
			return o.printCreated(cmd.OutOrStdout(), snap, "snapshot", snap.Name, fmt.Sprintf("of volume %s", args[0]), err)
		}),
	}
	cmd.Flags().BoolVar(&waitFlag, "wait", false, "wait until every replica holds the snapshot")
	return cmd
}

// printCreated reports a created object (and the outcome of waiting on it).
func (o *globalOptions) printCreated(w io.Writer, obj client.Object, kind, name, what string, waitErr error) error {
	if waitErr != nil {
		return userError(waitErr)
	}
	if o.output != "table" {
		return o.print(w, obj, nil)
	}
	_, err := fmt.Fprintf(w, "%s %s %s created\n", kind, name, what)
	return err
}

func waitSnapshot(ctx context.Context, c client.Client, snap *v1.Snapshot) error {
	return wait.PollUntilContextCancel(ctx, pollEvery, true, func(ctx context.Context) (bool, error) {
		if err := c.Get(ctx, client.ObjectKeyFromObject(snap), snap); err != nil {
			return false, err
		}
		if s := meta.FindStatusCondition(snap.Status.Conditions, v1.ConditionStalled); s != nil && s.Status == metav1.ConditionTrue {
			return false, fmt.Errorf("snapshot %s failed: %s", snap.Name, s.Message)
		}
		return snap.Status.ReadyToUse, nil
	})
}

func newBackupCmd(o *globalOptions) *cobra.Command {
	var target string
	var waitFlag bool
	cmd := &cobra.Command{
		Use:   "backup VOLUME | backup list | backup verify BACKUP",
		Short: "Back up a volume now, list backups, or verify one",
		Long: "`cairnctl backup VOLUME` backs the volume up now to --target (default: its policy's backupTargetRef);\n" +
			"the Backup keeps deletePolicy Retain, so deleting the object leaves the backup in the target.",
		Args: cobra.ExactArgs(1),
		RunE: o.withClient(func(cmd *cobra.Command, c client.WithWatch, args []string) error {
			b, err := actions.BackupNow(cmd.Context(), c, args[0], target)
			if err != nil {
				return userError(err)
			}
			if waitFlag {
				err = waitBackup(cmd.Context(), c, b, newProgressBar(cmd.ErrOrStderr()))
			}
			return o.printCreated(cmd.OutOrStdout(), b, "backup", b.Name, fmt.Sprintf("of volume %s to %s", args[0], b.Spec.BackupTargetRef), err)
		}),
	}
	cmd.Flags().StringVar(&target, "target", "", "BackupTarget to write to (default: the volume policy's backupTargetRef)")
	cmd.Flags().BoolVar(&waitFlag, "wait", false, "wait for the backup to complete, showing its progress")
	cmd.AddCommand(newBackupListCmd(o), newBackupVerifyCmd(o))
	return cmd
}

func waitBackup(ctx context.Context, c client.Client, b *v1.Backup, bar *progressBar) error {
	defer bar.done()
	return wait.PollUntilContextCancel(ctx, pollEvery, true, func(ctx context.Context) (bool, error) {
		if err := c.Get(ctx, client.ObjectKeyFromObject(b), b); err != nil {
			return false, err
		}
		switch b.Status.State {
		case "Completed":
			bar.update(100, "backup "+b.Name+" completed")
			return true, nil
		case "Failed":
			msg := ""
			if r := meta.FindStatusCondition(b.Status.Conditions, v1.ConditionReady); r != nil {
				msg = r.Message
			}
			return false, fmt.Errorf("backup %s failed: %s", b.Name, msg)
		}
		bar.update(int(b.Status.Progress), "backing up "+b.Spec.VolumeName)
		return false, nil
	})
}

// backupRow is one backup in `cairnctl backup list`.
type backupRow struct {
	Name         string       `json:"name"`
	Volume       string       `json:"volume"`
	Target       string       `json:"target"`
	State        string       `json:"state"`
	Progress     int32        `json:"progress"`
	BackupID     string       `json:"backupID,omitempty"`
	Size         int64        `json:"size"`
	Uploaded     int64        `json:"uploadedBytes"`
	CreationTime *metav1.Time `json:"creationTime,omitempty"`
	Schedule     string       `json:"schedule,omitempty"`
}

func newBackupListCmd(o *globalOptions) *cobra.Command {
	var volume string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List backups, newest first",
		Args:  cobra.NoArgs,
		RunE: o.withClient(func(cmd *cobra.Command, c client.WithWatch, _ []string) error {
			var list v1.BackupList
			if err := c.List(cmd.Context(), &list); err != nil {
				return userError(err)
			}
			rows := backupRows(list.Items, volume)
			t := &table{header: []string{"NAME", "VOLUME", "TARGET", "STATE", "PROGRESS", "SIZE", "UPLOADED", "AGE", "SCHEDULE"}}
			now := time.Now()
			for _, r := range rows {
				var created *time.Time
				if r.CreationTime != nil {
					created = &r.CreationTime.Time
				}
				t.add(r.Name, r.Volume, r.Target, orDash(r.State), fmt.Sprintf("%d%%", r.Progress), bytesOf(r.Size), bytesOf(r.Uploaded), age(created, now), orDash(r.Schedule))
			}
			return o.print(cmd.OutOrStdout(), rows, t)
		}),
	}
	cmd.Flags().StringVar(&volume, "volume", "", "only the backups of this volume")
	return cmd
}

func backupRows(items []v1.Backup, volume string) []backupRow {
	rows := []backupRow{}
	for _, b := range items {
		if volume != "" && b.Spec.VolumeName != volume {
			continue
		}
		created := b.Status.CreationTime
		if created == nil {
			created = &b.CreationTimestamp
		}
		rows = append(rows, backupRow{Name: b.Name, Volume: b.Spec.VolumeName, Target: string(b.Spec.BackupTargetRef), State: b.Status.State,
			Progress: b.Status.Progress, BackupID: b.Status.BackupID, Size: b.Status.Size, Uploaded: b.Status.UploadedBytes,
			CreationTime: created, Schedule: b.Labels[v1.LabelRecurringSnapshot]})
	}
	sort.SliceStable(rows, func(i, j int) bool { return rows[j].CreationTime.Before(rows[i].CreationTime) })
	return rows
}

func bytesOf(n int64) string {
	if n == 0 {
		return "-"
	}
	return resource.NewQuantity(n, resource.BinarySI).String()
}

func newBackupVerifyCmd(o *globalOptions) *cobra.Command {
	var keep bool
	cmd := &cobra.Command{
		Use:   "verify BACKUP",
		Short: "Verify a backup by restoring it into a throw-away one-replica volume (every block checked against its hash)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			vol, err := actions.Verify(cmd.Context(), c, args[0])
			if err != nil {
				return userError(err)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "restoring backup %s into throw-away volume %s\n", args[0], vol.Name)
			out, err := waitRestore(cmd.Context(), c, vol, newProgressBar(cmd.ErrOrStderr()))
			if !keep {
				if cerr := actions.Cleanup(context.WithoutCancel(cmd.Context()), c, vol); cerr != nil && err == nil {
					err = cerr
				}
			}
			switch {
			case err != nil:
				return userError(err)
			case out.Failed:
				return fmt.Errorf("backup %s failed verification: %s", args[0], out.Message)
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "backup %s verified: every block restored and matched its checksum\n", args[0])
			return err
		},
	}
	cmd.Flags().BoolVar(&keep, "keep", false, "keep the throw-away volume (label "+actions.LabelVerifies+")")
	return cmd
}

// waitRestore follows a restored volume until its restore succeeded or
// failed, drawing the replicas' progress.
func waitRestore(ctx context.Context, c client.Client, vol *v1.Volume, bar *progressBar) (actions.Outcome, error) {
	defer bar.done()
	var out actions.Outcome
	err := wait.PollUntilContextCancel(ctx, pollEvery, true, func(ctx context.Context) (bool, error) {
		if err := c.Get(ctx, client.ObjectKeyFromObject(vol), vol); err != nil {
			return false, err
		}
		out = actions.RestoreOutcome(vol)
		if out.Done {
			if !out.Failed {
				bar.update(100, "restored")
			}
			return true, nil
		}
		pct, err := actions.RestoreProgress(ctx, c, vol)
		if err != nil {
			return false, err
		}
		bar.update(pct, out.Message)
		return false, nil
	})
	return out, err
}

func newRestoreCmd(o *globalOptions) *cobra.Command {
	var to, size, policy string
	var replicas int32
	var noWait bool
	cmd := &cobra.Command{
		Use:   "restore BACKUP --to VOLUME",
		Short: "Restore a backup to a new volume, showing the restore's progress",
		Args:  cobra.ExactArgs(1),
		RunE: o.withClient(func(cmd *cobra.Command, c client.WithWatch, args []string) error {
			ro := actions.RestoreOptions{Policy: policy, Replicas: replicas}
			if size != "" {
				q, err := resource.ParseQuantity(size)
				if err != nil {
					return fmt.Errorf("--size %q: %w", size, err)
				}
				ro.Size = q
			}
			vol, err := actions.Restore(cmd.Context(), c, args[0], to, ro)
			if err != nil {
				return userError(err)
			}
			if !noWait {
				var out actions.Outcome
				out, err = waitRestore(cmd.Context(), c, vol, newProgressBar(cmd.ErrOrStderr()))
				if err == nil && out.Failed {
					err = fmt.Errorf("restore of backup %s into volume %s failed: %s", args[0], to, out.Message)
				}
			}
			return o.printCreated(cmd.OutOrStdout(), vol, "volume", vol.Name, "from backup "+args[0], err)
		}),
	}
	cmd.Flags().StringVar(&to, "to", "", "name of the new volume (required)")
	cmd.Flags().StringVar(&size, "size", "", "size of the new volume (default: the backup's size)")
	cmd.Flags().StringVar(&policy, "policy", "", "VolumePolicy of the new volume")
	cmd.Flags().Int32Var(&replicas, "replicas", 0, "replica count (default: the policy's)")
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "return once the volume is created")
	_ = cmd.MarkFlagRequired("to")
	return cmd
}
