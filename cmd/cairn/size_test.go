package main

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"65536": 65536, "64k": 64 << 10, "64Ki": 64 << 10, "2M": 2 << 20, "2MiB": 2 << 20,
		"10Gi": 10 << 30, "1Ti": 1 << 40, "3P": 3 << 50, " 4096 ": 4096, "1kb": 1024,
	} {
		got, err := parseSize("--size", in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for _, in := range []string{"", "0", "-1", "Gi", "1.5Gi", "1Xi", "4096i", "9999999Pi"} {
		_, err := parseSize("--size", in)
		require.Error(t, err, in)
	}
}
