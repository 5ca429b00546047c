// Command cairnctl is Cairn's user CLI.
package main

import (
	"fmt"
	"os"
	"runtime"

	"github.com/spf13/cobra"

	cairnv1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/internal/version"
)

func main() {
	root := &cobra.Command{
		Use:           "cairnctl",
		Short:         "Inspect and operate Cairn volumes, snapshots, backups and DR volumes",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newVersionCmd())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "cairnctl:", err)
		os.Exit(1)
	}
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
