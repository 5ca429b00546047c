package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

func TestNewestOf(t *testing.T) {
	at := func(name, vol string, min int) v1.Backup {
		b := v1.Backup{ObjectMeta: metav1.ObjectMeta{Name: name, CreationTimestamp: metav1.NewTime(time.Unix(0, 0).Add(time.Duration(min) * time.Minute))}}
		b.Spec.VolumeName = vol
		return b
	}
	items := []v1.Backup{at("a1", "a", 1), at("b9", "b", 9), at("a3", "a", 3), at("a2", "a", 2)}
	n, newest := newestOf(items, func(b *v1.Backup) bool { return b.Spec.VolumeName == "a" })
	require.Equal(t, 3, n)
	require.Equal(t, "a3", newest.Name)
	n, newest = newestOf(items, func(b *v1.Backup) bool { return b.Spec.VolumeName == "c" })
	require.Zero(t, n)
	require.Nil(t, newest)
}
