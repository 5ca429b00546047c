// Package policies holds Cairn's pure policy logic: cron schedules read in a
// time zone, jitter and windows, retention selection, and which policy
// governs a volume. Nothing here talks to the API server or reads a clock of
// its own; callers pass the time in, so every rule is table-tested.
package policies
