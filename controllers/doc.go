// Package controllers holds Cairn's reconcilers, one set of files per kind,
// and Setup, which registers them with a manager. Reconcilers follow one
// skeleton (get, finalizer, patch helper with a deferred status patch, phases)
// and report kstatus conditions.
package controllers
