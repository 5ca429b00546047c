package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/go-logr/logr"
	"github.com/go-logr/zapr"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/cairnstore/cairn/controllers"
	"github.com/cairnstore/cairn/csi"
	"github.com/cairnstore/cairn/dashboard"
	cairnwebhook "github.com/cairnstore/cairn/internal/webhook"
)

func init() { addCommand(newManagerCmd) }

// managerOptions are the manager's command-line settings.
type managerOptions struct {
	metricsAddr   string
	probeAddr     string
	leaderElect   bool
	webhookPort   int
	webhookCert   string
	leaderElectNS string
	verbosity     int
	noScheduler   bool
	// csiEndpoint, when set, serves the CSI identity and controller services.
	csiEndpoint string
	// dashboard configures the web dashboard (off without an address).
	dashboard dashboard.Options
}

func newManagerCmd() *cobra.Command {
	o := managerOptions{}
	cmd := &cobra.Command{
		Use:   "manager",
		Short: "Run the controllers, the scheduler, the CSI controller service and the validating webhook",
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctrl.SetLogger(newLogger(o.verbosity))
			mgr, err := newManager(ctrl.GetConfigOrDie(), o, webhook.Options{Port: o.webhookPort, CertDir: o.webhookCert})
			if err != nil {
				return err
			}
			return mgr.Start(ctrl.SetupSignalHandler())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.metricsAddr, "metrics-bind-address", ":8080", "address the Prometheus metrics endpoint binds to; 0 disables it")
	f.StringVar(&o.probeAddr, "health-probe-bind-address", ":8081", "address the /healthz and /readyz probes bind to")
	f.BoolVar(&o.leaderElect, "leader-elect", true, "elect a leader so only one manager replica reconciles")
	f.StringVar(&o.leaderElectNS, "leader-election-namespace", "", "namespace of the leader election Lease (default: the pod's namespace)")
	f.IntVar(&o.webhookPort, "webhook-port", 9443, "port the validating webhook serves on")
	f.StringVar(&o.webhookCert, "webhook-cert-dir", "/tmp/k8s-webhook-server/serving-certs", "directory holding tls.crt and tls.key for the webhook")
	f.IntVarP(&o.verbosity, "v", "v", 0, "log verbosity (0 info, 1+ debug)")
	f.StringVar(&o.csiEndpoint, "csi-endpoint", "", "unix:///path of the CSI controller socket (empty: no CSI service)")
	addDashboardFlags(f, &o.dashboard)
	f.BoolVar(&o.noScheduler, "no-scheduler", false, "run without the RecurringSnapshot scheduler (cairn dev --no-scheduler --manager-process)")
	_ = f.MarkHidden("no-scheduler")
	return cmd
}

// newManager builds a controller-runtime manager with Cairn's scheme,
// webhooks, reconcilers and probes.
func newManager(cfg *rest.Config, o managerOptions, wh webhook.Options) (ctrl.Manager, error) {
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                  controllers.NewScheme(),
		Cache:                   controllers.CacheOptions(),
		Metrics:                 metricsserver.Options{BindAddress: o.metricsAddr},
		HealthProbeBindAddress:  o.probeAddr,
		LeaderElection:          o.leaderElect,
		LeaderElectionID:        "manager.cairn.dev",
		LeaderElectionNamespace: o.leaderElectNS,
		WebhookServer:           webhook.NewServer(wh),
	})
	if err != nil {
		return nil, fmt.Errorf("create manager: %w", err)
	}
	if err := cairnwebhook.Setup(mgr); err != nil {
		return nil, err
	}
	if err := controllers.Setup(mgr, controllers.Options{NoScheduler: o.noScheduler}); err != nil {
		return nil, err
	}
	if o.csiEndpoint != "" {
		if err := csi.AddController(mgr, o.csiEndpoint); err != nil {
			return nil, err
		}
	}
	if err := dashboard.Add(mgr, o.dashboard); err != nil {
		return nil, err
	}
	if o.probeAddr != "0" {
		if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
			return nil, err
		}
		if err := mgr.AddReadyzCheck("webhook", mgr.GetWebhookServer().StartedChecker()); err != nil {
			return nil, err
		}
	}
	return mgr, nil
}

// addDashboardFlags adds the dashboard's flags (docs/dashboard.md).
func addDashboardFlags(f *pflag.FlagSet, o *dashboard.Options) {
	f.StringVar(&o.Addr, "dashboard-addr", "", "host:port the web dashboard serves on (empty: no dashboard); plain HTTP only on loopback")
	f.StringVar(&o.TLSCertFile, "dashboard-tls-cert-file", "", "certificate for serving the dashboard over HTTPS")
	f.StringVar(&o.TLSKeyFile, "dashboard-tls-key-file", "", "key for serving the dashboard over HTTPS")
	f.BoolVar(&o.Actions, "dashboard-actions", false, "allow the dashboard's actions (snapshot now, backup now, restore, verify)")
	f.StringVar(&o.ProxySecretFile, "dashboard-proxy-secret-file", "", "file holding the secret a trusted proxy sends in "+dashboard.HeaderProxySecret+"; callers it names in "+dashboard.HeaderUser+"/"+dashboard.HeaderGroup+" are checked with a SubjectAccessReview")
	f.Var(siteFlag{&o.Sites}, "dashboard-dr-site", "NAME=KUBECONFIG of another cluster whose DisasterRecoveryVolumes the dashboard shows (repeatable)")
}

// siteFlag collects repeated NAME=KUBECONFIG values.
type siteFlag struct{ sites *[]dashboard.Site }

func (f siteFlag) String() string {
	if f.sites == nil {
		return ""
	}
	var out []string
	for _, s := range *f.sites {
		out = append(out, s.Name+"="+s.Kubeconfig)
	}
	return strings.Join(out, ",")
}

func (f siteFlag) Set(v string) error {
	name, path, ok := strings.Cut(v, "=")
	if !ok || name == "" || path == "" {
		return fmt.Errorf("want NAME=KUBECONFIG, got %q", v)
	}
	*f.sites = append(*f.sites, dashboard.Site{Name: name, Kubeconfig: path})
	return nil
}

func (f siteFlag) Type() string { return "name=kubeconfig" }

// newLogger returns a zap-backed logr logger writing JSON to stderr.
func newLogger(verbosity int) logr.Logger { return newLoggerTo(os.Stderr, verbosity) }

// newLoggerTo logs JSON lines to w.
func newLoggerTo(w *os.File, verbosity int) logr.Logger {
	level := zap.NewAtomicLevelAt(zapcore.Level(-verbosity))
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	core := zapcore.NewCore(zapcore.NewJSONEncoder(enc), zapcore.Lock(w), level)
	return zapr.NewLogger(zap.New(core))
}
