// Package control is a volume engine's control endpoint: an HTTP/JSON API
// on a unix socket or TCP address (Server) and its client (Client), used
// by the node agent to read status and manage snapshots,
// replicas and size.
package control

import (
	"bytes"
	"context"
	"crypto/subtle"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cairnstore/cairn/engine"
	"github.com/cairnstore/cairn/internal/netx"
	"github.com/cairnstore/cairn/replica"
)

// The control endpoint is HTTP/JSON on a unix socket or TCP address:
//
//	GET    /v1/status                      engine.Status
//	GET    /v1/snapshots                   []replica.SnapshotInfo
//	POST   /v1/snapshots                   {"name","labels"}  create (I/O barrier)
//	DELETE /v1/snapshots/{name}            remove
//	POST   /v1/snapshots/{name}/revert     revert (volume detached)
//	POST   /v1/replicas                    {"address","wait"} add or rebuild
//	DELETE /v1/replicas?address=ADDR      remove
//	POST   /v1/size                        {"size"} grow (I/O barrier); 400 to shrink
//	GET    /metrics                        Prometheus metrics
//
// /v1 requests carry "Authorization: Bearer TOKEN" with the volume token.
// Errors are {"error": message, "code": kind}. On TCP the endpoint is
// HTTPS, TLS 1.3 with mutual authentication by a key both sides derive
// from the token (netx.DeriveTLSKey, purpose "engine-control"), unless
// the process turned TLS off (netx.SetPlaintextTCP); a unix socket is
// plain HTTP.

// Server serves a volume's control endpoint.
type Server struct {
	Volume *engine.Volume
	Token  string
	// Gatherer serves /metrics when set.
	Gatherer prometheus.Gatherer
}

type errorBody struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// SnapshotRequest creates a snapshot.
type SnapshotRequest struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels,omitempty"`
}

// SizeRequest grows the volume to Size bytes (a multiple of 4096, never
// smaller than the volume).
type SizeRequest struct {
	Size int64 `json:"size"`
}

// ReplicaRequest adds (or rebuilds) a replica.
type ReplicaRequest struct {
	Address string `json:"address"`
	// Wait makes the request return when the rebuild ends.
	Wait bool `json:"wait,omitempty"`
}

var errorCodes = []struct {
	err    error
	code   string
	status int
}{
	{engine.ErrInvalid, "Invalid", http.StatusBadRequest},
	{engine.ErrShrink, "Shrink", http.StatusBadRequest},
	{engine.ErrNotFound, "NotFound", http.StatusNotFound},
	{engine.ErrSnapshotExists, "AlreadyExists", http.StatusConflict},
	{engine.ErrBusy, "Busy", http.StatusConflict},
	{engine.ErrAttached, "Attached", http.StatusConflict},
	{engine.ErrReplicaRefused, "ReplicaRefused", http.StatusUnprocessableEntity},
	{engine.ErrNoHealthyReplica, "NoHealthyReplica", http.StatusServiceUnavailable},
	{engine.ErrClosed, "Closed", http.StatusServiceUnavailable},
}

// Handler returns the HTTP handler.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	v := s.Volume
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, v.Status())
	})
	mux.HandleFunc("GET /v1/snapshots", func(w http.ResponseWriter, r *http.Request) {
		snaps, err := v.Snapshots(r.Context())
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, snaps)
	})
	mux.HandleFunc("POST /v1/snapshots", func(w http.ResponseWriter, r *http.Request) {
		var req SnapshotRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
			writeErr(w, fmt.Errorf("%w: %v", engine.ErrInvalid, err))
			return
		}
		if err := v.Snapshot(r.Context(), req.Name, req.Labels); err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusCreated, map[string]string{"name": req.Name})
	})
	mux.HandleFunc("DELETE /v1/snapshots/{name}", func(w http.ResponseWriter, r *http.Request) {
		if err := v.RemoveSnapshot(r.Context(), r.PathValue("name")); err != nil {
			writeErr(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /v1/snapshots/{name}/revert", func(w http.ResponseWriter, r *http.Request) {
		if err := v.Revert(r.Context(), r.PathValue("name")); err != nil {
			writeErr(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /v1/size", func(w http.ResponseWriter, r *http.Request) {
		var req SizeRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
			writeErr(w, fmt.Errorf("%w: body must be {\"size\": N}: %v", engine.ErrInvalid, err))
			return
		}
		if err := v.Grow(r.Context(), req.Size); err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, SizeRequest{Size: v.Size()})
	})
	mux.HandleFunc("POST /v1/replicas", func(w http.ResponseWriter, r *http.Request) {
		var req ReplicaRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil || req.Address == "" {
			writeErr(w, fmt.Errorf("%w: body must be {\"address\": ...}", engine.ErrInvalid))
			return
		}
		if req.Wait {
			res, err := v.Rebuild(r.Context(), req.Address)
			if err != nil {
				writeErr(w, err)
				return
			}
			writeJSON(w, http.StatusOK, res)
			return
		}
		if cur := v.Rebuilding(); cur != "" {
			writeErr(w, fmt.Errorf("%w: rebuilding %s", engine.ErrBusy, cur))
			return
		}
		go func() { _, _ = v.Rebuild(context.Background(), req.Address) }()
		writeJSON(w, http.StatusAccepted, map[string]string{"address": req.Address})
	})
	mux.HandleFunc("DELETE /v1/replicas", func(w http.ResponseWriter, r *http.Request) {
		if err := v.RemoveReplica(r.Context(), r.URL.Query().Get("address")); err != nil {
			writeErr(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	var metrics http.Handler = http.NotFoundHandler()
	if s.Gatherer != nil {
		metrics = promhttp.HandlerFor(s.Gatherer, promhttp.HandlerOpts{})
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/metrics" {
			metrics.ServeHTTP(w, r)
			return
		}
		if s.Token != "" {
			if !bearerOK(r.Header.Get("Authorization"), s.Token) {
				writeJSON(w, http.StatusUnauthorized, errorBody{Error: "missing or wrong bearer token", Code: "Unauthorized"})
				return
			}
		}
		mux.ServeHTTP(w, r)
	})
}

// bearerOK reports whether the Authorization header value is the Bearer
// scheme (case-insensitive) with token.
func bearerOK(header, token string) bool {
	scheme, got, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1
}

// maxControlConns caps the control endpoint's open connections; idle
// ones close after controlIdleTimeout.
const (
	maxControlConns    = 64
	controlIdleTimeout = time.Minute
)

// Serve serves the control endpoint on ln until ctx is done. Connections
// beyond maxControlConns are closed at once, and slow or idle ones time
// out, so that clients cannot exhaust the process's file descriptors.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	ln = netx.LimitListener(ln, maxControlConns)
	if _, tcp := ln.Addr().(*net.TCPAddr); tcp && !netx.PlaintextTCP() {
		key, err := controlKey(s.Token)
		if err != nil {
			return err
		}
		ln = tls.NewListener(ln, key.ServerConfig())
	}
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		IdleTimeout:       controlIdleTimeout,
	}
	stop := context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	})
	defer stop()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, err error) {
	for _, c := range errorCodes {
		if errors.Is(err, c.err) {
			writeJSON(w, c.status, errorBody{Error: err.Error(), Code: c.code})
			return
		}
	}
	writeJSON(w, http.StatusInternalServerError, errorBody{Error: err.Error(), Code: "Internal"})
}

// controlKey is the TLS key of the control endpoint of the volume with
// token.
func controlKey(token string) (*netx.TLSKey, error) {
	if token == "" {
		return nil, errors.New("engine control: TLS on TCP needs the volume token")
	}
	return netx.DeriveTLSKey([]byte(token), "engine-control")
}

// Client talks to an engine's control endpoint.
type Client struct {
	base  string
	token string
	hc    *http.Client
	err   error // set when the client cannot work (no TLS key)
}

// NewClient returns a client for "unix:PATH" or "host:port"; over TCP it
// speaks HTTPS with the key derived from token (see Server).
func NewClient(addr, token string) *Client {
	tr := &http.Transport{}
	c := &Client{base: "http://" + addr, token: token, hc: &http.Client{Transport: tr}}
	switch {
	case netx.IsUnix(addr):
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return netx.Dial(ctx, addr)
		}
		c.base = "http://engine"
	case netx.UseTLS(addr):
		key, err := controlKey(token)
		if err != nil {
			c.err = err
			break
		}
		tr.TLSClientConfig = key.ClientConfig()
		c.base = "https://" + addr
	}
	return c
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	if c.err != nil {
		return c.err
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		var eb errorBody
		_ = json.Unmarshal(data, &eb)
		for _, ec := range errorCodes {
			if ec.code == eb.Code {
				return fmt.Errorf("%w (%s)", ec.err, eb.Error)
			}
		}
		return fmt.Errorf("engine: %s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(data)))
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

// Status returns the volume status.
func (c *Client) Status(ctx context.Context) (engine.Status, error) {
	var st engine.Status
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, &st)
	return st, err
}

// Snapshots lists the volume's snapshots.
func (c *Client) Snapshots(ctx context.Context) ([]replica.SnapshotInfo, error) {
	var s []replica.SnapshotInfo
	err := c.do(ctx, http.MethodGet, "/v1/snapshots", nil, &s)
	return s, err
}

// Snapshot creates a snapshot.
func (c *Client) Snapshot(ctx context.Context, name string, labels map[string]string) error {
	return c.do(ctx, http.MethodPost, "/v1/snapshots", SnapshotRequest{Name: name, Labels: labels}, nil)
}

// RemoveSnapshot removes a snapshot.
func (c *Client) RemoveSnapshot(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/snapshots/"+url.PathEscape(name), nil, nil)
}

// Revert reverts the (detached) volume to a snapshot.
func (c *Client) Revert(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodPost, "/v1/snapshots/"+url.PathEscape(name)+"/revert", nil, nil)
}

// Grow grows the volume to size bytes (Volume.Grow). A smaller size fails
// with engine.ErrShrink, a size not a multiple of 4096 with engine.ErrInvalid.
func (c *Client) Grow(ctx context.Context, size int64) error {
	return c.do(ctx, http.MethodPost, "/v1/size", SizeRequest{Size: size}, nil)
}

// AddReplica adds or rebuilds a replica; with wait it returns the result
// of the rebuild, otherwise it returns once the rebuild started.
func (c *Client) AddReplica(ctx context.Context, addr string, wait bool) (*engine.RebuildResult, error) {
	if !wait {
		return nil, c.do(ctx, http.MethodPost, "/v1/replicas", ReplicaRequest{Address: addr}, nil)
	}
	var res engine.RebuildResult
	err := c.do(ctx, http.MethodPost, "/v1/replicas", ReplicaRequest{Address: addr, Wait: true}, &res)
	return &res, err
}

// RemoveReplica removes a replica from the volume.
func (c *Client) RemoveReplica(ctx context.Context, addr string) error {
	return c.do(ctx, http.MethodDelete, "/v1/replicas?address="+url.QueryEscape(addr), nil, nil)
}
