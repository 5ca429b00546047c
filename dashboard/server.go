package dashboard

import (
	"context"
	"crypto/tls"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/go-logr/logr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// The dashboard reads events of the objects it shows and asks the API
// server whether a caller named by a trusted proxy may do an action.
// +kubebuilder:rbac:groups=core,resources=events,verbs=list
// +kubebuilder:rbac:groups=authorization.k8s.io,resources=subjectaccessreviews,verbs=create

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// ErrPlainHTTP: a non-loopback address without TLS.
var ErrPlainHTTP = errors.New("dashboard: refusing plain HTTP on a non-loopback address")

// Options configure the dashboard.
type Options struct {
	// Addr is host:port to listen on; empty disables the dashboard.
	Addr string
	// TLSCertFile and TLSKeyFile serve HTTPS; without them only a
	// loopback Addr is accepted.
	TLSCertFile, TLSKeyFile string
	// Actions enables the imperative actions; without it every action is
	// refused.
	Actions bool
	// ProxySecretFile holds the secret a trusted proxy sends in
	// HeaderProxySecret; only requests carrying it may name a caller in
	// HeaderUser/HeaderGroup. Empty: no proxy is trusted.
	ProxySecretFile string
	// Sites are other clusters whose DisasterRecoveryVolumes the DR page
	// and the overview's DR lag include.
	Sites []Site
}

// Server is the dashboard's HTTP handler with what it reads from.
type Server struct {
	opts   Options
	c      client.Client
	reader client.Reader
	cache  cache.Cache
	log    logr.Logger
	pages  map[string]*template.Template
	live   *broker
	proxy  []byte
	sites  []*siteReader
	now    func() time.Time
}

// Add registers the dashboard with the manager when opts.Addr is set. It
// serves on every manager replica, leader or not.
func Add(mgr ctrl.Manager, opts Options) error {
	if opts.Addr == "" {
		return nil
	}
	if err := checkAddr(opts); err != nil {
		return err
	}
	s, err := New(mgr.GetClient(), mgr.GetAPIReader(), mgr.GetCache(), opts, mgr.GetLogger().WithName("dashboard"))
	if err != nil {
		return err
	}
	return mgr.Add(s)
}

// New builds the dashboard over a cache-backed client, a direct reader
// (for events) and the cache whose informers feed live updates.
func New(c client.Client, reader client.Reader, ca cache.Cache, opts Options, log logr.Logger) (*Server, error) {
	s := &Server{opts: opts, c: c, reader: reader, cache: ca, log: log, live: newBroker(), now: time.Now}
	if opts.ProxySecretFile != "" {
		b, err := os.ReadFile(opts.ProxySecretFile)
		if err != nil {
			return nil, fmt.Errorf("dashboard: read proxy secret: %w", err)
		}
		if s.proxy = []byte(strings.TrimSpace(string(b))); len(s.proxy) < 16 {
			return nil, errors.New("dashboard: the proxy secret must be at least 16 characters")
		}
	}
	s.sites = openSites(opts.Sites)
	pages, err := parseTemplates()
	if err != nil {
		return nil, err
	}
	s.pages = pages
	return s, nil
}

// checkAddr refuses plain HTTP anywhere but loopback.
func checkAddr(o Options) error {
	if (o.TLSCertFile == "") != (o.TLSKeyFile == "") {
		return errors.New("dashboard: give both the TLS certificate and key files, or neither")
	}
	if o.TLSCertFile != "" {
		return nil
	}
	host, _, err := net.SplitHostPort(o.Addr)
	if err != nil {
		return fmt.Errorf("dashboard: address %q: %w", o.Addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("%w %q: bind a loopback address (for example 127.0.0.1:8443) and reach it through a proxy, or configure TLS (--dashboard-tls-cert-file, --dashboard-tls-key-file)", ErrPlainHTTP, o.Addr)
}

// NeedLeaderElection is false: every manager replica serves the dashboard.
func (s *Server) NeedLeaderElection() bool { return false }

// Start serves until ctx is done.
func (s *Server) Start(ctx context.Context) error {
	if err := s.watch(ctx); err != nil {
		return err
	}
	go s.tickSites(ctx)
	ln, err := net.Listen("tcp", s.opts.Addr)
	if err != nil {
		return fmt.Errorf("dashboard: listen: %w", err)
	}
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
	if s.opts.TLSCertFile != "" {
		srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	s.log.Info("Serving the dashboard", "addr", ln.Addr().String(), "tls", s.opts.TLSCertFile != "", "actions", s.opts.Actions)
	done := make(chan error, 1)
	go func() {
		if s.opts.TLSCertFile != "" {
			done <- srv.ServeTLS(ln, s.opts.TLSCertFile, s.opts.TLSKeyFile)
			return
		}
		done <- srv.Serve(ln)
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shut)
		return nil
	}
}

// Handler routes the dashboard's pages, actions, live updates and assets.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(staticFS, "static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /events", s.serveEvents)
	mux.HandleFunc("GET /{$}", s.page(s.overview))
	mux.HandleFunc("GET /volumes/{name}", s.page(s.volume))
	mux.HandleFunc("GET /nodes/{name}", s.page(s.node))
	mux.HandleFunc("GET /targets/{name}", s.page(s.target))
	mux.HandleFunc("GET /schedules", s.page(s.schedules))
	mux.HandleFunc("GET /dr", s.page(s.drPairs))
	mux.HandleFunc("GET /edit/{kind}/{name}", s.page(s.edit))
	mux.HandleFunc("POST /actions/{action}", s.serveAction)
	mux.HandleFunc("/", s.page(func(*http.Request) (view, error) { return view{}, errNotFound("page", "") }))
	return securityHeaders(mux)
}

// securityHeaders forbids framing and inline scripts from elsewhere.
func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Referrer-Policy", "same-origin")
		h.ServeHTTP(w, r)
	})
}
