package dr

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// lag exports cairn_dr_lag_seconds for every following DR volume, computed
// at scrape time so the age grows between polls.
var lag = &lagCollector{restored: map[[2]string]time.Time{}, now: time.Now}

func init() { metrics.Registry.MustRegister(lag) }

var lagDesc = prometheus.NewDesc("cairn_dr_lag_seconds",
	"Age of the newest source backup a DisasterRecoveryVolume's standby holds (now minus that backup's creation time at the source).",
	[]string{"namespace", "name"}, nil)

type lagCollector struct {
	mu       sync.Mutex
	restored map[[2]string]time.Time // namespace/name -> creation of the held backup
	now      func() time.Time
}

// set records the held backup's creation time; zero forgets the volume.
func (c *lagCollector) set(namespace, name string, t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.IsZero() {
		delete(c.restored, [2]string{namespace, name})
		return
	}
	c.restored[[2]string{namespace, name}] = t
}

func (c *lagCollector) Describe(ch chan<- *prometheus.Desc) { ch <- lagDesc }

func (c *lagCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	for k, t := range c.restored {
		ch <- prometheus.MustNewConstMetric(lagDesc, prometheus.GaugeValue, now.Sub(t).Seconds(), k[0], k[1])
	}
}
