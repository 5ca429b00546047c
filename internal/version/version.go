// Package version reports the build's version, set at link time with
// -ldflags "-X github.com/cairnstore/cairn/internal/version.Version=v0.1.0"
// and otherwise taken from the Go build info (module version or VCS revision).
package version

import "runtime/debug"

// Version is the release version; empty in development builds.
var Version = ""

// String returns the best version string available.
func String() string {
	if Version != "" {
		return Version
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return "devel-" + s.Value[:12]
		}
	}
	return "devel"
}
