package dashboard_test

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/dashboard"
)

var bg = context.Background()

// wait bounds every wait on a condition; tick is how often it is checked.
const wait, tick = 3 * time.Minute, 200 * time.Millisecond

// tab opens a browser tab. user is the caller the trusted proxy names
// (the suite's proxy secret and X-Remote-User on every request); empty
// means a request straight to the dashboard, without the proxy.
func tab(t *testing.T, user string) context.Context {
	t.Helper()
	ctx, cancel := chromedp.NewContext(browser)
	t.Cleanup(cancel)
	ctx, cancelWait := context.WithTimeout(ctx, 2*wait)
	t.Cleanup(cancelWait)
	if user != "" {
		headers := network.Headers{dashboard.HeaderProxySecret: secret, dashboard.HeaderUser: user}
		_, err := chromedp.Call(ctx, network.Enable, network.EnableParams{})
		require.NoError(t, err)
		_, err = chromedp.Call(ctx, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{Headers: headers})
		require.NoError(t, err)
	}
	return ctx
}

// open navigates to path and waits until the page's live updates connect.
func open(t *testing.T, ctx context.Context, path string) {
	t.Helper()
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(baseURL+path), chromedp.WaitVisible(chromedp.CSS("#live.on"))))
}

// waitJS waits until the expression is true in the page.
func waitJS(t *testing.T, ctx context.Context, expr string) {
	t.Helper()
	_, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingInterval(tick), chromedp.WithPollingTimeout(wait)))
	require.NoError(t, err, "waiting for %s", expr)
}

// text returns the rendered text of the first element matching sel, read
// in one step of the page's script (a live refresh may replace it any time).
func text(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](fmt.Sprintf(`document.querySelector(%q).innerText`, sel)))
	require.NoError(t, err, "no %s on the page", sel)
	return strings.TrimSpace(s)
}

// submit fills in a form's fields (selector → value), clicks its button
// and waits for the page the dashboard answers with to show want. It acts
// in the page's script in one step: a live refresh replaces the page's
// content at any time, so a node found by one DevTools call may be gone
// by the next.
func submit(t *testing.T, ctx context.Context, button string, fields map[string]string, want string) {
	t.Helper()
	js := "window.beforeSubmit = true;\n"
	for sel, v := range fields {
		js += fmt.Sprintf("document.querySelector(%q).value = %q;\n", sel, v)
	}
	js += fmt.Sprintf("document.querySelector(%q).click(); true", button)
	_, err := chromedp.Run(ctx, chromedp.Evaluate[bool](js))
	require.NoError(t, err)
	// Evaluated from here each tick: a poll inside the page would die
	// with the page it started in.
	done := fmt.Sprintf(`window.beforeSubmit === undefined && document.readyState === "complete" && document.querySelector(%q) !== null`, want)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](done))
		assert.NoError(c, err)
		assert.True(c, ok, "waiting for %s after clicking %s", want, button)
	}, wait, tick)
}

// attr returns an attribute of the first element matching sel.
func attr(t *testing.T, ctx context.Context, sel, name string) string {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[string](fmt.Sprintf(`document.querySelector(%q).getAttribute(%q)`, sel, name)))
	require.NoError(t, err)
	return v
}

// pageRobustness reads every volume's robustness the open page shows.
func pageRobustness(ctx context.Context) (map[string]string, error) {
	return chromedp.Run(ctx, chromedp.Evaluate[map[string]string](`Object.fromEntries([...document.querySelectorAll("[data-rob-of]")].map(e => [e.dataset.robOf, e.textContent.trim()]))`))
}

func createPolicy(t *testing.T, name, app string, replicas int32) {
	t.Helper()
	p := &v1.VolumePolicy{ObjectMeta: metav1.ObjectMeta{Name: name}}
	p.Spec.Replicas = replicas
	p.Spec.ReplenishWait = &metav1.Duration{Duration: 5 * time.Second}
	p.Spec.BackupTargetRef = "primary"
	p.Spec.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": app}}
	require.NoError(t, k8s.Create(bg, p))
}

// backupsOf lists the names of the volume's Backup objects.
func backupsOf(t *testing.T, volume string) []string {
	t.Helper()
	var list v1.BackupList
	require.NoError(t, k8s.List(bg, &list))
	var out []string
	for _, b := range list.Items {
		if b.Spec.VolumeName == volume {
			out = append(out, b.Name)
		}
	}
	return out
}

// screenshot saves a full-page screenshot as NAME.png in the artifacts
// directory and checks it is a real render: a valid PNG of many colours
// with a good share of pixels that are not the background.
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	buf, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	require.NoError(t, err)
	path := filepath.Join(artifacts, name+".png")
	require.NoError(t, os.WriteFile(path, buf, 0o644))
	img, err := png.Decode(bytes.NewReader(buf))
	require.NoError(t, err, "%s is not a PNG", path)
	b := img.Bounds()
	colours := map[[3]uint32]int{}
	for y := b.Min.Y; y < b.Max.Y; y += 2 {
		for x := b.Min.X; x < b.Max.X; x += 2 {
			r, g, bl, _ := img.At(x, y).RGBA()
			colours[[3]uint32{r >> 8, g >> 8, bl >> 8}]++
		}
	}
	most, total := 0, 0
	for _, n := range colours {
		most = max(most, n)
		total += n
	}
	assert.GreaterOrEqual(t, len(colours), 16, "%s has only %d colours: a blank render", path, len(colours))
	assert.Less(t, float64(most)/float64(total), 0.97, "%s is almost one colour: a blank render", path)
	t.Logf("screenshot %s: %dx%d, %d colours", path, b.Dx(), b.Dy(), len(colours))
}
