package control

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/cairnstore/cairn/engine"
	"github.com/cairnstore/cairn/internal/netx"
	"github.com/cairnstore/cairn/internal/testutil"
)

// TestControlRequiresBearerScheme: the token counts only after "Bearer ".
func TestControlRequiresBearerScheme(t *testing.T) {
	const size = 1 << 20
	v := openTestVolume(t, size)
	h := (&Server{Volume: v, Token: "tok"}).Handler()
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
	cs := &Server{Token: "tok", Gatherer: prometheus.NewRegistry()}
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
	cl := NewClient("unix:"+path, "tok")
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.NoError(c, cl.do(context.Background(), http.MethodGet, "/metrics", nil, nil))
	}, 5*time.Second, 50*time.Millisecond)
}

// TestGrowControlAPI: POST /v1/size needs the bearer token, refuses a
// shrink and a size not a multiple of 4096 with 400, and grows the volume;
// Client.Grow maps the errors back.
func TestGrowControlAPI(t *testing.T) {
	const size = 1 << 20
	v := openTestVolume(t, size)
	srv := httptest.NewServer((&Server{Volume: v, Token: "tok"}).Handler())
	defer srv.Close()
	post := func(auth, body string) int {
		req, err := http.NewRequest(http.MethodPost, srv.URL+"/v1/size", strings.NewReader(body))
		require.NoError(t, err)
		if auth != "" {
			req.Header.Set("Authorization", "Bearer "+auth)
		}
		resp, err := srv.Client().Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	require.Equal(t, http.StatusUnauthorized, post("", `{"size": 2097152}`))
	require.Equal(t, http.StatusBadRequest, post("tok", `{"size": 524288}`))
	require.Equal(t, http.StatusBadRequest, post("tok", `{"size": 2097153}`))
	require.Equal(t, http.StatusBadRequest, post("tok", `{"size": "big"}`))
	require.Equal(t, int64(size), v.Size())

	// The client, over TCP: HTTPS keyed by the token.
	ln, err := netx.Listen("127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (&Server{Volume: v, Token: "tok"}).Serve(ctx, ln) }()
	defer func() { cancel(); require.NoError(t, <-done) }()
	c := NewClient(ln.Addr().String(), "tok")
	require.ErrorIs(t, c.Grow(context.Background(), size/2), engine.ErrShrink)
	require.ErrorIs(t, c.Grow(context.Background(), size+1), engine.ErrInvalid)
	require.NoError(t, c.Grow(context.Background(), 2*size))
	st, err := c.Status(context.Background())
	require.NoError(t, err)
	require.Equal(t, int64(2*size), st.Size)
}

// TestRefusedAddIs422: a refused replica add (unreachable address) is
// 422 and leaves the volume as it was.
func TestRefusedAddIs422(t *testing.T) {
	v := openTestVolume(t, 4<<20)
	before := v.Status()
	addr := "unix:" + t.TempDir() + "/nobody.sock"
	body := strings.NewReader(`{"address":"` + addr + `","wait":true}`)
	r := httptest.NewRequest(http.MethodPost, "/v1/replicas", body)
	w := httptest.NewRecorder()
	(&Server{Volume: v}).Handler().ServeHTTP(w, r)
	require.Equal(t, http.StatusUnprocessableEntity, w.Code, w.Body.String())
	st := v.Status()
	st.LastRebuild = nil
	require.Equal(t, before, st, "a refused POST /v1/replicas changed the volume")
}

// TestControlTLS: on TCP the endpoint is HTTPS keyed by the volume token.
// The right token works, another token and a plaintext client are refused
// with errors that say why, and nothing the endpoint says crosses the
// wire in plaintext.
func TestControlTLS(t *testing.T) {
	v := openTestVolume(t, 1<<20)
	ln, err := netx.Listen("127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (&Server{Volume: v, Token: testToken}).Serve(ctx, ln) }()
	defer func() { cancel(); require.NoError(t, <-done) }()
	p := testutil.StartCaptureProxy(t, ln.Addr().String())

	snap := "cairn-plaintext-canary-snapshot"
	c := NewClient(p.Addr, testToken)
	require.NoError(t, c.Snapshot(ctx, snap, nil))
	snaps, err := c.Snapshots(ctx)
	require.NoError(t, err)
	require.Equal(t, snap, snaps[len(snaps)-1].Name)
	wire := p.Captured()
	require.NotEmpty(t, wire)
	require.False(t, bytes.Contains(wire, []byte(snap)), "plaintext on the wire")
	require.False(t, bytes.Contains(wire, []byte(testToken)), "the token on the wire")

	_, err = NewClient(ln.Addr().String(), "another-token").Status(ctx)
	require.ErrorIs(t, err, netx.ErrPeerKey)

	resp, err := http.Get("http://" + ln.Addr().String() + "/v1/status")
	require.NoError(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	require.Contains(t, string(body), "HTTP request to an HTTPS server")
}
