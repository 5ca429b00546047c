package dashboard

import (
	"fmt"
	"html/template"
	"slices"
	"strings"
	"time"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// chart is a small SVG chart drawn on the server (no JavaScript library).
type chart struct {
	Title string
	SVG   template.HTML
	Empty bool
}

// point is one sample of a time series.
type point struct {
	T time.Time
	V float64
}

const chartW, chartH, chartPad = 320.0, 120.0, 4.0

// barChart draws one horizontal bar per label, value out of max.
func barChart(title string, labels []string, values, max []float64, format func(v, max float64) string) chart {
	if len(labels) == 0 {
		return chart{Title: title, Empty: true}
	}
	row := 22.0
	h := row*float64(len(labels)) + chartPad
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" viewBox="0 0 %.0f %.0f" role="img" aria-label="%s">`, chartW, h, template.HTMLEscapeString(title))
	for i, l := range labels {
		y := chartPad + row*float64(i)
		w := 0.0
		if max[i] > 0 {
			w = (chartW - 110) * values[i] / max[i]
		}
		fmt.Fprintf(&b, `<text x="0" y="%.1f" class="lbl">%s</text>`, y+13, template.HTMLEscapeString(l))
		fmt.Fprintf(&b, `<rect x="100" y="%.1f" width="%.1f" height="16" class="track"/>`, y, chartW-110)
		fmt.Fprintf(&b, `<rect x="100" y="%.1f" width="%.1f" height="16" class="bar"><title>%s</title></rect>`, y, w, template.HTMLEscapeString(format(values[i], max[i])))
		fmt.Fprintf(&b, `<text x="104" y="%.1f" class="val">%s</text>`, y+12, template.HTMLEscapeString(format(values[i], max[i])))
	}
	b.WriteString(`</svg>`)
	return chart{Title: title, SVG: template.HTML(b.String())}
}

// lineChart draws a time series with its maximum labelled.
func lineChart(title string, pts []point, format func(float64) string) chart {
	if len(pts) < 2 {
		return chart{Title: title, Empty: true}
	}
	t0, t1 := pts[0].T, pts[len(pts)-1].T
	span := t1.Sub(t0).Seconds()
	if span <= 0 {
		span = 1
	}
	maxV := 0.0
	for _, p := range pts {
		maxV = max(maxV, p.V)
	}
	if maxV == 0 {
		maxV = 1
	}
	plotH := chartH - 2*chartPad - 14
	var path strings.Builder
	for i, p := range pts {
		x := chartPad + (chartW-2*chartPad)*p.T.Sub(t0).Seconds()/span
		y := chartPad + 14 + plotH*(1-p.V/maxV)
		cmd := "L"
		if i == 0 {
			cmd = "M"
		}
		fmt.Fprintf(&path, "%s%.1f %.1f ", cmd, x, y)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" viewBox="0 0 %.0f %.0f" role="img" aria-label="%s">`, chartW, chartH, template.HTMLEscapeString(title))
	fmt.Fprintf(&b, `<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" class="axis"/>`, chartPad, chartH-chartPad, chartW-chartPad, chartH-chartPad)
	fmt.Fprintf(&b, `<path d="%s" class="line"/>`, strings.TrimSpace(path.String()))
	fmt.Fprintf(&b, `<text x="%.0f" y="11" class="lbl">max %s</text>`, chartPad, template.HTMLEscapeString(format(maxV)))
	fmt.Fprintf(&b, `<text x="%.0f" y="11" class="lbl end">%s – %s UTC</text>`, chartW-chartPad, t0.UTC().Format("01-02 15:04"), t1.UTC().Format("15:04"))
	b.WriteString(`</svg>`)
	return chart{Title: title, SVG: template.HTML(b.String())}
}

// diskChart shows used of capacity per node.
func diskChart(nodes []nodeRow) chart {
	var labels []string
	var used, capacity []float64
	for _, n := range nodes {
		labels = append(labels, n.Name)
		used = append(used, float64(n.Capacity-n.Available))
		capacity = append(capacity, float64(n.Capacity))
	}
	return barChart("Disk use per node", labels, used, capacity, func(v, m float64) string {
		return fmt.Sprintf("%s of %s", humanBytes(int64(v)), humanBytes(int64(m)))
	})
}

// completed returns the backups that completed, oldest first.
func completed(backups []v1.Backup) []v1.Backup {
	var out []v1.Backup
	for _, b := range backups {
		if b.Status.CompletionTime != nil {
			out = append(out, b)
		}
	}
	slices.SortFunc(out, func(a, b v1.Backup) int { return a.Status.CompletionTime.Compare(b.Status.CompletionTime.Time) })
	return out
}

// backupDuration is how long a backup took from creation to completion.
func backupDuration(b *v1.Backup) time.Duration {
	if b.Status.CompletionTime == nil {
		return 0
	}
	start := b.CreationTimestamp.Time
	if b.Status.CreationTime != nil && b.Status.CreationTime.Time.After(start) {
		start = b.Status.CreationTime.Time
	}
	return max(0, b.Status.CompletionTime.Sub(start))
}

// backupCharts plots uploaded bytes and durations of completed backups.
func backupCharts(backups []v1.Backup) (chart, chart) {
	var sizes, durs []point
	for _, b := range completed(backups) {
		t := b.Status.CompletionTime.Time
		sizes = append(sizes, point{T: t, V: float64(b.Status.UploadedBytes)})
		durs = append(durs, point{T: t, V: backupDuration(&b).Seconds()})
	}
	return lineChart("Backup uploads over time", sizes, func(v float64) string { return humanBytes(int64(v)) }),
		lineChart("Backup durations over time", durs, func(v float64) string { return humanDuration(time.Duration(v * float64(time.Second))) })
}

// rpoChart samples the worst recovery point (time since a volume's last
// completed backup) over the span of the backups, up to now.
func rpoChart(backups []v1.Backup, now time.Time) chart {
	done := completed(backups)
	if len(done) == 0 {
		return chart{Title: "Worst RPO over time", Empty: true}
	}
	start := done[0].Status.CompletionTime.Time
	const samples = 60
	step := now.Sub(start) / samples
	var pts []point
	for i := 0; i <= samples && step > 0; i++ {
		t := start.Add(step * time.Duration(i))
		last := map[string]time.Time{}
		for _, b := range done {
			if !b.Status.CompletionTime.After(t) {
				last[b.Spec.VolumeName] = b.Status.CompletionTime.Time
			}
		}
		worst := time.Duration(0)
		for _, l := range last {
			worst = max(worst, t.Sub(l))
		}
		pts = append(pts, point{T: t, V: worst.Seconds()})
	}
	return lineChart("Worst RPO over time", pts, func(v float64) string { return humanDuration(time.Duration(v * float64(time.Second))) })
}
