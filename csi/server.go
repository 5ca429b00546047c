package csi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/cairnstore/cairn/internal/netx"
)

// DriverName is the CSI driver name Cairn registers.
const DriverName = "csi.cairn.dev"

// Server serves Cairn's CSI services on a unix socket. It is a
// controller-runtime Runnable: Start serves until the context is done.
type Server struct {
	// Endpoint is unix:///path/to/socket (unix:/path is accepted too).
	Endpoint string
	// Identity is always served; Controller and Node when set.
	Identity   *Identity
	Controller *Controller
	Node       *Node
	// Log receives one line per failed call (method and code, never the
	// request: it may carry secrets) and V(1) lines for every call.
	Log logr.Logger
}

// NeedLeaderElection is false: every manager replica answers, see doc.go.
func (s *Server) NeedLeaderElection() bool { return false }

// Start listens on the endpoint (socket mode 0600) and serves until ctx is
// done, then stops gracefully.
func (s *Server) Start(ctx context.Context) error {
	ln, err := s.listen()
	if err != nil {
		return err
	}
	srv := grpc.NewServer(grpc.UnaryInterceptor(s.logCall))
	csi.RegisterIdentityServer(srv, s.Identity)
	if s.Controller != nil {
		csi.RegisterControllerServer(srv, s.Controller)
	}
	if s.Node != nil {
		csi.RegisterNodeServer(srv, s.Node)
	}
	s.Log.Info("Serving CSI", "endpoint", s.Endpoint, "controller", s.Controller != nil, "node", s.Node != nil)
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		srv.GracefulStop()
	}()
	err = srv.Serve(ln)
	<-done
	if errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}

// listen opens the unix socket, creating its directory (0700) if needed.
func (s *Server) listen() (net.Listener, error) {
	path, err := SocketPath(s.Endpoint)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("csi: create socket directory: %w", err)
	}
	return netx.Listen("unix:" + path)
}

// SocketPath returns the file path of a unix:// endpoint.
func SocketPath(endpoint string) (string, error) {
	path, ok := strings.CutPrefix(endpoint, "unix://")
	if !ok {
		path, ok = strings.CutPrefix(endpoint, "unix:")
	}
	if !ok || !filepath.IsAbs(path) {
		return "", fmt.Errorf("csi: endpoint %q is not unix:///absolute/path", endpoint)
	}
	return path, nil
}

// logCall logs every call at V(1) and failures at info level with their
// code; requests and responses are never logged (they carry secrets).
func (s *Server) logCall(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	log := s.Log.WithValues("method", info.FullMethod)
	ctx = logr.NewContext(ctx, log)
	resp, err := handler(ctx, req)
	if err != nil {
		st, _ := status.FromError(err)
		log.Info("CSI call failed", "code", st.Code().String(), "message", st.Message())
		return resp, err
	}
	log.V(1).Info("CSI call done")
	return resp, nil
}
