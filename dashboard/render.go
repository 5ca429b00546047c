package dashboard

import (
	"bytes"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// view is what a page handler returns: a template and its data.
type view struct {
	Title    string
	Template string
	Data     any
}

// page is the whole document given to the layout.
type page struct {
	view
	Actions bool
	Notice  string
	// Static pages (the answer to an action) are not refreshed live: their
	// URL names no page to reload.
	Static bool
}

// notFoundError makes a page handler answer 404.
type notFoundError struct{ kind, name string }

func (e notFoundError) Error() string {
	if e.name == "" {
		return "There is no such page."
	}
	return fmt.Sprintf("There is no %s named %q.", e.kind, e.name)
}

func errNotFound(kind, name string) error { return notFoundError{kind: kind, name: name} }

// parseTemplates parses every page together with the layout, keyed by the
// page's file name without extension.
func parseTemplates() (map[string]*template.Template, error) {
	files, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	out := map[string]*template.Template{}
	for _, f := range files {
		name := strings.TrimSuffix(path.Base(f), ".html")
		if name == "layout" || name == "events" {
			continue
		}
		t, err := template.New(name).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/events.html", f)
		if err != nil {
			return nil, fmt.Errorf("dashboard: parse %s: %w", f, err)
		}
		out[name] = t
	}
	return out, nil
}

// page wraps a page handler: it renders the view in the layout, or only
// its content for a live refresh (header X-Partial), and turns
// notFoundError into a 404 page.
func (s *Server) page(h func(*http.Request) (view, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		v, err := h(r)
		status := http.StatusOK
		var nf notFoundError
		switch {
		case errors.As(err, &nf):
			status = http.StatusNotFound
			v = view{Title: "Not found", Template: "notfound", Data: nf.Error()}
		case err != nil:
			s.log.Error(err, "Render dashboard page", "path", r.URL.Path)
			status = http.StatusInternalServerError
			v = view{Title: "Error", Template: "error", Data: err.Error()}
		}
		s.render(w, r, status, page{view: v, Actions: s.actionsOffered(), Notice: r.URL.Query().Get("notice")})
	}
}

func (s *Server) render(w http.ResponseWriter, r *http.Request, status int, p page) {
	p.Static = r.Method != http.MethodGet
	t := s.pages[p.Template]
	block := "layout"
	if r.Header.Get("X-Partial") != "" {
		block = "content"
	}
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, block, p); err != nil {
		s.log.Error(err, "Execute dashboard template", "template", p.Template)
		http.Error(w, "template error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

var funcs = template.FuncMap{
	"ago":   ago,
	"bytes": humanBytes,
	"qty":   quantity,
	"size":  func(q resource.Quantity) string { return humanBytes(q.Value()) },
	"dur":   humanDuration,
	"time":  func(t *metav1.Time) string { return timeString(t) },
	"pct":   func(a, b int64) int64 { return percent(a, b) },
	"sub":   func(a, b int64) int64 { return a - b },
	"cond":  conditionOf,
	"condStatus": func(conds []metav1.Condition, typ string) string {
		if c := meta.FindStatusCondition(conds, typ); c != nil {
			return string(c.Status)
		}
		return "Unknown"
	},
	"modeOf":   modeOf,
	"deref":    func(b *bool) bool { return b != nil && *b },
	"robClass": func(r any) string { return "rob-" + strings.ToLower(fmt.Sprint(r)) },
}

func timeString(t *metav1.Time) string {
	if t == nil || t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

func ago(t *metav1.Time) string {
	if t == nil || t.IsZero() {
		return "never"
	}
	return humanDuration(time.Since(t.Time)) + " ago"
}

func humanDuration(d time.Duration) string {
	switch {
	case d < 0:
		return "in " + humanDuration(-d)
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func quantity(q *resource.Quantity) string {
	if q == nil {
		return "—"
	}
	return humanBytes(q.Value())
}

func percent(a, b int64) int64 {
	if b <= 0 {
		return 0
	}
	return a * 100 / b
}

// conditionOf returns "Status: Reason — message" of a condition, or "".
func conditionOf(conds []metav1.Condition, typ string) string {
	for _, c := range conds {
		if c.Type == typ {
			s := string(c.Status)
			if c.Reason != "" {
				s += " (" + c.Reason + ")"
			}
			if c.Message != "" {
				s += ": " + c.Message
			}
			return s
		}
	}
	return ""
}

// modeOf is the mode (RW, WO, ERR) the volume reports for one replica.
func modeOf(v v1.Volume, replica string) string {
	for _, r := range v.Status.Replicas {
		if r.Name == replica {
			return r.Mode
		}
	}
	return "—"
}
