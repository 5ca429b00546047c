package backupstore

import (
	"encoding/base64"
	"encoding/hex"
	"strings"
)

// DecodeKey turns the content of a key file or Secret into key material:
// hex or base64 encodings of 32 bytes are decoded; anything else is used as
// it is, without the one trailing newline an editor adds. The CLI's
// --key-file and the BackupTarget controller's key Secret read keys the same
// way, so a key works wherever it is given.
func DecodeKey(raw []byte) []byte {
	s := strings.TrimSpace(string(raw))
	if b, err := hex.DecodeString(s); err == nil && len(b) == 32 {
		return b
	}
	if b, err := base64.StdEncoding.DecodeString(s); err == nil && len(b) == 32 {
		return b
	}
	if len(s) == len(raw)-1 {
		return []byte(s)
	}
	return raw
}
