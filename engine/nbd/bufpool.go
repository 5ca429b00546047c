package nbd

import (
	"math/bits"
	"sync"
)

// Buffers come from power-of-two size classes from 4 KiB to MaxPayload.
const minClassShift = 12

var pools [14]sync.Pool

func class(n int) int {
	if n <= 1<<minClassShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minClassShift
}

func getBuf(n int) []byte {
	c := class(n)
	if c >= len(pools) {
		return make([]byte, n)
	}
	if p, ok := pools[c].Get().(*[]byte); ok {
		return (*p)[:n]
	}
	return make([]byte, n, 1<<(c+minClassShift))
}

func putBuf(b []byte) {
	if b == nil {
		return
	}
	c := class(cap(b))
	if c >= len(pools) || cap(b) != 1<<(c+minClassShift) {
		return
	}
	b = b[:cap(b)]
	pools[c].Put(&b)
}
