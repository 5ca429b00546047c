package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/cairnstore/cairn/internal/secretfile"
	"github.com/cairnstore/cairn/replica"
)

func init() { addCommand(newReplicaCmd) }

// newReplicaCmd runs one replica: it opens (or creates) the replica in
// --dir and serves it on --listen until SIGINT/SIGTERM.
func newReplicaCmd() *cobra.Command {
	var dir, size, listen, tokenFile, volume, name string
	tlsOn := true
	cmd := &cobra.Command{
		Use:   "replica",
		Short: "Serve one replica of a volume over Cairn's authenticated replica protocol",
		Long: `Serve one replica of a volume.

The replica lives in --dir. An empty directory gets a new replica of --size
bytes; an existing one is opened and must have that size. Clients must
present the token stored in --token-file. --listen is host:port or
unix:/path/to/socket; over TCP the connections use TLS 1.3 with a key
derived from the token (--tls=false: plaintext). --volume and --replica only
label the process (logs, ps) with the volume and replica it serves.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" || size == "" || listen == "" || tokenFile == "" {
				return errors.New("--dir, --size, --listen and --token-file are required")
			}
			n, err := parseSize("--size", size)
			if err != nil {
				return err
			}
			token, err := secretfile.ReadToken(tokenFile)
			if err != nil {
				return err
			}
			applyTLS(tlsOn)
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			log := slog.New(slog.NewJSONHandler(os.Stderr, nil)).With("dir", dir)
			if volume != "" {
				log = log.With("volume", volume)
			}
			if name != "" {
				log = log.With("replica", name)
			}
			return runReplica(ctx, log, dir, n, listen, token)
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", "replica data directory")
	f.StringVar(&size, "size", "", "volume size in bytes (suffixes Ki, Mi, Gi, Ti allowed)")
	f.StringVar(&listen, "listen", "", "listen address: host:port or unix:/path")
	f.StringVar(&tokenFile, "token-file", "", "file holding the per-volume access token")
	f.StringVar(&volume, "volume", "", "name of the volume the replica belongs to (a label for logs and ps)")
	f.StringVar(&name, "replica", "", "name of the replica (a label for logs and ps)")
	addTLSFlag(f, &tlsOn)
	return cmd
}

func runReplica(ctx context.Context, log *slog.Logger, dir string, size int64, listen, token string) error {
	r, err := replica.OpenOrCreate(dir, size)
	if err != nil {
		return err
	}
	defer r.Close()
	in := r.Info()
	log.Info("Replica opened", "size", in.Size, "generation", in.Generation, "snapshots", len(in.Snapshots), "rebuilding", in.Rebuilding)
	ln, err := replica.Listen(listen)
	if err != nil {
		return err
	}
	srv, err := replica.NewServer(r, token, log)
	if err != nil {
		return err
	}
	log.Info("Replica serving", "listen", ln.Addr().String())
	if err := srv.Serve(ctx, ln); err != nil {
		return err
	}
	log.Info("Replica stopped")
	return nil
}
