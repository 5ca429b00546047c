package dashboard_test

import (
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// TestOverviewShowsRobustness: the overview lists every volume with the
// robustness its status has: the samples' pg-data healthy, and a volume
// whose policy wants more replicas than there are nodes not healthy.
func TestOverviewShowsRobustness(t *testing.T) {
	t.Parallel()
	createPolicy(t, "dash-short", "dash-short", suiteNodes+1)
	vols.Create(t, "dash-short", "dash-short", "64Mi")
	vols.WaitHealthy(t, "pg-data", v1.VolumeDetached, 0)
	ctx := tab(t, "")
	open(t, ctx, "/")
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		shown, err := pageRobustness(ctx)
		if !assert.NoError(c, err) {
			return
		}
		var vols v1.VolumeList
		assert.NoError(c, k8s.List(bg, &vols))
		for _, v := range vols.Items {
			want := string(v.Status.Robustness)
			if want == "" {
				want = string(v1.RobustnessUnknown)
			}
			assert.Equal(c, want, shown[v.Name], "volume %s", v.Name)
		}
		assert.Equal(c, "healthy", shown["pg-data"])
		assert.Contains(c, []string{"degraded", "faulted"}, shown["dash-short"], "a volume with 3 of 4 replicas")
	}, wait, tick)
	screenshot(t, ctx, "overview")
}

// TestReplicaKillShowsLive: with the overview open, SIGKILL one replica
// process of an attached volume and write to it: the page shows the
// volume degraded and then healthy again (after the agent restarts the
// replica and the engine rebuilds it), without a reload.
func TestReplicaKillShowsLive(t *testing.T) {
	t.Parallel()
	const vol = "dash-kill"
	createPolicy(t, vol, vol, 2)
	vols.Create(t, vol, vol, "64Mi")
	vols.WaitHealthy(t, vol, v1.VolumeDetached, 2)
	vols.Patch(t, vol, func(v *v1.Volume) { v.Spec.NodeID = "dev-node-1" })
	v := vols.WaitHealthy(t, vol, v1.VolumeAttached, 2)

	ctx := tab(t, "")
	open(t, ctx, "/")
	waitJS(t, ctx, fmt.Sprintf(`document.querySelector('[data-rob-of=%q]')?.textContent === "healthy"`, vol))
	_, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.notReloaded = true`))
	require.NoError(t, err)

	victim := v.Status.Replicas[0].Name
	pids := dev.Procs("cairn replica", "--replica "+victim)
	require.Len(t, pids, 1, "replica process of %s", victim)
	require.NoError(t, syscall.Kill(pids[0], syscall.SIGKILL))
	// A write finds the replica gone, so the engine drops it.
	out, err := exec.Command("dd", "if=/dev/urandom", "of="+v.Status.Endpoint, "bs=1M", "count=4", "oflag=direct", "conv=fsync").CombinedOutput()
	require.NoError(t, err, "%s", out)

	entry := func(rob string) string {
		return fmt.Sprintf(`#feed li[data-volume=%q][data-robustness=%q]`, vol, rob)
	}
	waitJS(t, ctx, fmt.Sprintf(`document.querySelector('%s') !== null`, entry("degraded")))
	// The feed lists the newest first: healthy after degraded.
	waitJS(t, ctx, fmt.Sprintf(`(() => {
		const li = [...document.querySelectorAll('#feed li[data-volume=%q]')];
		const d = li.findIndex(e => e.dataset.robustness === "degraded");
		return d > 0 && li.slice(0, d).some(e => e.dataset.robustness === "healthy");
	})()`, vol))
	waitJS(t, ctx, fmt.Sprintf(`document.querySelector('[data-rob-of=%q]').textContent === "healthy"`, vol))
	kept, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.notReloaded === true`))
	require.NoError(t, err)
	assert.True(t, kept, "the page reloaded")
	screenshot(t, ctx, "overview-after-replica-kill")
}

// TestBackupNow: the operator, named by the trusted proxy and allowed by
// RBAC, clicks "Snapshot now" on a volume's page and sees the snapshot
// join the chain ready; then clicks "Backup now": a Backup appears there
// and becomes Ready and Completed without a reload, as in the cluster.
// Then "Restore" into a new volume and "Verify" show their progress and
// end restored and verified.
func TestBackupNow(t *testing.T) {
	t.Parallel()
	const vol = "dash-backup"
	createPolicy(t, vol, vol, 2)
	vols.Create(t, vol, vol, "64Mi")
	vols.WaitHealthy(t, vol, v1.VolumeDetached, 2)

	ctx := tab(t, operator)
	open(t, ctx, "/volumes/"+vol)
	submit(t, ctx, "#snapshot-now", nil, "#notice")
	notice := text(t, ctx, "#notice")
	require.Regexp(t, `^Snapshot \S+ created$`, notice)
	snap := strings.Fields(notice)[1]
	waitJS(t, ctx, fmt.Sprintf(`document.querySelector('li[data-snapshot=%q]')?.dataset.ready === "true"`, snap))
	s := &v1.Snapshot{}
	require.NoError(t, k8s.Get(bg, client.ObjectKey{Name: snap}, s))
	assert.Equal(t, vol, s.Spec.VolumeName)
	assert.True(t, s.Status.ReadyToUse)

	open(t, ctx, "/volumes/"+vol)
	submit(t, ctx, "#backup-now", nil, "#notice")
	notice = text(t, ctx, "#notice")
	require.Regexp(t, `^Backup \S+ created$`, notice)
	name := strings.Fields(notice)[1]
	require.Equal(t, []string{name}, backupsOf(t, vol))
	waitJS(t, ctx, `document.querySelector('#live.on') !== null`)
	waitJS(t, ctx, fmt.Sprintf(`document.querySelector('tr[data-backup=%q]')?.dataset.ready === "True"`, name))
	assert.Equal(t, "Completed", attr(t, ctx, fmt.Sprintf(`tr[data-backup=%q]`, name), "data-state"))
	b := &v1.Backup{}
	require.NoError(t, k8s.Get(bg, client.ObjectKey{Name: name}, b))
	assert.True(t, meta.IsStatusConditionTrue(b.Status.Conditions, v1.ConditionReady), "backup %s not Ready: %v", name, b.Status.Conditions)
	assert.Equal(t, "primary", string(b.Spec.BackupTargetRef))
	screenshot(t, ctx, "volume-after-backup-now")

	row := fmt.Sprintf(`tr[data-backup=%q]`, name)
	submit(t, ctx, row+` form[action="/actions/restore"] button`, map[string]string{row + ` input[name="newVolume"]`: "dash-restored"}, "#notice")
	assert.Equal(t, "Volume dash-restored created", text(t, ctx, "#notice"))
	restored := vols.Get(t, "dash-restored")
	require.NotNil(t, restored.Spec.FromBackup)
	assert.Equal(t, b.Status.BackupID, restored.Spec.FromBackup.Backup)
	waitJS(t, ctx, `document.querySelector('#restore[data-done="true"]') !== null`)
	assert.Equal(t, "false", attr(t, ctx, "#restore", "data-failed"), text(t, ctx, "#restore"))
	screenshot(t, ctx, "volume-restored")

	open(t, ctx, "/volumes/"+vol)
	submit(t, ctx, row+` form[action="/actions/verify"] button`, nil, "#notice")
	require.Regexp(t, `^Volume verify-\S+ created$`, text(t, ctx, "#notice"))
	waitJS(t, ctx, `document.querySelector('#restore[data-done="true"]') !== null`)
	assert.Contains(t, text(t, ctx, "#restore"), "verified")
	screenshot(t, ctx, "volume-verified")

	// Its throw-away volume goes with one click.
	verifier := strings.Fields(text(t, ctx, "#notice"))[1]
	submit(t, ctx, "#cleanup", nil, "#notice")
	assert.Equal(t, "Volume "+verifier+" deleted", text(t, ctx, "#notice"))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.True(c, apierrors.IsNotFound(k8s.Get(bg, client.ObjectKey{Name: verifier}, &v1.Volume{})), "volume %s still there", verifier)
	}, wait, tick)
}

// TestActionRefused: a caller the proxy names but RBAC does not allow,
// and a request that bypasses the proxy, are refused with a message that
// says why, and nothing is created.
func TestActionRefused(t *testing.T) {
	t.Parallel()
	const vol = "dash-refused"
	createPolicy(t, vol, vol, 1)
	vols.Create(t, vol, vol, "64Mi")
	vols.WaitHealthy(t, vol, v1.VolumeDetached, 1)

	// One tab at a time (subtests close theirs): the suite's tests share one
	// browser, which keeps at most six HTTP/1.1 connections to the
	// dashboard, and every open page holds one for its live updates.
	for _, c := range []struct{ name, user, want string }{
		{"no-permission", mallory, "Permission denied: " + mallory + " may not create backups.storage.cairn.dev"},
		{"no-proxy", "", "Actions are taken only through the trusted proxy"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := tab(t, c.user)
			open(t, ctx, "/volumes/"+vol)
			submit(t, ctx, "#backup-now", nil, "#refused")
			msg := text(t, ctx, "#refused")
			assert.Contains(t, msg, c.want)
			assert.Contains(t, msg, "Nothing was created.")
			screenshot(t, ctx, "refused-"+c.name)
		})
	}
	assert.Empty(t, backupsOf(t, vol), "a refused action created a Backup")
}

// TestPages: every page renders (a screenshot of each, checked not to be
// blank); an unknown volume, node or target is a 404 page.
func TestPages(t *testing.T) {
	t.Parallel()
	vols.WaitHealthy(t, "pg-data", v1.VolumeDetached, 0)
	ctx := tab(t, "")
	for name, path := range map[string]string{
		"volume": "/volumes/pg-data", "node": "/nodes/dev-node-1", "target": "/targets/primary",
		"schedules": "/schedules", "dr": "/dr", "edit": "/edit/recurringsnapshot/hourly",
	} {
		open(t, ctx, path)
		screenshot(t, ctx, name)
	}
	open(t, ctx, "/schedules")
	assert.Contains(t, text(t, ctx, `[data-schedule="hourly"] .next`), "CET", "hourly runs in Europe/Berlin")
	open(t, ctx, "/edit/recurringsnapshot/hourly")
	assert.Contains(t, text(t, ctx, "#yaml"), "schedule: 0 * * * *")

	for _, path := range []string{"/volumes/no-such-volume", "/nodes/no-such-node", "/targets/no-such-target", "/no/such/page"} {
		resp, err := http.Get(baseURL + path)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusNotFound, resp.StatusCode, path)
	}
	open(t, ctx, "/volumes/no-such-volume")
	assert.Contains(t, text(t, ctx, "#notfound"), `There is no volume named "no-such-volume".`)
	screenshot(t, ctx, "notfound")
}
