// Command cairn is Cairn's server binary. Each process role is a subcommand
// (manager, node, replica, engine, backup, dev); every subcommand lives in its
// own file and registers itself with addCommand.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// commands are the subcommand constructors registered by this package's files.
var commands []func() *cobra.Command

// addCommand registers a subcommand constructor; called from init functions.
func addCommand(c func() *cobra.Command) { commands = append(commands, c) }

func main() {
	root := &cobra.Command{
		Use:           "cairn",
		Short:         "Cairn: GitOps-native volume policy engine with a replicated block data plane",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	for _, c := range commands {
		root.AddCommand(c())
	}
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "cairn:", err)
		os.Exit(1)
	}
}
