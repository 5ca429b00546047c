package engine

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type op int

const (
	opRead op = iota
	opWrite
	opFlush
	opTrim
	opZero
	numOps
)

var opNames = [numOps]string{"read", "write", "flush", "trim", "write_zeroes"}

func (o op) String() string { return opNames[o] }

// Metrics are the engine's Prometheus metrics. A nil *Metrics records nothing.
type Metrics struct {
	ops      *prometheus.CounterVec
	errs     *prometheus.CounterVec
	bytes    *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	replicas *prometheus.GaugeVec
	gen      *prometheus.GaugeVec
	rebuilt  *prometheus.CounterVec

	// Per-op children cached for the single volume of an engine process.
	cacheVol string
	cOps     [numOps]prometheus.Counter
	cBytes   [numOps]prometheus.Counter
	cLat     [numOps]prometheus.Observer
}

// NewMetrics creates the engine metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cairn_engine_io_operations_total", Help: "I/O operations completed, by volume and operation.",
		}, []string{"volume", "op"}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cairn_engine_io_errors_total", Help: "I/O operations that failed, by volume and operation.",
		}, []string{"volume", "op"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cairn_engine_io_bytes_total", Help: "Bytes read, written, trimmed or zeroed, by volume and operation.",
		}, []string{"volume", "op"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cairn_engine_io_latency_seconds",
			Help:    "Latency of I/O operations as seen by the frontend, by volume and operation.",
			Buckets: prometheus.ExponentialBuckets(20e-6, 2, 18), // 20µs .. ~2.6s
		}, []string{"volume", "op"}),
		replicas: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cairn_engine_replica_state", Help: "1 for the current mode of each replica (healthy, rebuilding, stale, failed).",
		}, []string{"volume", "replica", "mode"}),
		gen: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cairn_engine_generation", Help: "Current generation of the volume.",
		}, []string{"volume"}),
		rebuilt: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cairn_engine_rebuild_bytes_total", Help: "Bytes copied by rebuilds, by volume and target replica.",
		}, []string{"volume", "replica"}),
	}
	if reg != nil {
		reg.MustRegister(m.ops, m.errs, m.bytes, m.latency, m.replicas, m.gen, m.rebuilt)
	}
	return m
}

// ForVolume pre-binds the per-operation series of one volume so the I/O path
// does no label lookups.
func (m *Metrics) ForVolume(name string) {
	if m == nil {
		return
	}
	m.cacheVol = name
	for o := op(0); o < numOps; o++ {
		m.cOps[o] = m.ops.WithLabelValues(name, o.String())
		m.cBytes[o] = m.bytes.WithLabelValues(name, o.String())
		m.cLat[o] = m.latency.WithLabelValues(name, o.String())
	}
}

func (m *Metrics) observe(vol string, o op, n int, start time.Time, err error) {
	if m == nil {
		return
	}
	if err != nil {
		m.errs.WithLabelValues(vol, o.String()).Inc()
		return
	}
	if vol == m.cacheVol && m.cOps[o] != nil {
		m.cOps[o].Inc()
		m.cBytes[o].Add(float64(n))
		m.cLat[o].Observe(time.Since(start).Seconds())
		return
	}
	m.ops.WithLabelValues(vol, o.String()).Inc()
	m.bytes.WithLabelValues(vol, o.String()).Add(float64(n))
	m.latency.WithLabelValues(vol, o.String()).Observe(time.Since(start).Seconds())
}

func (m *Metrics) setReplicaMode(vol, addr string, mode ReplicaMode) {
	if m == nil {
		return
	}
	for _, md := range []ReplicaMode{ModeHealthy, ModeRebuilding, ModeResyncing, ModeStale, ModeFailed} {
		val := 0.0
		if md == mode {
			val = 1
		}
		m.replicas.WithLabelValues(vol, addr, string(md)).Set(val)
	}
}

func (m *Metrics) setGeneration(vol string, gen uint64) {
	if m == nil {
		return
	}
	m.gen.WithLabelValues(vol).Set(float64(gen))
}

func (m *Metrics) addRebuilt(vol, addr string, n int64) {
	if m == nil {
		return
	}
	m.rebuilt.WithLabelValues(vol, addr).Add(float64(n))
}

func (m *Metrics) deleteReplica(vol, addr string) {
	if m == nil {
		return
	}
	for _, md := range []ReplicaMode{ModeHealthy, ModeRebuilding, ModeResyncing, ModeStale, ModeFailed} {
		m.replicas.DeleteLabelValues(vol, addr, string(md))
	}
}
