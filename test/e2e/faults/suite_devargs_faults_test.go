//go:build faults

package faults

// devArgs are added to the suite's `cairn dev`: make faults runs the DR
// site too (TestManagerKilled activates DR volumes there).
var devArgs = []string{"--dr-site"}
