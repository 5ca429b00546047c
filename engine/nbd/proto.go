package nbd

// Protocol constants from the NBD protocol specification (fixed newstyle
// negotiation, simple and structured replies).
const (
	nbdMagic       = 0x4e42444d41474943 // "NBDMAGIC"
	optMagic       = 0x49484156454f5054 // "IHAVEOPT"
	optReplyMagic  = 0x0003e889045565a9
	requestMagic   = 0x25609513
	simpleMagic    = 0x67446698
	structuredMagc = 0x668e33ef

	// Handshake flags (server) and client flags.
	flagFixedNewstyle = 1 << 0
	flagNoZeroes      = 1 << 1
	cflagFixed        = 1 << 0
	cflagNoZeroes     = 1 << 1

	// Options.
	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8

	// Option replies.
	repAck        = 1
	repServer     = 2
	repInfo       = 3
	repErrUnsup   = 1<<31 + 1
	repErrPolicy  = 1<<31 + 2
	repErrInvalid = 1<<31 + 3
	repErrUnknown = 1<<31 + 6

	// Info types.
	infoExport    = 0
	infoName      = 1
	infoBlockSize = 3

	// Transmission flags.
	tflagHasFlags     = 1 << 0
	tflagSendFlush    = 1 << 2
	tflagSendFUA      = 1 << 3
	tflagSendTrim     = 1 << 5
	tflagWriteZeroes  = 1 << 6
	tflagSendDF       = 1 << 7
	tflagCanMultiConn = 1 << 8
	tflagSendCache    = 1 << 10
	tflagFastZero     = 1 << 11

	// Commands.
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdCache       = 5
	cmdWriteZeroes = 6

	// Command flags.
	cmdFlagFUA      = 1 << 0
	cmdFlagNoHole   = 1 << 1
	cmdFlagDF       = 1 << 2
	cmdFlagFastZero = 1 << 4

	// Structured reply chunk types and flags.
	replyFlagDone    = 1 << 0
	replyTypeNone    = 0
	replyTypeData    = 1
	replyTypeError   = 1<<15 + 1
	replyFlagsDoneOK = replyFlagDone

	// Errors (errno values on the wire).
	errPerm      = 1
	errIO        = 5
	errNoMem     = 12
	errInval     = 22
	errNoSpc     = 28
	errOverflow  = 75
	errNotSup    = 95
	errShutdown  = 108
	maxOptionLen = 64 << 10
)
