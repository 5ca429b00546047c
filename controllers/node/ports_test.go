package node

import (
	"net"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestPortsHoldUntilReleased: a picked port is bound by the agent, so no
// other process can take it, until released for the replica; picks skip
// recorded ports and ports others hold.
func TestPortsHoldUntilReleased(t *testing.T) {
	r, err := parsePortRange("20000-20999")
	require.NoError(t, err)
	p := &ports{host: "127.0.0.1", r: r}
	t.Cleanup(p.releaseAll)
	port, err := p.pick("vol-r-1", nil)
	require.NoError(t, err)
	require.GreaterOrEqual(t, port, 20000)
	require.Less(t, port, 21000)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	_, err = net.Listen("tcp", addr)
	require.Error(t, err, "a held port could be bound by someone else")

	again, err := p.pick("vol-r-1", map[int]bool{port: true})
	require.NoError(t, err)
	require.NotEqual(t, port, again, "a recorded port was picked twice")

	p.release(port)
	l, err := net.Listen("tcp", addr)
	require.NoError(t, err, "a released port cannot be bound by the replica")
	l.Close()

	for _, bad := range []string{"", "80-90", "30000-20000", "10000-70000", "x-y"} {
		_, err := parsePortRange(bad)
		require.Error(t, err, bad)
	}
}
