package dashboard

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/fields"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/internal/actions"
	"github.com/cairnstore/cairn/policies"
)

// get reads one cluster-scoped object; a missing one is a 404.
func (s *Server) get(ctx context.Context, kind, name string, obj client.Object) error {
	err := s.c.Get(ctx, client.ObjectKey{Name: name}, obj)
	if apierrors.IsNotFound(err) {
		return errNotFound(kind, name)
	}
	return err
}

type volumeData struct {
	Volume    v1.Volume
	Replicas  []v1.Replica
	Engine    *v1.Engine
	Snapshots []v1.Snapshot
	Backups   []backupRow
	Policy    policies.Effective
	PolicyErr string
	Schedules []string
	Targets   []string
	Events    []eventRow
	// Restore is set for a volume restored from a backup; Verifies names
	// the backup a throw-away verification volume checks.
	Restore  *restoreView
	Verifies string
}

type restoreView struct {
	Progress int
	actions.Outcome
}

type backupRow struct {
	v1.Backup
	Duration time.Duration
}

func (s *Server) volume(r *http.Request) (view, error) {
	ctx, name := r.Context(), r.PathValue("name")
	d := volumeData{}
	if err := s.get(ctx, "volume", name, &d.Volume); err != nil {
		return view{}, err
	}
	var reps v1.ReplicaList
	if err := s.c.List(ctx, &reps, client.MatchingLabels{v1.LabelVolume: name}); err != nil {
		return view{}, err
	}
	d.Replicas = reps.Items
	slices.SortFunc(d.Replicas, func(a, b v1.Replica) int { return strings.Compare(a.Spec.NodeID, b.Spec.NodeID) })
	var eng v1.Engine
	if err := s.c.Get(ctx, client.ObjectKey{Name: name}, &eng); err == nil {
		d.Engine = &eng
	} else if !apierrors.IsNotFound(err) {
		return view{}, err
	}
	if err := s.volumeHistory(ctx, &d); err != nil {
		return view{}, err
	}
	if err := s.volumePolicy(ctx, &d); err != nil {
		return view{}, err
	}
	if d.Volume.Spec.FromBackup != nil {
		p, err := actions.RestoreProgress(ctx, s.c, &d.Volume)
		if err != nil {
			return view{}, err
		}
		d.Restore = &restoreView{Progress: p, Outcome: actions.RestoreOutcome(&d.Volume)}
		d.Verifies = d.Volume.Labels[actions.LabelVerifies]
	}
	ev, err := s.events(ctx, "Volume", name)
	if err != nil {
		return view{}, err
	}
	d.Events = ev
	return view{Title: "Volume " + name, Template: "volume", Data: d}, nil
}

// volumeHistory reads the volume's snapshots (oldest first: the chain) and
// backups (newest first).
func (s *Server) volumeHistory(ctx context.Context, d *volumeData) error {
	var snaps v1.SnapshotList
	if err := s.c.List(ctx, &snaps); err != nil {
		return err
	}
	for _, sn := range snaps.Items {
		if sn.Spec.VolumeName == d.Volume.Name {
			d.Snapshots = append(d.Snapshots, sn)
		}
	}
	slices.SortFunc(d.Snapshots, func(a, b v1.Snapshot) int { return a.CreationTimestamp.Compare(b.CreationTimestamp.Time) })
	var backups v1.BackupList
	if err := s.c.List(ctx, &backups); err != nil {
		return err
	}
	for _, b := range backups.Items {
		if b.Spec.VolumeName == d.Volume.Name {
			d.Backups = append(d.Backups, backupRow{Backup: b, Duration: backupDuration(&b)})
		}
	}
	slices.SortFunc(d.Backups, func(a, b backupRow) int { return b.CreationTimestamp.Compare(a.CreationTimestamp.Time) })
	var targets v1.BackupTargetList
	if err := s.c.List(ctx, &targets); err != nil {
		return err
	}
	for _, t := range targets.Items {
		d.Targets = append(d.Targets, t.Name)
	}
	return nil
}

// volumePolicy resolves the effective policy as the Volume controller does
// and the schedules that reach the volume.
func (s *Server) volumePolicy(ctx context.Context, d *volumeData) error {
	var pols v1.VolumePolicyList
	if err := s.c.List(ctx, &pols); err != nil {
		return err
	}
	eff, err := policies.EffectivePolicy(&d.Volume, pols.Items)
	if err != nil {
		d.PolicyErr = err.Error()
	}
	d.Policy = eff
	for _, p := range pols.Items {
		if p.Name == eff.Policy {
			for _, rs := range p.Spec.RecurringSnapshots {
				d.Schedules = append(d.Schedules, string(rs)+" (from policy "+p.Name+")")
			}
		}
	}
	var schedules v1.RecurringSnapshotList
	if err := s.c.List(ctx, &schedules); err != nil {
		return err
	}
	for _, rs := range schedules.Items {
		if selects(rs.Spec.Selector, d.Volume.Labels) {
			d.Schedules = append(d.Schedules, rs.Name+" (its selector matches)")
		}
	}
	return nil
}

type eventRow struct {
	Time                  time.Time
	Type, Reason, Message string
}

// events lists the events about one object, newest first, read directly
// from the API server (events are not cached).
func (s *Server) events(ctx context.Context, kind, name string) ([]eventRow, error) {
	var list corev1.EventList
	sel := fields.Set{"involvedObject.kind": kind, "involvedObject.name": name}.AsSelector()
	if err := s.reader.List(ctx, &list, client.MatchingFieldsSelector{Selector: sel}); err != nil {
		return nil, err
	}
	rows := make([]eventRow, 0, len(list.Items))
	for _, e := range list.Items {
		t := e.LastTimestamp.Time
		if t.IsZero() {
			t = e.EventTime.Time
		}
		if e.Series != nil {
			t = e.Series.LastObservedTime.Time
		}
		rows = append(rows, eventRow{Time: t, Type: e.Type, Reason: e.Reason, Message: e.Message})
	}
	slices.SortFunc(rows, func(a, b eventRow) int { return b.Time.Compare(a.Time) })
	return rows[:min(len(rows), 30)], nil
}

type nodeData struct {
	Node     v1.CairnNode
	Replicas []v1.Replica
	Engines  []v1.Engine
}

func (s *Server) node(r *http.Request) (view, error) {
	ctx, name := r.Context(), r.PathValue("name")
	var d nodeData
	if err := s.get(ctx, "node", name, &d.Node); err != nil {
		return view{}, err
	}
	var reps v1.ReplicaList
	if err := s.c.List(ctx, &reps); err != nil {
		return view{}, err
	}
	for _, rep := range reps.Items {
		if rep.Spec.NodeID == name {
			d.Replicas = append(d.Replicas, rep)
		}
	}
	var engs v1.EngineList
	if err := s.c.List(ctx, &engs); err != nil {
		return view{}, err
	}
	for _, e := range engs.Items {
		if e.Spec.NodeID == name {
			d.Engines = append(d.Engines, e)
		}
	}
	slices.SortFunc(d.Replicas, func(a, b v1.Replica) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(d.Engines, func(a, b v1.Engine) int { return strings.Compare(a.Name, b.Name) })
	return view{Title: "Node " + name, Template: "node", Data: d}, nil
}

type targetData struct {
	Target    v1.BackupTarget
	Catalogue []catalogueVolume
	Events    []eventRow
}

// catalogueVolume is one volume's backups in a target, newest first.
type catalogueVolume struct {
	Volume  string
	Backups []backupRow
	Bytes   int64
}

func (s *Server) target(r *http.Request) (view, error) {
	ctx, name := r.Context(), r.PathValue("name")
	var d targetData
	if err := s.get(ctx, "backup target", name, &d.Target); err != nil {
		return view{}, err
	}
	var backups v1.BackupList
	if err := s.c.List(ctx, &backups); err != nil {
		return view{}, err
	}
	byVol := map[string]*catalogueVolume{}
	for _, b := range backups.Items {
		if string(b.Spec.BackupTargetRef) != name {
			continue
		}
		cv := byVol[b.Spec.VolumeName]
		if cv == nil {
			cv = &catalogueVolume{Volume: b.Spec.VolumeName}
			byVol[b.Spec.VolumeName] = cv
		}
		cv.Backups = append(cv.Backups, backupRow{Backup: b, Duration: backupDuration(&b)})
		cv.Bytes += b.Status.UploadedBytes
	}
	for _, cv := range byVol {
		slices.SortFunc(cv.Backups, func(a, b backupRow) int { return b.CreationTimestamp.Compare(a.CreationTimestamp.Time) })
		d.Catalogue = append(d.Catalogue, *cv)
	}
	slices.SortFunc(d.Catalogue, func(a, b catalogueVolume) int { return strings.Compare(a.Volume, b.Volume) })
	ev, err := s.events(ctx, "BackupTarget", name)
	if err != nil {
		return view{}, err
	}
	d.Events = ev
	return view{Title: "Backup target " + name, Template: "target", Data: d}, nil
}
