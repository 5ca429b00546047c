package dashboard

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/controllers"
)

// newTestServer serves the pages over a fake client holding one object
// of each kind: a narrow check that every template renders; the browser
// suite (test/dashboard) runs them against a real cluster.
func newTestServer(t *testing.T) http.Handler {
	t.Helper()
	return newTestServerWith(t, nil)
}

func newTestServerWith(t *testing.T, sites []*siteReader) http.Handler {
	t.Helper()
	now := metav1.NewTime(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC))
	vol := &v1.Volume{ObjectMeta: metav1.ObjectMeta{Name: "pg", Labels: map[string]string{"app": "pg"}},
		Spec: v1.VolumeSpec{Size: resource.MustParse("1Gi")},
		Status: v1.VolumeStatus{State: v1.VolumeAttached, Robustness: v1.RobustnessDegraded, LastBackupTime: &now, AttachedNode: "n1",
			Replicas: []v1.VolumeReplicaStatus{{Name: "pg-r1", Node: "n1", Mode: "RW"}, {Name: "pg-r2", Node: "n2", Mode: "WO"}}}}
	done := metav1.NewTime(now.Add(time.Minute))
	objs := []client.Object{vol,
		&v1.Replica{ObjectMeta: metav1.ObjectMeta{Name: "pg-r1", Labels: map[string]string{v1.LabelVolume: "pg"}}, Spec: v1.ReplicaSpec{VolumeName: "pg", NodeID: "n1"}},
		&v1.Engine{ObjectMeta: metav1.ObjectMeta{Name: "pg"}, Spec: v1.EngineSpec{VolumeName: "pg", NodeID: "n1"}, Status: v1.EngineStatus{RebuildProgress: 40}},
		&v1.CairnNode{ObjectMeta: metav1.ObjectMeta{Name: "n2"}, Spec: v1.CairnNodeSpec{EvictionRequested: true}},
		&v1.CairnNode{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Status: v1.CairnNodeStatus{Disks: []v1.NodeDiskStatus{{Path: "/d", Capacity: resource.NewQuantity(100<<30, resource.BinarySI), Available: resource.NewQuantity(40<<30, resource.BinarySI)}}}},
		&v1.Snapshot{ObjectMeta: metav1.ObjectMeta{Name: "pg-s1", CreationTimestamp: now}, Spec: v1.SnapshotSpec{VolumeName: "pg"}},
		&v1.Backup{ObjectMeta: metav1.ObjectMeta{Name: "pg-b1", CreationTimestamp: now}, Spec: v1.BackupSpec{VolumeName: "pg", BackupTargetRef: "primary"},
			Status: v1.BackupStatus{State: "Completed", CompletionTime: &done, UploadedBytes: 5 << 20}},
		&v1.Backup{ObjectMeta: metav1.ObjectMeta{Name: "pg-b2", CreationTimestamp: done}, Spec: v1.BackupSpec{VolumeName: "pg", BackupTargetRef: "primary"}, Status: v1.BackupStatus{Progress: 30}},
		&v1.BackupTarget{ObjectMeta: metav1.ObjectMeta{Name: "primary"}, Spec: v1.BackupTargetSpec{URL: "s3://b/p"}, Status: v1.BackupTargetStatus{StoredBytes: 7 << 20}},
		&v1.VolumePolicy{ObjectMeta: metav1.ObjectMeta{Name: "gold"}, Spec: v1.VolumePolicySpec{Replicas: 2, Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "pg"}}}},
		&v1.RecurringSnapshot{ObjectMeta: metav1.ObjectMeta{Name: "hourly"}, Spec: v1.RecurringSnapshotSpec{Schedule: "0 * * * *", TimeZone: "Europe/Berlin"}},
		&v1.DisasterRecoveryVolume{ObjectMeta: metav1.ObjectMeta{Name: "pg-dr", Namespace: "default"}, Spec: v1.DisasterRecoveryVolumeSpec{SourceVolume: "pg", BackupTargetRef: "primary"},
			Status: v1.DisasterRecoveryVolumeStatus{Phase: v1.DRStandby, Lag: &metav1.Duration{Duration: 90 * time.Second}}},
	}
	c := fake.NewClientBuilder().WithScheme(controllers.NewScheme()).WithObjects(objs...).
		WithIndex(&corev1.Event{}, "involvedObject.kind", func(o client.Object) []string { return []string{o.(*corev1.Event).InvolvedObject.Kind} }).
		WithIndex(&corev1.Event{}, "involvedObject.name", func(o client.Object) []string { return []string{o.(*corev1.Event).InvolvedObject.Name} }).
		Build()
	s, err := New(c, c, nil, Options{Actions: true}, logr.Discard())
	require.NoError(t, err)
	s.now = func() time.Time { return now.Add(time.Hour) }
	s.sites = sites
	return s.Handler()
}

func TestPagesRender(t *testing.T) {
	h := newTestServer(t)
	for path, want := range map[string]string{
		"/":                              `data-rob-of="pg">degraded`,
		"/?evicting":                     `data-evicting="n2">evicting`,
		"/volumes/pg":                    "gold <span class=\"hint\">(from selector)</span>",
		"/nodes/n1":                      "60%",
		"/targets/primary":               "7.0 MiB",
		"/schedules":                     "CET",
		"/dr":                            "1m30s",
		"/edit/recurringsnapshot/hourly": "schedule: 0 * * * *",
		"/edit/disasterrecoveryvolume/default.pg-dr": "sourceVolume: pg",
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		body, _ := io.ReadAll(rec.Body)
		assert.Equal(t, http.StatusOK, rec.Code, "%s: %s", path, body)
		assert.Contains(t, string(body), want, path)
	}
	for _, path := range []string{"/volumes/nope", "/nodes/nope", "/targets/nope", "/edit/volume/pg", "/edit/volumepolicy/nope", "/x"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		assert.Equal(t, http.StatusNotFound, rec.Code, path)
		assert.Contains(t, rec.Body.String(), `id="notfound"`, path)
	}
	// A live refresh gets the content only.
	req := httptest.NewRequest(http.MethodGet, "/volumes/pg", nil)
	req.Header.Set("X-Partial", "1")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	assert.False(t, strings.Contains(rec.Body.String(), "<html"), "a partial answer holds the layout")
}

// TestActionsDisabled: without --dashboard-actions nothing is offered and
// a posted action is refused.
func TestActionsDisabled(t *testing.T) {
	c := fake.NewClientBuilder().WithScheme(controllers.NewScheme()).WithObjects(&v1.Volume{ObjectMeta: metav1.ObjectMeta{Name: "pg"}}).Build()
	s, err := New(c, c, nil, Options{}, logr.Discard())
	require.NoError(t, err)
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/volumes/pg", nil))
	assert.NotContains(t, rec.Body.String(), "backup-now")
	req := httptest.NewRequest(http.MethodPost, "/actions/backup", strings.NewReader("volume=pg"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	rec = httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, req)
	assert.Equal(t, http.StatusForbidden, rec.Code)
	assert.Contains(t, rec.Body.String(), "Actions are disabled")
	var list v1.BackupList
	require.NoError(t, c.List(t.Context(), &list))
	assert.Empty(t, list.Items)
}

// TestDRSites: the DR page lists this cluster's pairs and each site's, and
// names a site it cannot read.
func TestDRSites(t *testing.T) {
	remote := fake.NewClientBuilder().WithScheme(controllers.NewScheme()).WithObjects(&v1.DisasterRecoveryVolume{
		ObjectMeta: metav1.ObjectMeta{Name: "orders-dr", Namespace: "shop"}, Spec: v1.DisasterRecoveryVolumeSpec{SourceVolume: "orders"},
		Status: v1.DisasterRecoveryVolumeStatus{Phase: v1.DRActive, Lag: &metav1.Duration{Duration: 5 * time.Minute}}}).Build()
	broken := fake.NewClientBuilder().WithScheme(runtime.NewScheme()).Build()
	h := newTestServerWith(t, []*siteReader{{name: "dr-site", c: remote}, {name: "gone", c: broken}, {name: "nowhere", path: "/nonexistent/kubeconfig"}})
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/dr", nil))
	require.Equal(t, http.StatusOK, rec.Code)
	body := rec.Body.String()
	assert.Contains(t, body, `data-dr="this cluster/default/pg-dr" data-phase="Standby"`)
	assert.Contains(t, body, `data-dr="dr-site/shop/orders-dr" data-phase="Active"`)
	assert.Contains(t, body, "Cannot read DR site gone:")
	assert.Contains(t, body, "Cannot read DR site nowhere:")
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	assert.Contains(t, rec.Body.String(), "5m00s", "the overview's DR lag includes the sites")
}
