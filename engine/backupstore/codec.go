package backupstore

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/zeebo/blake3"
)

// FormatVersion is the version of every object this package writes.
// Version 1 (unreleased) stored one object per block; version 2 packs
// blocks into pack objects found through index objects.
const FormatVersion = 2

// Compression selects how block and metadata payloads are compressed.
type Compression uint8

const (
	// CompressionNone stores payloads as they are.
	CompressionNone Compression = 0
	// CompressionZstd compresses with zstd (the default).
	CompressionZstd Compression = 1
	// CompressionLZ4 compresses with the LZ4 block format.
	CompressionLZ4 Compression = 2
)

// String returns the name used in URLs, flags and JSON.
func (c Compression) String() string {
	switch c {
	case CompressionNone:
		return "none"
	case CompressionZstd:
		return "zstd"
	case CompressionLZ4:
		return "lz4"
	}
	return fmt.Sprintf("compression(%d)", uint8(c))
}

// ParseCompression parses "zstd", "lz4" or "none" ("" means zstd).
func ParseCompression(s string) (Compression, error) {
	switch s {
	case "", "zstd":
		return CompressionZstd, nil
	case "lz4":
		return CompressionLZ4, nil
	case "none":
		return CompressionNone, nil
	}
	return 0, fmt.Errorf("backupstore: unknown compression %q (want zstd, lz4 or none)", s)
}

// Object kinds, the fifth byte of every envelope.
const (
	kindBlock     byte = 'B'
	kindManifest  byte = 'M'
	kindCatalogue byte = 'C'
	kindIndex     byte = 'I'
	kindTrailer   byte = 'P'
)

const (
	envelopeMagic   = "CAIR"
	envelopeHeader  = 16
	flagEncrypted   = 1 << 0
	gcmNonceSize    = 12
	maxPlainPayload = 1 << 34 // 16 GiB: refuses absurd lengths from corrupt headers
)

// BlockID is the content address of a block: BLAKE3-256 of its plaintext,
// keyed by a key derived from the encryption key when the target is
// encrypted (so ids reveal nothing about content). The zero
// BlockID stands for an all-zero block, which is never stored.
type BlockID [32]byte

// String returns the id as lower-case hex.
func (id BlockID) String() string { return hex.EncodeToString(id[:]) }

// IsZero reports whether id is the all-zero-block marker.
func (id BlockID) IsZero() bool { return id == BlockID{} }

// ParseBlockID parses a hex block id.
func ParseBlockID(s string) (BlockID, error) {
	var id BlockID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(id) {
		return id, fmt.Errorf("%w: block id %q", ErrInvalidName, s)
	}
	copy(id[:], b)
	return id, nil
}

// codec turns payloads into stored objects and back: compression,
// optional AES-256-GCM, the envelope header and the content hash.
type codec struct {
	aead  cipher.AEAD // nil when unencrypted
	idKey []byte      // nil when unencrypted: ids are unkeyed BLAKE3
	level zstd.EncoderLevel

	encPool     sync.Pool // *zstd.Encoder
	decPool     sync.Pool // *zstd.Decoder producing at most MaxBlockSize
	metaDecPool sync.Pool // *zstd.Decoder producing at most maxManifestPayload
	macPool     sync.Pool // *blake3.Hasher (keyed)
}

// deriveKeys derives the block-id key, the encryption key and the key-check
// key from the user key with HKDF-SHA-256 over the target's salt.
func deriveKeys(key, salt []byte) (idKey, encKey, checkKey []byte, err error) {
	derive := func(info string) ([]byte, error) {
		return hkdf.Key(sha256.New, key, salt, "cairn backupstore v1 "+info, 32)
	}
	if idKey, err = derive("block-id"); err != nil {
		return
	}
	if encKey, err = derive("encryption"); err != nil {
		return
	}
	checkKey, err = derive("key-check")
	return
}

func newCodec(idKey, encKey []byte, level zstd.EncoderLevel) (*codec, error) {
	if level == 0 {
		level = zstd.SpeedFastest
	}
	c := &codec{idKey: idKey, level: level}
	if encKey != nil {
		block, err := aes.NewCipher(encKey)
		if err != nil {
			return nil, err
		}
		if c.aead, err = cipher.NewGCM(block); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// blockID computes the content address of plaintext: BLAKE3-256, keyed
// with the id key in an encrypted store. An all-zero plaintext yields the
// zero BlockID.
func (c *codec) blockID(p []byte) BlockID {
	var id BlockID
	if isZero(p) {
		return id
	}
	if c.idKey == nil {
		return BlockID(blake3.Sum256(p))
	}
	h, _ := c.macPool.Get().(*blake3.Hasher)
	if h == nil {
		h, _ = blake3.NewKeyed(c.idKey)
	}
	h.Reset()
	_, _ = h.Write(p)
	h.Sum(id[:0])
	c.macPool.Put(h)
	if id.IsZero() { // astronomically unlikely; keep the marker unambiguous
		id[0] = 1
	}
	return id
}

// encode builds a stored object from payload into dst (reused when large
// enough). aad binds the ciphertext to the object's identity so objects
// cannot be swapped. Compression falls back to none when it does not save.
func (c *codec) encode(dst []byte, kind byte, comp Compression, payload, aad []byte) ([]byte, error) {
	need := envelopeHeader + gcmNonceSize + compressBound(comp, len(payload)) + 16
	if cap(dst) < need {
		dst = make([]byte, 0, need)
	}
	dst = dst[:envelopeHeader]
	copy(dst, envelopeMagic)
	dst[4] = kind
	dst[5] = FormatVersion
	dst[6] = byte(comp)
	dst[7] = 0
	binary.BigEndian.PutUint64(dst[8:16], uint64(len(payload)))
	if c.aead != nil {
		dst[7] |= flagEncrypted
		var nonce [gcmNonceSize]byte
		if _, err := rand.Read(nonce[:]); err != nil {
			return nil, err
		}
		dst = append(dst, nonce[:]...)
	}
	bodyStart := len(dst)
	dst = c.compress(dst, comp, payload)
	if comp != CompressionNone && len(dst)-bodyStart >= len(payload) {
		dst = append(dst[:bodyStart], payload...)
		dst[6] = byte(CompressionNone)
	}
	if c.aead != nil {
		nonce := dst[envelopeHeader:bodyStart]
		fullAAD := append(append(make([]byte, 0, envelopeHeader+len(aad)), dst[:envelopeHeader]...), aad...)
		body := dst[bodyStart:]
		sealed := c.aead.Seal(body[:0], nonce, body, fullAAD)
		dst = dst[:bodyStart+len(sealed)]
	}
	return dst, nil
}

// decode checks an object's envelope, decrypts and decompresses it into
// dst (reused when large enough) and returns the payload, which may be at
// most what its kind allows. It decrypts in place, so obj is clobbered.
func (c *codec) decode(dst []byte, kind byte, obj, aad []byte) ([]byte, error) {
	return c.decodeAtMost(dst, kind, obj, aad, maxPayload(kind))
}

// decodeAtMost is decode with a payload no longer than limit (and than
// its kind allows): a larger recorded length is ErrCorrupt before
// anything is allocated.
func (c *codec) decodeAtMost(dst []byte, kind byte, obj, aad []byte, limit int64) ([]byte, error) {
	if len(obj) < envelopeHeader || string(obj[:4]) != envelopeMagic {
		return nil, fmt.Errorf("%w: bad magic", ErrFormat)
	}
	if obj[4] != kind {
		return nil, fmt.Errorf("%w: object kind %q, want %q", ErrFormat, obj[4], kind)
	}
	if obj[5] != FormatVersion {
		return nil, fmt.Errorf("%w: format version %d (this build reads %d)", ErrFormat, obj[5], FormatVersion)
	}
	comp := Compression(obj[6])
	flags := obj[7]
	plainLen := binary.BigEndian.Uint64(obj[8:16])
	if plainLen > uint64(min(limit, maxPayload(kind))) {
		return nil, fmt.Errorf("%w: payload length %d, at most %d allowed", ErrCorrupt, plainLen, min(limit, maxPayload(kind)))
	}
	body := obj[envelopeHeader:]
	encrypted := flags&flagEncrypted != 0
	switch {
	case encrypted && c.aead == nil:
		return nil, ErrKeyRequired
	case !encrypted && c.aead != nil:
		return nil, fmt.Errorf("%w: object is not encrypted in an encrypted target", ErrCorrupt)
	case encrypted:
		if len(body) < gcmNonceSize+c.aead.Overhead() {
			return nil, fmt.Errorf("%w: truncated", ErrCorrupt)
		}
		nonce := body[:gcmNonceSize]
		fullAAD := append(append(make([]byte, 0, envelopeHeader+len(aad)), obj[:envelopeHeader]...), aad...)
		ct := body[gcmNonceSize:]
		if comp == CompressionNone && uint64(len(ct)-c.aead.Overhead()) == plainLen {
			// Stored raw: decrypt straight into dst instead of in place and
			// then copying (a block's worth of memmove per block).
			if cap(dst) < int(plainLen) {
				dst = make([]byte, plainLen)
			}
			plain, err := c.aead.Open(dst[:0], nonce, ct, fullAAD)
			if err != nil {
				return nil, fmt.Errorf("%w: authentication failed", ErrCorrupt)
			}
			return plain, nil
		}
		// Decrypt in place: decode owns obj (callers pass buffers they own).
		plain, err := c.aead.Open(ct[:0], nonce, ct, fullAAD)
		if err != nil {
			return nil, fmt.Errorf("%w: authentication failed", ErrCorrupt)
		}
		body = plain
	}
	if cap(dst) < int(plainLen) {
		dst = make([]byte, plainLen)
	}
	dst = dst[:plainLen]
	if err := c.decompress(dst, comp, body, kind == kindBlock); err != nil {
		return nil, err
	}
	return dst, nil
}

func compressBound(comp Compression, n int) int {
	switch comp {
	case CompressionLZ4:
		return lz4.CompressBlockBound(n)
	case CompressionZstd:
		return n + n/255 + 64
	}
	return n
}

func (c *codec) compress(dst []byte, comp Compression, p []byte) []byte {
	switch comp {
	case CompressionZstd:
		enc, _ := c.encPool.Get().(*zstd.Encoder)
		if enc == nil {
			enc, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(c.level), zstd.WithEncoderConcurrency(1),
				zstd.WithEncoderCRC(false), zstd.WithLowerEncoderMem(true))
		}
		dst = enc.EncodeAll(p, dst)
		c.encPool.Put(enc)
		return dst
	case CompressionLZ4:
		start := len(dst)
		dst = dst[:start+lz4.CompressBlockBound(len(p))]
		var lc lz4.Compressor
		n, err := lc.CompressBlock(p, dst[start:])
		if err != nil || n == 0 { // incompressible: caller falls back to none
			return append(dst[:start], p...)
		}
		return dst[:start+n]
	}
	return append(dst, p...)
}

// decompress fills dst from body. zstd decoders are bounded to what a
// block (or a manifest or catalogue) may hold, so a forged frame cannot
// make one grow past it.
func (c *codec) decompress(dst []byte, comp Compression, body []byte, block bool) error {
	switch comp {
	case CompressionNone:
		if len(body) != len(dst) {
			return fmt.Errorf("%w: stored length %d, want %d", ErrCorrupt, len(body), len(dst))
		}
		copy(dst, body)
	case CompressionZstd:
		pool, limit := &c.metaDecPool, uint64(maxManifestPayload)
		if block {
			pool, limit = &c.decPool, MaxBlockSize
		}
		dec, _ := pool.Get().(*zstd.Decoder)
		if dec == nil {
			dec, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(limit))
		}
		out, err := dec.DecodeAll(body, dst[:0])
		pool.Put(dec)
		if err != nil {
			return fmt.Errorf("%w: zstd: %v", ErrCorrupt, err)
		}
		if len(out) != len(dst) || (len(out) > 0 && &out[0] != &dst[0]) {
			if len(out) != len(dst) {
				return fmt.Errorf("%w: decompressed length %d, want %d", ErrCorrupt, len(out), len(dst))
			}
			copy(dst, out)
		}
	case CompressionLZ4:
		n, err := lz4.UncompressBlock(body, dst)
		if err != nil {
			return fmt.Errorf("%w: lz4: %v", ErrCorrupt, err)
		}
		if n != len(dst) {
			return fmt.Errorf("%w: decompressed length %d, want %d", ErrCorrupt, n, len(dst))
		}
	default:
		return fmt.Errorf("%w: unknown compression %d", ErrFormat, comp)
	}
	return nil
}

var zeroChunk [64 << 10]byte

// isZero reports whether p is all zero bytes.
func isZero(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), len(zeroChunk))
		if !bytes.Equal(p[:n], zeroChunk[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}
