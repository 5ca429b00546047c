package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/cairnstore/cairn/internal/gitapply"
	"github.com/cairnstore/cairn/internal/validate"
)

// manifestFlags select the manifests of validate and apply.
type manifestFlags struct {
	kustomize string
	files     []string
}

func (m *manifestFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&m.kustomize, "kustomize", "k", "", "a kustomization directory (built as `kustomize build DIR`)")
	cmd.Flags().StringSliceVarP(&m.files, "filename", "f", nil, "manifest files (YAML or JSON, several documents each)")
}

func (m *manifestFlags) load() ([]validate.Manifest, error) {
	switch {
	case m.kustomize != "" && len(m.files) > 0:
		return nil, errors.New("give either -k DIR or -f FILE, not both")
	case m.kustomize != "":
		return validate.Kustomize(m.kustomize)
	case len(m.files) > 0:
		return validate.Files(m.files)
	}
	return nil, errors.New("no manifests: give -k DIR or -f FILE")
}

// validateReport is validate's JSON/YAML output.
type validateReport struct {
	Objects  int                `json:"objects"`
	Problems []validate.Problem `json:"problems"`
}

// check loads and validates the manifests offline, printing the problems;
// it fails when there are any.
func (m *manifestFlags) check(cmd *cobra.Command, o *globalOptions, printOK bool) ([]validate.Manifest, error) {
	ms, err := m.load()
	if err != nil {
		return nil, err
	}
	v, err := validate.New()
	if err != nil {
		return nil, err
	}
	problems := v.Manifests(cmd.Context(), ms)
	if len(problems) == 0 && !printOK {
		return ms, nil
	}
	t := &table{header: []string{"FILE", "OBJECT", "FIELD", "MESSAGE"}}
	for _, p := range problems {
		t.add(p.File, p.Object, p.Field, p.Message)
	}
	rep := validateReport{Objects: len(ms), Problems: problems}
	if rep.Problems == nil {
		rep.Problems = []validate.Problem{}
	}
	if len(problems) == 0 {
		if o.output == "table" {
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "%d objects valid\n", len(ms))
			return ms, err
		}
		return ms, o.print(cmd.OutOrStdout(), rep, t)
	}
	if err := o.print(cmd.OutOrStdout(), rep, t); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("%d problem(s) in %d object(s)", len(problems), len(ms))
}

func newValidateCmd(o *globalOptions) *cobra.Command {
	m := &manifestFlags{}
	cmd := &cobra.Command{
		Use:   "validate (-k DIR | -f FILE...)",
		Short: "Check manifests offline against Cairn's CRD schemas, CEL rules and webhook checks",
		Long: "validate builds the kustomization (or reads the files) and checks every Cairn object as the API server\n" +
			"and Cairn's webhook would on create, without a cluster. Each problem names its file, object, field and\n" +
			"message; any problem is a non-zero exit, so a GitOps repository's CI can reject a bad commit.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.checkOutput(); err != nil {
				return err
			}
			_, err := m.check(cmd, o, true)
			return err
		},
	}
	m.add(cmd)
	return cmd
}

func newApplyCmd(o *globalOptions) *cobra.Command {
	m := &manifestFlags{}
	cmd := &cobra.Command{
		Use:   "apply (-k DIR | -f FILE...)",
		Short: "Validate offline, then server-side apply manifests (field manager cairnctl)",
		Long: "apply validates the manifests offline (nothing is applied when one is invalid), then server-side applies\n" +
			"them as Flux does (namespaces first) and prints for each object whether it was created, configured or\n" +
			"unchanged. Re-applying the same manifests reports every object unchanged.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.checkOutput(); err != nil {
				return err
			}
			ms, err := m.check(cmd, o, false)
			if err != nil {
				return fmt.Errorf("%w: nothing was applied", err)
			}
			entries, err := o.apply(cmd, ms)
			if err != nil {
				return userError(err)
			}
			t := &table{header: []string{"OBJECT", "ACTION"}}
			for _, e := range entries {
				t.add(e.Object, e.Action)
			}
			return o.print(cmd.OutOrStdout(), entries, t)
		},
	}
	m.add(cmd)
	return cmd
}

// apply server-side applies the manifests (internal/gitapply).
func (o *globalOptions) apply(cmd *cobra.Command, ms []validate.Manifest) ([]gitapply.Entry, error) {
	c, err := o.client()
	if err != nil {
		return nil, err
	}
	return gitapply.Apply(cmd.Context(), c, ms)
}
