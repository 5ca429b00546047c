package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"

	"golang.org/x/term"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// The live view of `cairn dev --examples`: every viewInterval it reads
// both clusters and shows volumes and their replicas' nodes, snapshots,
// backups with progress, RPO and DR lag. On a terminal it redraws in
// place; headless it prints each line that changed, prefixed with the
// time, and "activated:" once the dr-site's DisasterRecoveryVolume is
// Active with its PVC Bound.
const viewInterval = 2 * time.Second

func (d *devRun) runView(ctx context.Context) {
	tty := d.liveView()
	prev := map[string]string{}
	drawn, activated := 0, false
	for {
		lines := d.viewLines(ctx)
		if !activated && d.activated(ctx) {
			activated = true
			fmt.Printf("activated: dr-site DisasterRecoveryVolume %s/%s is Active and PVC %s/%s is Bound\n", demoNamespace, demoClaim, demoNamespace, demoClaim)
			drawn = 0
		}
		if tty {
			drawn = redraw(lines, drawn)
		} else {
			printChanged(os.Stdout, lines, prev)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(viewInterval):
		}
	}
}

// liveView: the view redraws in place on a terminal.
func (d *devRun) liveView() bool {
	return d.opts.examples != "" && !d.opts.headless && term.IsTerminal(int(os.Stdout.Fd()))
}

// logOutput is where dev logs: its control-plane log file under a live
// view (which log lines would tear), else stderr.
func (d *devRun) logOutput() *os.File {
	if d.liveView() {
		return d.logFile
	}
	return os.Stderr
}

// redraw moves up over the last view and prints the new one.
func redraw(lines []string, drawn int) int {
	var b strings.Builder
	if drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", drawn)
	}
	b.WriteString("\x1b[J")
	fmt.Fprintf(&b, "── %s ──\n", time.Now().Format("15:04:05"))
	// A wrapped line would take two rows and the next move up would miss it.
	width, _, err := term.GetSize(int(os.Stdout.Fd()))
	for _, l := range lines {
		if r := []rune(l); err == nil && width > 1 && len(r) >= width {
			l = string(r[:width-1])
		}
		b.WriteString(l + "\n")
	}
	fmt.Print(b.String())
	return len(lines) + 1
}

// tickingRPO is the part of a volume line that changes every second.
var tickingRPO = regexp.MustCompile(`, rpo [0-9hms.]+$`)

// printChanged prints the lines whose key (text before ":") changed.
func printChanged(w io.Writer, lines []string, prev map[string]string) {
	for _, l := range lines {
		key, _, _ := strings.Cut(l, ":")
		if stable := tickingRPO.ReplaceAllString(l, ""); prev[key] != stable {
			prev[key] = stable
			fmt.Fprintf(w, "%s %s\n", time.Now().UTC().Format("15:04:05"), l)
		}
	}
}

// viewLines is one view: "KEY: value" lines.
func (d *devRun) viewLines(ctx context.Context) []string {
	lines := siteLines(ctx, "primary", d.client)
	if d.drSite != nil {
		lines = append(lines, siteLines(ctx, "dr-site", d.drSite.client)...)
		lines = append(lines, drLines(ctx, d.drSite.client)...)
	}
	return lines
}

// siteLines are a cluster's volumes, their latest snapshot and backup.
func siteLines(ctx context.Context, site string, c client.Client) []string {
	var vols v1.VolumeList
	if err := c.List(ctx, &vols); err != nil {
		return []string{site + " volumes: " + err.Error()}
	}
	var out []string
	for _, v := range vols.Items {
		out = append(out, fmt.Sprintf("%s volume %s: %s %s, replicas %s%s", site, v.Name, orDash(string(v.Status.State)), orDash(string(v.Status.Robustness)),
			replicaNodes(v.Status.Replicas), rpo(v.Status.LastBackupTime)))
		out = append(out, latestSnapshot(ctx, site, c, v.Name), latestBackup(ctx, site, c, v.Name))
	}
	return out
}

func replicaNodes(rs []v1.VolumeReplicaStatus) string {
	var nodes []string
	for _, r := range rs {
		nodes = append(nodes, orDash(r.Node)+"/"+orDash(r.Mode))
	}
	sort.Strings(nodes)
	return "[" + strings.Join(nodes, " ") + "]"
}

// rpo is the time since the volume's last backup: what losing the site
// now would lose.
func rpo(last *metav1.Time) string {
	if last == nil {
		return ", rpo - (no backup yet)"
	}
	return ", rpo " + time.Since(last.Time).Round(time.Second).String()
}

func durationOf(d *metav1.Duration) string {
	if d == nil {
		return "-"
	}
	return d.Duration.Round(time.Second).String()
}

// readyOf is the Ready condition's status and reason.
func readyOf(conds []metav1.Condition) string {
	c := meta.FindStatusCondition(conds, "Ready")
	if c == nil {
		return "-"
	}
	if c.Status == metav1.ConditionTrue {
		return "Ready"
	}
	return c.Reason
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// latestSnapshot is the count and newest snapshot of a volume.
func latestSnapshot(ctx context.Context, site string, c client.Client, vol string) string {
	var l v1.SnapshotList
	key := fmt.Sprintf("%s snapshots %s", site, vol)
	if err := c.List(ctx, &l); err != nil {
		return key + ": " + err.Error()
	}
	n, newest := newestOf(l.Items, func(s *v1.Snapshot) bool { return s.Spec.VolumeName == vol })
	if n == 0 {
		return key + ": none yet"
	}
	return fmt.Sprintf("%s: %d, newest %s (%s)", key, n, newest.Name, readyOf(newest.Status.Conditions))
}

// latestBackup is the count and newest backup of a volume with progress.
func latestBackup(ctx context.Context, site string, c client.Client, vol string) string {
	var l v1.BackupList
	key := fmt.Sprintf("%s backups %s", site, vol)
	if err := c.List(ctx, &l); err != nil {
		return key + ": " + err.Error()
	}
	n, newest := newestOf(l.Items, func(b *v1.Backup) bool { return b.Spec.VolumeName == vol })
	if n == 0 {
		return key + ": none yet"
	}
	return fmt.Sprintf("%s: %d, newest %s %s %d%%", key, n, newest.Name, orDash(newest.Status.State), newest.Status.Progress)
}

// newestOf counts the items match accepts and returns the newest of them
// by creation time.
func newestOf[T any, P interface {
	*T
	GetCreationTimestamp() metav1.Time
}](items []T, match func(P) bool) (int, P) {
	n, newest := 0, P(nil)
	for i := range items {
		it := P(&items[i])
		if !match(it) {
			continue
		}
		n++
		if newest == nil || it.GetCreationTimestamp().After(newest.GetCreationTimestamp().Time) {
			newest = it
		}
	}
	return n, newest
}

// drLines are the dr-site's DisasterRecoveryVolumes: phase, restored
// backup, lag and RPO.
func drLines(ctx context.Context, c client.Client) []string {
	var l v1.DisasterRecoveryVolumeList
	if err := c.List(ctx, &l); err != nil {
		return []string{"dr-site drv: " + err.Error()}
	}
	var out []string
	for _, r := range l.Items {
		out = append(out, fmt.Sprintf("dr-site drv %s/%s: %s, restored %s, lag %s, rpo %s", r.Namespace, r.Name, orDash(string(r.Status.Phase)),
			orDash(r.Status.LastRestoredBackup), durationOf(r.Status.Lag), durationOf(r.Status.RPO)))
	}
	return out
}

// activated: the dr-site's demo DisasterRecoveryVolume is Active and its
// claim Bound.
func (d *devRun) activated(ctx context.Context) bool {
	if d.drSite == nil {
		return false
	}
	key := types.NamespacedName{Namespace: demoNamespace, Name: demoClaim}
	var drv v1.DisasterRecoveryVolume
	var pvc corev1.PersistentVolumeClaim
	return d.drSite.client.Get(ctx, key, &drv) == nil && drv.Status.Phase == v1.DRActive &&
		d.drSite.client.Get(ctx, key, &pvc) == nil && pvc.Status.Phase == corev1.ClaimBound
}
