// Package webhook is Cairn's validating admission webhook: the checks CEL in
// the CRD schema cannot express exactly (cron semantics, IANA time-zone
// names, jitter against the schedule's period, label selector syntax). The
// manager serves it so that a bad commit fails the Argo CD or Flux sync with
// a field path and message instead of reaching a controller.
package webhook
