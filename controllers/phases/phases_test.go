package phases

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	ctrl "sigs.k8s.io/controller-runtime"
)

type scope struct {
	ran     []string
	stalled bool
}

func step(name string, after time.Duration, err error, stall bool) Phase[*scope] {
	return func(_ context.Context, s *scope) (ctrl.Result, error) {
		s.ran = append(s.ran, name)
		s.stalled = stall
		return ctrl.Result{RequeueAfter: after}, err
	}
}

func isStalled(s *scope) bool { return s.stalled }

func TestRun(t *testing.T) {
	boom := errors.New("boom")
	for _, tc := range []struct {
		name   string
		phases []Phase[*scope]
		ran    []string
		after  time.Duration
		err    error
	}{
		{"all run, soonest requeue", []Phase[*scope]{step("a", time.Minute, nil, false), step("b", 0, nil, false), step("c", time.Second, nil, false)},
			[]string{"a", "b", "c"}, time.Second, nil},
		{"no requeue", []Phase[*scope]{step("a", 0, nil, false), step("b", 0, nil, false)}, []string{"a", "b"}, 0, nil},
		{"error stops, keeps earlier requeue", []Phase[*scope]{step("a", time.Minute, nil, false), step("b", 0, boom, false), step("c", time.Second, nil, false)},
			[]string{"a", "b"}, time.Minute, boom},
		{"stall stops", []Phase[*scope]{step("a", 0, nil, true), step("b", time.Second, nil, false)}, []string{"a"}, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &scope{}
			res, err := Run(t.Context(), s, isStalled, tc.phases...)
			require.Equal(t, tc.ran, s.ran)
			require.Equal(t, tc.after, res.RequeueAfter)
			require.ErrorIs(t, err, tc.err)
		})
	}
}
