// Package wire is the replica protocol: framing, opcodes, limits, status
// codes and sentinel errors, the token handshake, and Conn, the one
// client-side connection (pipelined, batched writes, out-of-order
// completion) that replica.Client and through it the engine's I/O path
// use. The server side is replica.Server; the payloads of the operations
// are described in package replica.
//
// # Connection
//
// One TCP or unix-socket connection carries pipelined requests; replies
// come back in completion order, matched by request id. The server speaks
// first, a plaintext preamble naming the transport; over TCP that is TLS
// 1.3, and everything after the preamble travels inside it:
//
//	client                                   server
//	  | <------ "CAIRNRP1" ver u32 = 2, transport u32 (0 plain, 1 TLS) |
//	  | TLS 1.3 handshake, both sides present the volume key (transport 1) |
//	  | <------ nonce_s[32]                     |
//	  | "CAIRNRP1" ver, nonce_c[32],           |
//	  |   HMAC-SHA256(token, "cairn-replica-client"|nonce_s|nonce_c|binding) --> |
//	  | <------ status u8, HMAC(token, "cairn-replica-server"|...)    |
//	  | req{op,id=1} req{op,id=2} ...  ------> |  (handled concurrently)
//	  | <------ resp{id=2} resp{id=1} ...      |
//
// The token never crosses the wire; a wrong one gets status 1 and the
// connection is closed, and the client checks the server's proof too.
// binding is the TLS session's exporter value (RFC 8446, label
// "EXPORTER-cairn-replica-token", 32 bytes; empty in plaintext), so a
// token proof is good for its own TLS session only.
//
// # Encryption in transit
//
// TCP connections cross nodes, so they use TLS 1.3 (netx.TLSClient,
// netx.TLSServer) with keys derived from the volume's token, which the
// engine and every replica of the volume already hold (the node agent
// writes it to a 0600 file and passes --token-file; it is never in argv,
// logs, events or status): HKDF-SHA256(token, salt "cairn-tls-v1", info
// "cairn replica") seeds an Ed25519 key and a self-signed certificate.
// Both sides present that certificate and accept only a peer whose
// certificate carries the same public key. Without the token a peer can
// neither finish the handshake as client or server nor read the traffic
// (ephemeral key exchange). There is no CA to run, and no certificate to
// rotate apart from the token. The client refuses a server whose preamble
// announces another transport than its own policy ("serves plaintext
// TCP" / "requires TLS"), so neither side can be talked into plaintext;
// a peer with a wrong token fails the TLS handshake with ErrAuth.
// Unix sockets stay private to the node (mode 0600) and plaintext.
// netx.SetPlaintextTCP (the --tls=false flag of cairn replica, engine and
// node) turns TLS off for a process, to measure its cost; both ends must
// agree.
//
// Under TLS the batched hot path keeps its system calls: the records of
// one Write go out with one write system call per 64 KiB (crypto/tls
// alone makes one per 16 KiB record) and the socket is read through a
// 64 KiB buffer (netx.TLSConn). A batch of small frames is one Write, as
// it is one writev in plaintext; a payload above the 16 KiB copy limit is
// a Write of its own. Both ends read and write their sockets with raw
// system calls (netx.RawIO, package rawsys), which the Go scheduler does
// not see.
//
// # Frames
//
// Request header, 32 bytes little endian:
//
//	op u8 | flags u8 = 0 | reserved u16 = 0 | payload u32 | id u64 | offset u64 | length u64
//
// Response header, 16 bytes: op u8 | status u8 | reserved u16 = 0 |
// payload u32 | id u64. Status 0 is success; any other status is a
// sentinel error (errors.go), the payload is the message, and the client
// returns a *RemoteError that unwraps to the sentinel. A payload is at
// most MaxIO (4 MiB) + 256 bytes; a larger length or non-zero reserved
// bits is a malformed frame and closes that connection only. An unknown
// op, an out-of-range or oversized I/O gets an error reply and the
// connection stays up. A server handles at most MaxInflight requests of
// one connection at once. It runs writes of up to 64 KiB, and reads of up
// to 64 KiB whose data is in the page cache (preadv2 RWF_NOWAIT), on the
// connection's reader itself (a buffered pwrite or pread is cheaper than
// a goroutine hand-off) and sends their replies in one write once it has
// handled every request that arrived with them; other requests (reads
// that must wait for the disk, flushes, control) run on goroutines of
// their own.
//
// # Client connection
//
// Conn queues requests; one writer goroutine sends everything queued with
// a single vectored write (headers and payloads up to 16 KiB copied into
// one buffer, larger payloads as their own iovecs), and one reader
// goroutine completes requests by calling their Owner, so a request costs
// no goroutine, channel or timer of its own. Request ids carry a slot
// (low 32 bits; a connection starts with 1024 and grows to at most 65536
// requests in flight) and a per-slot sequence (high 32
// bits), so a stray reply is detected. With SetTimeout, one watchdog per
// connection fails the connection when a request waits longer.
package wire
