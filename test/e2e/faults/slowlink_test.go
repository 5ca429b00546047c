//go:build faults

package faults

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/engine"
)

// TestSlowLink puts toxiproxy between the engine and one replica (the
// engine's node's connections to that replica are redirected to the
// proxy, which listens on the host's bridge) and then makes that link
// slow: 400ms latency towards the engine and 256 KB/s towards the
// replica, far below the I/O timeout. The engine's slow-replica policy
// (engine.SlowPolicy) drops the replica (its only drops are for slowness,
// never a timeout), I/O goes on at the pace of the others; once the link
// is fast again the same replica is taken back and caught up.
func TestSlowLink(t *testing.T) {
	const vol, engineNode = "fault-slow", "dev-node-1"
	newVolume(t, vol, "256Mi", 3, time.Hour)
	victim, node := replicaOn(t, vols.WaitHealthy(t, vol, v1.VolumeDetached, 3), engineNode)
	r := &v1.Replica{}
	require.NoError(t, k8s.Get(bg, clientKey(victim), r))
	require.NotEmpty(t, r.Status.Address)
	link := newSlowLink(t, engineNode, r.Status.Address)
	blk := vols.Attach(t, vol, engineNode, 3)

	w := startWriter(t, blk, 4, 16<<20)
	w.waitPasses(t, 1)
	link.slow(t)
	detect := waitReplica(t, "the engine did not drop the slow replica", vol, victim, node, v1.RobustnessDegraded, "ERR")
	w.waitPasses(t, 1) // I/O goes on at the others' pace

	link.fast(t)
	heal := waitReplica(t, "the replica was not taken back", vol, victim, node, v1.RobustnessHealthy, "RW")
	vols.WaitHealthy(t, vol, v1.VolumeAttached, 3)
	w.waitPasses(t, 1)
	w.finish(t)

	drops := engineDrops(t, vol, r.Status.Address)
	require.NotEmpty(t, drops, "no drop of %s in the engine's log", r.Status.Address)
	for _, reason := range drops {
		require.Contains(t, reason, engine.ErrSlowReplica.Error(), "dropped for another reason than slowness (a timeout storm?)")
	}
	bytes, ok := resynced(t, vol)
	deleteVolume(t, vol) // before the proxy goes: the engine's connections run through it
	record(t, figures{detect: detect, heal: heal, bytesResynced: bytes, resyncReported: ok})
}

// slowLink is an embedded toxiproxy proxy on the host's bridge in front
// of one replica, with node's connections to the replica redirected to it.
type slowLink struct {
	proxy *toxiproxy.Proxy
}

func newSlowLink(t *testing.T, node, replicaAddr string) *slowLink {
	t.Helper()
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	p := toxiproxy.NewProxy(srv, "slow-link", net.JoinHostPort(network.HostAddress(), "0"), replicaAddr)
	require.NoError(t, p.Start())
	require.NoError(t, network.Redirect(node, replicaAddr, p.Listen))
	t.Cleanup(func() {
		assert.NoError(t, network.Unredirect(node, replicaAddr, p.Listen))
		p.Stop()
	})
	return &slowLink{proxy: p}
}

// slow adds the toxics: latency on replies, a bandwidth limit on requests.
func (l *slowLink) slow(t *testing.T) {
	t.Helper()
	for _, toxic := range []string{
		`{"name":"latency","type":"latency","stream":"downstream","attributes":{"latency":400}}`,
		`{"name":"bandwidth","type":"bandwidth","stream":"upstream","attributes":{"rate":256}}`,
	} {
		_, err := l.proxy.Toxics.AddToxicJson(strings.NewReader(toxic))
		require.NoError(t, err, toxic)
	}
}

// fast removes the toxics.
func (l *slowLink) fast(t *testing.T) {
	t.Helper()
	for _, name := range []string{"latency", "bandwidth"} {
		require.NoError(t, l.proxy.Toxics.RemoveToxic(context.Background(), name), name)
	}
}

// engineDrops returns the reasons the volume's engines logged for
// dropping the replica at addr ("Replica dropped").
func engineDrops(t *testing.T, vol, addr string) []string {
	t.Helper()
	var reasons []string
	engineLog(t, vol, func(line map[string]any) {
		if line["msg"] == "Replica dropped" && line["replica"] == addr {
			reasons = append(reasons, fmt.Sprint(line["reason"]))
		}
	})
	return reasons
}
