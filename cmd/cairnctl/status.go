package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// volumeRow is one volume in `cairnctl status`.
type volumeRow struct {
	Name           string       `json:"name"`
	State          string       `json:"state"`
	Robustness     string       `json:"robustness"`
	Ready          string       `json:"ready"`
	Replicas       string       `json:"replicas"` // RW/listed
	Node           string       `json:"node,omitempty"`
	Policy         string       `json:"policy,omitempty"`
	LastBackup     string       `json:"lastBackup,omitempty"`
	LastBackupTime *metav1.Time `json:"lastBackupTime,omitempty"`
	// RPO is the time since the last backup: what a disaster now would lose.
	RPO string `json:"rpo,omitempty"`
	// DRLag is, for a DR standby volume, how far it is behind its source.
	DRLag string `json:"drLag,omitempty"`
	// DR names the DisasterRecoveryVolume of a standby volume.
	DR string `json:"dr,omitempty"`
}

// drRow is one DisasterRecoveryVolume in `cairnctl dr status`.
type drRow struct {
	Namespace    string `json:"namespace"`
	Name         string `json:"name"`
	Phase        string `json:"phase"`
	Ready        string `json:"ready"`
	Source       string `json:"sourceVolume"`
	Target       string `json:"backupTarget"`
	Activate     bool   `json:"activate"`
	LastRestored string `json:"lastRestoredBackup,omitempty"`
	Lag          string `json:"lag,omitempty"`
	Volume       string `json:"volume,omitempty"`
	Claim        string `json:"claim"`
}

func newStatusCmd(o *globalOptions) *cobra.Command {
	return o.newShowCmd("status", "Show volumes with robustness, replicas, last backup, RPO and DR lag",
		o.printVolumes, &v1.VolumeList{}, &v1.DisasterRecoveryVolumeList{}, &v1.BackupList{})
}

// newShowCmd is a command that prints show's output once, or with --watch
// again whenever one of the watched kinds changes.
func (o *globalOptions) newShowCmd(use, short string, show func(context.Context, client.Client, io.Writer) error, watched ...client.ObjectList) *cobra.Command {
	var watchFlag bool
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: o.withClient(func(cmd *cobra.Command, c client.WithWatch, _ []string) error {
			once := func(w io.Writer) error { return show(cmd.Context(), c, w) }
			if !watchFlag {
				return userError(once(cmd.OutOrStdout()))
			}
			return userError(watchLoop(cmd.Context(), c, cmd.OutOrStdout(), once, watched...))
		}),
	}
	cmd.Flags().BoolVarP(&watchFlag, "watch", "w", false, "keep showing the status as it changes (Ctrl-C to stop)")
	return cmd
}

func (o *globalOptions) printVolumes(ctx context.Context, c client.Client, w io.Writer) error {
	rows, err := volumeRows(ctx, c, time.Now())
	if err != nil {
		return err
	}
	t := &table{header: []string{"VOLUME", "STATE", "ROBUSTNESS", "READY", "REPLICAS", "NODE", "POLICY", "LAST BACKUP", "RPO", "DR LAG"}}
	for _, r := range rows {
		t.add(r.Name, orDash(r.State), orDash(r.Robustness), r.Ready, r.Replicas, orDash(r.Node), orDash(r.Policy), orDash(r.LastBackup), orDash(r.RPO), orDash(r.DRLag))
	}
	if rows == nil {
		rows = []volumeRow{}
	}
	return o.print(w, rows, t)
}

func volumeRows(ctx context.Context, c client.Client, now time.Time) ([]volumeRow, error) {
	var vols v1.VolumeList
	if err := c.List(ctx, &vols); err != nil {
		return nil, err
	}
	var drs v1.DisasterRecoveryVolumeList
	if err := c.List(ctx, &drs); err != nil {
		return nil, err
	}
	byVolume := map[string]*v1.DisasterRecoveryVolume{}
	for i := range drs.Items {
		if n := drs.Items[i].Status.VolumeName; n != "" {
			byVolume[n] = &drs.Items[i]
		}
	}
	var rows []volumeRow
	for _, vol := range vols.Items {
		rows = append(rows, volumeRowOf(&vol, byVolume[vol.Name], now))
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Name < rows[j].Name })
	return rows, nil
}

func volumeRowOf(vol *v1.Volume, dr *v1.DisasterRecoveryVolume, now time.Time) volumeRow {
	rw := 0
	for _, r := range vol.Status.Replicas {
		if r.Mode == "RW" {
			rw++
		}
	}
	r := volumeRow{
		Name: vol.Name, State: string(vol.Status.State), Robustness: string(vol.Status.Robustness),
		Ready: conditionStatus(vol.Status.Conditions, v1.ConditionReady), Replicas: fmt.Sprintf("%d/%d", rw, len(vol.Status.Replicas)),
		Node: vol.Status.AttachedNode, Policy: vol.Status.EffectivePolicy, LastBackup: vol.Status.LastBackup, LastBackupTime: vol.Status.LastBackupTime,
	}
	if t := vol.Status.LastBackupTime; t != nil {
		r.RPO = age(&t.Time, now)
	}
	if dr != nil {
		r.DR = dr.Namespace + "/" + dr.Name
		if dr.Status.Lag != nil {
			r.DRLag = shortDuration(dr.Status.Lag.Duration)
		}
	}
	return r
}

func conditionStatus(conds []metav1.Condition, t string) string {
	if c := meta.FindStatusCondition(conds, t); c != nil {
		return string(c.Status)
	}
	return "Unknown"
}

func newDRCmd(o *globalOptions) *cobra.Command {
	dr := &cobra.Command{Use: "dr", Short: "Disaster recovery volumes"}
	dr.AddCommand(o.newShowCmd("status", "Show every DisasterRecoveryVolume: phase, last restored backup, lag, volume",
		o.printDR, &v1.DisasterRecoveryVolumeList{}))
	return dr
}

func (o *globalOptions) printDR(ctx context.Context, c client.Client, w io.Writer) error {
	var drs v1.DisasterRecoveryVolumeList
	if err := c.List(ctx, &drs); err != nil {
		return err
	}
	rows := []drRow{}
	t := &table{header: []string{"NAMESPACE", "NAME", "PHASE", "READY", "SOURCE", "TARGET", "ACTIVATE", "LAST RESTORED", "LAG", "VOLUME", "CLAIM"}}
	for _, d := range drs.Items {
		r := drRow{Namespace: d.Namespace, Name: d.Name, Phase: string(d.Status.Phase), Ready: conditionStatus(d.Status.Conditions, v1.ConditionReady),
			Source: d.Spec.SourceVolume, Target: string(d.Spec.BackupTargetRef), Activate: d.Spec.Activate,
			LastRestored: d.Status.LastRestoredBackup, Volume: d.Status.VolumeName, Claim: d.Spec.Claim.Name}
		if d.Status.Lag != nil {
			r.Lag = shortDuration(d.Status.Lag.Duration)
		}
		rows = append(rows, r)
		t.add(r.Namespace, r.Name, orDash(r.Phase), r.Ready, r.Source, r.Target, fmt.Sprint(r.Activate), orDash(r.LastRestored), orDash(r.Lag), orDash(r.Volume), r.Claim)
	}
	return o.print(w, rows, t)
}

// watchLoop shows the status, then again whenever a watched kind changes
// (and every few seconds, so ages and RPOs move), until ctx ends.
func watchLoop(ctx context.Context, c client.WithWatch, w io.Writer, show func(io.Writer) error, lists ...client.ObjectList) error {
	changed := make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for _, l := range lists {
		wi, err := c.Watch(ctx, l)
		if err != nil {
			return err
		}
		go forward(ctx, c, l, wi, changed)
	}
	tty := false
	if f, ok := w.(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		if tty {
			fmt.Fprint(w, "\033[H\033[2J")
		}
		fmt.Fprintf(w, "Every change (and 5s) · %s\n\n", time.Now().Format(time.TimeOnly))
		if err := show(w); err != nil {
			if ctx.Err() != nil {
				return nil // stopped while reading
			}
			return err
		}
		if !tty {
			fmt.Fprintln(w)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-tick.C:
		}
	}
}

// forward signals changed on every event of a watch, re-opening it when the
// API server ends it.
func forward(ctx context.Context, c client.WithWatch, l client.ObjectList, wi watch.Interface, changed chan<- struct{}) {
	for {
		for range wi.ResultChan() {
			select {
			case changed <- struct{}{}:
			default:
			}
		}
		wi.Stop()
		if ctx.Err() != nil {
			return
		}
		var err error
		if wi, err = c.Watch(ctx, l); err != nil {
			return
		}
	}
}
