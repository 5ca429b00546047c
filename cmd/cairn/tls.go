package main

import (
	"github.com/spf13/pflag"

	"github.com/cairnstore/cairn/internal/netx"
)

// addTLSFlag adds --tls, the knob for encryption in transit, to a command
// that opens data-plane connections.
func addTLSFlag(f *pflag.FlagSet, on *bool) {
	f.BoolVar(on, "tls", true, "use TLS 1.3 for replica and engine-control connections over TCP, keyed by the "+
		"volume token; --tls=false sends them in plaintext (to measure the cost of TLS; every node must agree)")
}

// applyTLS sets the process's policy from --tls.
func applyTLS(on bool) { netx.SetPlaintextTCP(!on) }
