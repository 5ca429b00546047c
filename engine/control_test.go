package engine

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/cairnstore/cairn/internal/netx"
)

// TestControlRequiresBearerScheme: the token counts only after "Bearer ".
func TestControlRequiresBearerScheme(t *testing.T) {
	const size = 1 << 20
	v := openTestVolume(t, size, newTestReplicas(t, 1, size))
	h := (&ControlServer{Volume: v, Token: "tok"}).Handler()
	for _, tc := range []struct {
		auth string
		want int
	}{
		{"", http.StatusUnauthorized},
		{"tok", http.StatusUnauthorized},
		{"Basic tok", http.StatusUnauthorized},
		{"Bearer wrong", http.StatusUnauthorized},
		{"Bearer  tok", http.StatusUnauthorized},
		{"Bearertok", http.StatusUnauthorized},
		{"Bearer tok", http.StatusOK},
		{"bearer tok", http.StatusOK}, // the scheme is case-insensitive
	} {
		r := httptest.NewRequest(http.MethodGet, "/v1/status", nil)
		if tc.auth != "" {
			r.Header.Set("Authorization", tc.auth)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		require.Equal(t, tc.want, w.Code, "Authorization %q", tc.auth)
	}
}

// TestControlCapsConnections: idle connections beyond the cap are closed
// at once instead of holding descriptors, and requests still work.
func TestControlCapsConnections(t *testing.T) {
	path := filepath.Join(sockDir(t), "ctl.sock")
	ln, err := netx.Listen("unix:" + path)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	cs := &ControlServer{Token: "tok", Gatherer: prometheus.NewRegistry()}
	go func() { done <- cs.Serve(ctx, ln) }()
	defer func() { cancel(); require.NoError(t, <-done) }()
	var idle []net.Conn
	for range maxControlConns {
		c, err := net.Dial("unix", path)
		require.NoError(t, err)
		defer c.Close()
		idle = append(idle, c)
	}
	extra, err := net.Dial("unix", path)
	require.NoError(t, err)
	defer extra.Close()
	extra.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err = extra.Read(make([]byte, 1))
	var ne net.Error
	require.False(t, errors.As(err, &ne) && ne.Timeout(), "connection over the cap was kept open")
	for _, c := range idle {
		c.Close()
	}
	cl := NewControlClient("unix:"+path, "tok")
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.NoError(c, cl.do(context.Background(), http.MethodGet, "/metrics", nil, nil))
	}, 5*time.Second, 50*time.Millisecond)
}
