package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"
)

// table is rows for the table output; the same data goes to JSON and YAML
// as it is given to print.
type table struct {
	header []string
	rows   [][]string
}

func (t *table) add(cells ...string) { t.rows = append(t.rows, cells) }

// print writes data as JSON or YAML, or t as a table.
func (o *globalOptions) print(w io.Writer, data any, t *table) error {
	switch o.output {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(data)
	case "yaml":
		out, err := yaml.Marshal(data)
		if err != nil {
			return err
		}
		_, err = w.Write(out)
		return err
	case "table", "":
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, strings.Join(t.header, "\t"))
		for _, r := range t.rows {
			fmt.Fprintln(tw, strings.Join(r, "\t"))
		}
		return tw.Flush()
	}
	return fmt.Errorf("unknown output format %q: use table, json or yaml", o.output)
}

// withClient is the RunE of a command that talks to the cluster: an
// unknown -o is refused before any work, then the client is made.
func (o *globalOptions) withClient(run func(cmd *cobra.Command, c client.WithWatch, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if err := o.checkOutput(); err != nil {
			return err
		}
		c, err := o.client()
		if err != nil {
			return err
		}
		return run(cmd, c, args)
	}
}

// checkOutput rejects an unknown -o before any work is done.
func (o *globalOptions) checkOutput() error {
	switch o.output {
	case "table", "", "json", "yaml":
		return nil
	}
	return fmt.Errorf("unknown output format %q: use table, json or yaml", o.output)
}

// age formats a duration since t as kubectl does (5s, 3m, 2h, 4d), "-"
// for none.
func age(t *time.Time, now time.Time) string {
	if t == nil || t.IsZero() {
		return "-"
	}
	return shortDuration(now.Sub(*t))
}

func shortDuration(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < 2*time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < 2*time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// progressBar draws a percentage on w: redrawn in place on a terminal, one
// line per change otherwise (logs, tests).
type progressBar struct {
	w     io.Writer
	tty   bool
	last  string
	drawn bool
}

func newProgressBar(w io.Writer) *progressBar {
	f, ok := w.(*os.File)
	return &progressBar{w: w, tty: ok && term.IsTerminal(int(f.Fd()))}
}

// update shows percent and a message when either changed.
func (p *progressBar) update(percent int, msg string) {
	percent = max(0, min(100, percent))
	const width = 30
	filled := width * percent / 100
	line := fmt.Sprintf("[%s%s] %3d%% %s", strings.Repeat("#", filled), strings.Repeat("-", width-filled), percent, msg)
	if line == p.last {
		return
	}
	p.last, p.drawn = line, true
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%s", line)
		return
	}
	fmt.Fprintln(p.w, line)
}

// done ends the bar's line on a terminal.
func (p *progressBar) done() {
	if p.tty && p.drawn {
		fmt.Fprintln(p.w)
	}
}
