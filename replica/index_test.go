package replica

import (
	"math/rand/v2"
	"testing"
)

// TestIndexModel checks the run-length index against a plain array.
func TestIndexModel(t *testing.T) {
	const blocks = 3*chunkBlocks + 1000
	x := newIndex(blocks)
	model := make([]uint16, blocks)
	rng := rand.New(rand.NewPCG(1, 2))
	check := func() {
		t.Helper()
		for b := int64(0); b < blocks; {
			o, end := x.lookup(b)
			if end <= b || end > blocks {
				t.Fatalf("bad run end %d at %d", end, b)
			}
			for k := b; k < end; k++ {
				if model[k] != o {
					t.Fatalf("block %d: index %d model %d", k, o, model[k])
				}
			}
			if end < blocks && model[end] == o && (end&(chunkBlocks-1)) != 0 {
				t.Fatalf("runs not merged at %d", end)
			}
			b = end
		}
	}
	for i := 0; i < 4000; i++ {
		var b0, b1 int64
		switch rng.IntN(4) {
		case 0: // small
			b0 = rng.Int64N(blocks)
			b1 = min(blocks, b0+1+rng.Int64N(8))
		case 1: // across chunk boundaries
			b0 = rng.Int64N(blocks)
			b1 = min(blocks, b0+1+rng.Int64N(2*chunkBlocks))
		default:
			b0 = rng.Int64N(200)
			b1 = b0 + 1 + rng.Int64N(50)
		}
		o := uint16(rng.IntN(4))
		if rng.IntN(3) == 0 {
			x.setIfLower(b0, b1, o)
			for k := b0; k < b1; k++ {
				if model[k] < o {
					model[k] = o
				}
			}
		} else {
			x.set(b0, b1, o)
			for k := b0; k < b1; k++ {
				model[k] = o
			}
		}
		if i%200 == 0 {
			check()
		}
	}
	check()
	x.remap(func(o uint16) uint16 {
		if o >= 2 {
			return o - 1
		}
		return o
	})
	for k := range model {
		if model[k] >= 2 {
			model[k]--
		}
	}
	check()
	var total int64
	x.forEach(func(b0, b1 int64, o uint16) {
		for k := b0; k < b1; k++ {
			if model[k] != o || o == 0 {
				t.Fatalf("forEach block %d owner %d model %d", k, o, model[k])
			}
		}
		total += b1 - b0
	})
	var want int64
	for _, o := range model {
		if o != 0 {
			want++
		}
	}
	if total != want {
		t.Fatalf("forEach covered %d blocks, want %d", total, want)
	}
}

func TestIndexMemorySparse(t *testing.T) {
	// 64 GiB volume, 1% written in scattered 4 KiB blocks
	const blocks = 16 << 20
	x := newIndex(blocks)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < blocks/100; i++ {
		b := rng.Int64N(blocks)
		x.set(b, b+1, 1)
	}
	perTiB := x.memBytes() * (1 << 40) / (blocks * BlockSize)
	t.Logf("index: %d bytes, %.1f MiB/TiB", x.memBytes(), float64(perTiB)/(1<<20))
	if perTiB > 32<<20 {
		t.Fatalf("index uses %d bytes per TiB, want <= 32 MiB", perTiB)
	}
}
