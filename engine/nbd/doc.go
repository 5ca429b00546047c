// Package nbd serves an engine.Backend over the Network Block Device
// protocol, the engine's production frontend (the kernel's nbd client) and
// its benchmark path (fio's nbd engine, qemu-img, nbdcopy).
//
// Handshake: fixed newstyle only. The server sends NBDMAGIC, IHAVEOPT and
// its flags (FIXED_NEWSTYLE, NO_ZEROES); the client answers with its flags
// and then options until one of EXPORT_NAME or GO moves the connection to
// transmission:
//
//	client                                server
//	  |  <-- NBDMAGIC IHAVEOPT flags ---------|
//	  |  --- client flags ------------------> |
//	  |  --- IHAVEOPT opt len data ---------> |   LIST, INFO, STRUCTURED_REPLY, ABORT
//	  |  <-- reply magic opt type len data -- |   (repeated)
//	  |  --- IHAVEOPT GO ...  --------------> |
//	  |  <-- INFO(export) INFO(block size) ACK|
//	  |  === transmission ==================  |
//
// The export is known by the volume's name and by the empty (default) name.
// Transmission advertises FLUSH, FUA, TRIM, WRITE_ZEROES, FAST_ZERO, DF,
// CACHE and CAN_MULTI_CONN: every connection serves the same Backend and a
// flush on any of them makes every completed write durable.
//
// Requests are read by one goroutine per connection and executed
// concurrently (up to MaxInFlight per connection); replies are sent in
// completion order, so they are out of order with respect to requests.
// Structured replies are used when the client negotiates them (errors on
// READ then carry no payload); otherwise simple replies are used and a failed
// READ is followed by length bytes of filler as the protocol requires.
//
// The export size is read from the Backend at each handshake, so a
// connection made after the volume grew sees the new size. NBD cannot
// resize a live connection: a connected client keeps the size it
// negotiated until it reconnects.
//
// Invalid requests (out of range, oversized, unknown command) get an errno
// reply and the connection stays up; a malformed handshake or request magic
// closes only that connection.
package nbd
