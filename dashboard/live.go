package dashboard

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// change is one observed change of an object, pushed to open pages.
type change struct {
	Kind       string `json:"kind"`
	Name       string `json:"name"`
	Robustness string `json:"robustness,omitempty"`
	State      string `json:"state,omitempty"`
}

// broker fans changes out to the open pages. A page that cannot keep up
// is disconnected; its EventSource reconnects and the page reloads its
// content.
type broker struct {
	mu   sync.Mutex
	subs map[chan change]struct{}
}

func newBroker() *broker { return &broker{subs: map[chan change]struct{}{}} }

func (b *broker) subscribe() chan change {
	ch := make(chan change, 256)
	b.mu.Lock()
	b.subs[ch] = struct{}{}
	b.mu.Unlock()
	return ch
}

func (b *broker) unsubscribe(ch chan change) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.subs[ch]; ok {
		delete(b.subs, ch)
		close(ch)
	}
}

func (b *broker) publish(c change) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for ch := range b.subs {
		select {
		case ch <- c:
		default:
			delete(b.subs, ch)
			close(ch)
		}
	}
}

// watch publishes every add, update and delete the manager's cache sees
// of the kinds the pages show.
func (s *Server) watch(ctx context.Context) error {
	kinds := map[string]client.Object{
		"Volume": &v1.Volume{}, "Replica": &v1.Replica{}, "Engine": &v1.Engine{}, "CairnNode": &v1.CairnNode{},
		"Snapshot": &v1.Snapshot{}, "Backup": &v1.Backup{}, "BackupTarget": &v1.BackupTarget{},
		"RecurringSnapshot": &v1.RecurringSnapshot{}, "DisasterRecoveryVolume": &v1.DisasterRecoveryVolume{},
		"VolumePolicy": &v1.VolumePolicy{},
	}
	for kind, obj := range kinds {
		inf, err := s.cache.GetInformer(ctx, obj)
		if err != nil {
			return fmt.Errorf("dashboard: watch %s: %w", kind, err)
		}
		on := func(o any) { s.live.publish(changeOf(kind, o)) }
		if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
			AddFunc:    on,
			UpdateFunc: func(_, o any) { on(o) },
			DeleteFunc: on,
		}); err != nil {
			return err
		}
	}
	return nil
}

func changeOf(kind string, o any) change {
	if d, ok := o.(toolscache.DeletedFinalStateUnknown); ok {
		o = d.Obj
	}
	c := change{Kind: kind}
	if obj, ok := o.(client.Object); ok {
		c.Name = obj.GetName()
	}
	if v, ok := o.(*v1.Volume); ok {
		c.Robustness, c.State = string(v.Status.Robustness), string(v.Status.State)
	}
	return c
}

// serveEvents streams changes as server-sent events until the page goes.
func (s *Server) serveEvents(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	ch := s.live.subscribe()
	defer s.live.unsubscribe(ch)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = fmt.Fprint(w, "retry: 1000\n: connected\n\n")
	fl.Flush()
	keepalive := time.NewTicker(20 * time.Second)
	defer keepalive.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-keepalive.C:
			_, _ = fmt.Fprint(w, ": keepalive\n\n")
		case c, ok := <-ch:
			if !ok {
				return
			}
			data, _ := json.Marshal(c)
			_, _ = fmt.Fprintf(w, "event: change\ndata: %s\n\n", data)
		}
		fl.Flush()
	}
}
