package controllers

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// Metrics the manager exports besides controller-runtime's own (reconcile
// counts and durations per controller).
var (
	volumeRobustness = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "cairn_volume_robustness",
		Help: "Volume robustness: 0 unknown, 1 healthy, 2 degraded, 3 faulted.",
	}, []string{"volume"})
	volumeReplicas = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "cairn_volume_replicas",
		Help: "Replicas of a volume by mode (RW, WO, ERR, Unknown).",
	}, []string{"volume", "state"})
	nodeReadyGauge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "cairn_node_ready",
		Help: "1 while the node agent's heartbeat is current, else 0.",
	}, []string{"node"})
	volumeLastBackup = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "cairn_volume_last_backup_timestamp_seconds",
		Help: "Completion time (Unix seconds) of the volume's newest complete backup.",
	}, []string{"volume"})
	backupDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "cairn_backup_duration_seconds",
		Help:    "Time from a backup's start to its completion in the target.",
		Buckets: prometheus.ExponentialBuckets(1, 2, 16),
	}, []string{"volume", "backup_target"})
	backupBytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cairn_backup_bytes_total",
		Help: "Bytes backups uploaded to their target (after deduplication and compression).",
	}, []string{"volume", "backup_target"})
	backupTargetReady = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "cairn_backuptarget_ready",
		Help: "1 while the BackupTarget is Ready (probed and readable), else 0.",
	}, []string{"backup_target"})
)

func init() {
	metrics.Registry.MustRegister(volumeRobustness, volumeReplicas, nodeReadyGauge, volumeLastBackup, backupDuration, backupBytes, backupTargetReady)
}

var robustnessValue = map[v1.Robustness]float64{
	v1.RobustnessUnknown: 0, v1.RobustnessHealthy: 1, v1.RobustnessDegraded: 2, v1.RobustnessFaulted: 3,
}

// recordVolume exports a volume's robustness and replica modes.
func recordVolume(vol *v1.Volume) {
	volumeRobustness.WithLabelValues(vol.Name).Set(robustnessValue[vol.Status.Robustness])
	count := map[string]float64{modeRW: 0, modeWO: 0, modeERR: 0, modeUnknown: 0}
	for _, r := range vol.Status.Replicas {
		count[r.Mode]++
	}
	for mode, n := range count {
		volumeReplicas.WithLabelValues(vol.Name, mode).Set(n)
	}
	if t := vol.Status.LastBackupTime; t != nil {
		volumeLastBackup.WithLabelValues(vol.Name).Set(float64(t.Unix()))
	}
}

// forgetVolume drops a deleted volume's series.
func forgetVolume(name string) {
	volumeRobustness.DeleteLabelValues(name)
	volumeReplicas.DeletePartialMatch(prometheus.Labels{"volume": name})
	volumeLastBackup.DeleteLabelValues(name)
}

// recordBackupCompleted observes a completed backup once.
func recordBackupCompleted(b *v1.Backup) {
	labels := []string{b.Spec.VolumeName, string(b.Spec.BackupTargetRef)}
	if b.Status.CreationTime != nil && b.Status.CompletionTime != nil {
		backupDuration.WithLabelValues(labels...).Observe(b.Status.CompletionTime.Sub(b.Status.CreationTime.Time).Seconds())
	}
	backupBytes.WithLabelValues(labels...).Add(float64(b.Status.UploadedBytes))
}

func recordTargetReady(name string, ready bool) { setBool(backupTargetReady, name, ready) }

// setBool sets a one-label gauge to 1 or 0.
func setBool(g *prometheus.GaugeVec, label string, on bool) {
	v := 0.0
	if on {
		v = 1
	}
	g.WithLabelValues(label).Set(v)
}

func recordNode(name string, ready bool) { setBool(nodeReadyGauge, name, ready) }
