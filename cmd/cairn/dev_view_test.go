package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestPrintChanged: headless, a line prints when its value changes, not
// when only the ticking RPO does.
func TestPrintChanged(t *testing.T) {
	prev := map[string]string{}
	var out bytes.Buffer
	printChanged(&out, []string{"primary volume v: Attached healthy, rpo 3s", "dr-site drv d/v: Standby"}, prev)
	printChanged(&out, []string{"primary volume v: Attached healthy, rpo 5s", "dr-site drv d/v: Standby"}, prev)
	printChanged(&out, []string{"primary volume v: Attached degraded, rpo 7s", "dr-site drv d/v: Active"}, prev)
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		got = append(got, l[len("15:04:05 "):])
	}
	want := []string{"primary volume v: Attached healthy, rpo 3s", "dr-site drv d/v: Standby",
		"primary volume v: Attached degraded, rpo 7s", "dr-site drv d/v: Active"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("printed\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
