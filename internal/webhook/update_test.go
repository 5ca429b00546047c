package webhook_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	cairnv1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/internal/webhook"
)

// TestUpdateValidatesChangedSpecOnly: a metadata-only update (the same
// spec) is not validated again; a changed spec is, fully.
func TestUpdateValidatesChangedSpecOnly(t *testing.T) {
	ctx := context.Background()
	bad := &cairnv1.RecurringSnapshot{Spec: cairnv1.RecurringSnapshotSpec{Schedule: "not cron", TimeZone: "UTC"}}
	good := &cairnv1.RecurringSnapshot{Spec: cairnv1.RecurringSnapshotSpec{Schedule: "@hourly", TimeZone: "UTC"}}
	v := webhook.RecurringSnapshotValidator{}
	_, err := v.ValidateUpdate(ctx, bad.DeepCopy(), bad)
	require.NoError(t, err, "an unchanged spec is validated again")
	_, err = v.ValidateUpdate(ctx, good, bad)
	require.Error(t, err)
	_, err = v.ValidateUpdate(ctx, bad, good)
	require.NoError(t, err)
}
