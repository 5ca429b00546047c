package dashboard

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/controllers"
)

// Site is another cluster whose DisasterRecoveryVolumes the DR page shows
// beside this cluster's (a DR site following this cluster's backups).
type Site struct {
	Name string
	// Kubeconfig is the path of a kubeconfig for the site; the dashboard
	// only lists its DisasterRecoveryVolumes with it.
	Kubeconfig string
}

// siteReader reads one site with a direct (uncached) client, made on
// first use: the site may come up after this cluster's manager.
type siteReader struct {
	name string
	mu   sync.Mutex
	path string
	c    client.Reader
}

// siteRefresh is how often open pages reload while other sites are shown:
// their objects are read on demand, not watched.
const siteRefresh = 10 * time.Second

// localSite names this cluster on the DR page.
const localSite = "this cluster"

func openSites(sites []Site) []*siteReader {
	out := make([]*siteReader, 0, len(sites))
	for _, s := range sites {
		out = append(out, &siteReader{name: s.Name, path: s.Kubeconfig})
	}
	return out
}

// reader returns the site's client, making it from its kubeconfig once.
func (r *siteReader) reader() (client.Reader, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.c != nil {
		return r.c, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", r.path)
	if err != nil {
		return nil, err
	}
	cfg.Timeout = 5 * time.Second
	c, err := client.New(cfg, client.Options{Scheme: controllers.NewScheme()})
	if err != nil {
		return nil, err
	}
	r.c = c
	return c, nil
}

// drRow is one DisasterRecoveryVolume with the site it lives in.
type drRow struct {
	Site string
	v1.DisasterRecoveryVolume
}

type drData struct {
	Pairs []drRow
	// Errors are sites that could not be read, with why.
	Errors []string
}

// drVolumes lists the DisasterRecoveryVolumes of this cluster and of every
// configured site; an unreachable site is reported, not fatal.
func (s *Server) drVolumes(ctx context.Context) (drData, error) {
	var d drData
	var list v1.DisasterRecoveryVolumeList
	if err := s.c.List(ctx, &list); err != nil {
		return d, err
	}
	for _, dr := range list.Items {
		d.Pairs = append(d.Pairs, drRow{Site: localSite, DisasterRecoveryVolume: dr})
	}
	for _, site := range s.sites {
		var remote v1.DisasterRecoveryVolumeList
		c, err := site.reader()
		if err == nil {
			err = c.List(ctx, &remote)
		}
		if err != nil {
			d.Errors = append(d.Errors, fmt.Sprintf("%s: %v", site.name, err))
			continue
		}
		for _, dr := range remote.Items {
			d.Pairs = append(d.Pairs, drRow{Site: site.name, DisasterRecoveryVolume: dr})
		}
	}
	slices.SortFunc(d.Pairs, func(a, b drRow) int {
		return strings.Compare(a.Site+"/"+a.Namespace+"/"+a.Name, b.Site+"/"+b.Namespace+"/"+b.Name)
	})
	return d, nil
}

func (s *Server) drPairs(r *http.Request) (view, error) {
	d, err := s.drVolumes(r.Context())
	if err != nil {
		return view{}, err
	}
	return view{Title: "Disaster recovery", Template: "dr", Data: d}, nil
}

// tickSites makes open pages reload every siteRefresh while other sites
// are configured, since their changes are not watched.
func (s *Server) tickSites(ctx context.Context) {
	if len(s.sites) == 0 {
		return
	}
	t := time.NewTicker(siteRefresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.live.publish(change{Kind: "Site"})
		}
	}
}
