package scheduler

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// missedRuns counts the runs passed over because the manager was down when
// they were due (the latest missed run still runs, once).
var missedRuns = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "cairn_recurring_missed_runs_total",
	Help: "Runs of a RecurringSnapshot missed while the manager was down (the latest of them runs once on restart).",
}, []string{"schedule"})

// rpo exports cairn_volume_rpo_seconds for every volume a backup schedule
// applies to, computed at scrape time so the age grows between reconciles.
var rpo = &rpoCollector{refs: map[string]map[string]time.Time{}, now: time.Now}

func init() {
	metrics.Registry.MustRegister(missedRuns, rpo)
}

var rpoDesc = prometheus.NewDesc("cairn_volume_rpo_seconds",
	"Age of the volume's newest complete backup, for every volume with a backup schedule, attached or not; a volume never backed up reports the time since it came under the schedule.",
	[]string{"volume"}, nil)

// rpoCollector keeps, per backup schedule and volume, the time the
// volume's recovery point dates from.
type rpoCollector struct {
	mu   sync.Mutex
	refs map[string]map[string]time.Time // schedule -> volume -> reference
	now  func() time.Time
}

// set replaces a schedule's volumes and their reference times.
func (c *rpoCollector) set(schedule string, refs map[string]time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(refs) == 0 {
		delete(c.refs, schedule)
		return
	}
	c.refs[schedule] = refs
}

func (c *rpoCollector) Describe(ch chan<- *prometheus.Desc) { ch <- rpoDesc }

// Collect reports each volume once, from its freshest reference (a volume
// under two backup schedules is as fresh as its newest backup).
func (c *rpoCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	newest := map[string]time.Time{}
	for _, vols := range c.refs {
		for vol, t := range vols {
			if t.After(newest[vol]) {
				newest[vol] = t
			}
		}
	}
	now := c.now()
	for vol, t := range newest {
		ch <- prometheus.MustNewConstMetric(rpoDesc, prometheus.GaugeValue, now.Sub(t).Seconds(), vol)
	}
}

// recoveryPoint is what a volume's RPO counts from: its newest complete
// backup, else when it came under the schedule (the later of the two
// objects' creation).
func recoveryPoint(vol *v1.Volume, rs *v1.RecurringSnapshot) time.Time {
	if t := vol.Status.LastBackupTime; t != nil {
		return t.Time
	}
	if vol.CreationTimestamp.After(rs.CreationTimestamp.Time) {
		return vol.CreationTimestamp.Time
	}
	return rs.CreationTimestamp.Time
}
