// Command cairnctl is Cairn's user CLI: offline validation and apply of a
// GitOps repository's manifests, volume status, on-demand snapshots,
// backups, restores and verification, and DR status.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/spf13/cobra"

	cairnv1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/internal/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes one cairnctl command line and returns its exit code: 0 on
// success, 1 with one line on stderr for any error.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRootCmd()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(stderr, "cairnctl: "+oneLine(userError(err)))
		return 1
	}
	return 0
}

func newRootCmd() *cobra.Command {
	o := &globalOptions{}
	root := &cobra.Command{
		Use:           "cairnctl",
		Short:         "Validate and apply Cairn manifests; inspect and operate volumes, snapshots, backups and DR volumes",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	o.addFlags(root)
	root.AddCommand(newVersionCmd(), newValidateCmd(o), newApplyCmd(o), newStatusCmd(o), newSnapshotCmd(o),
		newBackupCmd(o), newRestoreCmd(o), newDRCmd(o), newNodeCmd(o))
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the cairnctl version and the API version it speaks",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintf(cmd.OutOrStdout(), "cairnctl %s (%s, %s/%s), API %s\n",
				version.String(), runtime.Version(), runtime.GOOS, runtime.GOARCH, cairnv1.GroupVersion)
		},
	}
}
