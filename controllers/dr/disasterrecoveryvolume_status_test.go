package dr

import (
	"testing"

	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

func TestSetConditions(t *testing.T) {
	for _, tc := range []struct {
		name                        string
		o                           outcome
		ready, reconciling, stalled bool
		observed                    int64
	}{
		{"ready", outcome{ready: true, reason: "Following", message: "m"}, true, false, false, 3},
		{"waiting", outcome{reason: "WaitingForBackup", message: "m"}, false, true, false, -1},
		{"stalled", outcome{stalled: true, reason: "NoRestorableBackup", message: "m"}, false, false, true, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := v1.DisasterRecoveryVolumeStatus{ObservedGeneration: -1, Conditions: []metav1.Condition{
				{Type: v1.ConditionReconciling, Status: metav1.ConditionTrue, Reason: "x"},
				{Type: v1.ConditionStalled, Status: metav1.ConditionTrue, Reason: "x"},
			}}
			setConditions(&st, 3, tc.o)
			require.Equal(t, tc.ready, meta.IsStatusConditionTrue(st.Conditions, v1.ConditionReady))
			require.Equal(t, tc.reconciling, meta.FindStatusCondition(st.Conditions, v1.ConditionReconciling) != nil)
			require.Equal(t, tc.stalled, meta.FindStatusCondition(st.Conditions, v1.ConditionStalled) != nil)
			require.Equal(t, tc.observed, st.ObservedGeneration)
			for _, c := range st.Conditions {
				require.Equal(t, tc.o.reason, c.Reason)
				require.Equal(t, tc.o.message, c.Message)
			}
		})
	}
}
