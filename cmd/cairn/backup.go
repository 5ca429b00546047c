package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/cairnstore/cairn/engine/backupstore"
	"github.com/cairnstore/cairn/internal/secretfile"
	"github.com/cairnstore/cairn/replica"
)

func init() { addCommand(newBackupCmd) }

// backupFlags are the flags every backup subcommand shares.
type backupFlags struct {
	target           string
	endpoint         string
	region           string
	caFile           string
	credentialsFile  string
	keyFile          string
	virtualHostStyle bool
	readOnly         bool
	concurrency      int
	output           string
	progress         bool
	timeout          time.Duration
	stallTimeout     time.Duration
}

func newBackupCmd() *cobra.Command {
	f := &backupFlags{}
	cmd := &cobra.Command{
		Use:   "backup",
		Short: "Create, list, restore, verify and delete volume backups in a backup target",
		Long: `Operate on a Cairn backup target (s3://bucket/prefix or file:///path).

S3 credentials come from --credentials-file (KEY=VALUE lines as in a Secret:
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_ENDPOINTS,
AWS_REGION, AWS_CERT (PEM)) or from the environment (AWS_ACCESS_KEY_ID, ...).
The encryption key comes from --key-file or CAIRN_BACKUP_KEY (raw, hex or
base64).`,
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&f.target, "target", os.Getenv("CAIRN_BACKUP_TARGET"), "backup target URL: s3://bucket/prefix or file:///path (env CAIRN_BACKUP_TARGET)")
	pf.StringVar(&f.endpoint, "endpoint", "", "S3 endpoint of an S3-compatible server, e.g. http://127.0.0.1:7070")
	pf.StringVar(&f.region, "region", "", "S3 region (default us-east-1)")
	pf.StringVar(&f.caFile, "ca-file", "", "PEM bundle of CAs to trust for the S3 endpoint")
	pf.StringVar(&f.credentialsFile, "credentials-file", "", "file of KEY=VALUE S3 credentials (a Secret's values)")
	pf.StringVar(&f.keyFile, "key-file", "", "file holding the encryption key (raw, hex or base64; env CAIRN_BACKUP_KEY)")
	pf.BoolVar(&f.virtualHostStyle, "virtual-host-style", false, "use virtual-hosted-style S3 addressing instead of path style")
	pf.BoolVar(&f.readOnly, "read-only", false, "never write to the target (no lock objects)")
	pf.IntVar(&f.concurrency, "concurrency", 0, "blocks in flight (default max(16, 2×CPUs))")
	pf.StringVarP(&f.output, "output", "o", "text", "output format: text or json")
	pf.BoolVar(&f.progress, "progress", false, "print progress to stderr (default when stderr is a terminal)")
	pf.DurationVar(&f.timeout, "timeout", 0, "give up after this long (0: no limit)")
	pf.DurationVar(&f.stallTimeout, "stall-timeout", backupstore.DefaultStallTimeout, "fail an S3 request that receives or sends no byte for this long")
	cmd.AddCommand(newBackupCreateCmd(f), newBackupListCmd(f), newBackupRestoreCmd(f),
		newBackupVerifyCmd(f), newBackupDeleteCmd(f), newBackupGCCmd(f))
	return cmd
}

// withStore makes a RunE that opens the target and runs fn under the
// command's context (SIGINT/SIGTERM and --timeout cancel it).
func (f *backupFlags) withStore(fn func(ctx context.Context, cmd *cobra.Command, s *backupstore.Store) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, _ []string) error {
		ctx, cancel := f.context(cmd.Context())
		defer cancel()
		s, err := f.open(ctx)
		if err != nil {
			return err
		}
		return fn(ctx, cmd, s)
	}
}

// context returns a context derived from parent (the command's) and
// cancelled by SIGINT/SIGTERM and --timeout.
func (f *backupFlags) context(parent context.Context) (context.Context, context.CancelFunc) {
	if parent == nil {
		parent = context.Background()
	}
	ctx, stop := signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
	if f.timeout <= 0 {
		return ctx, stop
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	return ctx, func() { cancel(); stop() }
}

func (f *backupFlags) open(ctx context.Context) (*backupstore.Store, error) {
	if f.output != "text" && f.output != "json" {
		return nil, fmt.Errorf("--output must be text or json, not %q", f.output)
	}
	if f.target == "" {
		return nil, errors.New("--target is required (s3://bucket/prefix or file:///path)")
	}
	o := backupstore.Options{ReadOnly: f.readOnly, Concurrency: f.concurrency}
	o.StallTimeout = f.stallTimeout
	o.Endpoint, o.Region, o.VirtualHostStyle = f.endpoint, f.region, f.virtualHostStyle
	if f.credentialsFile != "" {
		vals, err := readKeyValues(f.credentialsFile)
		if err != nil {
			return nil, fmt.Errorf("--credentials-file: %w", err)
		}
		o.AccessKeyID, o.SecretAccessKey, o.SessionToken = vals["AWS_ACCESS_KEY_ID"], vals["AWS_SECRET_ACCESS_KEY"], vals["AWS_SESSION_TOKEN"]
		if o.Endpoint == "" {
			o.Endpoint = vals["AWS_ENDPOINTS"]
		}
		if o.Region == "" {
			o.Region = vals["AWS_REGION"]
		}
		if c := vals["AWS_CERT"]; c != "" {
			o.CABundle = []byte(c)
		}
	}
	if f.caFile != "" {
		b, err := os.ReadFile(f.caFile)
		if err != nil {
			return nil, err
		}
		o.CABundle = b
	}
	key, err := loadKey(f.keyFile)
	if err != nil {
		return nil, err
	}
	o.Key = key
	return backupstore.Open(ctx, f.target, o)
}

// readKeyValues reads KEY=VALUE lines (blank lines and # comments
// skipped) from a file only its owner may access. Errors name the line
// number, never its content.
func readKeyValues(path string) (map[string]string, error) {
	b, err := secretfile.Read(path)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("%s: line %d is not KEY=VALUE", path, n)
		}
		out[strings.TrimSpace(k)] = strings.Trim(strings.TrimSpace(v), `"'`)
	}
	return out, sc.Err()
}

// loadKey reads the encryption key from a file only its owner may access
// (surrounding whitespace removed) or from CAIRN_BACKUP_KEY; hex and base64
// encodings of 32 bytes are decoded, anything else is used as is.
func loadKey(path string) ([]byte, error) {
	var raw []byte
	switch {
	case path != "":
		b, err := secretfile.ReadRaw(path) // a raw binary key may begin or end in a whitespace byte
		if err != nil {
			return nil, fmt.Errorf("--key-file: %w", err)
		}
		raw = b
	case os.Getenv("CAIRN_BACKUP_KEY") != "":
		raw = []byte(os.Getenv("CAIRN_BACKUP_KEY"))
	default:
		return nil, nil
	}
	return backupstore.DecodeKey(raw), nil
}

// progressFunc prints a one-line progress bar to stderr when asked or when
// stderr is a terminal.
func (f *backupFlags) progressFunc() func(backupstore.Progress) {
	if !f.progress && !term.IsTerminal(int(os.Stderr.Fd())) {
		return nil
	}
	start := time.Now()
	return func(p backupstore.Progress) {
		pct := 100.0
		if p.BytesTotal > 0 {
			pct = 100 * float64(p.BytesDone) / float64(p.BytesTotal)
		}
		rate := float64(p.BytesDone) / max(time.Since(start).Seconds(), 1e-3)
		fmt.Fprintf(os.Stderr, "\r%s %5.1f%%  %s / %s  %s/s  transferred %s ", p.Op, pct,
			humanBytes(p.BytesDone), humanBytes(p.BytesTotal), humanBytes(int64(rate)), humanBytes(p.TransferredBytes))
		if p.BytesDone == p.BytesTotal {
			fmt.Fprintln(os.Stderr)
		}
	}
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func (f *backupFlags) print(w io.Writer, v any, text func(w io.Writer)) error {
	if f.output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	text(tw)
	return tw.Flush()
}

func newBackupCreateCmd(f *backupFlags) *cobra.Command {
	var (
		volume, file, replicaDir, snapshot, since, blockSize, compression string
		full                                                              bool
		labels                                                            []string
	)
	cmd := &cobra.Command{
		Use:   "create --volume NAME (--replica-dir DIR --snapshot SNAP [--since SNAP] | --file IMAGE)",
		Short: "Back up a replica snapshot or a raw image (incremental against the volume's last backup)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (file == "") == (replicaDir == "") {
				return errors.New("give exactly one of --file and --replica-dir")
			}
			if replicaDir != "" && snapshot == "" {
				return errors.New("--replica-dir needs --snapshot")
			}
			bs := 0
			if blockSize != "" {
				n, err := parseSize("--block-size", blockSize)
				if err != nil {
					return err
				}
				if n > 1<<30 {
					return fmt.Errorf("--block-size: %q is too large", blockSize)
				}
				bs = int(n)
			}
			comp, err := backupstore.ParseCompression(compression)
			if err != nil {
				return err
			}
			lbl := map[string]string{}
			for _, l := range labels {
				k, v, ok := strings.Cut(l, "=")
				if !ok {
					return fmt.Errorf("--label %q: want key=value", l)
				}
				lbl[k] = v
			}
			ctx, cancel := f.context(cmd.Context())
			defer cancel()
			s, err := f.open(ctx)
			if err != nil {
				return err
			}
			var info backupstore.BackupInfo
			if replicaDir != "" {
				r, err := replica.Open(replicaDir)
				if err != nil {
					return err
				}
				defer r.Close()
				info, err = s.BackupReplica(ctx, r, backupstore.ReplicaBackupOptions{Volume: volume, Snapshot: snapshot,
					Since: since, Full: full, BlockSize: bs, Compression: &comp, Labels: lbl, Progress: f.progressFunc()})
				if err != nil {
					return err
				}
			} else {
				src, err := backupstore.OpenFileSource(file)
				if err != nil {
					return err
				}
				defer src.Close()
				info, err = s.CreateBackup(ctx, backupstore.BackupOptions{Volume: volume, Snapshot: snapshot, Source: src,
					NoBase: full, BlockSize: bs, Compression: &comp, Labels: lbl, Progress: f.progressFunc()})
				if err != nil {
					return err
				}
			}
			return f.print(cmd.OutOrStdout(), info, func(w io.Writer) {
				fmt.Fprintf(w, "backup\t%s\nvolume\t%s\nsize\t%s\nread\t%s\nuploaded\t%d blocks, %s\nzero blocks\t%d of %d\n",
					info.ID, info.Volume, humanBytes(info.Size), humanBytes(info.ReadBytes), info.NewBlocks,
					humanBytes(info.NewBytes), info.ZeroBlocks, info.Blocks)
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&volume, "volume", "", "volume name in the target")
	fl.StringVar(&file, "file", "", "raw image file or block device to back up")
	fl.StringVar(&replicaDir, "replica-dir", "", "replica data directory")
	fl.StringVar(&snapshot, "snapshot", "", "replica snapshot to back up (recorded in the backup)")
	fl.StringVar(&since, "since", "", "last backed-up snapshot to diff against (default: the latest backup's)")
	fl.BoolVar(&full, "full", false, "ignore earlier backups (still deduplicated)")
	fl.StringVar(&blockSize, "block-size", "", "block size (default 2Mi)")
	fl.StringVar(&compression, "compression", "zstd", "zstd, lz4 or none")
	fl.StringArrayVar(&labels, "label", nil, "key=value label recorded with the backup (repeatable)")
	_ = cmd.MarkFlagRequired("volume")
	return cmd
}

func newBackupListCmd(f *backupFlags) *cobra.Command {
	var volume string
	cmd := &cobra.Command{
		Use:   "list [--volume NAME]",
		Short: "List a volume's backups (one object read), or the volumes in the target",
		Args:  cobra.NoArgs,
		RunE: f.withStore(func(ctx context.Context, cmd *cobra.Command, s *backupstore.Store) error {
			if volume == "" {
				vols, err := s.Volumes(ctx)
				if err != nil {
					return err
				}
				if vols == nil {
					vols = []string{} // JSON [] rather than null
				}
				return f.print(cmd.OutOrStdout(), vols, func(w io.Writer) {
					fmt.Fprintln(w, "VOLUME")
					for _, v := range vols {
						fmt.Fprintln(w, v)
					}
				})
			}
			list, err := s.List(ctx, volume)
			if err != nil {
				return err
			}
			if list == nil {
				list = []backupstore.BackupInfo{}
			}
			return f.print(cmd.OutOrStdout(), list, func(w io.Writer) {
				fmt.Fprintln(w, "BACKUP\tSNAPSHOT\tCREATED\tSIZE\tBLOCKS\tUPLOADED")
				for _, b := range list {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\n", b.ID, b.Snapshot, b.Created.Format(time.RFC3339),
						humanBytes(b.Size), b.Blocks, humanBytes(b.NewBytes))
				}
			})
		}),
	}
	cmd.Flags().StringVar(&volume, "volume", "", "volume name")
	return cmd
}

func newBackupRestoreCmd(f *backupFlags) *cobra.Command {
	var volume, backup, file, replicaDir, since string
	cmd := &cobra.Command{
		Use:   "restore --volume NAME [--backup ID] (--replica-dir NEWDIR | --file IMAGE) [--since ID]",
		Short: "Restore a backup into a new replica or an image; with --since apply only what changed",
		Long: `Restore a backup into a new replica directory or a raw image.

An image file is written under a temporary name in its directory, synced and
renamed over IMAGE only when the restore succeeded, so a failed or
interrupted restore leaves IMAGE as it was (or absent). With --since, IMAGE
must exist and hold that backup: it is copied to the temporary file, which
then receives only the blocks that differ. A block device cannot be renamed:
it is written in place, and a failed restore leaves it partly overwritten
(the error says so).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (file == "") == (replicaDir == "") {
				return errors.New("give exactly one of --file and --replica-dir")
			}
			ctx, cancel := f.context(cmd.Context())
			defer cancel()
			s, err := f.open(ctx)
			if err != nil {
				return err
			}
			var res backupstore.RestoreResult
			if replicaDir != "" {
				res, err = s.RestoreReplica(ctx, replicaDir, volume, backup, since, f.progressFunc())
			} else {
				res, err = restoreImage(ctx, s, imageRestore{volume: volume, backup: backup, since: since,
					path: file, progress: f.progressFunc()})
			}
			if err != nil {
				return err
			}
			return f.print(cmd.OutOrStdout(), res, func(w io.Writer) {
				fmt.Fprintf(w, "restored\t%s/%s\nincremental\t%v\nblocks written\t%d\nblocks zeroed\t%d\nfetched\t%d objects, %s\n",
					res.Backup.Volume, res.Backup.ID, res.Incremental, res.BlocksWritten, res.BlocksZeroed,
					res.ObjectsFetched, humanBytes(res.BytesFetched))
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&volume, "volume", "", "volume name in the target")
	fl.StringVar(&backup, "backup", "", "backup id (default: latest)")
	fl.StringVar(&file, "file", "", "raw image file or block device to restore into")
	fl.StringVar(&replicaDir, "replica-dir", "", "replica directory (created; with --since, updated in place)")
	fl.StringVar(&since, "since", "", "backup the destination already holds: write only differing blocks")
	_ = cmd.MarkFlagRequired("volume")
	return cmd
}

func newBackupVerifyCmd(f *backupFlags) *cobra.Command {
	var o backupstore.VerifyOptions
	cmd := &cobra.Command{
		Use:   "verify [--volume NAME [--backup ID]] [--sample FRACTION] [--existence-only]",
		Short: "Check that every block of a backup (or of all backups) exists and hashes correctly",
		Args:  cobra.NoArgs,
		RunE: f.withStore(func(ctx context.Context, cmd *cobra.Command, s *backupstore.Store) error {
			o.Progress = f.progressFunc()
			rep, verr := s.Verify(ctx, o)
			if verr != nil && len(rep.Problems) == 0 {
				return verr
			}
			if err := f.print(cmd.OutOrStdout(), rep, func(w io.Writer) {
				fmt.Fprintf(w, "backups\t%d\nblocks\t%d (checked %d)\nread\t%s\nproblems\t%d\n", rep.Backups, rep.Blocks,
					rep.BlocksChecked, humanBytes(rep.BytesRead), len(rep.Problems))
				for _, p := range rep.Problems {
					fmt.Fprintf(w, "  %s\t%s\t%s\n", p.Block, strings.Join(p.Backups, ","), p.Message)
				}
			}); err != nil {
				return err
			}
			return verr
		}),
	}
	fl := cmd.Flags()
	fl.StringVar(&o.Volume, "volume", "", "volume (default: all)")
	fl.StringVar(&o.Backup, "backup", "", "backup id (default: all of the volume)")
	fl.Float64Var(&o.Sample, "sample", 0, "check a random fraction (0..1) of the blocks")
	fl.BoolVar(&o.ExistenceOnly, "existence-only", false, "only check blocks exist, do not read them")
	return cmd
}

func newBackupDeleteCmd(f *backupFlags) *cobra.Command {
	var volume, backup string
	cmd := &cobra.Command{
		Use:   "delete --volume NAME --backup ID",
		Short: "Delete a backup and the blocks no other backup references",
		Args:  cobra.NoArgs,
		RunE: f.withStore(func(ctx context.Context, cmd *cobra.Command, s *backupstore.Store) error {
			res, err := s.Delete(ctx, volume, backup)
			if err != nil {
				return err
			}
			return f.print(cmd.OutOrStdout(), res, func(w io.Writer) {
				fmt.Fprintf(w, "deleted\t%s/%s\nblocks removed\t%d\npacks deleted\t%d\npacks repacked\t%d\n", volume, backup,
					res.BlocksDeleted, res.PacksDeleted, res.PacksRepacked)
				if res.Deferred {
					fmt.Fprintln(w, "note\ttarget busy: block removal deferred to the next gc")
				}
			})
		}),
	}
	cmd.Flags().StringVar(&volume, "volume", "", "volume name")
	cmd.Flags().StringVar(&backup, "backup", "", "backup id")
	_ = cmd.MarkFlagRequired("volume")
	_ = cmd.MarkFlagRequired("backup")
	return cmd
}

func newBackupGCCmd(f *backupFlags) *cobra.Command {
	var o backupstore.GCOptions
	cmd := &cobra.Command{
		Use:   "gc [--dry-run]",
		Short: "Remove packs and manifests no listed backup references; repack mostly unreferenced packs",
		Args:  cobra.NoArgs,
		RunE: f.withStore(func(ctx context.Context, cmd *cobra.Command, s *backupstore.Store) error {
			res, err := s.GC(ctx, o)
			if err != nil {
				return err
			}
			return f.print(cmd.OutOrStdout(), res, func(w io.Writer) {
				fmt.Fprintf(w, "referenced blocks\t%d\nunreferenced blocks\t%d (%s)\npacks deleted\t%d\npacks repacked\t%d (%s copied, %d skipped)\n"+
					"unindexed packs\t%d removed, %d adopted, %d unreadable\norphan manifests\t%d\nuncommitted manifests\t%d\nexpired locks\t%d\ndry run\t%v\n",
					res.ReferencedBlocks, res.UnreferencedBlocks, humanBytes(res.UnreferencedBytes), res.PacksDeleted, res.PacksRepacked,
					humanBytes(res.RepackedBytes), res.RepackSkipped, res.UnindexedPacks, res.AdoptedPacks, res.UnreadablePacks,
					res.OrphanManifests, res.UncommittedManifests, res.ExpiredLocks, o.DryRun)
			})
		}),
	}
	cmd.Flags().BoolVar(&o.DryRun, "dry-run", false, "report without removing")
	cmd.Flags().BoolVar(&o.DiscardUncommitted, "discard-uncommitted", false,
		"also remove manifests ahead of their catalogue (backups interrupted while committing); only when no catalogue was rolled back")
	return cmd
}
