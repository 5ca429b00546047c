package main

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// sizeRE is a byte count with an optional binary unit: K, M, G, T or P,
// optionally followed by "i", then an optional "B".
var sizeRE = regexp.MustCompile(`^([0-9]+)(?:([kmgtp])i?)?b?$`)

// parseSize parses a positive byte count for the --size and --block-size
// flags, in any case: 65536, 64k, 64Ki, 2M, 2MiB, 10Gi. Units are binary.
func parseSize(flag, s string) (int64, error) {
	m := sizeRE.FindStringSubmatch(strings.ToLower(strings.TrimSpace(s)))
	if m != nil {
		shift := 0
		if m[2] != "" {
			shift = 10 * (strings.Index("kmgtp", m[2]) + 1)
		}
		n, err := strconv.ParseInt(m[1], 10, 64)
		if err == nil && n > 0 && n <= (1<<62)>>shift {
			return n << shift, nil
		}
	}
	return 0, fmt.Errorf("%s: %q is not a positive size (e.g. 65536, 512Ki, 2Mi, 10Gi)", flag, s)
}
