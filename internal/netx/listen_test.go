package netx

import (
	"net"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestCloseSparesReplacedSocket: a listener whose path another listener
// has taken over does not remove the newcomer's socket when it closes.
func TestCloseSparesReplacedSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	old, err := Listen("unix:" + path)
	require.NoError(t, err)
	cur, err := Listen("unix:" + path)
	require.NoError(t, err)
	defer cur.Close()
	require.NoError(t, old.Close())
	c, err := net.Dial("unix", path)
	require.NoError(t, err, "the new listener's socket is gone")
	c.Close()
}
