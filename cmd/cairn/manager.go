package main

import (
	"fmt"
	"os"

	"github.com/go-logr/logr"
	"github.com/go-logr/zapr"
	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/cairnstore/cairn/controllers"
	"github.com/cairnstore/cairn/csi"
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

// newLogger returns a zap-backed logr logger writing JSON to stderr.
func newLogger(verbosity int) logr.Logger {
	level := zap.NewAtomicLevelAt(zapcore.Level(-verbosity))
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	core := zapcore.NewCore(zapcore.NewJSONEncoder(enc), zapcore.Lock(os.Stderr), level)
	return zapr.NewLogger(zap.New(core))
}
