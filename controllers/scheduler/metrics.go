package scheduler

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// missedRuns counts the runs passed over because the manager was down when
// they were due (the latest missed run still runs, once).
var missedRuns = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "cairn_recurring_missed_runs_total",
	Help: "Runs of a RecurringSnapshot missed while the manager was down (the latest of them runs once on restart).",
}, []string{"schedule"})

func init() {
	metrics.Registry.MustRegister(missedRuns)
}
