package main

import (
	"os/signal"
	"syscall"
	"time"

	"github.com/go-logr/zapr"
	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/cairnstore/cairn/engine/daemon"
)

func init() { addCommand(newEngineCmd) }

func newEngineCmd() *cobra.Command {
	var (
		o     daemon.Options
		size  string
		tlsOn = true
	)
	cmd := &cobra.Command{
		Use:   "engine",
		Short: "Serve one volume: replicate its writes to its replicas, expose it over NBD or FUSE",
		Long: `engine runs the data path of one attached volume. Every write goes to all healthy
replicas and is acknowledged when all of them have it; reads go to the healthiest
(local first). A failing replica is dropped and rebuilt when it comes back.

  cairn engine --volume pvc-1 --size 10Gi --replica 10.0.0.1:7000 --replica 10.0.0.2:7000 \
      --token-file /run/cairn/pvc-1.token --frontend nbd --listen unix:/run/cairn/pvc-1.nbd \
      --control unix:/run/cairn/pvc-1.ctl

The control endpoint serves /v1/status, /v1/snapshots, /v1/replicas, /v1/size (grow) and /metrics.
Connections to replicas and a control endpoint on TCP use TLS 1.3 keyed by the volume token
(--tls=false: plaintext); unix sockets are plain.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			n, err := parseSize("--size", size)
			if err != nil {
				return err
			}
			o.Size = n
			if err := o.Validate(); err != nil {
				return err
			}
			applyTLS(tlsOn)
			zl, err := zap.NewProduction()
			if err != nil {
				return err
			}
			defer zl.Sync() //nolint:errcheck
			o.Log = zapr.NewLogger(zl).WithName("engine")
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return daemon.Run(ctx, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Volume, "volume", "", "volume name (NBD export name, FUSE file name)")
	f.StringVar(&size, "size", "", "volume size in bytes (suffixes Ki, Mi, Gi, Ti accepted)")
	f.StringArrayVar(&o.Replicas, "replica", nil, "replica address host:port or unix:PATH (repeatable)")
	f.StringVar(&o.TokenFile, "token-file", "", "file holding the volume's replica token")
	f.StringVar(&o.Frontend, "frontend", "nbd", "frontend: nbd, fuse or none (control endpoint only: snapshots and backups of a detached volume)")
	f.StringVar(&o.Listen, "listen", "", "NBD listen address: unix:PATH or host:port")
	f.StringVar(&o.Mountpoint, "mountpoint", "", "FUSE mount directory; the volume is DIR/VOLUME")
	f.StringVar(&o.Control, "control", "", "control endpoint address unix:PATH or host:port (status, snapshots, replicas, metrics)")
	addTLSFlag(f, &tlsOn)
	f.DurationVar(&o.IOTimeout, "io-timeout", 10*time.Second, "drop a replica whose I/O takes longer than this")
	f.DurationVar(&o.RebuildInterval, "rebuild-interval", 10*time.Second, "retry stale and failed replicas this often (0 disables)")
	return cmd
}
