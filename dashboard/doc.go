// Package dashboard is Cairn's web dashboard, served by the manager on its
// own port (`cairn manager --dashboard-addr`). It reads every object
// through the manager's cache-backed client, renders Go html/templates and
// SVG charts on the server, and pushes changes to open pages with
// server-sent events (/events), so pages update without a reload and
// without a JavaScript build step: templates and static assets are
// embedded.
//
// Configuration lives in git, so the dashboard never edits objects: an
// "Edit" button shows the YAML to commit under examples/. It performs only
// the imperative actions (snapshot now, backup now, restore a backup to a
// new volume, verify a backup), creating the objects cairnctl creates,
// and only when started with actions enabled; when a trusted proxy names
// the caller, each action is checked with a SubjectAccessReview against
// that identity first. docs/dashboard.md describes the security model.
package dashboard
