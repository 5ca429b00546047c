package dashboard

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// volumeRow is one volume on the overview.
type volumeRow struct {
	Name, Policy string
	State        v1.VolumeState
	Robustness   v1.Robustness
	Replicas     int
	Node         string
	Size         string
	LastBackup   string
	RPO          time.Duration
	HasBackup    bool
}

// nodeRow is one node with its disks summed.
type nodeRow struct {
	Name, Zone          string
	Ready               bool
	Capacity, Available int64
	Replicas            int32
	// Scheduling is CairnNodeSpec.Scheduling: on, off or evicting.
	Scheduling string
}

type overviewData struct {
	Volumes    []volumeRow
	Robustness []countOf
	Nodes      []nodeRow
	NodesReady int
	Targets    []v1.BackupTarget
	WorstRPO   *volumeRow
	DR         []drRow
	WorstLag   time.Duration
	DiskChart  chart
	SizeChart  chart
	TimeChart  chart
	RPOChart   chart
}

type countOf struct {
	Label string
	N     int
}

func (s *Server) overview(r *http.Request) (view, error) {
	ctx := r.Context()
	var d overviewData
	vols, err := s.volumes(ctx)
	if err != nil {
		return view{}, err
	}
	d.Volumes, d.Robustness = vols, robustnessCounts(vols)
	for i := range vols {
		if vols[i].HasBackup && (d.WorstRPO == nil || vols[i].RPO > d.WorstRPO.RPO) {
			d.WorstRPO = &vols[i]
		}
	}
	if d.Nodes, err = s.nodes(ctx); err != nil {
		return view{}, err
	}
	for _, n := range d.Nodes {
		if n.Ready {
			d.NodesReady++
		}
	}
	var targets v1.BackupTargetList
	if err := s.c.List(ctx, &targets); err != nil {
		return view{}, err
	}
	d.Targets = targets.Items
	drs, err := s.drVolumes(ctx)
	if err != nil {
		return view{}, err
	}
	d.DR = drs.Pairs
	for _, dr := range drs.Pairs {
		if dr.Status.Lag != nil && dr.Status.Lag.Duration > d.WorstLag {
			d.WorstLag = dr.Status.Lag.Duration
		}
	}
	if err := s.overviewCharts(ctx, &d); err != nil {
		return view{}, err
	}
	return view{Title: "Overview", Template: "overview", Data: d}, nil
}

func (s *Server) overviewCharts(ctx context.Context, d *overviewData) error {
	var backups v1.BackupList
	if err := s.c.List(ctx, &backups); err != nil {
		return err
	}
	now := s.now()
	d.DiskChart = diskChart(d.Nodes)
	d.SizeChart, d.TimeChart = backupCharts(backups.Items)
	d.RPOChart = rpoChart(backups.Items, now)
	return nil
}

// volumes lists every volume with its RPO (time since its last backup).
func (s *Server) volumes(ctx context.Context) ([]volumeRow, error) {
	var list v1.VolumeList
	if err := s.c.List(ctx, &list); err != nil {
		return nil, err
	}
	rows := make([]volumeRow, 0, len(list.Items))
	for _, v := range list.Items {
		row := volumeRow{Name: v.Name, Policy: v.Status.EffectivePolicy, State: v.Status.State, Robustness: v.Status.Robustness,
			Replicas: len(v.Status.Replicas), Node: v.Status.AttachedNode, Size: humanBytes(v.Spec.Size.Value()), LastBackup: v.Status.LastBackup}
		if row.Robustness == "" {
			row.Robustness = v1.RobustnessUnknown
		}
		if v.Status.LastBackupTime != nil {
			row.HasBackup, row.RPO = true, s.now().Sub(v.Status.LastBackupTime.Time)
		}
		rows = append(rows, row)
	}
	slices.SortFunc(rows, func(a, b volumeRow) int { return strings.Compare(a.Name, b.Name) })
	return rows, nil
}

func robustnessCounts(vols []volumeRow) []countOf {
	out := []countOf{{Label: string(v1.RobustnessHealthy)}, {Label: string(v1.RobustnessDegraded)}, {Label: string(v1.RobustnessFaulted)}, {Label: string(v1.RobustnessUnknown)}}
	for _, v := range vols {
		for i := range out {
			if out[i].Label == string(v.Robustness) {
				out[i].N++
			}
		}
	}
	return out
}

// nodes lists every CairnNode with its disks summed.
func (s *Server) nodes(ctx context.Context) ([]nodeRow, error) {
	var list v1.CairnNodeList
	if err := s.c.List(ctx, &list); err != nil {
		return nil, err
	}
	rows := make([]nodeRow, 0, len(list.Items))
	for _, n := range list.Items {
		row := nodeRow{Name: n.Name, Zone: n.Status.Zone, Ready: meta.IsStatusConditionTrue(n.Status.Conditions, v1.ConditionReady),
			Scheduling: n.Spec.Scheduling()}
		for _, d := range n.Status.Disks {
			if d.Capacity != nil {
				row.Capacity += d.Capacity.Value()
			}
			if d.Available != nil {
				row.Available += d.Available.Value()
			}
			row.Replicas += d.ReplicaCount
		}
		rows = append(rows, row)
	}
	slices.SortFunc(rows, func(a, b nodeRow) int { return strings.Compare(a.Name, b.Name) })
	return rows, nil
}

// Charts lists the overview's charts in display order.
func (d overviewData) Charts() []chart {
	return []chart{d.DiskChart, d.SizeChart, d.TimeChart, d.RPOChart}
}
