package dashboard

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	authzv1 "k8s.io/api/authorization/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/internal/actions"
)

// Headers a trusted proxy sets. HeaderProxySecret proves the request came
// through it; HeaderUser and HeaderGroup (repeatable) name the caller, as
// kube-apiserver's request-header authentication does.
const (
	HeaderProxySecret = "X-Cairn-Proxy-Secret"
	HeaderUser        = "X-Remote-User"
	HeaderGroup       = "X-Remote-Group"
)

// The imperative actions.
const (
	ActionSnapshot = "snapshot"
	ActionBackup   = "backup"
	ActionRestore  = "restore"
	ActionVerify   = "verify"
	// ActionCleanup deletes a verification's throw-away volume.
	ActionCleanup = "cleanup"
)

// Action is one requested action with its form's fields.
type Action struct {
	Kind string
	// Volume to snapshot or back up.
	Volume string
	// Target is the BackupTarget of a backup (empty: the volume's own).
	Target string
	// Backup to restore or verify.
	Backup string
	// NewVolume is the name of the volume a restore creates.
	NewVolume string
}

// refusal is an action refused before anything was created.
type refusal struct {
	status int
	msg    string
}

func (r refusal) Error() string { return r.msg }

func refuse(status int, format string, args ...any) error {
	return refusal{status: status, msg: fmt.Sprintf(format, args...)}
}

// actionsOffered tells the pages whether to show action buttons.
func (s *Server) actionsOffered() bool { return s.opts.Actions }

// serveAction checks, builds and creates an action's object, then shows
// the page where its progress appears.
func (s *Server) serveAction(w http.ResponseWriter, r *http.Request) {
	a := Action{Kind: r.PathValue("action"), Volume: r.FormValue("volume"), Target: r.FormValue("target"),
		Backup: r.FormValue("backup"), NewVolume: r.FormValue("newVolume")}
	obj, err := s.act(r, a)
	var ref refusal
	switch {
	case errors.As(err, &ref):
		s.refused(w, r, a, ref)
	case err != nil:
		s.log.Error(err, "Dashboard action failed", "action", a.Kind)
		s.render(w, r, http.StatusInternalServerError, page{view: view{Title: "Action failed", Template: "error", Data: err.Error()}})
	case a.Kind == ActionCleanup:
		s.log.Info("Dashboard action deleted a verification volume", "volume", obj.GetName())
		http.Redirect(w, r, "/?"+url.Values{"notice": {"Volume " + obj.GetName() + " deleted"}}.Encode(), http.StatusSeeOther)
	default:
		kind := obj.GetObjectKind().GroupVersionKind().Kind
		s.log.Info("Dashboard action created an object", "action", a.Kind, "kind", kind, "name", obj.GetName())
		http.Redirect(w, r, progressURL(a, kind, obj.GetName()), http.StatusSeeOther)
	}
}

// refused answers a refused action with why, and that nothing changed.
func (s *Server) refused(w http.ResponseWriter, r *http.Request, a Action, ref refusal) {
	s.log.Info("Refused a dashboard action", "action", a.Kind, "reason", ref.msg)
	msg := ref.msg + " Nothing was created."
	if a.Kind == ActionCleanup {
		msg = ref.msg + " Nothing was deleted."
	}
	s.render(w, r, ref.status, page{view: view{Title: "Action refused", Template: "refused", Data: msg}, Actions: s.actionsOffered()})
}

// act runs the checks in order; nothing is created unless all pass.
func (s *Server) act(r *http.Request, a Action) (client.Object, error) {
	if !s.opts.Actions {
		return nil, refuse(http.StatusForbidden, "Actions are disabled: this dashboard was started without --dashboard-actions, so it only shows state.")
	}
	if !sameOrigin(r) {
		return nil, refuse(http.StatusForbidden, "The request did not come from a dashboard page (cross-site request).")
	}
	user, groups, err := s.caller(r)
	if err != nil {
		return nil, err
	}
	if a.Kind == ActionCleanup {
		return s.cleanup(r.Context(), user, groups, a.Volume)
	}
	obj, err := s.build(r.Context(), a)
	if err != nil {
		return nil, refuse(http.StatusBadRequest, "Cannot %s: %v.", a.Kind, err)
	}
	if user != "" {
		if err := s.authorize(r.Context(), user, groups, "create", obj); err != nil {
			return nil, err
		}
	}
	if err := s.c.Create(r.Context(), obj); err != nil {
		return nil, refuse(http.StatusBadRequest, "The API server rejected the %s: %v.", a.Kind, err)
	}
	if gvk, err := s.c.GroupVersionKindFor(obj); err == nil {
		obj.GetObjectKind().SetGroupVersionKind(gvk)
	}
	return obj, nil
}

// caller returns the identity a trusted proxy names. Without a configured
// proxy, identity headers are refused (anyone could send them); with one,
// every action must come through it.
func (s *Server) caller(r *http.Request) (string, []string, error) {
	user, groups := r.Header.Get(HeaderUser), r.Header.Values(HeaderGroup)
	secret := r.Header.Get(HeaderProxySecret)
	if s.proxy == nil {
		if user != "" || len(groups) > 0 || secret != "" {
			return "", nil, refuse(http.StatusForbidden, "The request names a caller (%s), but this dashboard trusts no proxy (--dashboard-proxy-secret-file is not set), so it cannot check that caller's permissions.", HeaderUser)
		}
		return "", nil, nil
	}
	if subtle.ConstantTimeCompare([]byte(secret), s.proxy) != 1 {
		return "", nil, refuse(http.StatusForbidden, "Actions are taken only through the trusted proxy, which names the caller; this request did not come through it.")
	}
	if user == "" {
		return "", nil, refuse(http.StatusForbidden, "The trusted proxy did not name the caller (%s is empty).", HeaderUser)
	}
	return user, groups, nil
}

// cleanup deletes a verification's throw-away volume (actions.Cleanup),
// once the caller may delete it.
func (s *Server) cleanup(ctx context.Context, user string, groups []string, name string) (client.Object, error) {
	vol, err := actions.GetVolume(ctx, s.c, name)
	if err != nil {
		return nil, refuse(http.StatusBadRequest, "Cannot clean up: %v.", err)
	}
	if vol.Labels[actions.LabelVerifies] == "" {
		return nil, refuse(http.StatusBadRequest, "Volume %s is not a verification volume; the dashboard deletes only those.", name)
	}
	if user != "" {
		if err := s.authorize(ctx, user, groups, "delete", vol); err != nil {
			return nil, err
		}
	}
	return vol, actions.Cleanup(ctx, s.c, vol)
}

// authorize asks the API server whether user may do verb on obj.
func (s *Server) authorize(ctx context.Context, user string, groups []string, verb string, obj client.Object) error {
	gvk, err := s.c.GroupVersionKindFor(obj)
	if err != nil {
		return err
	}
	mapping, err := s.c.RESTMapper().RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return err
	}
	res := mapping.Resource
	sar := &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{User: user, Groups: groups,
		ResourceAttributes: &authzv1.ResourceAttributes{Verb: verb, Group: res.Group, Version: res.Version, Resource: res.Resource,
			Namespace: obj.GetNamespace(), Name: obj.GetName()}}}
	if err := s.c.Create(ctx, sar); err != nil {
		return fmt.Errorf("subject access review: %w", err)
	}
	if !sar.Status.Allowed {
		why := sar.Status.Reason
		if why == "" {
			why = "no RBAC rule allows it"
		}
		return refuse(http.StatusForbidden, "Permission denied: %s may not %s %s.%s (%s).", user, verb, res.Resource, res.Group, why)
	}
	return nil
}

// sameOrigin accepts a form posted from this dashboard's own pages.
func sameOrigin(r *http.Request) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" {
		return site == "same-origin"
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return false
	}
	u, err := url.Parse(origin)
	return err == nil && strings.EqualFold(u.Host, r.Host)
}

// progressURL is the page that shows the created object's progress.
func progressURL(a Action, kind, name string) string {
	vol := a.Volume
	if a.Kind == ActionRestore {
		vol = a.NewVolume
	}
	if kind == "Volume" {
		vol = name
	}
	q := url.Values{"notice": {fmt.Sprintf("%s %s created", kind, name)}}
	if vol == "" {
		return "/?" + q.Encode()
	}
	return "/volumes/" + url.PathEscape(vol) + "?" + q.Encode()
}

// build makes the action's object with internal/actions, the builders
// cairnctl uses, so both create the same objects.
func (s *Server) build(ctx context.Context, a Action) (client.Object, error) {
	switch a.Kind {
	case ActionSnapshot, ActionBackup:
		vol, err := actions.GetVolume(ctx, s.c, a.Volume)
		if err != nil {
			return nil, err
		}
		if a.Kind == ActionSnapshot {
			return actions.NewSnapshot(vol, s.c)
		}
		return s.buildBackup(ctx, vol, a.Target)
	case ActionRestore, ActionVerify:
		b, err := actions.GetBackup(ctx, s.c, a.Backup)
		if err != nil {
			return nil, err
		}
		if a.Kind == ActionVerify {
			return actions.NewVerify(b)
		}
		return actions.NewRestore(b, a.NewVolume, actions.RestoreOptions{})
	}
	return nil, fmt.Errorf("unknown action %q", a.Kind)
}

// buildBackup backs vol up to target, or to its policy's target, as
// actions.BackupNow does.
func (s *Server) buildBackup(ctx context.Context, vol *v1.Volume, target string) (client.Object, error) {
	if target == "" {
		var err error
		if target, err = actions.PolicyTarget(ctx, s.c, vol); err != nil {
			return nil, err
		}
	}
	if err := s.c.Get(ctx, client.ObjectKey{Name: target}, &v1.BackupTarget{}); err != nil {
		return nil, fmt.Errorf("%w: BackupTarget %s: %v", actions.ErrNoBackupTarget, target, err)
	}
	return actions.NewBackup(vol, target), nil
}
