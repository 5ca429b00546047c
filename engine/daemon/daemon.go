// Package daemon runs one engine process: it opens the volume on its
// replicas, serves it through one frontend (NBD on a unix socket or TCP
// address, or FUSE as DIR/NAME), serves the control endpoint (status,
// snapshots, replicas, /metrics) and rebuilds replicas that come back.
// `cairn engine` is a thin flag layer over Run.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/cairnstore/cairn/engine"
	"github.com/cairnstore/cairn/engine/control"
	"github.com/cairnstore/cairn/engine/fuse"
	"github.com/cairnstore/cairn/engine/nbd"
	"github.com/cairnstore/cairn/internal/netx"
	"github.com/cairnstore/cairn/internal/secretfile"
)

// Options configure an engine process.
type Options struct {
	Volume    string
	Size      int64
	Replicas  []string
	TokenFile string
	// Frontend is "nbd", "fuse" or "none" (control endpoint only).
	Frontend string
	// Listen is the NBD address: "unix:PATH" or "host:port".
	Listen string
	// Mountpoint is the FUSE directory; the volume is DIR/<Volume>.
	Mountpoint string
	// Control is the control endpoint address ("unix:PATH" or
	// "host:port"); empty disables it.
	Control string
	// IOTimeout bounds one replica I/O before the replica is dropped.
	IOTimeout time.Duration
	// RebuildInterval is how often stale and failed replicas are retried;
	// 0 disables automatic rebuilds.
	RebuildInterval time.Duration
	Log             logr.Logger `json:"-"`
	// Ready, if set, is called once the frontend and control endpoint serve.
	Ready func(v *engine.Volume) `json:"-"`
}

// Validate checks the options a user gives on the command line.
func (o *Options) Validate() error {
	var errs []error
	if o.Volume == "" || strings.ContainsAny(o.Volume, "/\x00") {
		errs = append(errs, fmt.Errorf("--volume must be a plain name, got %q", o.Volume))
	}
	if o.Size <= 0 || o.Size%4096 != 0 {
		errs = append(errs, fmt.Errorf("--size must be a positive multiple of 4096, got %d", o.Size))
	}
	if len(o.Replicas) == 0 {
		errs = append(errs, errors.New("at least one --replica is required"))
	}
	if o.TokenFile == "" {
		errs = append(errs, errors.New("--token-file is required"))
	}
	switch o.Frontend {
	case "nbd":
		if o.Listen == "" {
			errs = append(errs, errors.New("--frontend nbd needs --listen unix:PATH or host:port"))
		}
	case "fuse":
		if o.Mountpoint == "" {
			errs = append(errs, errors.New("--frontend fuse needs --mountpoint DIR"))
		}
	case "none":
		if o.Control == "" {
			errs = append(errs, errors.New("--frontend none needs --control (the only way to reach the volume)"))
		}
	default:
		errs = append(errs, fmt.Errorf("--frontend must be nbd, fuse or none, got %q", o.Frontend))
	}
	return errors.Join(errs...)
}

// Run serves the volume until ctx is done, then stops the frontend,
// flushes the replicas and closes them.
func Run(ctx context.Context, o Options) error {
	if err := o.Validate(); err != nil {
		return err
	}
	token, err := secretfile.ReadToken(o.TokenFile)
	if err != nil {
		return err
	}
	log := o.Log.WithValues("volume", o.Volume)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := engine.NewMetrics(reg)
	metrics.ForVolume(o.Volume)

	v, err := engine.Open(ctx, engine.Config{
		Name: o.Volume, Size: o.Size, Replicas: o.Replicas, Dial: engine.ReplicaDialer(token),
		IOTimeout: o.IOTimeout, Log: o.Log, Metrics: metrics,
	})
	if err != nil {
		return err
	}
	defer func() {
		fctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := v.Flush(fctx); err != nil {
			log.Info("Final flush failed", "err", err.Error())
		}
		v.Close()
	}()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 3)
	var stopFrontend func()
	switch o.Frontend {
	case "nbd":
		ln, err := netx.Listen(o.Listen)
		if err != nil {
			return fmt.Errorf("nbd listen %s: %w", o.Listen, err)
		}
		srv := &nbd.Server{Export: o.Volume, Backend: v, Log: o.Log}
		v.SetAttachedCheck(func() bool { return srv.Connections() > 0 })
		done := make(chan struct{})
		go func() {
			defer close(done)
			errc <- srv.Serve(ctx, ln)
		}()
		stopFrontend = func() { cancel(); <-done }
		log.Info("Serving NBD", "listen", o.Listen)
	case "fuse":
		m, err := fuse.MountVolume(o.Mountpoint, o.Volume, v, fuse.Options{AllowOther: true, Log: o.Log})
		if err != nil {
			return err
		}
		v.SetAttachedCheck(func() bool { return m.OpenCount() > 0 })
		v.SetGrowHook(func(size int64) {
			if err := m.NotifySize(); err != nil {
				log.Info("Size change not signalled to the kernel", "size", size, "err", err.Error())
			}
		})
		stopFrontend = func() {
			if err := m.Unmount(); err != nil {
				log.Info("Unmount failed", "err", err.Error())
			}
		}
		log.Info("Serving FUSE", "file", m.Path())
	case "none":
		// Snapshots and backups of a detached volume: no workload I/O.
		stopFrontend = func() {}
		log.Info("Serving no frontend")
	}
	defer stopFrontend()

	if o.Control != "" {
		ln, err := netx.Listen(o.Control)
		if err != nil {
			return fmt.Errorf("control listen %s: %w", o.Control, err)
		}
		cs := &control.Server{Volume: v, Token: token, Gatherer: reg}
		go func() { errc <- cs.Serve(ctx, ln) }()
		log.Info("Serving control endpoint", "address", o.Control)
	}
	if o.RebuildInterval > 0 {
		go v.RunAutoRebuild(ctx, o.RebuildInterval)
	}
	if o.Ready != nil {
		o.Ready(v)
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		if err != nil && ctx.Err() == nil {
			return err
		}
		<-ctx.Done()
		return nil
	}
}
