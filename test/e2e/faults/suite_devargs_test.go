//go:build !faults

package faults

// devArgs are added to the suite's `cairn dev` (none for make test's fast
// subset).
var devArgs []string
