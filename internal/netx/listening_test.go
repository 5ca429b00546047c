package netx

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestListening(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.True(t, Listening(context.Background(), addr, time.Second))
	require.NoError(t, l.Close())
	require.False(t, Listening(context.Background(), addr, time.Second))
}
